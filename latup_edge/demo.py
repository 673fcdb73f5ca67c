"""``latup-edge demo``: the whole product on the embedded default, in one call.

Generated BraTS-like cases -> a bundle built from the shipped weights (export, calibration,
INT8 with its drift gate) -> segmentation of the held-out cases -> drift report -> benchmark.
Every stage is the library function its own command calls. The bundle is read and verified once,
and each precision is compiled once (one ``Predictor`` per precision) for segment and drift.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latup_edge.data.phantom import write_phantoms
from latup_edge.deploy.build import BuildSettings, build_bundle
from latup_edge.runtime.benchmark import run_benchmark
from latup_edge.runtime.bundle import load_bundle
from latup_edge.runtime.drift import run_drift
from latup_edge.runtime.predictor import Predictor


@dataclass(frozen=True)
class DemoSettings:
    cases: int = 6
    seed: int = 7
    held_out: int = 2
    calibration_cases: int = 4
    engine: str = "nncf"
    threads: int | None = None


def run_demo(out_dir: Path, settings: DemoSettings, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run every stage into ``out_dir`` (phantoms/, bundle/, segmented/, report/); returns their results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    phantoms, bundle = out_dir / "phantoms", out_dir / "bundle"
    progress(f"generating {settings.cases} phantom cases")
    write_phantoms(phantoms, n=settings.cases, seed=settings.seed, naming="2021")
    progress("building the bundle (export, calibrate, quantize, drift gate, compile)")
    build = build_bundle(
        phantoms,
        bundle,
        BuildSettings(
            engine=settings.engine,
            held_out=settings.held_out,
            calibration_cases=settings.calibration_cases,
            threads=settings.threads,
            latency_repeats=1,  # the benchmark below times the default precision properly
        ),  # fmt: skip
        progress=lambda stage: progress(f"build: {stage}"),
    )
    # The held-out cases (never calibrated on) get a folder of their own for the later stages.
    held_out_dir = out_dir / "held-out"
    held_out_dir.mkdir(exist_ok=True)
    for case_id in build["held_out"]:
        (phantoms / case_id).rename(held_out_dir / case_id)
    progress("segmenting the held-out cases")
    loaded = load_bundle(bundle)
    default = Predictor.from_bundle(loaded, threads=settings.threads)
    segmented = default.segment([held_out_dir], out_dir / "segmented")
    progress("measuring drift on the held-out cases")
    drift = run_drift(
        held_out_dir, loaded, threads=settings.threads, report=out_dir / "report", opened={default.precision: default}
    )
    progress("benchmarking the bundle's precisions against PyTorch fp32 on one held-out case")
    # One case, one warm-up and one timed pass: PyTorch takes ~25 s a brain box on 2 cores. OpenVINO
    # fp32 (~15 s) is left to `latup-edge benchmark`: the demo compares what a clinic would run.
    bench_dir = out_dir / "benchmark-case"
    shutil.rmtree(bench_dir, ignore_errors=True)
    shutil.copytree(held_out_dir / build["held_out"][0], bench_dir / build["held_out"][0])
    benchmark = run_benchmark(
        loaded, bench_dir, backends=("openvino", "torch"), repeats=1, warmup=1, threads=settings.threads,
        precisions=("bf16", "int8"),
    )  # fmt: skip
    return {"build": build, "segment": segmented, "drift": drift, "benchmark": benchmark, "out_dir": str(out_dir)}
