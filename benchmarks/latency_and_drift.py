"""Latency and drift: MONAI's sliding window in PyTorch fp32 against a bundle at each precision.

On the same cases in the same run, files in to label file out, each path in its own process (so its
peak RSS is its own):

- ``monai``, what a user would otherwise run: the case's images (``load_case_images``), normalised
  as the network was trained (``normalize`` with its config's method, our preprocessing), through
  ``monai.inferers.sliding_window_inference`` (128^3 windows, overlap 0.5, Gaussian blending,
  ``sw_batch_size`` 1) with LATUP-Net in PyTorch fp32 eager and the weights the bundle was built
  from, argmax, and the label map written (``save_label_map``).
- ``bundle``: ``latup-edge segment``'s per-case code (``latup_edge.runtime.segment``) with the bundle's
  OpenVINO model at each precision the bundle has and this CPU runs (fp32, bf16, int8).

Both paths share the NIfTI reading, the normalisation and the writing; they differ in how the network
runs. Per path and region WT/TC/ET: Dice (and HD95) against the case's label file, and agreement Dice
with the bundle's fp32 labels. A rich table on stdout; JSON with the machine's facts at ``--out``.

    python benchmarks/latency_and_drift.py --bundle bundle --cases phantoms --out benchmarks/results.json

One path by hand (what the script runs per path): ``--path spec.json --result result.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from latup_edge.data.cases import BratsCase, discover_cases, load_case_images, load_case_labels, save_label_map
from latup_edge.data.labels import REGIONS, to_classes
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.data.preprocess import normalize
from latup_edge.errors import LatupError, first_line, user_errors
from latup_edge.evaluate.metrics import agreement, region_metrics
from latup_edge.runtime.benchmark import (
    BenchmarkError,
    check_same_network,
    plan_rows,
    run_in_fresh_process,
    write_benchmark,
)
from latup_edge.runtime.bundle import Bundle, load_bundle
from latup_edge.runtime.openvino_backend import cpu_name, cpu_supports_bf16
from latup_edge.runtime.segment import output_convention, output_paths, process_peak_rss_mb

FORMAT = "latup-edge-latency-and-drift/1"
ROI = 128
OVERLAP = 0.5
BASELINE = ("monai", "fp32")
REFERENCE = ("bundle", "fp32")
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"
VERSIONED = ("latup-edge", "torch", "monai", "openvino", "onnxruntime", "numpy", "nibabel")
TABLE_COLUMNS = (
    "path",
    "precision",
    "s/case (mean)",
    "speed-up vs MONAI",
    "peak RSS MB",
    "Dice WT",
    "Dice TC",
    "Dice ET",
    "agree fp32 WT",
    "agree fp32 TC",
    "agree fp32 ET",
)


class LatencyDriftError(LatupError):
    """A run that cannot go on as asked; the message says what to do."""


@dataclass(frozen=True)
class PathSpec:
    """One path to time: what a path process reads from its ``--path`` file."""

    kind: str  # "monai" or "bundle"
    precision: str
    bundle: str
    weights: str | None
    cases: str
    out_dir: str
    repeats: int
    warmup: int
    threads: int | None


def monai_scores(normalized: np.ndarray, model: Any, roi: int = ROI, overlap: float = OVERLAP) -> np.ndarray:
    """Blended logits (K, X, Y, Z) of MONAI's Gaussian sliding window over normalised (C, X, Y, Z) images."""
    import torch
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        scores = sliding_window_inference(
            torch.from_numpy(np.ascontiguousarray(normalized[None], dtype=np.float32)),
            roi_size=(roi,) * 3,
            sw_batch_size=1,
            predictor=model,
            overlap=overlap,
            mode="gaussian",
        )
    return np.asarray(scores[0], dtype=np.float32)


class MonaiPath:
    """The baseline: MONAI's sliding window over the full normalised volume, PyTorch fp32 eager."""

    def __init__(self, spec: PathSpec, bundle: Bundle, modalities: Sequence[str]) -> None:
        import torch

        from latup_edge.models.checkpoint import load_model

        if spec.weights is None:
            raise LatencyDriftError("the MONAI path needs the checkpoint the bundle was built from: pass --weights")
        check_same_network(Path(spec.weights), bundle.manifest)
        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        start = time.perf_counter()
        self.model = load_model(spec.weights)
        self.load_s = time.perf_counter() - start
        self.spec, self.modalities, self.windows = spec, tuple(modalities), {}

    def segment(self, case: BratsCase, folder: Path) -> None:
        windows = []

        def predictor(x):
            windows.append(tuple(x.shape))
            return self.model(x)

        images, reference = load_case_images(case, self.modalities)
        scores = monai_scores(normalize(images, self.model.config.normalization), predictor)
        del images
        classes = np.argmax(scores, axis=0).astype(np.uint8)
        save_label_map(classes, reference, output_paths(folder, case.case_id)[0], output_convention(case))
        self.windows[case.case_id] = len(windows)

    def warm_up(self, cases: Sequence[BratsCase]) -> dict[str, float]:
        """Forwards of one window: every window of every case has that shape, so nothing is left cold."""
        import torch

        with torch.inference_mode():
            for _ in range(self.spec.warmup):
                self.model(torch.zeros(1, len(self.modalities), ROI, ROI, ROI))
        return {}

    def facts(self) -> dict[str, Any]:
        import monai
        import torch

        return {
            "label": "MONAI sliding window (PyTorch eager)",
            "backend": "torch",
            "load_s": self.load_s,
            "weights": self.spec.weights,
            "sliding_window": {"roi": ROI, "overlap": OVERLAP, "mode": "gaussian", "sw_batch_size": 1},
            "windows_per_case": self.windows,
            "resolved": {"threads": torch.get_num_threads(), "torch": torch.__version__, "monai": monai.__version__},
        }


class BundlePath:
    """Ours: ``latup-edge segment``'s per-case code with the bundle's OpenVINO model at one precision."""

    def __init__(self, spec: PathSpec, bundle: Bundle, modalities: Sequence[str]) -> None:
        from latup_edge.runtime.backends import open_backend
        from latup_edge.runtime.segment import SegmentSettings

        self.spec, self.bundle, self.modalities = spec, bundle, tuple(modalities)
        self.settings = SegmentSettings(bundle=bundle.path, precision=spec.precision, threads=spec.threads)
        # A precision that failed the bundle's drift gate is still worth timing and scoring.
        self.backend = open_backend("openvino", spec.precision, bundle, None, spec.threads, allow_failed=True)

    def segment(self, case: BratsCase, folder: Path) -> None:
        # The per-case step of segment_cases (load, validate, predict, write atomically), without its run log.
        from latup_edge.runtime.segment import segment_case

        entry = segment_case(case, None, self.backend, self.settings, folder, self.modalities)
        if entry["status"] != "ok":
            raise LatencyDriftError(entry["error"])

    def warm_up(self, cases: Sequence[BratsCase]) -> dict[str, float]:
        """Whole passes over every case (OpenVINO builds kernels per brain-box shape); returns the first times."""
        cold: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="latup-warmup-") as folder:
            for _ in range(self.spec.warmup):
                for case in cases:
                    start = time.perf_counter()
                    self.segment(case, Path(folder))
                    cold.setdefault(case.case_id, time.perf_counter() - start)
        return cold

    def facts(self) -> dict[str, Any]:
        resolved = self.backend.resolved()
        return {
            "label": "latup-edge segment (OpenVINO)",
            "backend": "openvino",
            "load_s": self.backend.load_ms / 1000,
            "verdict": self.bundle.precisions[self.spec.precision].get("verdict"),
            "resolved": {key: resolved[key] for key in ("threads", "streams", "inference_precision")},
        }


PATHS = {"monai": MonaiPath, "bundle": BundlePath}


def run_path(spec: PathSpec) -> dict[str, Any]:
    """Time one path in this process: ``warmup`` untimed passes, then ``repeats`` timed passes over every case.

    A case's time is its wall time from reading its NIfTI files to its label file written; model
    loading is not in it (``load_s``).
    """
    if spec.kind not in PATHS:
        raise LatencyDriftError(f"unknown path {spec.kind!r}: choose {' or '.join(PATHS)}")
    cases = discover_cases(Path(spec.cases))
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(Path(spec.bundle))
    path = PATHS[spec.kind](spec, bundle, bundle.manifest.get("modalities") or MODEL_MODALITIES)
    cold = path.warm_up(cases)
    seconds: dict[str, list[float]] = {case.case_id: [] for case in cases}
    for _ in range(spec.repeats):
        for case in cases:
            start = time.perf_counter()
            path.segment(case, out_dir)
            seconds[case.case_id].append(time.perf_counter() - start)
    timed = [value for values in seconds.values() for value in values]
    return {
        "kind": spec.kind,
        "precision": spec.precision,
        **path.facts(),
        "cold_seconds": cold,
        "seconds": seconds,
        "mean_s": float(np.mean(timed)),
        "median_s": float(np.median(timed)),
        "peak_rss_mb": process_peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
        "labels": {case.case_id: str(output_paths(out_dir, case.case_id)[0]) for case in cases},
    }


def plan_paths(bundle: Bundle, weights: Path | None) -> tuple[list[tuple[str, str, str | None]], list[dict[str, str]]]:
    """The (kind, precision, weights) paths that can run here, and a note for each that cannot."""
    rows, skipped = plan_rows(bundle.manifest, ("openvino", "torch"), weights)
    paths = [("bundle", precision, None) for backend, precision, _ in rows if backend == "openvino"]
    torch_rows = [row for row in rows if row[0] == "torch"]
    notes = [{**note, "kind": "bundle" if note["backend"] == "openvino" else "monai"} for note in skipped]
    if importlib.util.find_spec("monai") is None:
        notes.append({"kind": "monai", "precision": "fp32", "reason": "MONAI is not installed: pip install '.[bench]'"})
    elif torch_rows:
        paths.insert(0, ("monai", "fp32", torch_rows[0][2]))
    return paths, notes


def run_latency_and_drift(
    bundle_path: Path,
    cases: Path,
    repeats: int = 1,
    warmup: int = 1,
    threads: int | None = None,
    weights: Path | None = None,
    progress=lambda message: None,
) -> dict[str, Any]:
    """Time and score every path on the cases under ``cases``; see the module docstring."""
    if repeats < 1 or warmup < 0:
        raise LatencyDriftError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if threads is not None and threads < 1:
        raise LatencyDriftError(f"threads must be at least 1, got {threads}")
    bundle = load_bundle(bundle_path)
    case_list = discover_cases(cases)
    paths, skipped = plan_paths(bundle, weights)
    machine = machine_facts(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="latup-latency-drift-") as work:
        for kind, precision, path_weights in paths:
            progress(f"{kind} {precision}: {len(case_list)} case(s) x {repeats} repeat(s) after {warmup} warm-up")
            out_dir = Path(work) / f"{kind}-{precision}"
            spec = PathSpec(
                kind, precision, str(bundle_path), path_weights, str(cases), str(out_dir), repeats, warmup, threads
            )
            try:
                rows.append(_run_path_process(spec, Path(work)))
            except (LatencyDriftError, BenchmarkError) as error:
                skipped.append({"kind": kind, "precision": precision, "reason": f"failed: {error}"})
        progress("scoring")
        score_rows(rows, case_list)
    for row in rows:
        row.pop("labels")  # they lived in the temporary folder
    machine["load_average_after"] = list(os.getloadavg())
    return {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": str(bundle_path),
        "bundle_checksum": bundle.manifest.get("checksum"),
        "cases": [case.case_id for case in case_list],
        "warmup": warmup,
        "repeats": repeats,
        "threads": threads,
        "timing": "wall time per case, NIfTI files in to label file out, after warm-up; model load excluded",
        "machine": machine,
        "rows": rows,
        "skipped": skipped,
    }


def score_rows(rows: list[dict[str, Any]], cases: Sequence[BratsCase]) -> None:
    """Add to each row its Dice and HD95 against the label files, agreement with fp32, and speed-up."""
    reference = _find(rows, REFERENCE)
    baseline = _find(rows, BASELINE)
    for row in rows:
        row["per_case"] = {}
    for case in cases:
        truth, spacing = None, None
        if case.seg is not None:
            truth, _ = load_case_labels(case)
            spacing = tuple(float(z) for z in nib.load(case.seg).header.get_zooms()[:3])
        convention = output_convention(case)
        predictions = {id(row): _read_classes(row["labels"][case.case_id], convention) for row in rows}
        for row in rows:
            predicted = predictions[id(row)]
            row["per_case"][case.case_id] = {
                "metrics": region_metrics(predicted, truth, spacing) if truth is not None else None,
                "agreement_fp32": agreement(predicted, predictions[id(reference)]) if reference else None,
            }
    for row in rows:
        entries = list(row["per_case"].values())
        scored = [entry["metrics"] for entry in entries if entry["metrics"] is not None]
        row["dice"] = {r: float(np.mean([m[r]["dice"] for m in scored])) for r in REGIONS} if scored else None
        row["hd95"] = {r: float(np.mean([m[r]["hd95"] for m in scored])) for r in REGIONS} if scored else None
        row["agreement_fp32"] = (
            {r: float(np.mean([entry["agreement_fp32"][r] for entry in entries])) for r in REGIONS}
            if reference
            else None
        )
        row["speedup_vs_monai"] = baseline["mean_s"] / row["mean_s"] if baseline else None


def result_table(result: dict[str, Any]):
    """The rich table: path, precision, s/case, speed-up, peak RSS, Dice and agreement with fp32 per region."""
    from rich.table import Table

    def regions(values: dict[str, float] | None) -> list[str]:
        return [f"{values[r]:.4f}" if values else "-" for r in REGIONS]

    machine = result["machine"]
    caption = (
        f"{machine['cpu']}, {machine['cores']} cores, threads {result['threads'] or 'default'}; "
        f"{len(result['cases'])} case(s), {result['warmup']} warm-up, {result['repeats']} timed pass(es); "
        f"load average {machine['load_average_before'][0]:.2f} before, {machine['load_average_after'][0]:.2f} after"
    )
    table = Table(title="Latency and drift, files in to label file out", caption=caption)
    for index, column in enumerate(TABLE_COLUMNS):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in result["rows"]:
        table.add_row(
            row["label"],
            row["precision"],
            f"{row['mean_s']:.2f}",
            f"{row['speedup_vs_monai']:.1f}x" if row["speedup_vs_monai"] else "-",
            f"{row['peak_rss_mb']:.0f}",
            *regions(row["dice"]),
            *regions(row["agreement_fp32"]),
        )
    return table


def machine_facts(threads: int | None) -> dict[str, Any]:
    """The CPU, its cores, the threads asked for, the load before the run, and every tool's version."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_name(),
        "cpu_bf16": cpu_supports_bf16(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads_asked": threads,
        "load_average_before": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _find(rows: list[dict[str, Any]], key: tuple[str, str]) -> dict[str, Any] | None:
    return next((row for row in rows if (row["kind"], row["precision"]) == key), None)


def _read_classes(path: str, convention: str) -> np.ndarray:
    return to_classes(np.asanyarray(nib.load(path).dataobj), convention)


def _run_path_process(spec: PathSpec, work: Path) -> dict[str, Any]:
    """Time one path in its own process (this script's ``--path`` entry point), so its peak RSS is its own."""

    def command(spec_path: Path, out: Path) -> list[str]:
        return [str(Path(__file__).resolve()), "--path", str(spec_path), "--result", str(out)]

    return run_in_fresh_process(spec, work, command)


def _path_main(spec_path: Path, result_path: Path) -> int:
    spec = PathSpec(**json.loads(spec_path.read_text()))
    try:
        result = run_path(spec)
    except (LatupError, OSError, RuntimeError, MemoryError) as error:  # a bug exits with its traceback
        result = {"error": f"{spec.kind} {spec.precision}: {first_line(error)}"}
    result_path.write_text(json.dumps(result, default=str))
    return 0 if "error" not in result else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="A bundle folder (from `latup-edge build`).")
    parser.add_argument("--cases", type=Path, help="BraTS-format folder; cases with label files get Dice.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where to write the JSON result.")
    parser.add_argument("--threads", type=int, default=None, help="Inference threads (default: each runtime's).")
    parser.add_argument("--repeats", type=int, default=1, help="Timed passes over every case, per path.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed warm-up passes per path (see run_path).")
    parser.add_argument("--weights", type=Path, default=None, help="Checkpoint for MONAI (default: the bundle's).")
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.path is not None:
        return _path_main(args.path, args.result)
    if args.bundle is None or args.cases is None:
        parser.error("--bundle and --cases are required")

    from rich.console import Console

    err = Console(stderr=True)
    try:
        result = run_latency_and_drift(
            args.bundle, args.cases, args.repeats, args.warmup, args.threads, args.weights,
            progress=lambda message: err.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}"),
        )  # fmt: skip
    except user_errors() as error:  # bad bundle, cases, settings, files: one sentence
        err.print(f"[red]error:[/] {error}")
        return 1
    write_benchmark(result, args.out)
    # Piped into a file, rich would wrap the table at 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(result_table(result))
    for note in result["skipped"]:
        err.print(f"[yellow]not run:[/] {note['kind']} {note['precision']}: {note['reason']}")
    err.print(f"JSON: {args.out}")
    return 0 if result["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
