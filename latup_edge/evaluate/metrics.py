"""Segmentation metrics with BraTS scoring conventions: Dice and HD95 per case and region, then summarised.

HD95 follows MedPy's ``hd95``: surfaces are ``mask XOR erosion(mask)`` with a face-connected (cross)
structuring element; the distances from every surface voxel of one mask to the nearest surface voxel of the
other, in both directions, are pooled and their 95th percentile is taken. BraTS conventions: both masks
empty gives Dice 1 and HD95 0; exactly one empty gives HD95 ``HD95_EMPTY`` (374 mm).

>>> import numpy as np
>>> truth = np.zeros((20, 20, 20), dtype=bool); truth[5:15, 5:15, 5:15] = True
>>> pred = np.roll(truth, 2, axis=0)
>>> round(dice(pred, truth), 3), hd95(pred, truth)
(0.8, 2.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from latup_edge.data.labels import REGIONS, region_masks

HD95_EMPTY = 374.0
"""HD95 (mm) that BraTS scores when exactly one of prediction and truth is empty."""

SUMMARY_STATISTICS: tuple[str, ...] = ("mean", "std", "median", "min", "max", "n")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty, 0.0 when exactly one is.

    >>> dice(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool))
    0.5
    """
    pred, truth = _as_masks(pred, truth)
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(pred & truth) / total


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between the surfaces of two boolean masks.

    ``spacing`` is the voxel size in mm along each axis (anisotropic spacing is honoured). Both masks
    empty gives 0.0; exactly one empty gives ``HD95_EMPTY``. The distance transforms run only on the
    bounding box of the union of both masks plus a one-voxel margin, which leaves the result unchanged.

    >>> a = np.zeros((12, 12, 12), bool); a[2:8, 2:8, 2:8] = True
    >>> hd95(np.roll(a, 1, axis=2), a, spacing=(1.0, 1.0, 2.5))
    2.5
    """
    pred, truth = _as_masks(pred, truth)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values; the masks have {pred.ndim} axes")
    pred_empty, truth_empty = not pred.any(), not truth.any()
    if pred_empty and truth_empty:
        return 0.0
    if pred_empty or truth_empty:
        return HD95_EMPTY
    box = bounding_box(pred | truth, margin=1)
    return float(np.percentile(_pooled_surface_distances(pred[box], truth[box], spacing), 95))


def region_metrics(
    pred_classes: np.ndarray, true_classes: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> dict[str, dict[str, float]]:
    """Dice and HD95 per BraTS region from two class maps (0 background, 1 NCR/NET, 2 ED, 3 ET).

    >>> truth = np.zeros((8, 8, 8), np.uint8); truth[2:6, 2:6, 2:6] = 2; truth[3:5, 3:5, 3:5] = 3
    >>> region_metrics(truth, truth)["ET"]
    {'dice': 1.0, 'hd95': 0.0}
    """
    pred_regions, true_regions = region_masks(pred_classes), region_masks(true_classes)
    return {
        name: {
            "dice": dice(pred_regions[name], true_regions[name]),
            "hd95": hd95(pred_regions[name], true_regions[name], spacing),
        }
        for name in REGIONS
    }


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> dict[str, float]:
    """Dice per BraTS region between two predicted class maps, e.g. INT8 against float.

    >>> a = np.array([0, 1, 2, 3]); b = np.array([0, 1, 2, 2])
    >>> agreement(a, b)
    {'WT': 1.0, 'TC': 0.6666666666666666, 'ET': 0.0}
    """
    masks_a, masks_b = region_masks(pred_a), region_masks(pred_b)
    return {name: dice(masks_a[name], masks_b[name]) for name in REGIONS}


def summarise(
    per_case: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """Summarise case -> region -> metric -> value into region -> metric -> statistic.

    Statistics are mean, std (population, ddof=0), median, min, max and n (the number of cases that
    report that region and metric).

    >>> summary = summarise({"a": {"WT": {"dice": 0.8}}, "b": {"WT": {"dice": 0.6}}})
    >>> round(summary["WT"]["dice"]["mean"], 3), summary["WT"]["dice"]["n"]
    (0.7, 2)
    """
    collected: dict[str, dict[str, list[float]]] = {}
    for regions in per_case.values():
        for region, metrics in regions.items():
            for metric, value in metrics.items():
                collected.setdefault(region, {}).setdefault(metric, []).append(float(value))
    return {
        region: {metric: _statistics(values) for metric, values in metrics.items()}
        for region, metrics in collected.items()
    }


def _statistics(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "median": float(np.median(array)),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": len(values),
    }


def _as_masks(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match truth shape {truth.shape}")
    return pred, truth


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel, grown by ``margin`` and clipped to the array."""
    box = []
    for axis, size in enumerate(mask.shape):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        occupied = np.flatnonzero(mask.any(axis=other_axes))
        box.append(slice(max(occupied[0] - margin, 0), min(occupied[-1] + 1 + margin, size)))
    return tuple(box)


def _pooled_surface_distances(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of either non-empty mask to the other's surface, pooled."""
    cross = generate_binary_structure(pred.ndim, 1)
    pred_surface = pred ^ binary_erosion(pred, structure=cross)
    truth_surface = truth ^ binary_erosion(truth, structure=cross)
    to_truth = distance_transform_edt(~truth_surface, sampling=spacing)[pred_surface]
    to_pred = distance_transform_edt(~pred_surface, sampling=spacing)[truth_surface]
    return np.concatenate([to_truth, to_pred])
