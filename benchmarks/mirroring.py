"""Test-time mirroring: Dice, INT8 drift and seconds, without and with mirror images of each box.

For each mirroring (``none``, ``x``: left-right, 2 passes; ``xyz``: 8 passes) runs ``run_drift`` on
each folder with the bundle's fp32 and int8, both mirrored alike, in the default tiling and
post-processing: each precision's Dice against the labels, and int8 against fp32 (Dice ratio, mean
agreement), as ``latup-edge drift --mirror M`` prints them. Seconds per case are each run's wall
time over its cases (fp32 and int8 together).

    python benchmarks/mirroring.py runs/indep --mirror none x --out benchmarks/mirroring_indep.json

Prints one row per folder and mirroring and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latup_edge.data.cases import discover_cases
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.bundle import load_bundle, resolve_bundle
from latup_edge.runtime.drift import run_drift

HERE = Path(__file__).resolve().parent
REGIONS = ("WT", "TC", "ET")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    parser.add_argument("--mirror", nargs="+", default=["none", "x"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "mirroring.json")
    args = parser.parse_args()
    bundle = load_bundle(resolve_bundle(args.bundle))
    rows = []
    for folder in args.folders:
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


if __name__ == "__main__":
    main()
