"""Does the FLAIR/T1ce check flag swapped files, and leave correctly named cases alone?

Each case of each folder is segmented as it is and with its FLAIR and T1ce swapped in memory, with the
shipped bundle (or ``--bundle``) through ``Predictor.predict`` and
``latup_edge.runtime.trust.flair_t1ce_check``, exactly as ``segment`` runs them. ``--as-is-only
FOLDER`` adds folders scored as they are only.

    python benchmarks/flair_t1ce_check.py runs/indep3 runs/indep2 runs/ordinary

Prints, per folder and form, the cases, how many were checked, given a second pass and flagged, with
the seconds the check cost; writes ``benchmarks/flair_t1ce_check.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latup_edge.data.cases import discover_cases, load_case_images
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.trust import flair_t1ce_check

HERE = Path(__file__).resolve().parent


def check_case(predictor: Predictor, case, swapped: bool) -> dict:
    images, _ = load_case_images(case, MODEL_MODALITIES)
    if swapped:
        flair, t1ce = MODEL_MODALITIES.index("flair"), MODEL_MODALITIES.index("t1ce")
        images[[flair, t1ce]] = images[[t1ce, flair]]
    prediction = predictor.predict(images)
    started = time.perf_counter()
    check = flair_t1ce_check(images, MODEL_MODALITIES, prediction.classes, prediction.low_confidence_fraction,
                             predictor.predict)  # fmt: skip
    return {"case_id": case.case_id, "check": check, "seconds": round(time.perf_counter() - started, 2)}


def summarise(folder: str, form: str, rows: list[dict]) -> dict:
    checked = [row for row in rows if row["check"] is not None]
    second = [row for row in checked if "low_confidence_exchanged" in row["check"]]
    flagged = [row["case_id"] for row in checked if row["check"]["swapped"]]
    return {
        "folder": folder, "form": form, "cases": len(rows), "checked": len(checked), "second_pass": len(second),
        "flagged": len(flagged), "flagged_cases": flagged, "check_seconds": round(sum(r["seconds"] for r in rows), 1),
        "per_case": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--as-is-only", nargs="*", type=Path, default=[])
    parser.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    parser.add_argument("--out", type=Path, default=HERE / "flair_t1ce_check.json")
    args = parser.parse_args()
    predictor = Predictor.open("openvino", bundle=args.bundle)
    results = []
    plan = [(folder, form) for folder in args.folders for form in ("as is", "FLAIR/T1ce swapped")]
    plan += [(folder, "as is") for folder in args.as_is_only]
    print(f"{'folder':<22} {'form':<19} {'cases':>5} {'checked':>7} {'2nd pass':>8} {'flagged':>7} {'check s':>7}")
    for folder, form in plan:
        rows = [check_case(predictor, case, form != "as is") for case in discover_cases(folder)]
        row = summarise(str(folder), form, rows)
        results.append(row)
        print(f"{row['folder']:<22} {form:<19} {row['cases']:>5} {row['checked']:>7} {row['second_pass']:>8} "
              f"{row['flagged']:>7} {row['check_seconds']:>7}", flush=True)  # fmt: skip
    args.out.write_text(json.dumps({"bundle": str(args.bundle or "shipped"), "sets": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
