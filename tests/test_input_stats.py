"""Input statistics and the OOD score (latup_edge.runtime.input_stats) on small synthetic brains."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from latup_edge.runtime.input_stats import case_statistics, ood_score, reference_statistics

MODALITIES = ("flair", "t1ce", "t2")
SHAPE = (40, 44, 36)


def _brain(seed: int) -> np.ndarray:
    """A skull-stripped ellipsoid brain: WM, GM shell, CSF ventricles and an oedema blob per modality.

    FLAIR suppresses CSF and shows oedema brightest; T2 has CSF brightest; tissue gains vary by case.
    """
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(np.float32)
    centre = np.array(SHAPE)[:, None, None, None] / 2
    radius = np.array([16, 18, 14])[:, None, None, None] * rng.uniform(0.95, 1.05)
    r = np.sqrt((((grid - centre) / radius) ** 2).sum(axis=0))
    brain, gm, csf = r < 1, (r > 0.8) & (r < 1), r < 0.25
    lesion = np.sqrt(((grid - centre - np.array([6, 5, 0])[:, None, None, None]) ** 2).sum(axis=0)) < 5
    levels = {  # WM, GM, CSF, oedema
        "flair": (0.6, 0.8, 0.15, 1.6),
        "t1ce": (1.0, 0.7, 0.3, 0.6),
        "t2": (0.5, 0.8, 2.0, 1.4),
    }
    images = np.zeros((3, *SHAPE), np.float32)
    for channel, name in enumerate(MODALITIES):
        wm, g, c, ed = (v * rng.uniform(0.85, 1.15) for v in levels[name])
        volume = np.full(SHAPE, wm, np.float32)
        volume[gm], volume[csf], volume[lesion] = g, c, ed
        volume = volume + rng.normal(0, 0.03, SHAPE)
        images[channel] = np.where(brain, np.clip(volume, 0.01, None) * rng.uniform(100, 1000), 0)
    return images


@pytest.fixture(scope="module")
def reference() -> dict:
    return reference_statistics([case_statistics(_brain(seed), MODALITIES, (1, 1, 1)) for seed in range(8)])


def test_the_reference_is_compact_json(reference):
    assert reference["n"] == 8
    text = json.dumps(reference)
    assert len(text) < 4000
    assert set(reference["figures"]["mean_log_spread"]) == {"min", "max", "mean", "std", "q25", "median", "q75"}


def test_statistics_report_percentiles_geometry_and_figures():
    stats = case_statistics(_brain(0), MODALITIES, (1.0, 1.0, 2.0))
    assert list(stats["modalities"]["t2"]["percentiles"]) == ["1", "5", "25", "50", "75", "95", "99"]
    assert stats["modalities"]["t2"]["over_median"]["50"] == 1.0
    assert stats["geometry"]["spacing"] == [1.0, 1.0, 2.0]
    voxels = np.count_nonzero(_brain(0).any(axis=0))
    assert stats["geometry"]["brain_volume_ml"] == pytest.approx(voxels * 2 / 1000, abs=0.01)
    assert stats["figures"]["bright_asymmetry.flair~t2"] > 0


def test_ordinary_cases_and_any_intensity_scale_are_not_flagged(reference):
    for seed in range(100, 104):
        images = _brain(seed)
        assert ood_score(case_statistics(images, MODALITIES, (1, 1, 1)), reference)["flags"] == []
        scaled = images * np.array([7.0, 0.01, 300.0], np.float32)[:, None, None, None]
        assert ood_score(case_statistics(scaled, MODALITIES, (1, 1, 1)), reference)["flags"] == []


def test_brain_masks_that_differ_at_the_edge_do_not_move_the_intensity_figures(reference):
    # A resampled series: its brain mask lacks the reference's outermost voxel layer (zeros there).
    images = _brain(100)
    brain = np.any(images != 0, axis=0)
    edge = brain & ~ndimage.binary_erosion(brain)
    trimmed = images.copy()
    trimmed[0][edge] = 0
    before = case_statistics(images, MODALITIES, (1, 1, 1))["figures"]["mean_log_spread"]
    stats = case_statistics(trimmed, MODALITIES, (1, 1, 1))
    assert abs(stats["figures"]["mean_log_spread"] - before) < 0.05
    assert ood_score(stats, reference)["flags"] == []


def test_a_flair_t2_swap_is_flagged(reference):
    swapped = _brain(100)[[2, 1, 0]]
    flags = ood_score(case_statistics(swapped, MODALITIES, (1, 1, 1)), reference)["flags"]
    assert any(flag.startswith("bright_asymmetry.flair~t2") and "swapped" in flag for flag in flags)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_a_gamma_distortion_is_flagged(reference, gamma):
    images = _brain(100)
    top = images.reshape(3, -1).max(axis=1)[:, None, None, None]
    distorted = top * (images / top) ** gamma
    result = ood_score(case_statistics(distorted, MODALITIES, (1, 1, 1)), reference)
    assert any(flag.startswith("mean_log_spread") for flag in result["flags"]), result


def test_thick_slices_are_flagged_by_their_spacing(reference):
    thick = _brain(100)[..., 1::3]
    result = ood_score(case_statistics(thick, MODALITIES, (1, 1, 3)), reference)
    assert any(flag.startswith("spacing.z") for flag in result["flags"])
    assert result["worst"] == "spacing.z"


def test_a_head_that_was_not_skull_stripped_is_flagged(reference):
    head = _brain(100)
    head[head == 0] = np.random.default_rng(0).uniform(1, 20, size=int((head == 0).sum()))
    flags = ood_score(case_statistics(head, MODALITIES, (1, 1, 1)), reference)["flags"]
    assert any(flag.startswith("brain_fill") for flag in flags)


def test_images_that_do_not_match_the_modalities_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        case_statistics(np.ones((2, 4, 4, 4), np.float32), MODALITIES, (1, 1, 1))


def test_a_z_scored_input_is_scored_by_ranks_and_geometry_only(reference):
    images = _brain(100)
    brain = np.any(images != 0, axis=0)
    z_scored = images.copy()
    for volume in z_scored:  # zero outside the brain, negative values inside
        volume[brain] = (volume[brain] - volume[brain].mean()) / volume[brain].std()
    stats = case_statistics(z_scored, MODALITIES, (1, 1, 1))
    assert "mean_log_spread" not in stats["figures"]
    original = case_statistics(images, MODALITIES, (1, 1, 1))["figures"]
    # z-scoring is increasing within each modality: the rank figures do not move
    assert stats["figures"]["bright_asymmetry.flair~t2"] == pytest.approx(
        original["bright_asymmetry.flair~t2"], abs=0.01
    )
    assert ood_score(stats, reference)["flags"] == []
