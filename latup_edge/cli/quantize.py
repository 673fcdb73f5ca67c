"""`latup-edge quantize` and `latup-edge build`: INT8 with a Dice drift gate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from latup_edge.cli.app import JsonOption, command, console, err_console, print_json, print_table
from latup_edge.evaluate.drift import DEFAULT_MAX_DICE_DROP, DEFAULT_MIN_AGREEMENT, format_ratio

EngineOption = Annotated[str, typer.Option(help="nncf (OpenVINO's NNCF) or inc (Intel Neural Compressor).")]
MaxDropOption = Annotated[
    float, typer.Option(help="Largest Dice loss allowed, as a share of fp32 per region (0.001: 99.9 %).")
]
RangesOption = Annotated[
    str,
    typer.Option(
        help="How NNCF sets each activation's INT8 range from the calibration samples: mean (of each sample's "
        "min and max, NNCF's default) or extreme (over all samples). neural-compressor always takes the extremes."
    ),
]
OutputBiasOption = Annotated[
    bool,
    typer.Option(
        help="Fit per-class offsets on the INT8 head's bias so its labels agree with fp32's on the calibration "
        "samples (INT8 painted less oedema at uncertain borders; docs/INT8.md). NNCF only."
    ),
]
# The library's default (nncf_engine.DEFAULT_ACTIVATION_RANGES), not imported: it would load OpenVINO.
DEFAULT_ACTIVATION_RANGES = "mean"
REGIONS = ("WT", "TC", "ET")


def _check_ranges(activation_ranges: str) -> None:
    from latup_edge.deploy.quantize.nncf_engine import ACTIVATION_RANGES

    if activation_ranges not in ACTIVATION_RANGES:
        raise typer.BadParameter(f"must be one of {', '.join(ACTIVATION_RANGES)}", param_hint="--activation-ranges")


def _check_engine(engine: str) -> None:
    from latup_edge.deploy.quantize import ENGINES

    if engine not in ENGINES:
        raise typer.BadParameter(f"must be one of {', '.join(ENGINES)}", param_hint="--engine")


@command("quantize")
def quantize_command(
    model: Annotated[Path, typer.Argument(help="The float ONNX model (from `latup-edge export`).")],
    calib: Annotated[Path, typer.Option(help="Calibration set folder (from `latup-edge calibrate`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the INT8 model and reports.")],
    engine: EngineOption = "nncf",
    sensitivity: Annotated[
        bool, typer.Option(help="Rank the quantized layers by the damage each does; print and save it.")
    ] = True,
    mixed: Annotated[bool, typer.Option(help="Keep in float the layers the ranking says must be.")] = True,
    full_ranking: Annotated[
        bool, typer.Option(help="Rank every layer one at a time (slow) instead of screening blocks first.")
    ] = False,
    accuracy_control: Annotated[
        bool, typer.Option(help="Let the engine's accuracy-aware search choose the float layers, by our Dice.")
    ] = False,
    keep_float: Annotated[
        list[str] | None, typer.Option(help="A layer (ONNX node name) to keep in float; repeatable.")
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option(help="Held-out cases (not in the calibration set) for the drift summary.")
    ] = None,
    activation_ranges: RangesOption = DEFAULT_ACTIVATION_RANGES,
    output_bias: OutputBiasOption = False,
    max_dice_drop: MaxDropOption = DEFAULT_MAX_DICE_DROP,
    as_json: JsonOption = False,
) -> None:
    """Static INT8 quantization with one engine, its layer sensitivity, and its Dice drift."""
    from latup_edge.calibration.calibration_set import read_calibration_set
    from latup_edge.data.cases import discover_cases
    from latup_edge.deploy.build import SENSITIVITY_CASES, SENSITIVITY_SIZE, verdict
    from latup_edge.deploy.compile import model_normalization
    from latup_edge.deploy.quantize import quantize
    from latup_edge.deploy.quantize.sensitivity import AgreementJudge
    from latup_edge.evaluate.drift import measure_drift, prepare_case
    from latup_edge.fileio import atomic_write
    from latup_edge.runtime.openvino_backend import OpenVINOModel
    from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, delivered_labels

    _check_engine(engine)
    _check_ranges(activation_ranges)
    normalization = model_normalization(model)
    calibration = read_calibration_set(calib, normalization=normalization)
    judge = None
    if sensitivity:
        # The search looks at calibration cases only, so the held-out drift stays unbiased.
        source = {c.case_id: c for c in discover_cases(calibration.manifest["data_root"])}
        chosen = calibration.summary()["cases"][:SENSITIVITY_CASES]
        cases = [prepare_case(source[i], SENSITIVITY_SIZE, normalization=normalization) for i in chosen]
        judge = AgreementJudge.from_float_model(model, cases)
    result = quantize(
        engine, model, list(calibration), output, keep_float=keep_float or (), judge=judge,
        mixed=mixed and sensitivity, progress=lambda message: err_console.print(message), screen=not full_ranking,
        accuracy_control=accuracy_control, activation_ranges=activation_ranges, output_bias=output_bias,
    )  # fmt: skip
    report: dict[str, Any] = {"quantization": result.to_dict()}
    if eval_data is not None:
        forwards = {"fp32": OpenVINOModel(model, "fp32"), "int8": OpenVINOModel(result.path, "int8")}
        prepared = [prepare_case(c, normalization=normalization) for c in discover_cases(eval_data)]
        drift = measure_drift(prepared, forwards, labels=delivered_labels(DEFAULT_POSTPROCESSING))
        report["drift"] = drift | {"verdict": verdict(drift["summary"]["int8"], max_dice_drop)}
    text = json.dumps(report, indent=2, default=str) + "\n"
    atomic_write(output / "quantization.json", lambda tmp: tmp.write_text(text))
    if as_json:
        print_json(report)
        return
    if result.ranking:
        print_sensitivity(result.to_dict())
    if "drift" in report:
        print_drift(report["drift"])
    console.print(f"INT8 model: {result.path} (kept in float: {', '.join(result.keep_float) or 'nothing'})")


def print_sensitivity(quantization: dict[str, Any], top: int = 12) -> None:
    if quantization.get("sensitivity_blocks"):
        print_table(
            "Screening: worst-region agreement with fp32 when a whole block reads float",
            ("block", "agreement", "gain"),
            [(e["layer"], f"{e['agreement']:.4f}", f"{e['gain']:+.4f}") for e in quantization["sensitivity_blocks"]],
        )
    rows = [
        (entry["layer"], f"{entry['agreement']:.4f}", f"{entry['gain']:+.4f}")
        for entry in quantization["sensitivity"][:top]
    ]
    print_table(
        f"Sensitivity ({quantization['engine']}): worst-region agreement with fp32 when one layer reads float",
        ("layer", "agreement", "gain"),
        rows,
        caption=f"fully INT8: {quantization['agreement_fully_int8']:.4f}; "
        f"kept in float: {', '.join(quantization['keep_float']) or 'nothing'} -> {quantization['agreement']:.4f}",
    )


def print_drift(drift: dict[str, Any]) -> None:
    rows = []
    for case_id, entry in drift["cases"].items():
        for precision, scores in entry["precisions"].items():
            if precision == "fp32":
                continue
            metrics = scores.get("metrics")
            rows.append(
                (case_id, precision)
                + tuple(
                    f"{metrics[r]['dice']:.4f} / {entry['precisions']['fp32']['metrics'][r]['dice']:.4f}"
                    if metrics
                    else "-"
                    for r in REGIONS
                )
                + tuple(f"{scores['agreement'][r]:.4f}" for r in REGIONS)
            )
    for precision, summary in drift["summary"].items():
        if precision == "fp32":
            continue
        regions = summary["regions"]
        rows.append(
            ("[bold]mean[/]", precision)
            + tuple(f"{format_ratio(regions[r])} (ratio)" for r in REGIONS)
            + tuple(f"{regions[r]['agreement_mean']:.4f}" for r in REGIONS)
        )
    columns = ("case", "precision", "Dice WT", "Dice TC", "Dice ET", "agree WT", "agree TC", "agree ET")
    print_table("Dice drift against fp32 (Dice: reduced / fp32)", columns, rows)


@command("build")
def build(
    calib_data: Annotated[Path, typer.Option(help="BraTS-format folder: calibration and held-out cases.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The bundle folder to write.")],
    engine: EngineOption = "nncf",
    weights: Annotated[Path | None, typer.Option(help="Checkpoint (default: the shipped demo weights).")] = None,
    max_dice_drop: MaxDropOption = DEFAULT_MAX_DICE_DROP,
    min_agreement: Annotated[
        float, typer.Option(help="Lowest mean agreement Dice with fp32 a precision may have, per region.")
    ] = DEFAULT_MIN_AGREEMENT,
    held_out: Annotated[int, typer.Option(help="Cases held out for the drift gate.")] = 4,
    calibration_cases: Annotated[int, typer.Option(help="Cases to calibrate on.")] = 8,
    calibration_kind: Annotated[str, typer.Option(help="crop, brainbox or mixed.")] = "crop",
    accuracy_control: Annotated[
        bool, typer.Option(help="Let the engine's accuracy-aware search choose the float layers, by our Dice.")
    ] = False,
    threads: Annotated[int, typer.Option(help="OpenVINO threads (0: all cores).")] = 0,
    gate_data: Annotated[
        list[Path] | None,
        typer.Option(
            help="Another labelled folder the drift gate must pass on too (repeatable), e.g. the independent "
            "generator's cases; it is never calibrated on. The bundle records the numbers per folder."
        ),
    ] = None,
    include_onnx: Annotated[
        bool, typer.Option(help="Also keep fp32.onnx in the bundle (the onnxruntime backend needs it).")
    ] = True,
    activation_ranges: RangesOption = DEFAULT_ACTIVATION_RANGES,
    output_bias: OutputBiasOption = False,
    as_json: JsonOption = False,
) -> None:
    """Export, calibrate, quantize, gate on Dice drift and compile a bundle, in one command."""
    from rich.status import Status

    from latup_edge.deploy.build import BuildSettings, build_bundle

    _check_engine(engine)
    _check_ranges(activation_ranges)
    settings = BuildSettings(
        engine=engine, weights=weights, max_dice_drop=max_dice_drop, min_agreement=min_agreement, held_out=held_out,
        calibration_cases=calibration_cases, calibration_kind=calibration_kind, threads=threads or None,
        accuracy_control=accuracy_control, gate_data=tuple(gate_data or ()), include_onnx=include_onnx,
        activation_ranges=activation_ranges, output_bias=output_bias,
    )  # fmt: skip
    with Status("building", console=err_console) as status:
        report = build_bundle(calib_data, output, settings, progress=lambda stage: status.update(stage))
    if as_json:
        print_json(report | {"bundle": str(output)})
        return
    from latup_edge.runtime.bundle import load_bundle

    print_build(report, load_bundle(output).manifest)
    console.print(f"Bundle: {output}")


def print_build(report: dict[str, Any], manifest: dict[str, Any]) -> None:
    from latup_edge.runtime.bundle import precision_size_mb

    summary = report["drift"]["summary"]
    rows = []
    for name, entry in manifest["precisions"].items():
        regions = summary.get(name, {}).get("regions", {})
        rows.append(
            (name, f"{precision_size_mb(manifest, name):.1f}")
            + tuple(
                f"{regions[r]['dice']:.4f} ({format_ratio(regions[r])})" if "dice" in regions.get(r, {}) else "-"
                for r in REGIONS
            )
            + (
                f"{entry['latency_ms']['median_ms']:.0f}",
                report["verdicts"].get(name, "-").split(":")[0],
                "yes" if name == manifest["default_precision"] else "",
            )
        )
    columns = ("precision", "size MB", "Dice WT (ratio)", "Dice TC (ratio)", "Dice ET (ratio)", "ms / brain box",
               "gate", "default")  # fmt: skip
    print_table(f"Bundle built with {report['engine']}", columns, rows)
    console.print(f"Default precision: {manifest['default_precision']} (the fastest that passed the gate)")
    for name, text in report["verdicts"].items():
        console.print(f"  {name}: {text}")
    if len(report.get("gate", {})) > 1:
        print_gate(report["gate"])
    console.print(f"Kept in float: {', '.join(report['keep_float']) or 'nothing'}")


def print_gate(gate: dict[str, Any]) -> None:
    """Per gate data set and precision: cases, worst Dice ratio, lowest agreement, verdict."""
    rows = []
    for data, entry in gate.items():
        for name, text in entry["verdicts"].items():
            summary = entry["summary"][name]
            lowest = min((row["agreement_mean"] for row in summary.get("regions", {}).values()), default=float("nan"))
            rows.append((data, str(len(entry["cases"])), name, f"{summary['worst_ratio']:.4f}", f"{lowest:.4f}",
                         text.split(":")[0]))  # fmt: skip
    columns = ("gate data", "cases", "precision", "worst Dice ratio", "lowest agreement", "verdict")
    print_table("The gate, per data set", columns, rows)


def _log(message: str) -> None:
    err_console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")


@command("demo")
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for every artifact of the demo.")] = Path(
        "latup-demo"
    ),
    cases: Annotated[int, typer.Option(min=3, help="Phantom cases to generate.")] = 6,
    seed: Annotated[int, typer.Option(help="Phantom seed.")] = 7,
    threads: Annotated[int, typer.Option(help="Inference threads (0: all cores).")] = 0,
) -> None:
    """The whole pipeline on the embedded default: phantoms, bundle, segment, drift, benchmark."""
    from rich.status import Status

    from latup_edge.demo import DemoSettings, run_demo

    settings = DemoSettings(cases=cases, seed=seed, threads=threads or None)
    with Status("demo", console=err_console) as status:
        result = run_demo(output, settings, progress=lambda stage: (status.update(stage), _log(stage)))
    from latup_edge.runtime.bundle import load_bundle

    print_build(result["build"], load_bundle(output / "bundle").manifest)
    failures = [c for c in result["segment"]["cases"] if c["status"] == "failed"]
    console.print(
        f"Segmented {len(result['segment']['cases']) - len(failures)} held-out case(s) into {output / 'segmented'}"
    )
    rows = [
        (
            row["backend"],
            row["precision"],
            f"{row['tile_ms']['p50']:.0f}",
            f"{row['case_ms']['p50']:.0f}",
            f"{row['speedup']['case_ms']:.1f}x" if row.get("speedup") else "-",
        )
        for row in result["benchmark"]["rows"]
    ]
    bench = result["benchmark"]
    print_table(
        "Benchmark: one held-out case",
        ("backend", "precision", "ms network pass", "ms case (files in, label file out)", "case vs torch fp32"),
        rows,
        caption=f"{bench['warmup']} warm-up and {bench['repeats']} timed pass: indicative only; "
        "`latup-edge benchmark` and benchmarks/ repeat and report percentiles",
    )
    console.print(f"Drift report: {output / 'report' / 'report.html'}")
