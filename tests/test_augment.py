"""Training-time augmentation: reproducible, background exactly 0, labels moving with the images."""

from dataclasses import replace

import numpy as np
import pytest

from latup_edge.train.augment import Augmentation, augment_patch, thick_slices

SIZE = 32
LEVELS = (-1.5, -0.5, 0.7, 2.0)  # intensity of healthy brain and classes 1, 2, 3: increasing
ALL_ON = Augmentation(flip=0.5, spatial_p=1.0, intensity_p=1.0)
INTENSITY_FIELDS = ("gamma", "contrast", "brightness", "noise", "blur_sigma")


def synthetic_patch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ball of brain with an off-centre tumour of nested classes 2 > 1 > 3 (outer to inner), 3 channels."""
    grid = np.indices((SIZE,) * 3)
    brain = ((grid - (SIZE - 1) / 2) ** 2).sum(0) < 13**2
    tumour_distance = np.sqrt(((grid - np.array([11, 12, 19])[:, None, None, None]) ** 2).sum(0))
    classes = np.zeros((SIZE,) * 3, dtype=np.int64)
    classes[tumour_distance < 7] = 2
    classes[tumour_distance < 5] = 1
    classes[tumour_distance < 3] = 3
    classes[~brain] = 0
    level = np.asarray(LEVELS, dtype=np.float32)[classes]
    noise = np.random.default_rng(seed).normal(0, 0.05, (3,) + classes.shape).astype(np.float32)
    images = (level * np.array([1.0, 0.8, 1.2], dtype=np.float32)[:, None, None, None] + noise) * brain
    return images.astype(np.float32), classes


def intensity_only(**changes: float) -> Augmentation:
    return Augmentation(flip=0, rotate_deg=0, scale=0, spatial_p=0, intensity_p=1.0, **changes)


def test_the_same_seed_gives_identical_bytes_and_another_seed_differs():
    images, classes = synthetic_patch()
    first = augment_patch(images, classes, np.random.default_rng(5), ALL_ON)
    again = augment_patch(images, classes, np.random.default_rng(5), ALL_ON)
    other = augment_patch(images, classes, np.random.default_rng(6), ALL_ON)
    assert first[0].tobytes() == again[0].tobytes() and first[1].tobytes() == again[1].tobytes()
    assert first[0].tobytes() != other[0].tobytes()


def test_off_returns_copies_of_the_input():
    images, classes = synthetic_patch()
    out_images, out_classes = augment_patch(images, classes, np.random.default_rng(0), Augmentation.off())
    assert np.array_equal(out_images, images) and np.array_equal(out_classes, classes)
    assert not np.shares_memory(out_images, images) and not np.shares_memory(out_classes, classes)


@pytest.mark.parametrize("seed", range(5))
def test_shapes_dtypes_kept_and_inputs_unmodified(seed):
    images, classes = synthetic_patch()
    before = images.copy(), classes.copy()
    out_images, out_classes = augment_patch(images, classes, np.random.default_rng(seed), ALL_ON)
    assert out_images.shape == images.shape and out_images.dtype == np.float32
    assert out_classes.shape == classes.shape and out_classes.dtype == np.int64
    assert np.array_equal(images, before[0]) and np.array_equal(classes, before[1])


@pytest.mark.parametrize("seed", range(10))
def test_background_stays_exactly_zero_and_labels_valid(seed):
    images, classes = synthetic_patch()
    brain = np.any(images != 0, axis=0)
    out_images, _ = augment_patch(images, classes, np.random.default_rng(seed), intensity_only())
    assert np.all(out_images[:, ~brain] == 0) and np.all(np.any(out_images != 0, axis=0)[brain])
    # With spatial transforms too: labelling every brain voxel (class >= 1) makes the transformed brain mask
    # visible, and the non-zero voxels must be exactly it (no interpolated halo outside).
    labelled = np.where(brain, np.maximum(classes, 1), 0)
    out_images, out_classes = augment_patch(images, labelled, np.random.default_rng(seed), ALL_ON)
    assert set(np.unique(out_classes)) <= {0, 1, 2, 3}
    assert np.array_equal(np.any(out_images != 0, axis=0), out_classes > 0)


def test_flips_are_exact_for_images_and_labels():
    images, classes = synthetic_patch()
    aug = replace(Augmentation.off(), flip=1.0)
    out_images, out_classes = augment_patch(images, classes, np.random.default_rng(0), aug)
    assert np.array_equal(out_images, np.flip(images, (1, 2, 3)))
    assert np.array_equal(out_classes, np.flip(classes, (0, 1, 2)))


@pytest.mark.parametrize("seed", range(10))
def test_labels_move_with_the_images_under_flips_and_rotation(seed):
    images, classes = synthetic_patch()
    images[0][classes == 3] = 9.0  # distinctive: nothing else comes near it
    aug = Augmentation(flip=0.5, rotate_deg=15.0, scale=0, spatial_p=1.0, intensity_p=0)
    out_images, out_classes = augment_patch(images, classes, np.random.default_rng(seed), aug)
    distinctive = out_images[0] > 6.0
    assert distinctive.sum() > 0.5 * (classes == 3).sum()
    assert np.mean(out_classes[distinctive] == 3) >= 0.9


@pytest.mark.parametrize("field", (*INTENSITY_FIELDS, "all"))
def test_intensity_augmentations_keep_class_means_in_order(field):
    images, classes = synthetic_patch()
    brain = np.any(images != 0, axis=0)
    if field == "all":
        aug = intensity_only()
    else:
        aug = intensity_only(**{other: 0 for other in INTENSITY_FIELDS if other != field})
    regions = [brain & (classes == 0)] + [classes == label for label in (1, 2, 3)]
    for seed in range(20):
        out_images, out_classes = augment_patch(images, classes, np.random.default_rng(seed), aug)
        assert np.array_equal(out_classes, classes)
        for channel in out_images:
            means = [channel[region].mean() for region in regions]
            assert np.all(np.diff(means) > 0), (field, seed, means)


def test_blur_does_not_darken_the_brain_edge():
    images, classes = synthetic_patch()
    brain = np.any(images != 0, axis=0)
    flat = np.where(brain, np.float32(2.0), np.float32(0.0))[None].repeat(3, axis=0)
    aug = intensity_only(gamma=0, contrast=0, brightness=0, noise=0, blur_sigma=2.0)
    out_images, _ = augment_patch(flat, classes, np.random.default_rng(0), aug)
    assert np.allclose(out_images[:, brain], 2.0, atol=1e-5) and np.all(out_images[:, ~brain] == 0)


def test_thick_slices_read_a_ramp_back_between_slab_centres():
    ramp = np.broadcast_to(np.arange(20, dtype=np.float32)[None, None, :], (4, 5, 20)).copy()
    back = thick_slices(ramp, np.ones(ramp.shape, bool), axis=2, thickness=5)
    # slab means 2, 7, 12, 17 sit at the slab centres; a ramp is linear, so it returns exactly between them
    assert np.allclose(back[0, 0, 2:18], np.arange(2, 18))
    assert np.allclose(back[0, 0, :2], 2) and np.allclose(back[0, 0, 18:], 17)


def test_thick_slices_average_the_brain_only_and_leave_outside_zero():
    channel = np.full((3, 3, 10), 4.0, np.float32)
    brain = np.ones(channel.shape, bool)
    brain[:, :, :2] = False
    channel[~brain] = 0
    back = thick_slices(channel, brain, axis=2, thickness=5)
    assert np.allclose(back[brain], 4.0)  # the background in a slab does not darken the brain's edge
    assert not back[~brain].any()


def test_thick_acquisitions_smooth_along_one_axis_and_keep_labels_and_background():
    images, classes = synthetic_patch()
    aug = replace(Augmentation.off(), thick_p=1.0, thick_max=6)
    out_images, out_classes = augment_patch(images, classes, np.random.default_rng(3), aug)
    assert np.array_equal(out_classes, classes)
    assert np.all(out_images[:, ~np.any(images != 0, axis=0)] == 0)
    # each channel is smoother along exactly one axis (the slab axis) than the input is
    for before, after in zip(images, out_images, strict=True):
        roughness = [np.abs(np.diff(after, axis=a)).sum() / np.abs(np.diff(before, axis=a)).sum() for a in range(3)]
        assert sum(r < 0.8 for r in roughness) == 1, roughness


def test_thick_off_draws_nothing_so_earlier_recipes_repeat():
    images, classes = synthetic_patch()
    reference = augment_patch(images, classes, np.random.default_rng(5), ALL_ON)[0]
    with_flag_off = augment_patch(images, classes, np.random.default_rng(5), replace(ALL_ON, thick_max=3))[0]
    assert np.array_equal(reference, with_flag_off)
    assert not np.array_equal(
        reference, augment_patch(images, classes, np.random.default_rng(5), replace(ALL_ON, thick_p=1.0))[0]
    )


def test_settings_round_trip_and_reject_bad_values():
    aug = Augmentation(flip=0.2, noise=0.0)
    assert Augmentation(**aug.to_dict()) == aug
    assert all(value == 0 for value in Augmentation.off().to_dict().values())
    for bad in ({"flip": 1.5}, {"contrast": 1.0}, {"noise": -0.1}, {"thick_p": 1.5}, {"thick_p": 0.5, "thick_max": 1}):
        with pytest.raises(ValueError):
            Augmentation(**bad)
