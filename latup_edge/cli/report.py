"""`latup-edge drift` (Dice drift of a bundle's precisions, with a report) and `latup-edge benchmark`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from latup_edge.cli.app import JsonOption, command, console, err_console, print_json, print_table, progress_bar
from latup_edge.cli.options import MirrorOption, ScoredLabelsOption, TilingOption
from latup_edge.runtime.volume import DEFAULT_TILING

BundleOption = Annotated[
    Path | None,
    typer.Option(help="A bundle folder (from `latup-edge build`); default: the bundle shipped in the package."),
]
ThreadsOption = Annotated[int, typer.Option(help="Inference threads (0: each backend's default).")]


def _split(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


@command("drift")
def drift(
    data_dir: Annotated[Path, typer.Argument(help="BraTS-format folder; cases without labels get agreement only.")],
    bundle: BundleOption = None,
    precisions: Annotated[
        str | None, typer.Option(help="Precisions to compare with fp32, e.g. int8,bf16 (default: all this CPU runs).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Folder for report.md, a self-contained report.html and the PNGs.")
    ] = None,
    threads: ThreadsOption = 0,
    tiling: TilingOption = DEFAULT_TILING,
    mirror: MirrorOption = "none",
    postprocess: ScoredLabelsOption = True,
    as_json: JsonOption = False,
) -> None:
    """Dice, HD95 and agreement of each reduced precision against fp32, per case and region, with verdicts."""
    from latup_edge.data.cases import discover_cases
    from latup_edge.evaluate.report import drift_tables
    from latup_edge.runtime.bundle import resolve_bundle
    from latup_edge.runtime.drift import run_drift
    from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing

    total = len(discover_cases(data_dir))
    with progress_bar() as bar:
        task = bar.add_task("drift", total=total)
        result = run_drift(
            data_dir,
            resolve_bundle(bundle),
            _split(precisions),
            threads or None,
            report,
            progress=lambda case: bar.advance(task),
            tiling=tiling,
            postprocessing=DEFAULT_POSTPROCESSING if postprocess else Postprocessing.none(),
            mirror=mirror,
        )
    if as_json:
        print_json(result)
        return
    for table in drift_tables(result):
        print_table(table.title, table.columns, table.rows, caption=table.caption)
    if report is not None:
        console.print(f"Report: {report / 'report.html'} (and report.md, one PNG per case, latency.png)")


@command("benchmark")
def benchmark(
    bundle: BundleOption = None,
    cases: Annotated[
        Path | None, typer.Option(help="BraTS-format folder to time on (default: 2 generated phantoms).")
    ] = None,
    backends: Annotated[str, typer.Option(help="Comma-separated: openvino, onnxruntime, torch.")] = (
        "openvino,onnxruntime,torch"
    ),
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per case.")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed forwards per case before timing.")] = 1,
    threads: ThreadsOption = 0,
    weights: Annotated[
        Path | None, typer.Option(help="Checkpoint for the torch row (default: the one the bundle was built from).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the result as JSON to this file.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Latency, memory and size per backend and precision: one table, the same columns for each."""
    from latup_edge.runtime.benchmark import run_benchmark, write_benchmark
    from latup_edge.runtime.bundle import resolve_bundle

    with err_console.status("benchmarking") as status:
        result = run_benchmark(
            resolve_bundle(bundle), cases, _split(backends) or [], repeats, warmup, threads or None, weights,
            progress=lambda message: status.update(f"benchmarking: {message}"),
        )  # fmt: skip
    if out is not None:
        write_benchmark(result, out)
    if as_json:
        print_json(result)
        return
    print_benchmark(result)


def print_benchmark(result: dict[str, Any]) -> None:
    """The benchmark table, then a line per row that was skipped or noted."""

    def spread(times: dict[str, float]) -> str:
        return f"{times['p50']:.0f} / {times['p90']:.0f} / {times['p99']:.0f}"

    def resolved(row: dict[str, Any]) -> str:
        return f"{row['threads'] or 'default'} / {row['streams']} / {row['resolved_precision']}"

    rows = [
        (
            row["backend"], row["precision"], f"{row['size_mb']:.1f}", f"{row['load_ms']:.0f}",
            f"{row['first_ms']:.0f}", spread(row["tile_ms"]), spread(row["case_ms"]), f"{row['cases_per_minute']:.1f}",
            f"{row['peak_rss_mb']:.0f}", resolved(row),
            f"{row['speedup']['tile_ms']:.2f}x" if row["speedup"] else "-",
        )
        for row in result["rows"]
    ]  # fmt: skip
    columns = ("backend", "precision", "size MB", "load ms", "first ms", "tile ms p50/p90/p99", "case ms p50/p90/p99",
               "cases/min", "peak RSS MB", "threads/streams/precision", "vs torch fp32")  # fmt: skip
    shapes = ", ".join("x".join(map(str, shape[2:])) for shape in result["rows"][0]["tile_shapes"]) if rows else "-"
    print_table(
        f"Benchmark of {result['bundle']} on {result['cpu']}",
        columns,
        rows,
        caption=f"{len(result['cases'])} cases, tiles {shapes}; warm-up {result['warmup']} forward(s) per case, "
        f"then {result['repeats']} timed per case; a case: load NIfTI, preprocess, infer, write labels; "
        "each row in a fresh process (peak RSS its own); speed-up: tile p50 of torch fp32 / the row's",
    )
    for entry in result["skipped"]:
        err_console.print(f"[yellow]left out[/] {entry['backend']} {entry['precision']}: {entry['reason']}")
    for row in result["rows"]:
        for note in row["notes"]:
            err_console.print(f"[dim]{row['backend']} {row['precision']}: {note}[/]")
