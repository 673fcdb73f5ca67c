"""Refusals of scans the model cannot segment, on synthetic brain-like volumes at 2 mm."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from latup_edge.data.cases import zero_constant_background
from latup_edge.scans.checks import ScanError, check_coverage, check_distinct, check_skull_stripped

SPACING = 2.0


def _ellipsoid(shape: tuple[int, int, int], semi_axes_mm: tuple[float, float, float]) -> np.ndarray:
    """Normalised radius (1 on the surface) of an ellipsoid centred in a (z, y, x) grid."""
    axes = [(np.arange(n) - (n - 1) / 2) * SPACING / a for n, a in zip(shape, semi_axes_mm, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2)


def _image(values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing((SPACING, SPACING, SPACING))
    return image


SHAPE = (100, 120, 100)  # 200 x 240 x 200 mm


def _brain() -> np.ndarray:
    """A skull-stripped brain: 1.5 L, white matter, cortex, dark ventricles, zeros outside."""
    rng = np.random.default_rng(0)
    radius = _ellipsoid(SHAPE, (60.0, 85.0, 70.0))
    brain = np.where(radius < 0.8, 700.0, 500.0) * (radius < 1)
    brain[radius < 0.25] = 150.0
    brain[radius < 1] += rng.normal(0, 20, int((radius < 1).sum()))
    return np.clip(brain, 0, None) * (radius < 1)


def _head() -> np.ndarray:
    """The same brain inside CSF, a dark skull and a bright scalp, over a Rician noise floor."""
    rng = np.random.default_rng(1)
    radius = _ellipsoid(SHAPE, (60.0, 85.0, 70.0))
    head = _brain()
    head[(radius >= 1) & (radius < 1.08)] = 200.0  # CSF
    head[(radius >= 1.08) & (radius < 1.18)] = 60.0  # skull
    head[(radius >= 1.18) & (radius < 1.3)] = 900.0  # scalp fat
    noise = np.hypot(head + rng.normal(0, 15, SHAPE), rng.normal(0, 15, SHAPE))
    return noise


def test_skull_stripped_brain_passes_with_its_figures():
    figures = check_skull_stripped(_image(_brain()), "FLAIR series 'AX FLAIR'")
    assert figures["zero_fraction"] > 0.99
    assert 1300 < figures["foreground_ml"] < 1700  # 4/3 pi 60 85 70 mm^3 = 1.50 L
    assert figures["shell_ratio"] < 1.0


def test_head_with_skull_is_refused_naming_the_remedy():
    with pytest.raises(ScanError, match=r"FLAIR series 'AX FLAIR' is not skull-stripped.*HD-BET or SynthStrip") as e:
        check_skull_stripped(_image(_head()), "FLAIR series 'AX FLAIR'")
    message = str(e.value)
    assert message.endswith("first.") and ". " not in message  # one sentence
    assert " 0 % of its background" in message


def test_a_large_skull_stripped_brain_passes():
    """A generator's MNI brain scaled by +10 % is 2.6 L; it was refused as a head while the bound was 2.5 L."""
    radius = _ellipsoid(SHAPE, (73.0, 104.0, 85.0))
    brain = np.where(radius < 0.8, 700.0, 500.0) * (radius < 1)  # 4/3 pi 73 104 85 mm^3 = 2.70 L
    figures = check_skull_stripped(_image(brain), "FLAIR")
    assert 2500 < figures["foreground_ml"] < 3000


def test_a_head_whose_air_was_zeroed_is_refused_by_its_volume():
    head = _head()
    head[head < 100] = 0  # a scanner or converter that zeroes the air: only the volume tells a head
    with pytest.raises(ScanError, match=r"T1 is not skull-stripped: its foreground is 3\.\d L, more than any") as e:
        check_skull_stripped(_image(head), "T1")
    assert ". " not in str(e.value)  # one sentence


def test_head_figures(monkeypatch):
    monkeypatch.setattr("latup_edge.scans.checks.MAX_BRAIN_ML", 1e9)
    monkeypatch.setattr("latup_edge.scans.checks.MIN_ZERO_FRACTION", 0.0)
    figures = check_skull_stripped(_image(_head()), "FLAIR")
    assert figures["zero_fraction"] < 0.01
    assert 3000 < figures["foreground_ml"] < 4500  # 1.3^3 x 1.50 L = 3.3 L
    assert figures["shell_ratio"] > 1.0  # the bright scalp


def test_thin_slab_is_refused_with_its_extent():
    slab = _image(_brain()[45:55])  # 10 slices of 2 mm
    with pytest.raises(ScanError, match=r"T1ce series 3 covers only 20 mm along its axis 2 \(a brain needs 130-170 mm"):
        check_coverage(slab, "T1ce series 3")
    assert check_coverage(_image(_brain()), "T1ce")["extent_mm"] == [200.0, 240.0, 200.0]


def test_a_constant_offset_outside_the_brain_is_named_as_such():
    with pytest.raises(ScanError, match=r"FLAIR has the constant 10 instead of 0 outside the brain.*scl_inter") as e:
        check_skull_stripped(_image(_brain() + 10.0), "FLAIR")
    assert ". " not in str(e.value)  # one sentence


def test_a_constant_background_is_set_to_zero_and_the_brain_kept():
    brain = _brain()
    values = brain + 10.0  # an offset: 10 outside the brain
    values[50, 60, 50] = 10.0  # a brain voxel that equals the offset, enclosed: it is not background
    figures = zero_constant_background(values)
    assert figures == {"offset": 10.0, "zeroed": int((brain == 0).sum())}
    expected = np.where(brain == 0, 0.0, brain + 10.0)
    expected[50, 60, 50] = 10.0
    np.testing.assert_array_equal(values, expected)
    assert check_skull_stripped(_image(values), "FLAIR")["zero_fraction"] > 0.99
    assert zero_constant_background(_brain()) is None  # zeros outside: nothing to do
    assert zero_constant_background(_head()) is None  # a noise floor is no constant


def test_a_z_scored_skull_stripped_brain_passes():
    brain = _brain()
    inside = brain != 0
    brain[inside] = (brain[inside] - brain[inside].mean()) / brain[inside].std()  # negatives inside, zeros outside
    figures = check_skull_stripped(_image(brain), "FLAIR")
    assert figures["zero_fraction"] > 0.99 and figures["foreground_ml"] < 2000


LABELS = ["FLAIR file 'a_flair.nii.gz'", "T1ce file 'a_t1ce.nii.gz'", "T2 file 'a_t2.nii.gz'"]


def _acquisitions(count: int) -> np.ndarray:
    """``count`` acquisitions of one brain: the same anatomy, each with its own contrast and noise."""
    radius = _ellipsoid(SHAPE, (60.0, 85.0, 70.0))
    inside = radius < 1
    images = np.zeros((count, *SHAPE), np.float32)
    for index, (white, grey, csf) in enumerate([(700, 500, 150), (900, 600, 100), (300, 450, 900)][:count]):
        values = np.where(radius < 0.8, white, grey).astype(np.float32)
        values[radius < 0.25] = csf
        noise = np.random.default_rng(index).normal(0, 20, int(inside.sum()))
        images[index][inside] = values[inside] + noise
    return images


def test_a_modality_given_twice_is_refused_naming_both_files():
    images = _acquisitions(3)
    assert check_distinct(images, LABELS)["highest_correlation"] < 0.99  # three acquisitions pass
    images[2] = np.round(images[0] * 0.37 + 12)  # T2's file is FLAIR's image, rescaled and re-quantised
    with pytest.raises(ScanError, match=r"FLAIR file 'a_flair.nii.gz' and T2 file 'a_t2.nii.gz' hold the same image"):
        check_distinct(images, LABELS)


def test_two_acquisitions_with_one_contrast_are_not_copies():
    images = _acquisitions(2)
    images[1] = images[0] + np.random.default_rng(7).normal(0, 20, SHAPE) * (images[0] != 0)  # a repeat scan
    assert check_distinct(images, LABELS[:2])["highest_correlation"] < 0.9999


def test_a_blank_modality_has_nothing_to_compare():
    images = _acquisitions(2)
    images[1] = 0
    assert check_distinct(images, LABELS[:2]) == {"highest_correlation": None}
