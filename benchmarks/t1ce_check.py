"""Do the swap checks flag swapped files, and leave correctly named cases alone?

Each case of each folder is segmented as it is and with two of its files swapped in memory, with the
shipped bundle (or ``--bundle``) through ``Predictor.predict`` and the check ``segment`` runs, exactly
as it runs it: ``--swap t1`` (the default) swaps T1 and T1ce and runs
``latup_edge.runtime.trust.t1ce_check``; ``--swap flair``, ``t1-t2`` and ``flair-t1`` swap FLAIR and
T1ce, T1 and T2, FLAIR and T1, and run ``exchange_check`` for that pair. ``--as-is-only FOLDER``
adds folders scored as they are only (tumours without ET, where the T1/T1ce check runs most often on
correct files).

    python benchmarks/t1ce_check.py runs/ordinary runs/indep3 --as-is-only runs/select-noet
    python benchmarks/t1ce_check.py --swap flair runs/indep3 runs/indep2 runs/ordinary
    python benchmarks/t1ce_check.py --swap t1-t2 runs/indep3 runs/ordinary

Prints, per folder and form, the cases, how many had a figure to judge, ran the second pass, and
were flagged, with the seconds it cost; writes ``benchmarks/t1ce_check.json`` (``--swap flair``:
``benchmarks/flair_t1ce_check.json``, and so on).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from latup_edge.data.cases import discover_cases, load_case_images
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.trust import EXCHANGES, exchange_check, t1ce_check

HERE = Path(__file__).resolve().parent


def check_t1_case(predictor: Predictor, case, swapped: bool) -> dict:
    images, _ = load_case_images(case, (*MODEL_MODALITIES, "t1"))
    model, t1 = images[:-1], images[-1]
    channel = MODEL_MODALITIES.index("t1ce")
    if swapped:
        model[channel], t1 = t1, model[channel].copy()
    classes = predictor.predict(model).classes
    started = time.perf_counter()
    check = t1ce_check(model, MODEL_MODALITIES, classes, t1, lambda x: predictor.predict(x).classes)
    return {"case_id": case.case_id, "check": check, "seconds": round(time.perf_counter() - started, 2)}


def exchange_case(name: str) -> Callable[[Predictor, Any, bool], dict]:
    """How a case is checked for one of ``EXCHANGES``: its two files swapped in memory or not."""
    first, second, _ = EXCHANGES[name]

    def check_case(predictor: Predictor, case, swapped: bool) -> dict:
        images, _ = load_case_images(case, (*MODEL_MODALITIES, "t1"))
        volumes = dict(zip((*MODEL_MODALITIES, "t1"), images, strict=True))
        if swapped:
            volumes[first], volumes[second] = volumes[second], volumes[first]
        prediction = predictor.predict(np.stack([volumes[key] for key in MODEL_MODALITIES]))
        started = time.perf_counter()
        check = exchange_check(name, volumes, MODEL_MODALITIES, prediction.classes,
                               prediction.low_confidence_fraction, predictor.predict)  # fmt: skip
        return {"case_id": case.case_id, "check": check, "seconds": round(time.perf_counter() - started, 2)}

    return check_case


# --swap: the swapped form's name, how a case is checked, the default JSON.
SWAPS = {
    "t1": ("T1/T1ce swapped", check_t1_case, "t1ce_check.json"),
    "flair": ("FLAIR/T1ce swapped", exchange_case("flair_t1ce"), "flair_t1ce_check.json"),
    "t1-t2": ("T1/T2 swapped", exchange_case("t1_t2"), "t1_t2_check.json"),
    "flair-t1": ("FLAIR/T1 swapped", exchange_case("flair_t1"), "flair_t1_check.json"),
}
SECOND_PASS_KEYS = ("et_ml_with_t1_as_t1ce", "low_confidence_exchanged")  # present where the network ran again


def summarise(folder: str, form: str, rows: list[dict]) -> dict:
    # A T1/T1ce check without an enhancement sign had nothing to judge.
    checked = [row for row in rows if row["check"] is not None and row["check"].get("enhancement", 0) is not None]
    second = [row for row in checked if any(key in row["check"] for key in SECOND_PASS_KEYS)]
    flagged = [row["case_id"] for row in checked if row["check"]["swapped"]]
    return {
        "folder": folder, "form": form, "cases": len(rows), "checked": len(checked), "second_pass": len(second),
        "flagged": len(flagged), "flagged_cases": flagged, "check_seconds": round(sum(r["seconds"] for r in rows), 1),
        "per_case": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--swap", choices=sorted(SWAPS), default="t1", help="the pair of files swapped")
    parser.add_argument("--as-is-only", nargs="*", type=Path, default=[])
    parser.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/<check>.json")
    args = parser.parse_args()
    swapped_form, check_case, default_out = SWAPS[args.swap]
    predictor = Predictor.open("openvino", bundle=args.bundle)
    results = []
    plan = [(folder, form) for folder in args.folders for form in ("as is", swapped_form)]
    plan += [(folder, "as is") for folder in args.as_is_only]
    print(f"{'folder':<22} {'form':<19} {'cases':>5} {'checked':>7} {'2nd pass':>8} {'flagged':>7} {'check s':>7}")
    for folder, form in plan:
        rows = [check_case(predictor, case, form != "as is") for case in discover_cases(folder)]
        row = summarise(str(folder), form, rows)
        results.append(row)
        print(f"{row['folder']:<22} {form:<19} {row['cases']:>5} {row['checked']:>7} {row['second_pass']:>8} "
              f"{row['flagged']:>7} {row['check_seconds']:>7}", flush=True)  # fmt: skip
    out = args.out or HERE / default_out
    out.write_text(json.dumps({"bundle": str(args.bundle or "shipped"), "sets": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
