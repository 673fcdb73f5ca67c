"""Does the input OOD score flag shifted inputs and leave ordinary ones alone?

The reference is built from calibration-like phantoms (``latup-edge phantom REF --n 12 --seed 3000``).
Scored against it: ordinary held-out phantoms (``--n 20 --seed 8000``), each of them shifted in
memory (FLAIR and T2 swapped; gamma 0.5 and 2.0 on intensities scaled to [0, 1]; every intensity x7;
3 mm slices along z, as a thick-slice scan that was not resampled: spacing (1, 1, 3); a head that
was not skull-stripped: scalp and skull around the brain and low noise in the air), and, when given,
cases of the independent generator (``--generator independent --n 6 --seed 9000``).

    python benchmarks/ood_check.py /tmp/qa-ref /tmp/qa-ordinary --independent /tmp/qa-indep

``--dice`` also segments the ordinary cases and their intensity shifts with the shipped bundle (or
``--bundle``) and reports the mean Dice of each set: whether a shift the score does not flag costs
the model accuracy (a flag should mean "the model may fail here", not just "unusual").

Prints one row per set (cases, cases flagged, median and max overall score, the figures flagged
most) and writes ``benchmarks/ood_check.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.evaluate.metrics import agreement
from latup_edge.runtime.input_stats import case_statistics, ood_score, reference_statistics
from latup_edge.runtime.predictor import Predictor

HERE = Path(__file__).resolve().parent
Shift = Callable[[np.ndarray, tuple[float, ...]], tuple[np.ndarray, tuple[float, ...]]]


def swap_flair_t2(images: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
    order = [MODEL_MODALITIES.index(m) for m in ("t2", "t1ce", "flair")]
    return images[order], spacing


def gamma(value: float) -> Shift:
    def shift(images: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
        top = images.reshape(len(images), -1).max(axis=1)[:, None, None, None]
        return top * (images / top) ** np.float32(value), spacing

    return shift


def scale(factor: float) -> Shift:
    return lambda images, spacing: (images * np.float32(factor), spacing)


def thick_slices(images: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
    # A 3 mm acquisition: each slice averages three 1 mm slices; the volume keeps its 3 mm grid.
    averaged = ndimage.uniform_filter1d(images, 3, axis=3)[..., 1::3]
    return averaged, (spacing[0], spacing[1], 3.0 * spacing[2])


def unstripped_head(images: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
    brain = np.any(images != 0, axis=0)
    depth = ndimage.distance_transform_edt(~brain, sampling=spacing)
    rng = np.random.default_rng(0)
    head = images.copy()
    for volume in head:
        level = float(np.percentile(volume[brain], 50))
        scalp = (depth > 0) & (depth <= 12)
        skull = (depth > 3) & (depth <= 8)  # bone is dark, scalp and marrow bright
        volume[scalp] = level * rng.uniform(0.6, 1.4, size=int(scalp.sum()))
        volume[skull] *= 0.15
        air = depth > 12
        volume[air] = np.abs(rng.normal(0, 0.03 * level, size=int(air.sum())))
    return head, spacing


SHIFTS: dict[str, Shift] = {
    "FLAIR/T2 swapped": swap_flair_t2,
    "gamma 0.5": gamma(0.5),
    "gamma 2.0": gamma(2.0),
    "3 mm slices": thick_slices,
    "not skull-stripped": unstripped_head,
    "intensity x7 (must not flag)": scale(7.0),
}


# Shifts of intensity only: the labels stay on the same grid, so --dice can score them.
INTENSITY_SHIFTS = ("FLAIR/T2 swapped", "gamma 0.5", "gamma 2.0", "intensity x7 (must not flag)")
REGIONS = ("WT", "TC", "ET")


def load(case) -> tuple[np.ndarray, tuple[float, ...]]:
    images, reference = load_case_images(case, MODEL_MODALITIES)
    return images, tuple(float(z) for z in reference.header.get_zooms()[:3])


def statistics_of(folder: Path) -> list[tuple[str, dict]]:
    rows = []
    for case in discover_cases(folder):
        images, spacing = load(case)
        rows.append((case.case_id, case_statistics(images, MODEL_MODALITIES, spacing)))
    return rows


def summarise(name: str, scored: list[tuple[str, dict]]) -> dict:
    flagged = [case_id for case_id, result in scored if result["flags"]]
    figures = Counter(flag.split(" ")[0] for _, result in scored for flag in result["flags"])
    overall = np.array([result["score"] for _, result in scored])
    return {
        "set": name,
        "cases": len(scored),
        "flagged": len(flagged),
        "median_score": round(float(np.median(overall)), 2),
        "max_score": round(float(overall.max()), 2),
        "top_flagged_figures": dict(figures.most_common(4)),
        "per_case": {case_id: {"score": r["score"], "worst": r["worst"], "flags": r["flags"]} for case_id, r in scored},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("ordinary", type=Path)
    parser.add_argument("--independent", type=Path)
    parser.add_argument("--json", type=Path, default=HERE / "ood_check.json")
    parser.add_argument("--dice", action="store_true", help="also segment the intensity shifts and report Dice")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle for --dice (default: the shipped one)")
    args = parser.parse_args()
    start = time.perf_counter()
    predictor = Predictor.open("openvino", None, args.bundle) if args.dice else None
    dice_rows: dict[str, list[dict[str, float]]] = {name: [] for name in ("ordinary", *INTENSITY_SHIFTS)}

    reference = reference_statistics([stats for _, stats in statistics_of(args.reference)])
    scored: dict[str, list[tuple[str, dict]]] = {"ordinary": [], **{name: [] for name in SHIFTS}}
    seconds = []
    for case in discover_cases(args.ordinary):
        images, spacing = load(case)
        tick = time.perf_counter()
        scored["ordinary"].append(
            (case.case_id, ood_score(case_statistics(images, MODEL_MODALITIES, spacing), reference))
        )
        seconds.append(time.perf_counter() - tick)
        truth = load_case_labels(case)[0] if predictor is not None else None
        if predictor is not None:
            dice_rows["ordinary"].append(agreement(predictor.predict(images).classes, truth))
        for name, shift in SHIFTS.items():
            shifted, shifted_spacing = shift(images, spacing)
            stats = case_statistics(shifted, MODEL_MODALITIES, shifted_spacing)
            scored[name].append((case.case_id, ood_score(stats, reference)))
            if predictor is not None and name in INTENSITY_SHIFTS:
                dice_rows[name].append(agreement(predictor.predict(shifted).classes, truth))
    if args.independent:
        scored["independent generator"] = [(cid, ood_score(s, reference)) for cid, s in statistics_of(args.independent)]

    rows = [summarise(name, results) for name, results in scored.items()]
    for row in rows:
        if dice_rows.get(row["set"]):
            row["mean_dice"] = {r: round(float(np.mean([d[r] for d in dice_rows[row["set"]]])), 4) for r in REGIONS}
    print(f"{'set':<30} {'cases':>5} {'flagged':>7} {'median':>7} {'max':>7}  figures flagged most")
    for row in rows:
        top = ", ".join(f"{k} ({v})" for k, v in row["top_flagged_figures"].items())
        counts = f"{row['cases']:>5} {row['flagged']:>7} {row['median_score']:>7} {row['max_score']:>7}"
        dice_text = " / ".join(f"{v:.3f}" for v in row["mean_dice"].values()) if "mean_dice" in row else ""
        print(f"{row['set']:<30} {counts}  {top}" + (f"  Dice WT/TC/ET {dice_text}" if dice_text else ""))
    result = {
        "reference": {"folder": str(args.reference), "n": reference["n"], "margin": reference["margin"]},
        "ordinary": str(args.ordinary),
        "independent": str(args.independent) if args.independent else None,
        "statistics_seconds_per_case": round(float(np.mean(seconds)), 2),
        "dice_model": predictor.describe() if predictor is not None else None,
        "reference_statistics": reference,
        "sets": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"case_statistics {result['statistics_seconds_per_case']} s per case; wrote {args.json}")


if __name__ == "__main__":
    main()
