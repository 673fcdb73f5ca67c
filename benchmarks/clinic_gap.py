"""Where the clinic input's Dice gap comes from: the same cases through clinic-like studies that differ in one factor.

``benchmarks/clinic_input.py`` measures the native-grid Dice of clinic-like studies (T1ce 0.9 x 0.9 x 1 mm,
FLAIR 5 mm axial, T2 3 mm sagittal, head motion) against the same cases given BraTS-ready. This script
takes that gap apart: it writes each case as NIfTI studies that change one factor at a time (no head
motion; then a 1 mm FLAIR; then a 1 mm axial T2 too; then every series on the 1 mm BraTS grid) and
segments each with the same bundle, scoring against the truth on T1ce's own grid. The last variant is
a control: nothing to resample, so it must equal BraTS-ready.

    latup-edge phantom runs/clinic-narrow --n 10 --seed 2500 --randomise none
    python benchmarks/clinic_gap.py --cases runs/clinic-narrow --work runs/clinic-gap --out benchmarks/clinic_gap.json
"""

from __future__ import annotations

import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from latup_edge.data.cases import discover_cases, load_case_labels
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.segment import SegmentSettings, segment_cases
from latup_edge.scans.clinic_like import case_volumes, clinic_series

sys.path.insert(0, str(Path(__file__).parent))
from clinic_input import _labels, _region_dice, _write_nifti_study, study_arguments  # noqa: E402

FORMAT = "latup-edge-clinic-gap/1"
AXIAL = (1, 0, 0, 0, 1, 0, 0, 0, 1)
ONE_MM = {"spacing": (1.0, 1.0, 1.0), "direction": AXIAL}
# (name, head motion on, acquisitions replaced): each row changes one factor from the row above.
VARIANTS: tuple[tuple[str, bool, dict[str, dict]], ...] = (
    ("clinic (as clinic_input.py)", True, {}),
    ("no head motion", False, {}),
    ("no motion, FLAIR 0.9 x 0.9 x 1 mm", False, {"flair": {"spacing": (0.9, 0.9, 1.0), "direction": AXIAL}}),
    (
        "no motion, FLAIR 0.9 mm, T2 1 mm axial",
        False,
        {"flair": {"spacing": (0.9, 0.9, 1.0), "direction": AXIAL}, "t2": ONE_MM},
    ),  # fmt: skip
    ("control: every series on the 1 mm grid", False, {"flair": ONE_MM, "t2": ONE_MM, "t1ce": ONE_MM, "t1": ONE_MM}),
)


def _row(name: str, log: dict[str, Any], truths: dict[str, np.ndarray], started: float) -> dict[str, Any]:
    """One study's scores: Dice per case against ``truths`` (the cases scored), their mean, and failures."""
    entries = [entry for entry in log["cases"] if entry["case_id"] in truths]
    dice = {
        e["case_id"]: _region_dice(_labels(Path(e["outputs"][0]), e["labels"]), truths[e["case_id"]])
        for e in entries if e["status"] == "ok"
    }  # fmt: skip
    failures = {e["case_id"]: e["error"] for e in entries if e["status"] != "ok"}
    mean = {r: round(float(np.mean([d[r] for d in dice.values()])), 4) for r in ("WT", "TC", "ET")}
    print(f"{name}: {mean} ({len(dice)} cases, {len(failures)} failed)", file=sys.stderr)
    return {"variant": name, "cases": len(dice), "dice": mean, "per_case": dice, "failures": failures,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = study_arguments(__doc__).parse_args(argv)

    cases = discover_cases(args.cases)[: args.n]
    if args.work.exists():
        shutil.rmtree(args.work)
    predictor = Predictor.open("openvino", args.precision, args.bundle, threads=args.threads)
    settings = SegmentSettings()

    started = time.perf_counter()
    log = segment_cases([args.cases], args.work / "out-ready", settings, predictor=predictor)
    rows = [_row("BraTS-ready", log, {case.case_id: load_case_labels(case)[0] for case in cases}, started)]
    for name, moved, acquisitions in VARIANTS:
        started = time.perf_counter()
        study = args.work / f"study-{len(rows)}"
        truths = {}
        for index, case in enumerate(cases):
            images, labels = case_volumes(case)
            motion = 4.0 if moved else 0.0
            series, truth = clinic_series(images, labels, seed=index, mm=motion, degrees=motion,
                                          acquisitions=acquisitions)  # fmt: skip
            _write_nifti_study(series, study / case.case_id, case.case_id)
            # Network classes in NIfTI (x, y, z) order, as the written labels read back.
            truths[case.case_id] = sitk.GetArrayFromImage(truth.labels_native).transpose(2, 1, 0)
        log = segment_cases([study], args.work / f"out-{len(rows)}", settings, predictor=predictor)
        rows.append(_row(name, log, truths, started))

    base = rows[0]["dice"]
    for row in rows:
        row["change"] = {r: round(row["dice"][r] - base[r], 4) for r in ("WT", "TC", "ET")}
    result = {
        "format": FORMAT,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": str(predictor.bundle.path if predictor.bundle else None),
        "precision": predictor.precision,
        "variants": rows,
    }
    print("| study | Dice WT / TC / ET | change against BraTS-ready |")
    print("|---|---|---|")
    for row in rows:
        d, c = row["dice"], row["change"]
        print(f"| {row['variant']} | {d['WT']:.4f} / {d['TC']:.4f} / {d['ET']:.4f} | "
              f"{c['WT']:+.4f} / {c['TC']:+.4f} / {c['ET']:+.4f} |")  # fmt: skip
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
