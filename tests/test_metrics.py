"""Dice, HD95 (MedPy surface convention, BraTS empty-mask rules), per-region metrics and summaries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from latup_edge.evaluate.metrics import (
    HD95_EMPTY,
    _pooled_surface_distances,
    agreement,
    dice,
    hd95,
    region_metrics,
    summarise,
)


def _cube(shape=(20, 20, 20), start=4, side=10) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[start : start + side, start : start + side, start : start + side] = True
    return mask


def _sphere(radius: float, size: int = 25) -> np.ndarray:
    grid = np.indices((size,) * 3) - size // 2
    return (grid**2).sum(axis=0) <= radius**2


def test_dice_of_cubes_shifted_by_two_voxels():
    truth = _cube()
    # 10^3 cubes overlapping in 8 x 10 x 10 = 800 voxels: 2 * 800 / 2000.
    assert dice(np.roll(truth, 2, axis=1), truth) == pytest.approx(0.8)


def test_dice_identical_disjoint_and_empty():
    cube = _cube()
    empty = np.zeros_like(cube)
    assert dice(cube, cube) == 1.0
    assert dice(cube, np.roll(cube, 10, axis=0)) == 0.0
    assert dice(empty, empty) == 1.0
    assert dice(cube, empty) == 0.0
    assert dice(empty, cube) == 0.0


def test_hd95_empty_masks_follow_brats():
    cube = _cube()
    empty = np.zeros_like(cube)
    assert hd95(empty, empty) == 0.0
    assert hd95(cube, empty) == HD95_EMPTY == 374.0
    assert hd95(empty, cube) == HD95_EMPTY


def test_hd95_of_identical_masks_is_zero():
    assert hd95(_cube(), _cube()) == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 2, 3])
def test_hd95_of_shifted_cube_is_the_shift(axis, shift):
    # The moved faces (200 of the 976 pooled surface voxels) lie exactly `shift` away; nothing is farther.
    truth = _cube()
    assert hd95(np.roll(truth, shift, axis=axis), truth) == shift


def test_hd95_honours_anisotropic_spacing():
    truth = _cube()
    spacing = (1.0, 1.0, 2.5)
    assert hd95(np.roll(truth, 2, axis=2), truth, spacing) == pytest.approx(5.0)
    assert hd95(np.roll(truth, 2, axis=0), truth, spacing) == pytest.approx(2.0)


def test_hd95_of_concentric_spheres_is_close_to_radius_gap():
    assert abs(hd95(_sphere(8), _sphere(5)) - 3.0) <= 1.0


def test_hd95_with_mask_on_volume_edge():
    # Voxels on the array border count as surface (erosion treats outside as background).
    truth = _cube(start=0)
    assert hd95(np.roll(truth, 1, axis=0), truth) == 1.0


def test_bounding_box_crop_changes_nothing():
    rng = np.random.default_rng(0)
    noise = gaussian_filter(rng.standard_normal((2, 28, 26, 24)), sigma=(0, 2, 2, 2))
    pred, truth = noise[0] > 0.15, noise[1] > 0.15
    pred[:6], truth[:6] = False, False  # leave a margin on one side so the crop is strictly smaller
    spacing = (1.0, 0.9, 2.5)
    full = np.percentile(_pooled_surface_distances(pred, truth, spacing), 95)
    assert (pred | truth)[-1].any()  # the far side touches the volume edge, where the crop is clipped
    assert hd95(pred, truth, spacing) == full


def test_mismatched_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        hd95(_cube(), _cube(), spacing=(1.0, 1.0))


def _tumour_pair() -> tuple[np.ndarray, np.ndarray]:
    """Truth: ED 10^3 box, NCR 6^3 core, ET 4^3 inside it. Prediction: ED box 2 voxels longer on axis 2,
    ET moved 1 voxel on axis 0 (still inside the NCR core, so TC is unchanged)."""
    truth = np.zeros((16, 16, 18), dtype=np.uint8)
    truth[2:12, 2:12, 2:12] = 2
    truth[4:10, 4:10, 4:10] = 1
    pred = truth.copy()
    pred[2:12, 2:12, 12:14] = 2
    truth[5:9, 5:9, 5:9] = 3
    pred[6:10, 5:9, 5:9] = 3
    return pred, truth


def test_region_metrics_per_region():
    pred, truth = _tumour_pair()
    metrics = region_metrics(pred, truth, spacing=(1.0, 1.0, 2.0))
    assert list(metrics) == ["WT", "TC", "ET"]
    # WT: 1000 vs 1200 voxels, all truth inside; the far face moves 2 voxels of 2 mm.
    assert metrics["WT"]["dice"] == pytest.approx(2 * 1000 / 2200)
    assert metrics["WT"]["hd95"] == pytest.approx(4.0)
    assert metrics["TC"] == {"dice": 1.0, "hd95": 0.0}
    # ET: 4^3 cubes overlapping in 3 x 4 x 4 = 48 voxels, shifted 1 voxel of 1 mm.
    assert metrics["ET"]["dice"] == pytest.approx(2 * 48 / 128)
    assert metrics["ET"]["hd95"] == pytest.approx(1.0)


def test_region_metrics_when_prediction_misses_et():
    pred, truth = _tumour_pair()
    pred[pred == 3] = 1
    assert region_metrics(pred, truth)["ET"] == {"dice": 0.0, "hd95": HD95_EMPTY}


def test_agreement_is_dice_per_region():
    pred, truth = _tumour_pair()
    result = agreement(pred, truth)
    assert result == pytest.approx({"WT": 2 * 1000 / 2200, "TC": 1.0, "ET": 0.75})


def test_summarise_two_cases():
    per_case = {
        "case_a": {"WT": {"dice": 0.8, "hd95": 2.0}, "ET": {"dice": 1.0, "hd95": 0.0}},
        "case_b": {"WT": {"dice": 0.6, "hd95": 6.0}, "ET": {"dice": 0.0, "hd95": 374.0}},
    }
    summary = summarise(per_case)
    assert summary["WT"]["dice"] == pytest.approx(
        {"mean": 0.7, "std": 0.1, "median": 0.7, "min": 0.6, "max": 0.8, "n": 2}
    )
    assert summary["WT"]["hd95"] == pytest.approx(
        {"mean": 4.0, "std": 2.0, "median": 4.0, "min": 2.0, "max": 6.0, "n": 2}
    )
    assert summary["ET"]["hd95"]["mean"] == pytest.approx(187.0)
    assert summarise({}) == {}
