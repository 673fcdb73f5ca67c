"""Test-time mirroring: Dice, INT8 drift and seconds, without and with mirror images of each box.

For each mirroring (``none``, ``x``: left-right, 2 passes; ``xyz``: 8 passes) runs ``run_drift`` on
each folder with the bundle's fp32 and int8, both mirrored alike, in the default tiling and
post-processing: each precision's Dice against the labels, and int8 against fp32 (Dice ratio, mean
agreement), as ``latup-edge drift --mirror M`` prints them. Seconds per case are each run's wall
time over its cases (fp32 and int8 together).

    python benchmarks/mirroring.py runs/indep --mirror none x --out benchmarks/mirroring_indep.json

``--dice-only P`` runs only precision ``P`` (no fp32 reference, so no drift) on the first ``--n`` cases
and reports its Dice against the labels: the cheap way to try ``xyz`` (8 passes).

    python benchmarks/mirroring.py runs/indep --mirror none xyz --dice-only int8 --n 10 \
        --out benchmarks/mirroring_indep_xyz.json

Prints one row per folder and mirroring and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.evaluate.metrics import agreement
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.bundle import load_bundle, resolve_bundle
from latup_edge.runtime.drift import run_drift
from latup_edge.runtime.predictor import Predictor

HERE = Path(__file__).resolve().parent
REGIONS = ("WT", "TC", "ET")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    parser.add_argument("--mirror", nargs="+", default=["none", "x"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dice-only", metavar="PRECISION", help="run only this precision, Dice against the labels")
    parser.add_argument("--n", type=int, default=None, help="with --dice-only: the first N cases of each folder")
    parser.add_argument("--out", type=Path, default=HERE / "mirroring.json")
    args = parser.parse_args()
    bundle = load_bundle(resolve_bundle(args.bundle))
    rows = []
    for folder in args.folders:
        if args.dice_only:
            rows += [dice_only(folder, bundle, args.dice_only, mirror, args.threads, args.n) for mirror in args.mirror]
            continue
        cases = len(discover_cases(folder))
        for mirror in args.mirror:
            start = time.perf_counter()
            result = run_drift(folder, bundle, ["int8"], args.threads, mirror=mirror)
            seconds = (time.perf_counter() - start) / cases
            summary = result["summary"]
            rows.append(
                {
                    "folder": str(folder),
                    "mirror": mirror,
                    "cases": cases,
                    "seconds_per_case": round(seconds, 1),
                    "summary": summary,
                }
            )
            print(f"{folder} mirror {mirror}: {seconds:.1f} s a case (fp32 + int8)", flush=True)
            print(json.dumps(summary, indent=1)[:3000], flush=True)
    atomic_write_json(args.out, {"bundle": str(bundle.path), "threads": args.threads, "rows": rows})
    print(f"wrote {args.out}")


def dice_only(folder: Path, bundle, precision: str, mirror: str, threads: int, n: int | None) -> dict:
    """One precision, mirrored as asked: mean Dice against the labels over the first ``n`` cases."""
    predictor = Predictor.from_bundle(bundle, precision, threads, mirror=mirror)
    cases = discover_cases(folder)[:n]
    start = time.perf_counter()
    per_case = {}
    for case in cases:
        images = load_case_images(case, predictor.modalities)[0]
        per_case[case.case_id] = agreement(predictor.predict(images).classes, load_case_labels(case)[0])
    seconds = (time.perf_counter() - start) / len(cases)
    dice = {region: round(float(np.mean([d[region] for d in per_case.values()])), 4) for region in REGIONS}
    print(f"{folder} {precision} mirror {mirror}: Dice {dice}, {seconds:.1f} s a case", flush=True)
    return {
        "folder": str(folder),
        "mirror": mirror,
        "precision": precision,
        "cases": len(cases),
        "seconds_per_case": round(seconds, 1),
        "dice": dice,
        "per_case": per_case,
    }


if __name__ == "__main__":
    main()
