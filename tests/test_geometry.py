"""Geometry: NIfTI <-> SimpleITK, the model grid, reorientation, resampling and labels back to native."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from latup_edge.scans.geometry import (
    classes_to_native,
    is_model_grid,
    labels_to_native,
    model_grid_for,
    nifti_to_sitk,
    physical_extent_mm,
    resample_onto,
    shares_lattice,
    sitk_to_nifti,
)

# A brain-sized crop of the BraTS grid (160 x 190 x 145 at 1 mm) around the phantom's brain.
CROP = (slice(40, 200), slice(25, 215), slice(5, 150))


def _oblique_affine() -> np.ndarray:
    rotation = sitk.Euler3DTransform((0, 0, 0), math.radians(12), math.radians(-7), math.radians(25)).GetMatrix()
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(rotation).reshape(3, 3) * np.array([0.9, 0.9, 5.0])
    affine[:3, 3] = (-91.25, 107.5, -60.125)
    return affine


@pytest.fixture(scope="module")
def phantom():
    pytest.importorskip("nilearn")
    from latup_edge.data.phantom import NARROW, make_phantom

    case = make_phantom("BraTS2021_00000", seed=0, index=0, randomise=NARROW)
    images = {m: nifti_to_sitk(nib.Nifti1Image(case.images[m][CROP], case.affine)) for m in ("t1ce", "flair")}
    return images, case.classes[CROP]


def _thick(image: sitk.Image, in_plane: float = 0.9, thickness: int = 5) -> sitk.Image:
    """A thick-slice acquisition of a 1 mm image: in-plane ``in_plane`` mm, ``thickness`` mm slabs averaged."""
    size = [int(image.GetSize()[0] / in_plane), int(image.GetSize()[1] / in_plane), image.GetSize()[2]]
    fine = sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        (in_plane, in_plane, 1.0),
        image.GetDirection(),
    )
    slabs = ndi.uniform_filter1d(sitk.GetArrayFromImage(fine), thickness, axis=0)[thickness // 2 :: thickness]
    thick = sitk.GetImageFromArray(slabs)
    thick.SetSpacing((in_plane, in_plane, float(thickness)))
    thick.SetOrigin(tuple(np.add(image.GetOrigin(), (0, 0, thickness // 2))))
    return thick


def test_nifti_round_trip_of_an_oblique_affine_is_exact(tmp_path):
    data = np.random.default_rng(0).random((7, 6, 5)).astype(np.float32)
    nifti = nib.Nifti1Image(data, _oblique_affine())
    image = nifti_to_sitk(nifti)
    assert image.GetSize() == (7, 6, 5) and image.GetPixelID() == sitk.sitkFloat32
    assert sitk.GetArrayFromImage(image)[4, 3, 2] == data[2, 3, 4]  # (z, y, x) against (x, y, z)
    back = sitk_to_nifti(image)
    np.testing.assert_allclose(back.affine, nifti.affine, atol=1e-6)
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), data)
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(nifti.affine)

    nib.save(back, tmp_path / "oblique.nii.gz")
    read = sitk.ReadImage(str(tmp_path / "oblique.nii.gz"))
    # The header stores the qform as float32 quaternions: agreement to 1e-4, not 1e-6.
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


def test_brats_affine_is_the_model_grid():
    from latup_edge.data.phantom import BRATS_AFFINE

    image = nifti_to_sitk(nib.Nifti1Image(np.zeros((24, 24, 15), np.int16), BRATS_AFFINE))
    assert image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1) and is_model_grid(image)
    grid = model_grid_for(image)
    assert (grid.GetSize(), grid.GetOrigin(), grid.GetSpacing()) == (image.GetSize(), image.GetOrigin(), (1, 1, 1))
    assert physical_extent_mm(image) == (24.0, 24.0, 15.0)


def test_model_grid_covers_an_oblique_field_of_view():
    image = nifti_to_sitk(nib.Nifti1Image(np.zeros((200, 220, 30), np.float32), _oblique_affine()))
    assert not is_model_grid(image)
    assert physical_extent_mm(image) == pytest.approx((180.0, 198.0, 150.0))
    grid = model_grid_for(image)
    assert is_model_grid(grid, tolerance=0) and grid.GetSpacing() == (1.0, 1.0, 1.0)
    for index in np.ndindex(2, 2, 2):
        corner = image.TransformContinuousIndexToPhysicalPoint(
            [i * s - 0.5 for i, s in zip(index, image.GetSize(), strict=True)]
        )
        inside = np.asarray(grid.TransformPhysicalPointToContinuousIndex(corner))
        assert np.all(inside >= -0.5 - 1e-6) and np.all(inside <= np.asarray(grid.GetSize()) - 0.5 + 1e-6)


def test_reorient_is_exact_and_reversible():
    data = np.random.default_rng(1).integers(0, 1000, (20, 30, 40)).astype(np.float32)
    ras = nifti_to_sitk(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])))  # RAS voxel order
    grid = model_grid_for(ras)
    reoriented, record = resample_onto(ras, grid, label="T2")
    assert record["step"] == "reorient" and record["from"] == "RAS"
    assert is_model_grid(reoriented, tolerance=0)
    # LPS voxel order flips the first two voxel axes of RAS: numpy (z, y, x) flips y and x.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reoriented), data.transpose(2, 1, 0)[:, ::-1, ::-1])
    back = sitk.DICOMOrient(reoriented, "RAS")
    assert sitk.GetArrayFromImage(back).tobytes() == sitk.GetArrayFromImage(ras).tobytes()
    np.testing.assert_allclose(back.GetOrigin(), ras.GetOrigin(), atol=1e-9)


def test_a_near_1_mm_reference_is_segmented_on_its_own_voxels_and_its_labels_come_back_exactly():
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 4, (20, 30, 24)).astype(np.uint8)
    # A sagittal 0.9 mm series: its own voxels, reoriented to LPS, are the model grid.
    sagittal = np.array([[0, 0, -0.9, 10.0], [0.9, 0, 0, -20.0], [0, -0.9, 0, 30.0], [0, 0, 0, 1]])
    native = nifti_to_sitk(nib.Nifti1Image(np.zeros(classes.shape, np.float32), sagittal))
    grid = model_grid_for(native)
    assert grid.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1) and grid.GetSpacing() == pytest.approx((0.9,) * 3)
    assert sorted(grid.GetSize()) == sorted(classes.shape) and shares_lattice(grid, native)
    on_grid = classes_to_native(classes, native, grid)  # native -> grid: a reorientation
    back = classes_to_native(on_grid.transpose(2, 1, 0), grid, native)
    assert back.tobytes() == classes.transpose(2, 1, 0).tobytes()
    # Probabilities are not interpolated: the final classes (override) come back as they are.
    probabilities = rng.random((4, *on_grid.transpose(2, 1, 0).shape)).astype(np.float32)
    assert (
        labels_to_native(probabilities, grid, native, override=on_grid.transpose(2, 1, 0)).tobytes() == back.tobytes()
    )
    # 0.8 mm and 1.1 mm are outside OWN_VOXELS_MM: a 1 mm grid over the field of view, labels interpolated.
    for step in (0.8, 1.1):
        other = nifti_to_sitk(nib.Nifti1Image(np.zeros(classes.shape, np.float32), np.diag([-step, -step, step, 1.0])))
        one_mm = model_grid_for(other)
        assert one_mm.GetSpacing() == (1.0, 1.0, 1.0) and not shares_lattice(one_mm, other), step


def test_anisotropic_resampling_is_closer_to_the_truth_than_linear_and_nearest(phantom):
    truth = phantom[0]["t1ce"]
    thick = _thick(truth)
    resampled, record = resample_onto(thick, truth, label="T1ce")
    assert record["step"] == "resample" and record["anisotropic"] and record["from_spacing"] == [0.9, 0.9, 5.0]
    values, expected = sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(truth)
    brain = expected > 0

    def rmse(array: np.ndarray) -> float:
        return float(np.sqrt(np.mean((array[brain] - expected[brain]) ** 2)) / np.percentile(expected[brain], 99))

    single = {
        name: rmse(sitk.GetArrayFromImage(sitk.Resample(thick, truth, sitk.Transform(), kind, 0.0, sitk.sitkFloat32)))
        for name, kind in (("nearest", sitk.sitkNearestNeighbor), ("linear", sitk.sitkLinear))
    }
    ours = rmse(values)
    assert ours < 0.95 * single["linear"] < single["nearest"]  # measured: 6.6 %, 7.2 %, 8.8 %
    assert sitk.GetArrayFromImage(thick).min() <= values.min() and values.max() <= sitk.GetArrayFromImage(thick).max()
    # The zero background survives: nonzero only within the 5 mm slabs' blur of the brain's edge.
    assert np.mean(values[~ndi.binary_dilation(brain, iterations=5)] != 0) < 0.002


def test_label_array_orders():
    grid = sitk.Image(6, 5, 4, sitk.sitkFloat32)
    probabilities = np.zeros((3, 6, 5, 4), np.float32)
    probabilities[0] = 1.0
    probabilities[:, 4, 1, 2] = (0.1, 0.2, 0.7)  # network order (x, y, z)
    classes = labels_to_native(probabilities, grid, grid)
    assert classes.shape == (4, 5, 6) and classes.dtype == np.uint8
    assert classes[2, 1, 4] == 2 and classes.sum() == 2  # SimpleITK order (z, y, x)


def test_labels_to_native_follow_the_truth_and_removed_components_stay_removed(phantom):
    images, classes = phantom
    grid = images["t1ce"]
    native = _thick(grid)
    one_hot = (classes[None] == np.arange(4).reshape(4, 1, 1, 1)).astype(np.float32)
    # The truth on the native grid: the majority class over each native voxel's footprint.
    truth = np.argmax(sitk.GetArrayFromImage(_thick(_vector(one_hot, grid))), axis=-1)
    # A network's soft output: the truth with a smooth boundary, its argmax still the truth.
    probabilities = 0.6 * one_hot + 0.4 * np.stack([ndi.gaussian_filter(channel, 1.0) for channel in one_hot])
    # A spurious blob of oedema far from the tumour that post-processing removes.
    spurious = (slice(20, 26), slice(20, 26), slice(60, 72))
    probabilities[:, spurious[0], spurious[1], spurious[2]] = np.array([0.1, 0, 0.9, 0]).reshape(4, 1, 1, 1)
    found = labels_to_native(probabilities, grid, native, override=classes)
    assert found.shape == sitk.GetArrayFromImage(native).shape

    nearest = sitk.GetArrayFromImage(
        sitk.Resample(_classes_image(classes, grid), native, sitk.Transform(), sitk.sitkNearestNeighbor)
    )
    interpolated = classes_to_native(classes, grid, native)
    # Measured Dice against the truth, NCR/ED/ET: 0.986/0.984/0.886 (the thin ET rim on 5 mm slabs).
    for label, least in ((1, 0.95), (2, 0.95), (3, 0.85)):
        assert _dice(found == label, truth == label) > least
        # From the same classes, interpolating the one-hot beats nearest (ET: 0.880 against 0.847).
        assert _dice(interpolated == label, truth == label) > _dice(nearest == label, truth == label)
    blob = _native_box(spurious, grid, native)
    assert not found[blob].any()
    assert (labels_to_native(probabilities, grid, native)[blob] == 2).any()  # without the override it stays


def _vector(channels: np.ndarray, grid: sitk.Image) -> sitk.Image:
    vector = sitk.GetImageFromArray(np.ascontiguousarray(channels.transpose(3, 2, 1, 0)), isVector=True)
    vector.CopyInformation(grid)
    return vector


def _classes_image(classes: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(classes.transpose(2, 1, 0)))
    image.CopyInformation(grid)
    return image


def _native_box(box: tuple[slice, slice, slice], grid: sitk.Image, native: sitk.Image) -> tuple[slice, ...]:
    """The (z, y, x) native voxels inside a grid box given in (x, y, z)."""
    low = native.TransformPhysicalPointToIndex(grid.TransformIndexToPhysicalPoint([s.start for s in box]))
    high = native.TransformPhysicalPointToIndex(grid.TransformIndexToPhysicalPoint([s.stop - 1 for s in box]))
    return tuple(slice(lo, hi + 1) for lo, hi in zip(low, high, strict=True))[::-1]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float(np.logical_and(a, b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def test_the_through_plane_spline_is_simpleitks_bspline_along_one_axis():
    from latup_edge.scans.geometry import _through_plane

    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(100, 20, (20, 30, 25)).astype(np.float32))
    image.SetSpacing((0.9, 0.9, 5.0))
    image.SetOrigin((3.0, 4.0, 5.0))
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.2, 0.1, 0.3)
    image.SetDirection(rotation.GetMatrix())
    ours = _through_plane(image)
    assert ours.GetSize() == (25, 30, 111) and np.allclose(ours.GetSpacing(), (0.9, 0.9, 100 / 111))
    reference = sitk.Resample(image, ours, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference), atol=1e-3)


def test_labels_mapped_from_the_tumour_box_equal_labels_mapped_from_the_whole_grid():
    grid = sitk.Image(40, 36, 30, sitk.sitkUInt8)
    native = sitk.Image(50, 44, 12, sitk.sitkUInt8)
    native.SetSpacing((0.9, 0.85, 2.7))
    native.SetOrigin((-2.0, 1.5, 0.7))
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.05, -0.1, 0.2)
    native.SetDirection(rotation.GetMatrix())
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(4), size=(40, 36, 30)).transpose(3, 0, 1, 2).astype(np.float32)
    outside_tumour = np.pad(np.ones((28, 24, 18), bool), ((0, 12), (0, 12), (12, 0))) == 0
    probabilities[0] += 3.0 * outside_tumour  # background wins there: the box to map is a part of the grid
    probabilities /= probabilities.sum(axis=0)
    found = labels_to_native(probabilities, grid, native)
    # The whole grid, through SimpleITK directly: what the cropped path must reproduce.
    vector = sitk.GetImageFromArray(np.ascontiguousarray(probabilities.transpose(3, 2, 1, 0)), True)
    vector.CopyInformation(grid)
    whole = sitk.Resample(vector, native, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32)
    expected = np.argmax(sitk.GetArrayFromImage(whole), axis=-1)
    assert 0 < (expected != 0).sum() < expected.size and (found != 0).sum() > 0
    np.testing.assert_array_equal(found, expected)
