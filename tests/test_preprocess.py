"""Cropping and intensity scaling: pure functions on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from latup_edge.data.preprocess import Crop, apply_crop, brain_box, minmax_normalize, paper_crop, undo_crop


def brain_volume(shape: tuple[int, int, int], low: tuple[int, ...], high: tuple[int, ...]) -> np.ndarray:
    """Two channels of random positive values inside the box [low, high), zeros around it."""
    rng = np.random.default_rng(0)
    images = np.zeros((2, *shape), dtype=np.float32)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    images[(slice(None), *box)] = rng.uniform(0.1, 1.0, size=images[(slice(None), *box)].shape)
    return images


def assert_round_trip(volume: np.ndarray, crop: Crop) -> None:
    cropped = apply_crop(volume, crop)
    assert cropped.shape == (*volume.shape[:-3], *crop.shape)
    restored = undo_crop(cropped, crop)
    assert restored.shape == volume.shape
    inside = tuple(
        slice(max(a, 0), min(b, s)) for a, b, s in zip(crop.start, crop.stop, volume.shape[-3:], strict=True)
    )
    np.testing.assert_array_equal(restored[(..., *inside)], volume[(..., *inside)])
    outside = np.ones(volume.shape[-3:], dtype=bool)
    outside[inside] = False
    assert not restored[..., outside].any()


def test_paper_crop_reproduces_the_papers_indices() -> None:
    crop = paper_crop((240, 240, 155))
    assert (crop.start, crop.stop, crop.shape) == ((56, 56, 13), (184, 184, 141), (128, 128, 128))


def test_paper_crop_round_trip_and_padding_on_a_short_axis() -> None:
    volume = np.random.default_rng(1).uniform(1, 2, size=(3, 130, 140, 100)).astype(np.float32)
    crop = paper_crop(volume.shape[1:])
    assert crop.start[2] == -14 and crop.stop[2] == 114  # 28 voxels of padding, split evenly
    cropped = apply_crop(volume, crop)
    assert not cropped[..., :14].any() and not cropped[..., 114:].any()
    assert_round_trip(volume, crop)


def test_brain_box_contains_the_brain_in_multiples_of_eight() -> None:
    images = brain_volume((40, 50, 30), (5, 7, 3), (28, 40, 20))
    crop = brain_box(images)
    assert all(side % 8 == 0 for side in crop.shape)
    assert all(a >= 0 and b <= s for a, b, s in zip(crop.start, crop.stop, images.shape[1:], strict=True))
    cropped = apply_crop(images, crop)
    assert np.count_nonzero(cropped) == np.count_nonzero(images)
    assert_round_trip(images, crop)


def test_brain_box_at_the_image_border_stays_inside() -> None:
    images = brain_volume((30, 30, 30), (0, 20, 0), (13, 30, 12))
    crop = brain_box(images, margin=2)
    assert crop == Crop((30, 30, 30), (0, 14, 0), (16, 30, 16))
    assert all(a >= 0 and b <= 30 and (b - a) % 8 == 0 for a, b in zip(crop.start, crop.stop, strict=True))
    assert_round_trip(images, crop)


def test_brain_box_pads_beyond_an_image_shorter_than_the_multiple() -> None:
    images = brain_volume((20, 21, 6), (2, 0, 0), (18, 21, 6))
    crop = brain_box(images, multiple=8)
    assert crop.shape == (16, 24, 8)
    # Same rounding as paper_crop: an odd padding puts the extra voxel before the image.
    assert crop.start[1:] == (-2, -1) and crop.stop[1:] == (22, 7)
    assert np.count_nonzero(apply_crop(images, crop)) == np.count_nonzero(images)
    assert_round_trip(images, crop)


def test_brain_box_margin_and_three_d_input() -> None:
    volume = brain_volume((40, 40, 40), (10, 10, 10), (20, 20, 20))[0]
    assert brain_box(volume, multiple=1, margin=3) == Crop((40, 40, 40), (7, 7, 7), (23, 23, 23))


def test_brain_box_rejects_an_empty_volume() -> None:
    with pytest.raises(ValueError, match="all zeros"):
        brain_box(np.zeros((1, 8, 8, 8)))


def test_crop_wholly_outside_the_image_is_all_fill() -> None:
    crop = Crop((4, 4, 4), (-10, 0, 0), (-2, 4, 4))
    assert (apply_crop(np.ones((4, 4, 4)), crop, fill=-1) == -1).all()


def test_crop_coordinates_from_json_lists_compare_equal() -> None:
    assert Crop([240, 240, 155], [56, 56, 13], [184, 184, 141]) == paper_crop((240, 240, 155))
    with pytest.raises(ValueError, match="stop > start"):
        Crop((4, 4, 4), (0, 0, 2), (4, 4, 2))


def test_minmax_normalize_scales_each_channel_and_zeroes_a_constant_one() -> None:
    ramp = np.linspace(0, 1000, 64)
    images = np.stack([np.linspace(-5, 15, 64), np.full(64, 7.0), ramp]).reshape(3, 4, 4, 4)
    normalized = minmax_normalize(images)
    assert normalized.dtype == np.float32
    assert normalized[0].min() == 0 and normalized[0].max() == 1
    assert not normalized[1].any()
    np.testing.assert_allclose(normalized[2].ravel(), np.linspace(0, 1, 64), atol=1e-6)
    assert images[1, 0, 0, 0] == 7.0  # the input is left alone
