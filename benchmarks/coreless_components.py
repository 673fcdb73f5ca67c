"""The components the coreless rule removes: true tumour or false oedema, and what tells them apart?

The coreless rule (``latup_edge.runtime.postprocess``) removes a whole-tumour component without core when
another component has one. On the blind generator's tumours without enhancement it removed the tumour
the network had found (docs/GENERALISATION.md section 21). This script runs the bundle once per case
(no post-processing, softmax kept in ``--cache``), then lists every component of the raw labels with
what a rule could use: its size, its core voxels, the network's core probability inside it (P(NCR) +
P(ET)), and, from the truth, the share of it that is true tumour. ``--rules`` scores candidate rules
(``RULES``) offline on the same raw labels.

    python benchmarks/coreless_components.py runs/blind1 --cache runs/raw-coreless --out benchmarks/X.json
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.evaluate.metrics import agreement
from latup_edge.fileio import atomic_write, atomic_write_json
from latup_edge.runtime.bundle import resolve_bundle
from latup_edge.runtime.postprocess import (
    DEFAULT_POSTPROCESSING,
    ET,
    NCR,
    Postprocessing,
    brain_of,
    largest_removed_and_kept,
    postprocess,
)

FORMAT = "latup-edge-coreless-components/1"
REGIONS = ("WT", "TC", "ET")
RULES = {  # what segment writes today, and the pre-registered candidate (docs/PREREGISTERED.md, 19th session)
    "default": DEFAULT_POSTPROCESSING,
    "credible core (200 voxels, share <= 0.6)": Postprocessing(min_credible_core=200, max_core_share=0.6),
}


def cache_folder(cache: Path, folder: Path, bundle: Path | None, precision: str | None) -> Path:
    """Where one bundle's predictions on one folder are kept: keyed by the bundle's manifest, the precision and
    the folder's path (case ids repeat across folders), so another bundle never reads them back."""
    manifest = (resolve_bundle(bundle) / "manifest.json").read_bytes()
    tag = f"{hashlib.sha256(manifest).hexdigest()[:12]}-{precision or 'default'}"
    return cache / tag / f"{folder.name}-{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]}"


def raw_predictions(folder: Path, bundle: Path | None, precision: str | None, cache: Path) -> dict[str, dict]:
    """Case id -> raw classes, core probability (float16), truth classes and the brain mask."""
    from latup_edge.runtime.predictor import Predictor

    predictor = None
    out = {}
    stored_in = cache_folder(cache, folder, bundle, precision)
    for case in discover_cases(folder):
        images, reference = load_case_images(case)
        truth, _ = load_case_labels(case, reference)
        stored = stored_in / f"{case.case_id}.npz"
        if stored.exists():
            with np.load(stored) as saved:
                raw, core_probability = saved["classes"], saved["core_probability"]
        else:
            if predictor is None:
                predictor = Predictor.from_bundle(bundle, precision, postprocessing=Postprocessing.none())
            prediction = predictor.predict(images, probabilities=True)
            raw = prediction.classes
            core_probability = (prediction.probabilities[NCR] + prediction.probabilities[ET]).astype(np.float16)
            stored.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(stored, lambda tmp, r=raw, c=core_probability: _save(tmp, r, c))
        out[case.case_id] = {
            "raw": raw,
            "core_probability": core_probability.astype(np.float32),
            "truth": truth,
            "brain": brain_of(images),
        }
        print(f"{folder.name}/{case.case_id}", file=sys.stderr)
    return out


def _save(path: Path, classes: np.ndarray, core_probability: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.savez would append ".npz" to the temporary name
        np.savez_compressed(handle, classes=classes, core_probability=core_probability)


def components(case: dict) -> list[dict[str, Any]]:
    """Every 6-connected whole-tumour component of the raw labels inside the brain, with its features."""
    raw = np.where(case["brain"], case["raw"], np.uint8(0))
    kept = postprocess(case["raw"], DEFAULT_POSTPROCESSING, case["brain"][None].astype(np.float32))
    labelled, count = ndimage.label(raw > 0)
    truth_wt = case["truth"] > 0
    rows = []
    for index, where in enumerate(ndimage.find_objects(labelled), start=1):
        mask = labelled[where] == index
        classes = raw[where][mask]
        probability = case["core_probability"][where][mask]
        rows.append(
            {
                "voxels": int(mask.sum()),
                "core_voxels": int(np.isin(classes, (NCR, ET)).sum()),
                "et_voxels": int((classes == ET).sum()),
                "core_p_mean": round(float(probability.mean()), 4),
                "core_p_p95": round(float(np.percentile(probability, 95)), 4),
                "core_p_max": round(float(probability.max()), 4),
                "core_p_over_0.3": int((probability > 0.3).sum()),
                "true_share": round(float(truth_wt[where][mask].mean()), 3),
                "kept_by_default": bool(kept[where][mask].any()),
            }
        )
    rows.sort(key=lambda row: -row["voxels"])
    return rows


def score_rules(cases: dict[str, dict]) -> dict[str, Any]:
    """Rule -> Dice per region for each case, their means, and the cases the QA flag would name."""
    scored: dict[str, Any] = {}
    for name, rules in RULES.items():
        per_case, flagged = {}, []
        for case_id, case in cases.items():
            inputs = case["brain"][None].astype(np.float32)  # the rules' "box the network saw": zero outside
            labels = postprocess(case["raw"], rules, inputs)
            per_case[case_id] = {r: round(d, 4) for r, d in agreement(labels, case["truth"]).items()}
            removed, kept = largest_removed_and_kept(case["raw"], labels, inputs)
            if removed > kept:
                flagged.append(case_id)
        means = {r: round(float(np.mean([d[r] for d in per_case.values()])), 4) for r in REGIONS}
        scored[name] = {"mean": means, "mean_of_regions": round(float(np.mean(list(means.values()))), 4),
                        "flagged": flagged, "cases": per_case}  # fmt: skip
    return scored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="Labelled BraTS-format folders.")
    parser.add_argument("--bundle", type=Path, default=None, help="Bundle (default: the shipped one).")
    parser.add_argument("--precision", default=None, help="Precision (default: the bundle's).")
    parser.add_argument("--cache", type=Path, required=True, help="Folder for the raw predictions (reused).")
    parser.add_argument("--min-voxels", type=int, default=500, help="List components from this size.")
    parser.add_argument("--rules", action="store_true", help="Also score RULES on each set.")
    parser.add_argument("--quiet", action="store_true", help="Do not list the components.")
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON result here.")
    args = parser.parse_args(argv)

    sets: dict[str, Any] = {}
    for folder in args.folders:
        cases = raw_predictions(folder, args.bundle, args.precision, args.cache)
        listed = {}
        for case_id, case in cases.items():
            rows = [row for row in components(case) if row["voxels"] >= args.min_voxels]
            listed[case_id] = {"truth_has_et": bool((case["truth"] == ET).any()), "components": rows}
            for row in [] if args.quiet else rows:
                print(
                    f"{folder.name:14s} {case_id:>8s} {'ET' if listed[case_id]['truth_has_et'] else 'noET':4s} "
                    f"{row['voxels']:7d} core {row['core_voxels']:6d} et {row['et_voxels']:6d} "
                    f"p_mean {row['core_p_mean']:.3f} p95 {row['core_p_p95']:.3f} max {row['core_p_max']:.3f} "
                    f">0.3 {row['core_p_over_0.3']:6d} true {row['true_share']:.2f} "
                    f"{'kept' if row['kept_by_default'] else 'REMOVED'}"
                )
        sets[str(folder)] = {"components": listed}
        if args.rules:
            sets[str(folder)]["rules"] = scored = score_rules(cases)
            default = scored["default"]["cases"]
            for name, one in scored.items():
                moved = {c: round(d["WT"] - default[c]["WT"], 4) for c, d in one["cases"].items()}
                moved = {c: m for c, m in moved.items() if m}
                print(
                    f"{folder.name:14s} {len(cases):3d} cases  {name:42s} WT / TC / ET "
                    + " / ".join(f"{one['mean'][r]:.4f}" for r in REGIONS)
                    + f"  mean {one['mean_of_regions']:.4f}  flagged {len(one['flagged'])}  WT moved {moved}"
                )
    result = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": str(args.bundle or "shipped"),
        "precision": args.precision or "bundle default",
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "rules": {name: rules.to_dict() for name, rules in RULES.items()},
        "sets": sets,
    }
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
