"""The registration's metric on the reference's brain box against its whole field of view, interleaved.

``register_rigid`` samples its metric on the T1ce working copy cropped to the brain plus
``FIXED_MARGIN_MM`` (``margin_mm=None``: the whole field of view, as before), at ``SAMPLING_FRACTION``
of its voxels (0.3 before; the box at 0.3 is the way between), on the 4 mm and 2 mm levels of ``PYRAMID``,
or on the 4 mm level alone (``CHECKS_PYRAMID``: the T1 that only the swap checks read). This script rebuilds
the clinic-like studies of ``benchmarks/clinic_input.py`` (same seeds: T1ce 0.9 x 0.9 x 1 mm, FLAIR
5 mm, T2 3 mm sagittal, T1, each moved by up to 4 mm and 4 degrees) in memory and registers every
moved series in each way, rotating which goes first, so that all see the same machine load. It
prints seconds and the error against the known motion (mean displacement over the brain), per pair.

    python benchmarks/registration_box.py --cases runs/indep14-first10 --out benchmarks/registration_box.json
    python benchmarks/registration_box.py --cases runs/indep15 --ways 2 3 --out benchmarks/registration_checks.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from latup_edge.data.cases import discover_cases
from latup_edge.fileio import atomic_write_json
from latup_edge.scans.clinic_like import case_volumes, clinic_series
from latup_edge.scans.registration import (
    CHECKS_PYRAMID,
    FIXED_MARGIN_MM,
    PYRAMID,
    SAMPLING_FRACTION,
    register_rigid,
    registration_error_mm,
)

FORMAT = "latup-edge-registration-box/1"
# (margin_mm, sampling, pyramid): before the box; the box at the old sampling; today's default for the
# network's inputs; today's for the T1 only the swap checks read (the 4 mm level alone).
BOX = f"brain box + {FIXED_MARGIN_MM:g} mm"
WAYS = {
    "whole field of view, sampling 0.3": (None, 0.3, PYRAMID),
    f"{BOX}, sampling 0.3": (FIXED_MARGIN_MM, 0.3, PYRAMID),
    f"{BOX}, sampling {SAMPLING_FRACTION:g}": (FIXED_MARGIN_MM, SAMPLING_FRACTION, PYRAMID),
    f"{BOX}, {SAMPLING_FRACTION:g}, 4 mm level only (checks)": (FIXED_MARGIN_MM, SAMPLING_FRACTION, CHECKS_PYRAMID),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=Path, required=True, help="BraTS-ready cases (the studies' sources)")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--ways", type=int, nargs="+", default=list(range(len(WAYS))),
                        help="which ways to run, by their place in the table (0-3; default all)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    ways = {name: way for place, (name, way) in enumerate(WAYS.items()) if place in args.ways}

    rows = []
    for index, case in enumerate(discover_cases(args.cases)[: args.n]):
        images, labels = case_volumes(case)
        series, truth = clinic_series(images, labels, seed=index)  # the seed clinic_input.py gives the case
        fixed = series["t1ce"]
        brain = images["t1ce"] > 0  # as clinic_input.py scores it: the BraTS-ready brain
        for pair, key in enumerate(sorted(truth.motion)):
            row = {"case_id": case.case_id, "series": key}
            turn = (3 * index + pair) % len(ways)  # each way goes first as often as the others
            order = list(ways.items())[turn:] + list(ways.items())[:turn]
            for name, (margin, sampling, pyramid) in order:
                start = time.perf_counter()
                registration = register_rigid(fixed, series[key], margin_mm=margin, sampling=sampling, pyramid=pyramid)
                seconds = time.perf_counter() - start
                error = registration_error_mm(truth.motion[key], registration.transform, brain)
                row[name] = {"seconds": round(seconds, 3), "error_mm": round(error, 3)}
            rows.append(row)
            print(f"{case.case_id} {key}: " + ", ".join(f"{n} {row[n]['seconds']:.2f} s {row[n]['error_mm']:.2f} mm"
                                                       for n in ways), file=sys.stderr)  # fmt: skip

    summary = {
        name: {
            "seconds_mean": round(float(np.mean([r[name]["seconds"] for r in rows])), 3),
            "error_mm_mean": round(float(np.mean([r[name]["error_mm"] for r in rows])), 3),
            "error_mm_max": round(float(np.max([r[name]["error_mm"] for r in rows])), 3),
        }
        for name in ways
    }
    result = {
        "format": FORMAT,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.machine(), "python": platform.python_version()},
        "cases": str(args.cases),
        "pairs": rows,
        "summary": summary,
    }
    if args.out:
        atomic_write_json(args.out, result)
    print("| metric sampled on | pairs | seconds a pair (mean) | error mm mean / max |")
    print("|---|---|---|---|")
    for name, cell in summary.items():
        errors = f"{cell['error_mm_mean']:.2f} / {cell['error_mm_max']:.2f}"
        print(f"| {name} | {len(rows)} | {cell['seconds_mean']:.2f} | {errors} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
