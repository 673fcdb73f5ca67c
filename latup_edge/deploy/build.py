"""``build``: export -> calibrate -> quantize -> drift gate -> compile, into one bundle.

Cases of the data folder are split once, by seed: ``held_out`` cases judge the drift gate and are
never seen by calibration or by the mixed-precision search; the rest calibrate, and the first two
calibration cases drive the sensitivity search.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latup_edge.calibration.calibration_set import build_calibration_set
from latup_edge.data.cases import BratsCase, discover_cases, load_case_images
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.deploy.compile import compile_bundle
from latup_edge.deploy.export import export_for_deploy
from latup_edge.deploy.quantize import DEFAULT_AGREEMENT_TARGET, Engine, quantize
from latup_edge.deploy.quantize.nncf_engine import DEFAULT_ACTIVATION_RANGES, ActivationRanges
from latup_edge.deploy.quantize.sensitivity import AgreementJudge
from latup_edge.errors import LatupError
from latup_edge.evaluate.drift import (
    DEFAULT_MAX_DICE_DROP,
    DEFAULT_MIN_AGREEMENT,
    describe_basis,
    measure_drift,
    prepare_case,
)
from latup_edge.runtime.bundle import Bundle
from latup_edge.runtime.input_stats import case_statistics, reference_statistics
from latup_edge.runtime.normalization import network_normalization
from latup_edge.runtime.openvino_backend import OpenVINOModel, cpu_supports_bf16
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, delivered_labels
from latup_edge.runtime.volume import DEFAULT_OVERLAP, DEFAULT_TILING, DEFAULT_WINDOW, box_forward

SENSITIVITY_CASES = 2
# The search compiles and runs one model per quantized layer: on 128^3 crops it costs ~3x less
# than on whole brain boxes, and ranks the same culprits (the gate itself runs on brain boxes).
SENSITIVITY_SIZE = 128


@dataclass(frozen=True)
class BuildSettings:
    engine: Engine = "nncf"
    weights: Path | None = None
    max_dice_drop: float = DEFAULT_MAX_DICE_DROP
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    held_out: int = 4
    calibration_cases: int = 8
    calibration_kind: str = "crop"
    per_case: int = 1
    crop_size: int = 128
    seed: int = 0
    sensitivity: bool = True  # rank the layers (and, with mixed, keep the harmful ones in float)
    mixed: bool = True
    screen: bool = True  # rank blocks first, then only the layers of blocks that matter
    accuracy_control: bool = False  # let the engine's own accuracy-aware loop choose the float layers
    agreement_target: float = DEFAULT_AGREEMENT_TARGET
    activation_ranges: ActivationRanges = DEFAULT_ACTIVATION_RANGES  # NNCF's range rule (docs/INT8.md)
    output_bias: bool = False  # fit per-class offsets on the INT8 head's bias (deploy/quantize/output_bias.py)
    threads: int | None = None
    latency_repeats: int = 3  # timed passes per precision for the manifest's latency
    # More labelled folders the gate must pass on too (e.g. the independent generator's cases); never calibrated on.
    gate_data: tuple[Path, ...] = ()
    include_onnx: bool = True  # keep fp32.onnx in the bundle (onnxruntime); the shipped bundle leaves it out


def split_held_out(case_ids: list[str], held_out: int, seed: int) -> tuple[list[str], list[str]]:
    """(calibration candidates, held-out) case ids, a seeded split."""
    if len(case_ids) <= held_out:
        raise LatupError(f"need more than {held_out} cases (held out for the drift gate), found {len(case_ids)}")
    order = np.random.default_rng(seed).permutation(len(case_ids))
    held = sorted(case_ids[i] for i in order[:held_out])
    return [c for c in case_ids if c not in held], held


def verdict(summary: dict[str, Any], max_dice_drop: float, min_agreement: float = DEFAULT_MIN_AGREEMENT) -> str:
    """'pass ...' or 'fail: ...' for one precision's drift summary.

    Passing takes both: the worst region's Dice ratio to fp32 (agreement when unlabelled, or where
    fp32's Dice is 0) within ``max_dice_drop``, and every region's mean agreement with fp32 at least
    ``min_agreement``. A summary without regions fails: nothing was compared.
    """
    agreements = {region: row["agreement_mean"] for region, row in summary.get("regions", {}).items()}
    if not agreements:
        return "fail: the drift summary has no regions, so nothing was compared with fp32"
    bound = 1 - max_dice_drop
    worst = summary["worst_ratio"]
    basis = describe_basis(summary) + _interval(summary, worst)
    if worst < bound:
        return f"fail: worst region {basis} {worst:.4f} < {bound:.4f}"
    region, lowest = min(agreements.items(), key=lambda item: item[1])
    if lowest < min_agreement:
        return f"fail: {region} agreement with fp32 {lowest:.4f} < {min_agreement:.4f} (Dice ratio {worst:.4f} passed)"
    return f"pass: worst region {basis} {worst:.4f} >= {bound:.4f}, agreement with fp32 >= {lowest:.4f}"


def _interval(summary: dict[str, Any], worst: float) -> str:
    """The worst ratio's 95 % interval over the cases, where the summary has one: how firm the verdict is."""
    rows = [row for row in summary["regions"].values() if row.get("ratio") == worst and "ratio_ci95" in row]
    if not rows:
        return ""
    low, high = rows[0]["ratio_ci95"]
    return f" (95 % interval over the cases {low:.4f}-{high:.4f})"


def combined_verdict(per_data: dict[str, str]) -> str:
    """One precision's verdict over every gate data set: it passes only where it passes on all of them."""
    failed = {data: text for data, text in per_data.items() if not text.startswith("pass")}
    if failed:
        return "; ".join(f"{text} on {data}" for data, text in failed.items())
    if len(per_data) == 1:
        return next(iter(per_data.values()))
    return "pass on " + " and ".join(f"{data} ({text.removeprefix('pass: ')})" for data, text in per_data.items())


def _gate_entry(drift: dict[str, Any], forwards: dict[str, Any], bounds: tuple[float, float]) -> dict[str, Any]:
    """What the bundle records of one gate data set: its cases, per-precision summary and verdict."""
    return {
        "cases": sorted(drift["cases"]),
        "summary": drift["summary"],
        "verdicts": {name: verdict(drift["summary"][name], *bounds) for name in forwards},
    }


def input_reference(cases: list[BratsCase]) -> dict[str, Any]:
    """The input statistics of the build's calibration and held-out cases, which ``segment`` scores each
    scan against (``latup_edge.runtime.input_stats``): intensities in the brain, brain volume and box, spacing."""
    per_case = []
    for case in cases:
        images, reference = load_case_images(case, MODEL_MODALITIES)
        per_case.append(case_statistics(images, MODEL_MODALITIES, reference.header.get_zooms()[:3]))
    return reference_statistics(per_case) | {"cases": [case.case_id for case in cases]}


def built_from(bundle: Bundle) -> tuple[dict[str, BratsCase], list[np.ndarray]]:
    """The cases a bundle was built from, by id (from the data folder its manifest records), and the
    normalised brain boxes of its calibration cases, in the manifest's order."""
    recorded = bundle.manifest["build"]
    folder = Path(recorded["calibration"]["data_root"])
    if not folder.is_dir():
        raise LatupError(f"bundle {bundle.path} was built from {folder}, which is not here: make or copy that folder")
    by_id = {case.case_id: case for case in discover_cases(folder)}
    samples = [
        prepare_case(by_id[i], normalization=bundle.normalization).inputs for i in recorded["calibration"]["cases"]
    ]
    return by_id, samples


def build_bundle(
    data_dir: Path, out_dir: Path, settings: BuildSettings, progress: Callable[[str], None] = lambda stage: None
) -> dict[str, Any]:
    """Build a bundle at ``out_dir``; returns the build report (also stored in the manifest)."""
    if settings.calibration_cases < 1:
        raise LatupError(f"need at least 1 calibration case, got {settings.calibration_cases}: calibrate on 1 or more")
    cases = {case.case_id: case for case in discover_cases(data_dir)}
    candidates, held_out = split_held_out(sorted(cases), settings.held_out, settings.seed)
    with tempfile.TemporaryDirectory(prefix="latup-build-") as work_dir:
        work = Path(work_dir)
        progress("export")
        export = export_for_deploy(settings.weights, work / "model.onnx", data_dir)
        onnx_path = Path(export["onnx"])
        # Calibration, the search and the gate see the cases as the model does.
        normalization = network_normalization(export["metadata"]["config"])

        progress("calibrate")
        # Exactly these cases (never a held-out one): build_calibration_set's own seeded pick is not used.
        calibration = build_calibration_set(
            data_dir, work / "calibration", case_ids=candidates[: settings.calibration_cases],
            per_case=settings.per_case, kind=settings.calibration_kind, crop_size=settings.crop_size,
            seed=settings.seed, normalization=normalization,
        )  # fmt: skip
        calibration_ids = calibration.summary()["cases"]
        judge = None
        if settings.sensitivity:
            chosen = calibration_ids[:SENSITIVITY_CASES]
            sensitivity_cases = [prepare_case(cases[i], SENSITIVITY_SIZE, normalization=normalization) for i in chosen]
            judge = AgreementJudge.from_float_model(onnx_path, sensitivity_cases, settings.threads)

        progress("quantize")
        quantized = quantize(
            settings.engine, onnx_path, list(calibration), work / "int8", judge=judge,
            mixed=settings.mixed, target=settings.agreement_target, progress=progress, screen=settings.screen,
            accuracy_control=settings.accuracy_control, activation_ranges=settings.activation_ranges,
            output_bias=settings.output_bias,
        )  # fmt: skip

        progress("drift")
        models = {"fp32": OpenVINOModel(onnx_path, "fp32", threads=settings.threads)}
        if cpu_supports_bf16():
            models["bf16"] = OpenVINOModel(onnx_path, "bf16", threads=settings.threads)
        models["int8"] = OpenVINOModel(quantized.path, "int8", threads=settings.threads)
        # The gate runs boxes as segment does by default, so its verdict is about what users get.
        forwards = {name: box_forward(model) for name, model in models.items()}
        prepared = [prepare_case(cases[i], normalization=normalization) for i in held_out]
        # ... and scores the labels users get: the network's argmax after segment's post-processing.
        labels = delivered_labels(DEFAULT_POSTPROCESSING)
        drift = measure_drift(prepared, forwards, labels=labels)
        bounds = (settings.max_dice_drop, settings.min_agreement)
        gate = {f"held-out split of {data_dir}": _gate_entry(drift, forwards, bounds)}
        for folder in settings.gate_data:
            extra = [prepare_case(case, normalization=normalization) for case in discover_cases(folder)]
            gate[str(folder)] = _gate_entry(measure_drift(extra, forwards, labels=labels), forwards, bounds)
        verdicts = {
            name: combined_verdict({data: entry["verdicts"][name] for data, entry in gate.items()}) for name in forwards
        }

        progress("inputs")
        inputs = input_reference([cases[i] for i in [*calibration_ids, *held_out]])

        progress("compile")
        report = {
            "engine": settings.engine,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
            "export": {k: export[k] for k in ("sha256", "weights", "check", "deploy_form")},
            "calibration": calibration.summary(),
            "held_out": held_out,
            "quantization": quantized.to_dict() | {"path": quantized.path.name},
            "keep_float": quantized.keep_float,
            "drift": drift,
            "gate_tiling": {"tiling": DEFAULT_TILING, "window": DEFAULT_WINDOW, "overlap": DEFAULT_OVERLAP},
            "gate_postprocessing": DEFAULT_POSTPROCESSING.to_dict(),
            "gate": gate,
            "verdicts": verdicts,
            "input_reference": inputs,
        }
        latency_shape = max((case.inputs.shape for case in prepared), key=np.prod)
        # compile_bundle writes atomically and never overwrites a folder that is not a bundle.
        compile_bundle(
            onnx_path, quantized.path, out_dir, extra=report, latency_shape=latency_shape,
            threads=settings.threads, include_onnx=settings.include_onnx, repeats=settings.latency_repeats,
        )  # fmt: skip
    return report
