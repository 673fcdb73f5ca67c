"""Dice drift of reduced precisions against the float model, on held-out cases.

Each case is prepared once (normalised, cut to its brain box) and every precision sees the same
input. Per case, region and precision: Dice and HD95 against the ground truth when it exists, and
the agreement Dice with the reference precision (fp32). The summary gives each precision's mean
Dice, its ratio to the reference, and MLPerf-style verdicts at 99 % and 99.9 % of the reference.

What is scored is ``labels`` applied to the network's argmax: the labels a user gets (``segment``'s
post-processing, passed in by the runtime and the build) or, without it, the argmax itself. Measured
both ways (docs/INT8.md): a flip in a speck the rules remove costs the user nothing (on the shipped
bundle's held-out split, in windows, that was all of INT8's drift), and a rule's threshold can turn a
small difference into a whole component kept by one precision only. With ``labels``, each case also
keeps the argmax's agreement with fp32 (``raw_agreement``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from latup_edge.data.cases import BratsCase, load_case_images, load_case_labels
from latup_edge.data.labels import REGIONS
from latup_edge.data.preprocess import Crop, apply_crop, brain_box, normalize, paper_crop, undo_crop
from latup_edge.evaluate.metrics import agreement, region_metrics

REFERENCE = "fp32"
# From the network's class map of the brain box and the box's (C, X, Y, Z) inputs to the labels scored
# (post-processing); None: as they are.
LabelRule = Callable[[np.ndarray, np.ndarray], np.ndarray]
# The drift gate's default: MLPerf's high-accuracy tier, >= 99.9 % of the fp32 Dice per region.
DEFAULT_MAX_DICE_DROP = 0.001
# The gate also wants the labels themselves close to fp32's: measured, an INT8 model scored a WT Dice
# ratio of 1.06 against the ground truth while agreeing with fp32 at only 0.91 (docs/INT8.md).
DEFAULT_MIN_AGREEMENT = 0.99
# MLPerf's accuracy tiers for medical imaging: 99 % and 99.9 % of the reference.
TIERS = {"99": 0.99, "99.9": 0.999}
# The ratio's 95 % interval: paired bootstrap over cases, seeded so that a report repeats itself.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class PreparedCase:
    """A case as the network sees it, plus what is needed to score its prediction."""

    case_id: str
    inputs: np.ndarray  # (1, 3, D, H, W) float32 brain box
    crop: Crop
    truth: np.ndarray | None  # class map in the original geometry
    spacing: tuple[float, float, float]

    def classes(self, scores: np.ndarray, labels: LabelRule | None = None) -> np.ndarray:
        return self.placed(np.argmax(scores[0], axis=0).astype(np.uint8), labels)

    def placed(self, box_classes: np.ndarray, labels: LabelRule | None = None) -> np.ndarray:
        """The brain box's class map (after ``labels``, if given) in the original geometry."""
        return undo_crop(labels(box_classes, self.inputs[0]) if labels is not None else box_classes, self.crop)


def prepare_case(case: BratsCase, size: int | None = None, *, normalization: str) -> PreparedCase:
    """The brain box the deployed model sees, or with ``size`` the paper's centred ``size``^3 crop.

    ``normalization`` is the model's own (``Bundle.normalization``, ``model.config.normalization``).
    """
    images, reference = load_case_images(case)
    truth = load_case_labels(case, reference)[0] if case.seg is not None else None
    normalized = normalize(images, normalization)
    crop = paper_crop(normalized.shape[1:], size) if size else brain_box(normalized)
    spacing = tuple(float(z) for z in reference.header.get_zooms()[:3])
    return PreparedCase(case.case_id, apply_crop(normalized, crop)[None], crop, truth, spacing)


def measure_drift(
    cases: Iterable[PreparedCase],
    forwards: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    progress: Callable[[str], None] = lambda case_id: None,
    labels: LabelRule | None = None,
) -> dict[str, Any]:
    """Score every precision in ``forwards`` (which must include "fp32") on every case.

    Each forward maps a case's ``inputs`` to class logits, as every backend does
    (``latup_edge.runtime.tiling.Forward``). ``labels`` (the post-processing) makes the labels scored.
    """
    if REFERENCE not in forwards:
        raise ValueError(f"drift needs the {REFERENCE} reference among the precisions, got {list(forwards)}")
    per_case: dict[str, dict[str, Any]] = {}
    for case in cases:
        predictions, raw, seconds = {}, {}, {}
        for precision, forward in forwards.items():
            started = time.perf_counter()
            logits = forward(case.inputs)
            seconds[precision] = time.perf_counter() - started
            box = np.argmax(logits[0], axis=0).astype(np.uint8)  # one argmax serves both label sets
            del logits
            predictions[precision] = case.placed(box, labels)
            if labels is not None:
                raw[precision] = case.placed(box)
        entry: dict[str, Any] = {"seconds": seconds, "precisions": {}}
        for precision, predicted in predictions.items():
            scores: dict[str, Any] = {"agreement": agreement(predicted, predictions[REFERENCE])}
            if labels is not None:
                scores["raw_agreement"] = agreement(raw[precision], raw[REFERENCE])
            if case.truth is not None:
                scores["metrics"] = region_metrics(predicted, case.truth, case.spacing)
            entry["precisions"][precision] = scores
        per_case[case.case_id] = entry
        progress(case.case_id)
    return {"cases": per_case, "summary": summarise_drift(per_case, list(forwards))}


def summarise_drift(per_case: Mapping[str, Any], precisions: list[str]) -> dict[str, Any]:
    """Per precision and region: mean Dice, ratio to fp32, mean and worst agreement, verdicts.

    A region whose mean fp32 Dice is 0 has no ratio (it would divide by zero): its agreement with
    fp32 stands in, as it does for unlabelled cases, and ``ratio_undefined`` names such regions.
    """
    summary: dict[str, Any] = {}
    labelled = [c for c in per_case.values() if "metrics" in c["precisions"][REFERENCE]]
    post_processed = any("raw_agreement" in c["precisions"][REFERENCE] for c in per_case.values())
    for precision in precisions:
        regions: dict[str, Any] = {}
        for region in REGIONS:
            agreements = [c["precisions"][precision]["agreement"][region] for c in per_case.values()]
            row = {"agreement_mean": float(np.mean(agreements)), "agreement_min": float(np.min(agreements))}
            raw = [c["precisions"][precision].get("raw_agreement", {}).get(region) for c in per_case.values()]
            if raw and None not in raw:  # the network's argmax before post-processing, for the record
                row |= {"raw_agreement_mean": float(np.mean(raw)), "raw_agreement_min": float(np.min(raw))}
            if labelled:
                dices = [c["precisions"][precision]["metrics"][region]["dice"] for c in labelled]
                references = [c["precisions"][REFERENCE]["metrics"][region]["dice"] for c in labelled]
                dice, ref = float(np.mean(dices)), float(np.mean(references))
                hd95 = float(np.mean([c["precisions"][precision]["metrics"][region]["hd95"] for c in labelled]))
                row |= {"dice": dice, "dice_fp32": ref, "hd95": hd95}
                if ref > 0:
                    row |= {"ratio": dice / ref, "ratio_ci95": ratio_interval(dices, references)}
            regions[region] = row
        # Without a ratio (no labels, or fp32 Dice 0) the agreement with fp32 stands in for it.
        worst = min(r.get("ratio", r["agreement_mean"]) for r in regions.values())
        summary[precision] = {
            "regions": regions,
            "worst_ratio": worst,
            "verdicts": {tier: bool(worst >= bound) for tier, bound in TIERS.items()},
            "basis": "dice_ratio" if labelled else "agreement",
            "labels": "post-processed" if post_processed else "network argmax",
            "ratio_undefined": [name for name, r in regions.items() if "dice" in r and "ratio" not in r],
        }
    return summary


def ratio_interval(dice: list[float], reference: list[float]) -> list[float]:
    """95 % interval of mean(dice) / mean(reference), resampling cases in pairs.

    How far a ratio measured on a few cases can be trusted: on 20 cases one label flip in one case
    moves it by more than the 0.1 % the gate allows (docs/INT8.md). Resamples whose reference Dice
    is 0 have no ratio and are left out.

    >>> ratio_interval([0.9, 0.8], [0.9, 0.8])
    [1.0, 1.0]
    """
    dice_a, ref_a = np.asarray(dice, np.float64), np.asarray(reference, np.float64)
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(dice_a), (BOOTSTRAP_RESAMPLES, len(dice_a)))
    numerator, denominator = dice_a[draws].mean(axis=1), ref_a[draws].mean(axis=1)
    ratios = numerator[denominator > 0] / denominator[denominator > 0]
    low, high = np.percentile(ratios, [2.5, 97.5])
    return [float(low), float(high)]


def describe_basis(summary: Mapping[str, Any]) -> str:
    """What a precision's ``worst_ratio`` is: the Dice ratio to fp32, or the agreement where that has none.

    >>> describe_basis({"basis": "dice_ratio", "ratio_undefined": ["ET"]})
    'Dice ratio to fp32 (ET: fp32 Dice 0, no ratio; agreement with fp32 stands in)'
    """
    if summary["basis"] != "dice_ratio":
        return "agreement with fp32"
    undefined = summary.get("ratio_undefined") or []
    if not undefined:
        return "Dice ratio to fp32"
    return f"Dice ratio to fp32 ({', '.join(undefined)}: fp32 Dice 0, no ratio; agreement with fp32 stands in)"


def format_ratio(row: Mapping[str, Any], interval: bool = False) -> str:
    """A region's Dice ratio to fp32 for a table: four decimals (and its 95 % interval), or why there is none."""
    if "ratio" in row:
        low_high = row.get("ratio_ci95") if interval else None
        return f"{row['ratio']:.4f}" + (f" [{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else "")
    return "- (fp32 Dice 0)" if "dice" in row else "-"
