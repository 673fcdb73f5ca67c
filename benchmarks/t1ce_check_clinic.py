"""The T1/T1ce check on clinic-like DICOM studies: is the T1 series aligned, are swaps flagged, what does it cost?

Each BraTS-ready case (the first ``--n`` of ``--cases``) becomes three clinic-like DICOM studies
(``latup_edge.scans.clinic_like``: T1ce 0.9 mm axial, FLAIR 5 mm, sagittal T2 3 mm, sagittal T1 1 mm,
all but T1ce after a known head motion): without its T1 series (the check cannot run), with it, and
with the T1 and T1ce series' descriptions exchanged (the pre-contrast series named as the
post-contrast one, and the reverse). Each form is segmented by ``segment_cases`` with the shipped
bundle (or ``--bundle``), as ``latup-edge segment`` runs it.

    python benchmarks/t1ce_check_clinic.py --cases runs/indep3 --work runs/t1ce-clinic --n 10

Prints per form the cases segmented, checked, given a second pass and flagged, the T1 series'
registration error against its known motion, the seconds of its registration and resampling, and
the wall time a case; writes ``benchmarks/t1ce_check_clinic.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from latup_edge.data.cases import discover_cases
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.segment import SegmentSettings, segment_cases
from latup_edge.scans.clinic_like import ACQUISITIONS, case_volumes, write_clinic_study
from latup_edge.scans.registration import logged_transform, registration_error_mm

HERE = Path(__file__).resolve().parent
FORMS = ("without T1", "correct", "T1/T1ce swapped")
FOLDERS = dict(zip(FORMS, ("without-t1", "correct", "swapped"), strict=True))  # the study folder of each form
SWAPPED = {"t1": ACQUISITIONS["t1ce"]["description"], "t1ce": ACQUISITIONS["t1"]["description"]}
CHECK = "the swap checks"  # the run log marks the T1 companion's steps so


def write_studies(cases, work: Path) -> dict[str, Any]:
    """The three forms of every case under ``work``; the T1 series' known motion by case id."""
    motions = {}
    for index, case in enumerate(cases):
        images, labels = case_volumes(case)
        without = {key: image for key, image in images.items() if key != "t1"}
        folders = [work / FOLDERS[form] / case.case_id for form in FORMS]
        write_clinic_study(without, labels, folders[0], seed=index, patient_id=case.case_id)
        truth = write_clinic_study(images, labels, folders[1], seed=index, patient_id=case.case_id)
        write_clinic_study(images, labels, folders[2], seed=index, patient_id=case.case_id, descriptions=SWAPPED)
        motions[case.case_id] = (truth.motion["t1"], sitk.Cast(images["t1ce"] > 0, sitk.sitkUInt8))
        print(f"wrote the studies of {case.case_id}", file=sys.stderr, flush=True)
    return motions


def case_row(entry: dict[str, Any], form: str, motions: dict[str, Any]) -> dict[str, Any]:
    case_id = entry["case_id"].rsplit("_", 1)[0]  # a study's id is PatientID_StudyDate
    steps = [step for step in entry["geometry"] or [] if step.get("for") == CHECK]
    row: dict[str, Any] = {
        "case_id": case_id,
        "status": entry["status"],
        "check": entry["t1ce_check"],
        "t1_seconds": round(sum(step.get("seconds") or 0 for step in steps), 2),
    }
    register = next((step for step in steps if step["step"] == "register"), None)
    if form == "correct" and register is not None:
        motion, brain = motions[case_id]
        row["t1_registration_error_mm"] = round(registration_error_mm(motion, logged_transform(register), brain), 3)
    return row


def summarise(form: str, rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    checked = [r for r in rows if r["check"] and r["check"].get("enhancement") is not None]
    errors = [r["t1_registration_error_mm"] for r in rows if "t1_registration_error_mm" in r]
    return {
        "form": form,
        "cases": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "checked": len(checked),
        "second_pass": sum("et_ml_with_t1_as_t1ce" in r["check"] for r in checked),
        "flagged": sorted(r["case_id"] for r in checked if r["check"]["swapped"]),
        "not_checked": sorted({r["check"]["note"] for r in rows if r["check"] and "note" in r["check"]}),
        "t1_registration_error_mm": {"mean": round(float(np.mean(errors)), 3), "max": max(errors)} if errors else None,
        "t1_seconds_mean": round(float(np.mean([r["t1_seconds"] for r in rows])), 2),
        "wall_seconds_a_case": round(wall / max(len(rows), 1), 2),
        "per_case": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, required=True, help="BraTS-ready cases with a T1 file")
    parser.add_argument("--work", type=Path, required=True, help="folder for the studies and outputs (replaced)")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    parser.add_argument("--out", type=Path, default=HERE / "t1ce_check_clinic.json")
    args = parser.parse_args()
    cases = discover_cases(args.cases)[: args.n]
    if args.work.exists():
        shutil.rmtree(args.work)
    motions = write_studies(cases, args.work)
    predictor = Predictor.open("openvino", bundle=args.bundle)
    results = []
    print(f"{'form':<16} {'cases':>5} {'ok':>3} {'checked':>7} {'2nd pass':>8} {'flagged':>7} "
          f"{'T1 reg. error mm':>17} {'T1 s':>5} {'wall s':>6}")  # fmt: skip
    for form in FORMS:
        started = time.perf_counter()
        log = segment_cases([args.work / FOLDERS[form]], args.work / f"out-{FOLDERS[form]}", SegmentSettings(),
                            predictor=predictor)  # fmt: skip
        wall = time.perf_counter() - started
        summary = summarise(form, [case_row(entry, form, motions) for entry in log["cases"]], wall)
        results.append(summary)
        error = summary["t1_registration_error_mm"]
        error_text = f"{error['mean']:.2f} / {error['max']:.2f}" if error else "-"
        print(f"{form:<16} {summary['cases']:>5} {summary['ok']:>3} {summary['checked']:>7} "
              f"{summary['second_pass']:>8} {len(summary['flagged']):>7} {error_text:>17} "
              f"{summary['t1_seconds_mean']:>5} {summary['wall_seconds_a_case']:>6}", flush=True)  # fmt: skip
    record = {"cases": str(args.cases), "n": len(cases), "bundle": str(args.bundle or "shipped"), "forms": results}
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
