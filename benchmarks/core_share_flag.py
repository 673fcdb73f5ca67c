"""Does the "almost no tumour core" QA flag name the cases whose core the network missed, and only those?

On the blind generator's tumours without enhancement the network reads the core as oedema: the whole
tumour is found and TC is near 0 (docs/GENERALISATION.md section 24). ``QALimits.min_core_share`` flags a
whole tumour whose TC is under that share of it. This script runs the bundle once per case (raw labels
cached by ``coreless_components.py``'s cache), writes the labels as ``segment`` does, and for each case
lists WT and TC in mL, the TC share, TC Dice against the truth, whether the core was missed (true TC not
empty, TC Dice under 0.5), and the QA flags: the candidate and every other one (low confidence is not
computed: the cache keeps no full softmax).

    python benchmarks/core_share_flag.py runs/blind4 runs/indep20 --cache runs/raw-coreless --out benchmarks/X.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from latup_edge.evaluate.metrics import agreement
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, largest_removed_and_kept, postprocess
from latup_edge.runtime.qa import QALimits, case_qa, qa_flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coreless_components import raw_predictions  # noqa: E402  (a sibling script: one cache for both)

FORMAT = "latup-edge-core-share-flag/1"
CANDIDATE = QALimits(min_core_share=0.02)
# Every other QA flag at its default, for what the candidate adds.
OTHERS = QALimits(min_core_share=0.0)
# A case "missed its core" when its true TC is not empty and its TC Dice is under this.
MISSED_CORE_DICE = 0.5
FLAG_PREFIX = "almost no tumour core"


def case_row(case: dict, limits: QALimits) -> dict[str, Any]:
    """One case's written labels: volumes, TC share and Dice, and the candidate (``limits``) and the other QA flags."""
    inputs = case["brain"][None].astype(np.float32)  # the rules' "box the network saw": zero outside
    labels = postprocess(case["raw"], DEFAULT_POSTPROCESSING, inputs)
    qa = case_qa(labels, (1.0, 1.0, 1.0))
    removed, kept = largest_removed_and_kept(case["raw"], labels, inputs)
    qa |= {"removed_component_ml": removed / 1000.0, "largest_kept_ml": kept / 1000.0}
    dice = agreement(labels, case["truth"])
    wt, tc = qa["volumes_ml"]["WT"], qa["volumes_ml"]["TC"]
    true_tc = bool(np.isin(case["truth"], (1, 3)).any())
    candidate = [flag for flag in qa_flags(qa, limits) if flag.startswith(FLAG_PREFIX)]
    return {
        "wt_ml": wt,
        "tc_ml": tc,
        "tc_share": round(tc / wt, 4) if wt else None,
        "dice": {region: round(value, 4) for region, value in dice.items()},
        "missed_core": true_tc and dice["TC"] < MISSED_CORE_DICE,
        "other_flags": qa_flags(qa, OTHERS),
        "flagged_by_candidate": bool(candidate),
    }


def summarise(rows: dict[str, dict]) -> dict[str, Any]:
    """Hits (missed cores flagged) and false alarms (flagged cases whose core was found)."""
    missed = [c for c, row in rows.items() if row["missed_core"]]
    found = [c for c, row in rows.items() if not row["missed_core"]]
    hits = [c for c in missed if rows[c]["flagged_by_candidate"]]
    false_alarms = [c for c in found if rows[c]["flagged_by_candidate"]]
    return {
        "cases": len(rows),
        "missed_core": missed,
        "hits": hits,
        "false_alarms": false_alarms,
        "flagged_by_others": [c for c, row in rows.items() if row["other_flags"]],
        "tc_dice_mean": round(float(np.mean([row["dice"]["TC"] for row in rows.values()])), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="Labelled BraTS-format folders.")
    parser.add_argument("--bundle", type=Path, default=None, help="Bundle (default: the shipped one).")
    parser.add_argument("--precision", default=None, help="Precision (default: the bundle's).")
    parser.add_argument("--cache", type=Path, required=True, help="Folder for the raw predictions (reused).")
    parser.add_argument("--min-core-share", type=float, default=CANDIDATE.min_core_share, help="The candidate.")
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON result here.")
    args = parser.parse_args(argv)
    limits = QALimits(min_core_share=args.min_core_share)

    sets: dict[str, Any] = {}
    for folder in args.folders:
        cases = raw_predictions(folder, args.bundle, args.precision, args.cache)
        rows = {case_id: case_row(case, limits) for case_id, case in cases.items()}
        for case_id, row in rows.items():
            share = "-" if row["tc_share"] is None else f"{row['tc_share']:.4f}"
            print(
                f"{folder.name:14s} {case_id:>22s} WT {row['wt_ml']:7.1f} mL  TC {row['tc_ml']:6.1f} mL  share "
                f"{share:>6s}  TC Dice {row['dice']['TC']:.3f}  {'MISSED' if row['missed_core'] else 'found '}  "
                f"{'FLAG' if row['flagged_by_candidate'] else '    '}  others: {'; '.join(row['other_flags']) or '-'}"
            )
        sets[str(folder)] = {"summary": (summary := summarise(rows)), "cases": rows}
        print(
            f"{folder.name}: {summary['cases']} cases, {len(summary['missed_core'])} missed their core, "
            f"{len(summary['hits'])} of them flagged, {len(summary['false_alarms'])} false alarm(s) "
            f"{summary['false_alarms']}; flagged by the other QA flags {len(summary['flagged_by_others'])}"
        )
    result = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": str(args.bundle or "shipped"),
        "precision": args.precision or "bundle default",
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "limits": limits.to_dict(),
        "missed_core_dice": MISSED_CORE_DICE,
        "sets": sets,
    }
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
