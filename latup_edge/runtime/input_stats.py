"""Input statistics of a case, a compact reference of many cases, and an out-of-distribution score.

MRI has no absolute unit: a scanner's global intensity scale is arbitrary, so every scored figure is
unchanged when a modality is multiplied by any positive factor. The raw brain percentiles are
reported (``modalities``) but only the scale-free ``figures`` are scored:

Scored (``figures``):

- ``bright_asymmetry.<a>~<b>``: the mean rank (0-1) of ``b`` over ``a``'s brightest 5 % of brain
  voxels, minus the mean rank of ``a`` over ``b``'s brightest 5 %. Rank-based, so no increasing
  intensity map (scale, gamma) moves it; swapping ``a`` and ``b`` negates it. FLAIR~T2 is positive in
  every BraTS-like case: T2's brightest voxels are CSF, which FLAIR suppresses, while FLAIR's
  brightest (oedema) are bright in T2 too. ``EXPECTED_SIGNS`` flags the wrong sign without a reference.
- ``mean_log_spread``: the mean over modalities of log(log(q99 / q1)) inside the brain: a gamma on
  every modality shifts it by log(gamma) exactly; averaging over modalities damps their own variation.
  Not computed (so not scored) when a modality's q1 is not positive: a z-scored input has no log scale.
- ``brain_volume_ml``, ``brain_box_mm.<x|y|z>``, ``brain_fill`` (brain voxels / brain-box voxels),
  ``spacing.<x|y|z>`` (mm): geometry; a head that was not skull-stripped fills its box with nonzero air
  and skull; a thick-slice scan shows in its spacing.

Reported per modality (``modalities``), not scored (on domain-randomised data each varies too widely
alone): the raw brain percentiles, the percentiles over the brain median, ``log_spread``
(log(log(q99 / q1))) and ``tail_balance`` (log(q99/q50) / log(q99/q1): where the long tail lies).

The brain is every voxel nonzero in any modality (BraTS data are skull-stripped and zero outside);
each modality's percentiles are taken over its own nonzero voxels in it (a resampled series' mask
differs from the reference's at the edge).

``ood_score`` scores each figure as a z-score against the reference, (value - reference median) /
spread, where the spread is the reference's standard deviation with a floor per figure
(``spread_floor``), and flags a figure whose value lies beyond the reference's [min, max] by more than
``MARGIN`` (1.5) spreads. Measured on domain-randomised phantoms (benchmarks/ood_check.py): no flag on
20 ordinary held-out cases, nor at x7 intensity; every FLAIR/T2 swap, 3 mm slice and unstripped head
flagged; gamma 0.5 and 2.0 only partly, since the phantoms' own per-modality gamma (0.70-1.42) and
tissue gains overlap what a gamma on top of them does.

>>> stats = case_statistics(images, ("flair", "t1ce", "t2"), spacing=(1.0, 1.0, 1.0))  # doctest: +SKIP
>>> reference = reference_statistics([stats_1, stats_2, ...])                          # doctest: +SKIP
>>> ood_score(stats, reference)["flags"]                                                # doctest: +SKIP
['bright_asymmetry.flair~t2 -0.42 has the wrong sign (FLAIR and T2 swapped?)']
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

PERCENTILES: tuple[int, ...] = (1, 5, 25, 50, 75, 95, 99)
REFERENCE_FORMAT = "latup-edge-input-reference/1"
# Brain voxels sampled for ranks: the figures move by under 0.01 against all voxels, 10x faster.
RANK_SAMPLE = 200_000
BRIGHT_PERCENTILE = 95
# A figure is flagged when it lies this many spreads beyond the reference's [min, max].
MARGIN = 1.5
# Floors on the spread by figure kind (name prefix): a reference of a few similar cases must not
# make a tiny natural variation (or none: every reference case at 1 mm) look like a shift.
SPREAD_FLOORS: dict[str, float] = {
    "spacing.": 0.1,
    "brain_box_mm.": 15.0,  # brains differ by about a tenth: 15 mm of 150
    "brain_fill": 0.02,
    "bright_asymmetry.": 0.05,
    "mean_log_spread": 0.1,
}
RELATIVE_FLOORS: dict[str, float] = {"brain_volume_ml": 0.1}  # a fraction of the reference median
# Signs that hold for any BraTS-like case, checked without a reference (module docstring).
EXPECTED_SIGNS: dict[str, tuple[int, str]] = {
    "bright_asymmetry.flair~t2": (1, "FLAIR and T2 swapped?"),
}


def brain_mask(images: np.ndarray) -> np.ndarray:
    """Voxels nonzero in any modality of ``(C, X, Y, Z)`` images."""
    return np.any(images != 0, axis=0)


def case_statistics(images: np.ndarray, modalities: Sequence[str], spacing: Sequence[float]) -> dict[str, Any]:
    """Intensity and geometry statistics of one case's ``(C, X, Y, Z)`` images as loaded (before normalisation).

    Returns ``modalities`` (per modality the raw brain percentiles, the percentiles over the brain
    median, ``log_spread`` and ``tail_balance``), ``geometry`` (brain volume, box in voxels and mm,
    spacing, zero fraction of the grid) and ``figures``: the flat, scale-free numbers that
    ``ood_score`` compares (module docstring). ``modalities`` are canonical keys (``flair``, ``t2`` ...).
    """
    images = np.asarray(images)
    if images.ndim != 4 or len(modalities) != images.shape[0]:
        raise ValueError(f"images of shape {images.shape} do not match {len(modalities)} modalities")
    spacing = tuple(float(s) for s in spacing)
    brain = brain_mask(images)
    if not brain.any():
        raise ValueError("the images are zero everywhere: there is no brain to describe")
    box = _box(brain)
    in_box = brain[box]
    brain_voxels = int(np.count_nonzero(in_box))
    stride = max(1, brain_voxels // RANK_SAMPLE)
    per_modality: dict[str, Any] = {}
    ranks: dict[str, np.ndarray] = {}
    for name, volume in zip(modalities, images, strict=True):
        values = volume[box][in_box]
        # Percentiles over this modality's own nonzero voxels: after registration and resampling the
        # modalities' brain masks differ at the edge, and zeros there would set q1 (and the spread).
        own = values[values != 0]
        q = dict(zip(PERCENTILES, np.percentile(own if own.size else values, PERCENTILES).tolist(), strict=True))
        median = q[50] if q[50] > 0 else float(np.abs(values).max()) or 1.0
        logs = {p: _log_ratio(q[p], median) for p in PERCENTILES}
        per_modality[name] = {
            "percentiles": {str(p): round(v, 4) for p, v in q.items()},
            "over_median": {str(p): round(v / median, 4) for p, v in q.items()},
            "log_spread": round(math.log(max(logs[99] - logs[1], 1e-3)), 4),
            "tail_balance": round(logs[99] / max(logs[99] - logs[1], 1e-6), 4),
        }
        ranks[name] = scaled_ranks(values[::stride])
    figures: dict[str, float] = {}
    for a, b in itertools.combinations(modalities, 2):
        figures[f"bright_asymmetry.{a}~{b}"] = _bright_mean(ranks[b], ranks[a]) - _bright_mean(ranks[a], ranks[b])
    # Negative intensities: the case was normalised before (z-scores), so log ratios mean nothing; ranks still do.
    if all(m["percentiles"]["1"] > 0 for m in per_modality.values()):
        figures["mean_log_spread"] = float(np.mean([m["log_spread"] for m in per_modality.values()]))

    voxel_ml = float(np.prod(spacing)) / 1000.0
    box_voxels = [s.stop - s.start for s in box]
    geometry = {
        "brain_volume_ml": round(brain_voxels * voxel_ml, 2),
        "brain_box_voxels": box_voxels,
        "brain_box_mm": [round(n * s, 2) for n, s in zip(box_voxels, spacing, strict=True)],
        "spacing": list(spacing),
        "zero_fraction": round(1.0 - brain_voxels / brain.size, 4),
    }
    figures["brain_volume_ml"] = geometry["brain_volume_ml"]
    for axis, mm, step in zip("xyz", geometry["brain_box_mm"], spacing, strict=True):
        figures[f"brain_box_mm.{axis}"] = mm
        figures[f"spacing.{axis}"] = step
    figures["brain_fill"] = brain_voxels / int(np.prod(box_voxels))
    return {
        "modalities": per_modality,
        "geometry": geometry,
        "figures": {key: round(float(value), 5) for key, value in figures.items()},
    }


def reference_statistics(per_case: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A compact, JSON-serialisable summary of many cases' ``case_statistics``: per figure
    ``min``, ``max``, ``mean``, ``std``, ``q25``, ``median``, ``q75``; and ``n``, ``margin``."""
    if not per_case:
        raise ValueError("a reference needs at least one case's statistics")
    names = sorted(set.intersection(*(set(stats["figures"]) for stats in per_case)))
    figures = {}
    for name in names:
        values = np.array([stats["figures"][name] for stats in per_case], dtype=np.float64)
        q25, median, q75 = np.percentile(values, (25, 50, 75))
        summary = {
            "min": values.min(),
            "max": values.max(),
            "mean": values.mean(),
            "std": values.std(),
            "q25": q25,
            "median": median,
            "q75": q75,
        }
        figures[name] = {key: round(float(value), 5) for key, value in summary.items()}
    return {"format": REFERENCE_FORMAT, "n": len(per_case), "margin": MARGIN, "figures": figures}


def spread_floor(name: str, median: float) -> float:
    """The smallest spread a figure is scored against (``SPREAD_FLOORS``, ``RELATIVE_FLOORS``)."""
    if name in RELATIVE_FLOORS:
        return RELATIVE_FLOORS[name] * abs(median)
    return next((floor for key, floor in SPREAD_FLOORS.items() if name.startswith(key)), 0.05)


def ood_score(stats: dict[str, Any], reference: dict[str, Any], margin: float | None = None) -> dict[str, Any]:
    """Score a case's ``case_statistics`` against a ``reference_statistics``.

    Returns ``scores`` (figure -> z-score: (value - median) / spread, spread = max(std,
    ``spread_floor``)), ``score`` (the largest absolute z-score), ``worst`` (its figure) and ``flags``:
    one phrase for each figure beyond the reference's [min, max] by more than ``margin`` spreads
    (default: the reference's own, else ``MARGIN``) and for each ``EXPECTED_SIGNS`` figure of the wrong
    sign. Figures the reference lacks are not scored.
    """
    margin = float(reference.get("margin", MARGIN) if margin is None else margin)
    figures = stats["figures"]
    scores: dict[str, float] = {}
    flags = []
    for name, (sign, meaning) in EXPECTED_SIGNS.items():
        if name in figures and figures[name] * sign < 0:
            flags.append(f"{name} {figures[name]:.3g} has the wrong sign ({meaning})")
    for name, ref in reference["figures"].items():
        if name not in figures:
            continue
        value = float(figures[name])
        spread = max(ref["std"], spread_floor(name, ref["median"]), 1e-9)
        scores[name] = round((value - ref["median"]) / spread, 2)
        if value > ref["max"] + margin * spread:
            flags.append(f"{name} {value:.3g} above the reference {ref['min']:.3g}..{ref['max']:.3g}")
        elif value < ref["min"] - margin * spread:
            flags.append(f"{name} {value:.3g} below the reference {ref['min']:.3g}..{ref['max']:.3g}")
    worst = max(scores, key=lambda key: abs(scores[key]), default=None)
    return {
        "score": abs(scores[worst]) if worst is not None else 0.0,
        "worst": worst,
        "flags": flags,
        "scores": scores,
    }


def _log_ratio(value: float, median: float) -> float:
    # Intensities at or below zero (rare, after a bias correction) are held at a small positive floor.
    return math.log(max(value, 1e-6 * median) / median)


def scaled_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to 0-1 (ties broken by position: integer-valued scans have many)."""
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values)) / max(len(values) - 1, 1)
    return ranks


def _bright_mean(ranks: np.ndarray, by: np.ndarray) -> float:
    """The mean of ``ranks`` over the voxels whose ``by`` rank is in the top ``100 - BRIGHT_PERCENTILE`` %."""
    return float(ranks[by >= BRIGHT_PERCENTILE / 100].mean())


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    return tuple(box)
