"""`latup-edge segment`: label maps for BraTS cases, from a bundle (or PyTorch weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.progress import TextColumn

from latup_edge.cli.app import JsonOption, command, console, err_console, print_json, print_table, progress_bar
from latup_edge.cli.options import MirrorOption, TilingOption
from latup_edge.runtime.volume import DEFAULT_OVERLAP, DEFAULT_TILING, DEFAULT_WINDOW


@command("segment")
def segment(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Case folders, or folders of cases (BraTS or nnU-Net NIfTI names), or DICOM studies."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for <case_id>.nii.gz (created if missing).")],
    bundle: Annotated[
        Path | None,
        typer.Option(help="Bundle folder for openvino and onnxruntime (default: the one shipped in the package)."),
    ] = None,
    precision: Annotated[
        Literal["int8", "bf16", "fp32"] | None,
        typer.Option(help="Default: the bundle's default (the fastest that passed its drift gate)."),
    ] = None,
    backend: Annotated[
        Literal["openvino", "onnxruntime", "torch"], typer.Option(help="Inference engine.")
    ] = "openvino",
    weights: Annotated[Path | None, typer.Option(help="Checkpoint for --backend torch (default: shipped).")] = None,
    labels: Annotated[
        Literal["2021", "2023", "nnunet"] | None,
        typer.Option(
            help="BraTS labels with ET as 4 (2021) or 3 (2023), or nnU-Net's BraTS order (1 oedema, 2 necrosis, "
            "3 ET). Default: the input's own convention (an nnU-Net folder's dataset.json decides)."
        ),
    ] = None,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write <case_id>_probabilities.nii.gz (float32, 4 classes).")
    ] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Skip cases whose outputs exist (resume a run).")
    ] = False,
    tiling: TilingOption = DEFAULT_TILING,
    mirror: MirrorOption = "none",
    core_network: Annotated[
        bool,
        typer.Option(
            help="A bundle with a core network (the shipped one) runs it to label the tumour's parts; "
            "--no-core-network runs the whole-tumour network alone: about half the network time, and cores that "
            "hold less well on scans unlike the training data (docs/GENERALISATION.md section 28).",
        ),
    ] = True,
    window: Annotated[
        int,
        typer.Option(help="--tiling sliding: windows hold at most WINDOW^3 voxels (a positive multiple of 8)."),
    ] = DEFAULT_WINDOW,
    overlap: Annotated[
        float, typer.Option(help="--tiling sliding: neighbouring windows share at least OVERLAP x WINDOW voxels.")
    ] = DEFAULT_OVERLAP,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Inference threads (default: the engine's); with --cluster, each worker's "
            "(default for local:N: the CPUs / N)."
        ),
    ] = None,
    allow_failed_precision: Annotated[
        bool, typer.Option("--allow-failed-precision", help="Run a precision that failed the drift gate.")
    ] = False,
    log: Annotated[Path | None, typer.Option(help="JSON run log (default: OUTPUT/segment-log.json).")] = None,
    shape_policy: Annotated[
        Literal["exact", "bucket32"] | None,
        typer.Option(
            help="Network input shapes: each brain box as it is (exact), or zero-padded at its ends to a multiple of "
            "32 (bucket32: fewer shapes, less kernel setup). Default: bucket32 for brain-statistics networks, "
            "which compute the same labels on it; others always run exact."
        ),
    ] = None,
    postprocess: Annotated[
        bool,
        typer.Option(
            help="Clear labels outside the skull-stripped brain, remove tumour components without a core (or "
            "with under 2 % of the largest one), then those under 0.1 of the largest, relabel ET not bright on "
            "T1ce (a component's median under the brain's 95th percentile, then a voxel under its 75th) and then "
            "under 200 ET voxels as necrosis "
            "(latup_edge/runtime/postprocess.py); --no-postprocess writes the "
            "network's argmax as it is."
        ),
    ] = True,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run on Dask distributed, one task per case: local:N (N worker processes here) or a scheduler "
            'address such as tcp://HOST:8786 (pip install "latup-edge[distributed]"; docs/DISTRIBUTED.md).'
        ),
    ] = None,
    rules: Annotated[
        Path | None,
        typer.Option(
            help="DICOM series -> modality rules (JSON; default: the shipped latup_edge/scans/modality_rules.json)."
        ),
    ] = None,
    dicom_seg: Annotated[
        bool, typer.Option("--dicom-seg", help="Also write <case_id>_seg.dcm (DICOM SEG) for each DICOM study.")
    ] = False,
    audit: Annotated[
        int,
        typer.Option(
            "--audit",
            metavar="K",
            help="Also run the fp32 reference on every K-th case and log its agreement with the run's precision "
            "against the bundle's gate (0: off; it costs one fp32 pass per audited case).",
        ),
    ] = 0,
    audit_fraction: Annotated[
        float, typer.Option(metavar="F", help="Also audit a seeded random fraction F (0-1) of the cases.")
    ] = 0.0,
    audit_seed: Annotated[int, typer.Option(help="Seed of --audit-fraction's choice.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Segment INPUTS into OUTPUT: one label map per case on its reference series' own grid (T1ce), and
    volumes.csv; scans that are not BraTS-ready are resampled to 1 mm and co-registered first (the log
    records each step). Bad cases are reported and skipped."""
    from latup_edge.runtime.cluster import segment_distributed
    from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing
    from latup_edge.runtime.segment import SegmentSettings, segment_cases
    from latup_edge.runtime.trust import audit_warnings, swap_warnings

    settings = SegmentSettings(
        backend=backend, precision=precision, bundle=bundle, weights=weights, labels=labels,
        probabilities=probabilities, skip_existing=skip_existing, tiling=tiling, window=window, overlap=overlap,
        threads=threads, allow_failed_precision=allow_failed_precision, log=log, shape_policy=shape_policy,
        postprocessing=DEFAULT_POSTPROCESSING if postprocess else Postprocessing.none(), modality_rules=rules,
        dicom_seg=dicom_seg, audit_every=audit, audit_fraction=audit_fraction, audit_seed=audit_seed,
        mirror=mirror, core_network=core_network,
    )  # fmt: skip
    with progress_bar(TextColumn("{task.fields[status]}")) as bar:
        task = bar.add_task("segmenting", total=None, status="loading the model")

        def report(event: dict[str, Any]) -> None:
            if event["event"] == "start":
                used = event["backend"]
                where = f" on {event['workers']} workers ({event['cluster']['spec']})" if "workers" in event else ""
                err_console.print(
                    f"{event['cases']} cases{where}; {used['name']} {used['precision']}, "
                    f"{used['resolved'].get('threads') or 'default'} threads, loaded in {used['load_ms'] / 1000:.1f} s"
                    f", shape policy {event['shape_policy']['resolved']}"
                )
                for warning in event["warnings"]:
                    err_console.print(f"[bold yellow]Warning:[/] {warning}", highlight=False)
                bar.update(task, total=event["cases"], status="")
                return
            seconds = sum(event["seconds"].values())
            bar.update(task, advance=1, status=f"{event['case_id']} {event['status']} {seconds:.1f} s")

        if cluster is None:
            result = segment_cases(inputs, output, settings, report=report)
        else:
            result = segment_distributed(inputs, output, settings, cluster, report=report)
    if as_json:
        print_json(result)
    else:
        print_segment(result, log or output / "segment-log.json")
    for warning in [*audit_warnings(result.get("audit") or {}), *swap_warnings(result["cases"])]:  # stderr too
        err_console.print(f"[bold yellow]Warning:[/] {escape(warning)}", highlight=False)
    if result["failures"]:
        raise typer.Exit(1)


def print_segment(result: dict[str, Any], log: Path) -> None:
    """A table of cases (status, seconds, process peak memory, and on a cluster the worker), then the failures
    on stderr."""
    stages = ("load", "infer", "write")
    on_cluster = "cluster" in result
    rows = [
        (
            case["case_id"],
            case["status"],
            *(f"{case['seconds'][stage]:.2f}" if stage in case["seconds"] else "-" for stage in stages),
            f"{case['process_peak_rss_mb']:.0f}" if case["process_peak_rss_mb"] else "-",
            _volumes(case),
            _ood(case),
            _audit(case),
            escape("; ".join(case.get("flags") or [])) or "-",
            *([(case["worker"] or "-").partition("://")[2] or "-"] if on_cluster else []),
        )
        for case in result["cases"]
    ]
    backend = result["backend"]
    columns = (
        "case",
        "status",
        "load s",
        "infer s",
        "write s",
        "peak RSS MB (process)",
        "WT / TC / ET mL",
        "OOD score",
        "audit WT / TC / ET",
        "flags",
        *(["worker"] if on_cluster else []),
    )
    print_table(f"Segmented with {backend['name']} {backend['precision']}", columns, rows)
    summary = result["summary"]
    console.print(
        f"{summary['ok']} written, {summary['skipped']} skipped, {summary['failed']} failed -> {result['out_dir']}; "
        f"log: {log}"
    )
    if result.get("audit"):
        print_audit(result["audit"])
    for message in result["failures"].values():  # each message names its case
        err_console.print(f"[red]failed:[/] {escape(message)}", highlight=False)


def print_audit(audit: dict[str, Any]) -> None:
    """The audited agreement beside the bundle's gate, its cost, and a warning for each shortfall."""
    if not audit["cases"]:
        console.print("audit: no case was audited (fewer cases than K, or none drawn)")
        return
    mean, lowest = audit["mean_agreement"], audit["lowest_agreement"]
    rows = [(region, f"{mean[region]:.4f}", f"{lowest[region]:.4f}", f"{audit['gate']}") for region in mean]
    print_table(f"INT8 audit: {audit['cases']} case(s) against fp32", ("region", "mean", "lowest", "gate"), rows)
    share = audit["fraction_of_run_time"]
    console.print(f"audit cost: {audit['seconds']:.1f} s" + (f", {share:.0%} of the run" if share is not None else ""))


def _volumes(case: dict[str, Any]) -> str:
    volumes = case.get("volumes_ml")
    return " / ".join(f"{volumes[r]:.1f}" for r in ("WT", "TC", "ET")) if volumes else "-"


def _ood(case: dict[str, Any]) -> str:
    score = (case.get("ood") or {}).get("score")
    return "-" if score is None else f"{score:.1f}"


def _audit(case: dict[str, Any]) -> str:
    agreement = (case.get("audit") or {}).get("agreement")
    return " / ".join(f"{agreement[r]:.3f}" for r in ("WT", "TC", "ET")) if agreement else "-"


@command("review")
def review(
    run: Annotated[Path, typer.Argument(help="The output folder of a segment run (it holds segment-log.json).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The page to write (default: RUN/review.html).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write one self-contained, offline HTML page of a segment run: every case's slices with the label
    overlay, volumes, flags and audit results, cases to review first."""
    from latup_edge.runtime.review import write_review_page

    page = write_review_page(run, output)
    if as_json:
        print_json({"page": str(page), "bytes": page.stat().st_size})
    else:
        console.print(f"wrote {page} ({page.stat().st_size / 1e6:.1f} MB): open it in any browser, offline")
