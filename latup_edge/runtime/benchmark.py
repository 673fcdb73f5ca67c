"""Latency, memory and size of every backend and precision, in one table with the same columns.

Each row is one backend at one precision: OpenVINO fp32, bf16 (on CPUs with bf16 units) and int8
from the bundle's IR, ONNX Runtime fp32 from the bundle's ``fp32.onnx``, and PyTorch fp32 from the
checkpoint the bundle was built from. Every row runs in a fresh Python process, so its peak RSS is
its own. A row measures:

- ``size_mb``: the model files on disk; ``load_ms``: read + compile (or session / checkpoint load);
- ``first_ms``: the first forward (OpenVINO compiles shape-specific kernels there);
- ``tile_ms``: p50/p90/p99 of one case's brain box through the network as the row's predictor runs
  it (its sliding windows, or one pass padded as its shape policy pads it; ``tile_shapes``), after
  ``warmup`` untimed forwards per case, ``repeats`` timed per case;
- ``case_ms``: p50/p90/p99 of a whole case, files in to label file out (load NIfTI, preprocess,
  infer, postprocess, write), ``repeats`` per case, and ``cases_per_minute`` from its mean;
- ``peak_rss_mb`` (``ru_maxrss`` of the row's process) and what the backend resolved (threads,
  streams, precision), plus the speed-up against PyTorch fp32 when that row ran.

>>> result = run_benchmark(Path("bundle"), backends=("openvino", "onnxruntime"), repeats=5)  # doctest: +SKIP
>>> [(row["backend"], row["precision"], row["tile_ms"]["p50"]) for row in result["rows"]]   # doctest: +SKIP
[('openvino', 'fp32', 9712.3), ('openvino', 'bf16', 1803.1), ...]

Run one row by hand (what ``run_benchmark`` does per row):
``python -m latup_edge.runtime.benchmark --row spec.json --out result.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latup_edge.errors import LatupError, first_line
from latup_edge.fileio import atomic_write
from latup_edge.runtime.backends import BACKENDS, ONNX_FILE
from latup_edge.runtime.bundle import Bundle, load_bundle, precision_size_mb
from latup_edge.runtime.openvino_backend import cpu_name, cpu_supports_bf16

FORMAT = "latup-edge-benchmark/1"
REFERENCE = ("torch", "fp32")
PERCENTILES = (50, 90, 99)
DEFAULT_REPEATS = 5
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_WARMUP = 1
PHANTOM_CASES = 2
PHANTOM_SEED = 0
# Largest part of a row process's stderr kept when it fails without a result.
_STDERR_TAIL = 400


class BenchmarkError(LatupError):
    """A benchmark that cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class RowSpec:
    """One row to measure: what a row process reads from its ``--row`` file."""

    backend: str
    precision: str
    bundle: str
    weights: str | None
    cases: str
    repeats: int
    warmup: int
    threads: int | None


def run_benchmark(
    bundle: Path | Bundle,
    cases: Path | None = None,
    backends: Sequence[str] = BACKENDS,
    repeats: int = DEFAULT_REPEATS,
    warmup: int = DEFAULT_WARMUP,
    threads: int | None = None,
    weights: Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
    precisions: Sequence[str] = OPENVINO_PRECISIONS,
) -> dict[str, Any]:
    """Measure every runnable backend x precision of ``bundle`` on the cases under ``cases``.

    ``cases`` None generates two phantoms in a temporary folder. ``weights`` (torch only) defaults to
    the checkpoint recorded in the bundle's manifest. Rows that cannot run here (bf16 without bf16
    units, a bundle without int8 or ONNX, torch not installed, weights not found) are left out with a
    note in ``skipped``; a row whose process fails is noted there too, so the other rows still report.

    ``bundle`` is a path (read and verified here) or a loaded ``Bundle``; the row processes open it
    without re-hashing its files.

    Returns ``{"format", "bundle", "cpu", "cases", "warmup", "repeats", "threads", "rows", "skipped"}``.
    """
    unknown = [name for name in backends if name not in BACKENDS]
    if unknown or not backends:
        raise BenchmarkError(f"unknown backends {unknown or '(none)'}: choose from {', '.join(BACKENDS)}")
    if repeats < 1 or warmup < 0:
        raise BenchmarkError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if threads is not None and threads < 1:
        raise BenchmarkError(f"threads must be at least 1, got {threads}")
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
    plan, skipped = plan_rows(loaded.manifest, backends, weights, precisions)
    with tempfile.TemporaryDirectory(prefix="latup-benchmark-") as work:
        if cases is None:
            from latup_edge.data.phantom import write_phantoms

            progress(f"generating {PHANTOM_CASES} phantom cases")
            cases = Path(work) / "phantoms"
            write_phantoms(cases, n=PHANTOM_CASES, seed=PHANTOM_SEED)
        from latup_edge.data.cases import discover_cases

        case_ids = [case.case_id for case in discover_cases(cases)]
        rows = []
        for backend, precision, row_weights in plan:
            progress(f"{backend} {precision}")
            spec = RowSpec(backend, precision, str(loaded.path), row_weights, str(cases), repeats, warmup, threads)
            try:
                rows.append(_run_row_process(spec, Path(work)))
            except BenchmarkError as error:
                skipped.append({"backend": backend, "precision": precision, "reason": f"failed: {error}"})
    add_speedups(rows)
    return {
        "format": FORMAT,
        "bundle": str(loaded.path),
        "cpu": cpu_name(),
        "cases": case_ids,
        "warmup": warmup,
        "repeats": repeats,
        "threads": threads,
        "rows": rows,
        "skipped": skipped,
    }


def plan_rows(
    manifest: dict[str, Any],
    backends: Sequence[str],
    weights: Path | None,
    precisions: Sequence[str] = OPENVINO_PRECISIONS,
) -> tuple[list[tuple[str, str, str | None]], list[dict[str, str]]]:
    """The (backend, precision, weights) rows that can run here, and a note for each that cannot.

    ``precisions`` limits the OpenVINO rows (onnxruntime and torch run fp32 only).
    """
    rows: list[tuple[str, str, str | None]] = []
    skipped: list[dict[str, str]] = []

    def skip(backend: str, precision: str, reason: str) -> None:
        skipped.append({"backend": backend, "precision": precision, "reason": reason})

    if "openvino" in backends:
        for precision in (p for p in OPENVINO_PRECISIONS if p in precisions):
            if precision not in manifest["precisions"]:
                skip("openvino", precision, "the bundle has no such model")
            elif precision == "bf16" and not cpu_supports_bf16():
                skip("openvino", precision, "this CPU has no bf16 units")
            else:
                rows.append(("openvino", precision, None))
    if "onnxruntime" in backends:
        if ONNX_FILE in manifest["files"]:
            rows.append(("onnxruntime", "fp32", None))
        else:
            skip("onnxruntime", "fp32", f"the bundle has no {ONNX_FILE} (rebuild it with the ONNX files)")
    if "torch" in backends:
        checkpoint = weights or _bundle_weights(manifest)
        if importlib.util.find_spec("torch") is None:
            skip("torch", "fp32", "PyTorch is not installed (a runtime-only install)")
        elif checkpoint is None or not Path(checkpoint).is_file():
            skip("torch", "fp32", f"the checkpoint {checkpoint or '(none recorded)'} is not here: pass --weights")
        else:
            rows.append(("torch", "fp32", str(checkpoint)))
    return rows, skipped


def _bundle_weights(manifest: dict[str, Any]) -> Path | None:
    """The checkpoint the bundle was built from (the shipped weights when the build named none)."""
    build = manifest.get("build") or {}
    recorded = (build.get("export") or {}).get("weights") or (build.get("settings") or {}).get("weights")
    if recorded:
        return Path(recorded)
    if importlib.util.find_spec("torch") is None:
        return None
    from latup_edge.models.checkpoint import shipped_weights

    return shipped_weights()


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``speedup`` (tile and case p50 of PyTorch fp32 over the row's), when that row ran."""
    reference = next((row for row in rows if (row["backend"], row["precision"]) == REFERENCE), None)
    for row in rows:
        row["speedup"] = (
            {key: reference[key]["p50"] / row[key]["p50"] for key in ("tile_ms", "case_ms")} if reference else None
        )


def write_benchmark(result: dict[str, Any], path: Path) -> Path:
    """Write the result as JSON at ``path``, atomically (the folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def run_in_fresh_process(spec: Any, work: Path, command: Callable[[Path, Path], list[str]]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter, so that its peak RSS is its own; returns its result.

    ``spec`` (a dataclass) is written as JSON in ``work``; ``command(spec_path, result_path)`` gives the
    arguments after the interpreter, and the child writes its JSON result, or ``{"error": ...}``, there.
    """
    handle, spec_name = tempfile.mkstemp(dir=work, suffix=".json")
    os.close(handle)
    spec_path, result_path = Path(spec_name), Path(spec_name).with_suffix(".result.json")
    spec_path.write_text(json.dumps(asdict(spec)))
    finished = subprocess.run([sys.executable, *command(spec_path, result_path)], capture_output=True, text=True)
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if "error" in result:
            raise BenchmarkError(result["error"])
        return result
    tail = finished.stderr.strip()[-_STDERR_TAIL:] or "no output"
    raise BenchmarkError(f"the measuring process exited with code {finished.returncode} ({tail})")


def _run_row_process(spec: RowSpec, work: Path) -> dict[str, Any]:
    """Measure one row in its own process (this module's ``--row`` entry point)."""

    def command(spec_path: Path, out: Path) -> list[str]:
        return ["-m", __name__, "--row", str(spec_path), "--out", str(out)]

    return run_in_fresh_process(spec, work, command)


def measure_row(spec: RowSpec) -> dict[str, Any]:
    """Measure one row in this process (the ``--row`` entry point); see the module docstring."""
    from latup_edge.data.cases import discover_cases, load_case_images, save_label_map
    from latup_edge.data.naming import MODEL_MODALITIES
    from latup_edge.evaluate.drift import prepare_case
    from latup_edge.runtime.predictor import Predictor
    from latup_edge.runtime.segment import output_convention, process_peak_rss_mb

    # run_benchmark verified the bundle just before starting this process.
    bundle = load_bundle(Path(spec.bundle), verify=False)
    if spec.backend == "torch":
        check_same_network(Path(spec.weights), bundle.manifest)
    cases = discover_cases(Path(spec.cases))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # A precision that failed the drift gate is still worth timing: the note says so.
        predictor = Predictor.open(
            spec.backend, spec.precision, bundle, Path(spec.weights) if spec.weights else None, spec.threads,
            allow_failed=True,
        )  # fmt: skip
    backend = predictor.backend
    # Each brain box through the network as the predictor runs it: its windows, or one pass padded to its bucket.
    run_box = predictor.box_scores  # with a core network, both networks as predict runs them
    tiles = [prepare_case(case, normalization=predictor.normalization).inputs for case in cases]
    first_ms = _timed_ms(lambda: run_box(tiles[0]))
    for _ in range(spec.warmup):
        for tile in tiles:
            run_box(tile)
    tile_ms = [_timed_ms(lambda tile=tile: run_box(tile)) for _ in range(spec.repeats) for tile in tiles]

    modalities = predictor.modalities or MODEL_MODALITIES
    with tempfile.TemporaryDirectory(prefix="latup-benchmark-case-") as out:

        def whole_case(case) -> None:
            images, reference = load_case_images(case, modalities)
            classes = predictor.predict(images).classes
            save_label_map(classes, reference, Path(out) / f"{case.case_id}.nii.gz", output_convention(case))

        case_ms = [_timed_ms(lambda case=case: whole_case(case)) for _ in range(spec.repeats) for case in cases]
    resolved = predictor.resolved()
    return {
        "backend": spec.backend,
        "precision": spec.precision,
        "size_mb": _size_mb(spec, bundle.manifest),
        "load_ms": backend.load_ms,
        "first_ms": first_ms,
        "tile_ms": percentiles(tile_ms),
        "tile_shapes": sorted({tuple(predictor.input_shape(tile.shape[2:])) for tile in tiles}),
        "case_ms": percentiles(case_ms),
        "cases_per_minute": 60_000 / float(np.mean(case_ms)),
        "peak_rss_mb": process_peak_rss_mb(),
        "threads": resolved.get("threads"),
        "streams": resolved.get("streams"),
        "resolved_precision": resolved_precision(resolved),
        "resolved": resolved,
        "notes": [str(warning.message) for warning in caught],
    }


def percentiles(times_ms: Sequence[float]) -> dict[str, float]:
    """p50, p90 and p99 (linear interpolation) of ``times_ms``, and how many samples they come from."""
    values = np.asarray(times_ms, dtype=np.float64)
    return {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES} | {"n": int(values.size)}


def resolved_precision(resolved: dict[str, Any]) -> str:
    """The arithmetic precision a backend really ran: OpenVINO's resolved hint, torch's autocast, else f32."""
    return str(resolved.get("inference_precision") or resolved.get("autocast") or "f32")


def check_same_network(weights: Path, manifest: dict[str, Any]) -> None:
    """Refuse a checkpoint whose network differs from the bundle's: its speed-up would compare two networks."""
    from latup_edge.models.checkpoint import read_checkpoint
    from latup_edge.models.latup_net import LATUPNetConfig

    config = read_checkpoint(weights)[0].to_dict()
    if not manifest.get("network"):
        return
    # A manifest written before a config field existed holds that field's default.
    network = LATUPNetConfig().to_dict() | manifest["network"]
    if config != network:
        raise BenchmarkError(
            f"{weights} holds a different network than the bundle ({config} vs {network}): "
            "pass the checkpoint the bundle was built from with --weights"
        )


def _size_mb(spec: RowSpec, manifest: dict[str, Any]) -> float:
    if spec.backend == "openvino":
        return precision_size_mb(manifest, spec.precision)
    if spec.backend == "onnxruntime":
        return manifest["files"][ONNX_FILE]["bytes"] / 1e6
    return Path(spec.weights).stat().st_size / 1e6


def _timed_ms(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure one benchmark row (run by run_benchmark).")
    parser.add_argument("--row", type=Path, required=True, help="JSON file with the RowSpec fields.")
    parser.add_argument("--out", type=Path, required=True, help="Where to write the row's JSON result.")
    args = parser.parse_args(argv)
    spec = RowSpec(**json.loads(args.row.read_text()))
    try:
        result = measure_row(spec)
    except (LatupError, OSError, RuntimeError, MemoryError) as error:
        # The parent reports it as a note and goes on with the other rows; a bug exits with its traceback.
        result = {"error": f"{spec.backend} {spec.precision}: {first_line(error)}"}
    text = json.dumps(result, default=str)
    atomic_write(args.out, lambda tmp: tmp.write_text(text))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(_main())
