"""scans.study: BraTS-ready cases untouched; any other geometry checked, registered, resampled and mapped back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from synthetic_head import AXIAL, MODALITIES, OBLIQUE, clinic_images, head_image, motion, write_nifti_case

from latup_edge.data.cases import CaseError, discover_cases, load_case_images
from latup_edge.data.naming import case_filename
from latup_edge.scans import study
from latup_edge.scans.checks import ScanError
from latup_edge.scans.geometry import nifti_to_sitk
from latup_edge.scans.registration import RegistrationError, registration_error_mm
from latup_edge.scans.study import NativeGrid, discover_scans, labels_on_native_grid, load_scan, share_brain_mask


@pytest.fixture(scope="module")
def clinic_case(tmp_path_factory) -> Path:
    return write_nifti_case(tmp_path_factory.mktemp("clinic"), "BraTS2021_00001", clinic_images())


@pytest.fixture(scope="module")
def loaded(clinic_case):
    return load_scan(discover_scans(clinic_case.parent)[0], MODALITIES)


def test_a_brats_ready_case_takes_exactly_the_path_of_load_case_images(tmp_path):
    affine = np.array([[-1.0, 0, 0, 30.0], [0, -1.0, 0, 200.0], [0, 0, 1.0, -20.0], [0, 0, 0, 1]])
    folder = tmp_path / "BraTS2021_00002"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for key in MODALITIES:
        nib.save(nib.Nifti1Image(rng.normal(300, 50, (30, 34, 28)).astype(np.float32), affine),
                 folder / case_filename("BraTS2021_00002", key, "2021"))  # fmt: skip
    case = discover_cases(tmp_path)[0]
    loaded = load_scan(case, MODALITIES)
    images, reference = load_case_images(case, MODALITIES)
    assert loaded.native is None and [step["step"] for step in loaded.steps] == ["none"]
    np.testing.assert_array_equal(loaded.images, images)
    np.testing.assert_array_equal(loaded.reference.affine, reference.affine)


def test_another_geometry_is_checked_registered_and_resampled_onto_the_1mm_lps_grid(loaded):
    steps = loaded.steps
    assert [s["modality"] for s in steps if s["step"] == "check"] == list(MODALITIES)
    registered = [s for s in steps if s["step"] == "register"]
    assert [s["modality"] for s in registered] == ["flair"]  # T2 shares T1ce's grid: nothing to register
    assert registered[0]["converged"] and registered[0]["mask_dice_after"] > registered[0]["mask_dice_before"]
    assert list(registered[0]["levels_mm"]) == [4.0, 2.0]  # an input: both levels of the pyramid
    assert {s["modality"] for s in steps if s["step"] == "resample"} == set(MODALITIES)
    np.testing.assert_allclose(loaded.reference.affine[:3, :3], np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    assert loaded.images.shape == (3, *loaded.reference.shape)
    # The lesion lands on the same voxels in every channel once FLAIR's motion is undone.
    lesions = loaded.images > 650
    for channel in (0, 2):
        overlap = (lesions[channel] & lesions[1]).sum() / ((lesions[channel].sum() + lesions[1].sum()) / 2)
        assert overlap > 0.9, (channel, overlap)


def test_every_channel_takes_t1ce_brain_once_resampled(loaded):
    support = loaded.images != 0
    assert (support == support[1]).all()  # MODALITIES: FLAIR, T1ce, T2
    (step,) = [s for s in loaded.steps if s["step"] == "brain mask"]
    assert step["from"] == "t1ce" and step["voxels"] == int(support[1].sum())


def test_the_shared_brain_mask_clears_outside_and_fills_inside_with_the_nearest_value():
    images = np.zeros((2, 8, 8, 8), np.float32)
    images[0, 2:6, 2:6, 2:6] = 5.0  # the reference's brain
    images[1, 1:7, 2:6, 2:6] = 3.0  # a series whose brain ends a slab further along x
    images[1, 2:6, 2:6, 5] = 0.0  # ... and a slab short along z
    images[1, 3, 3, 4] = 7.0
    step = share_brain_mask(images, 0, ["t1ce", "t2"])
    assert ((images[1] != 0) == (images[0] != 0)).all()
    assert step["cleared"] == {"t1ce": 0, "t2": 2 * 16} and step["filled"] == {"t1ce": 0, "t2": 16}
    assert images[1, 3, 3, 5] == 7.0 and images[1, 2, 2, 5] == 3.0  # each hole takes its nearest value


def test_registration_recovers_the_known_head_motion_within_1mm(clinic_case):
    reference = nifti_to_sitk(nib.load(clinic_case / "BraTS2021_00001_t1ce.nii.gz"))
    moving = nifti_to_sitk(nib.load(clinic_case / "BraTS2021_00001_flair.nii.gz"))
    found = study.register_rigid(reference, moving)
    mask = sitk.Cast(reference > 0, sitk.sitkUInt8)
    assert registration_error_mm(motion(), found.transform, mask, points=4000) <= 1.0


def test_labels_go_back_onto_the_reference_series_grid(clinic_case, loaded):
    native = loaded.native
    assert isinstance(native, NativeGrid) and native.series is None
    reference = nib.load(clinic_case / "BraTS2021_00001_t1ce.nii.gz")
    np.testing.assert_allclose(native.header.affine, reference.affine, atol=1e-5)
    classes = np.where(loaded.images[1] > 650, 3, 0).astype(np.uint8)
    labels, record = labels_on_native_grid(native, classes, None)
    assert labels.shape == reference.shape and record["step"] == "labels to native grid"
    truth = np.asanyarray(reference.dataobj) > 650
    found = labels == 3
    assert 2 * (truth & found).sum() / (truth.sum() + found.sum()) > 0.95


def test_a_scan_with_its_skull_is_refused_naming_the_remedy(tmp_path):
    images = clinic_images()
    images["t2"] = head_image((1.2, 1.0, 1.5), OBLIQUE, stripped=False)
    write_nifti_case(tmp_path, "BraTS2021_00003", images)
    with pytest.raises(ScanError, match=r"BraTS2021_00003_t2\.nii\.gz is not skull-stripped.*HD-BET or SynthStrip"):
        load_scan(discover_scans(tmp_path)[0], MODALITIES)


def test_a_series_too_short_for_a_brain_is_refused(tmp_path):
    images = clinic_images()
    images["flair"] = head_image((1.0, 1.0, 4.0), extent_mm=(150, 170, 60), moved=motion())
    write_nifti_case(tmp_path, "BraTS2021_00004", images)
    with pytest.raises(ScanError, match=r"BraTS2021_00004_flair\.nii\.gz covers only 60 mm along its axis 2"):
        load_scan(discover_scans(tmp_path)[0], MODALITIES)


def test_a_missing_modality_is_refused(tmp_path):
    images = clinic_images()
    del images["t2"]
    write_nifti_case(tmp_path, "BraTS2021_00005", images)
    with pytest.raises(CaseError, match="t2 missing"):
        load_scan(discover_scans(tmp_path)[0], MODALITIES)


def test_a_registration_that_fails_its_own_quality_figure_is_refused(clinic_case, monkeypatch):
    register = study.register_rigid

    def implausible(fixed, moving, **kwargs):
        return replace(register(fixed, moving, **kwargs), mask_dice_after=0.4)

    monkeypatch.setattr(study, "register_rigid", implausible)
    with pytest.raises(RegistrationError, match=r"flair series BraTS2021_00001_flair\.nii\.gz could not be aligned"):
        load_scan(discover_scans(clinic_case.parent)[0], MODALITIES)


def test_a_brats_ready_case_with_its_skull_is_refused_though_nothing_is_resampled(tmp_path):
    images = {key: head_image((1.0, 1.0, 1.0), stripped=key != "t2", seed=i) for i, key in enumerate(MODALITIES)}
    write_nifti_case(tmp_path, "BraTS2021_00005", images)
    case = discover_scans(tmp_path)[0]
    assert study.is_brats_ready([nib.load(path) for path in case.files.values()])
    with pytest.raises(ScanError, match=r"BraTS2021_00005_t2\.nii\.gz is not skull-stripped.*HD-BET or SynthStrip"):
        load_scan(case, MODALITIES)
    images["t2"] = head_image((1.0, 1.0, 1.0), seed=len(MODALITIES))
    write_nifti_case(tmp_path / "stripped", "BraTS2021_00005", images)
    (step,) = load_scan(discover_scans(tmp_path / "stripped")[0], MODALITIES).steps
    assert step["step"] == "none" and step["checks"]["t2"]["zero_fraction"] > 0.99


@pytest.mark.parametrize(
    ("spacing", "direction"), [((1.0, 1.0, 1.0), AXIAL), ((1.2, 1.0, 1.5), OBLIQUE)], ids=["brats-ready", "resampled"]
)
def test_an_intensity_offset_outside_the_brain_is_set_to_zero_on_either_path(tmp_path, spacing, direction):
    images = {key: head_image(spacing, direction, seed=i) for i, key in enumerate(MODALITIES)}
    write_nifti_case(tmp_path / "clean", "BraTS2021_00007", images)
    write_nifti_case(tmp_path / "offset", "BraTS2021_00007", {key: image + 10.0 for key, image in images.items()})
    clean = load_scan(discover_scans(tmp_path / "clean")[0], MODALITIES)
    offset = load_scan(discover_scans(tmp_path / "offset")[0], MODALITIES)
    assert [step["offset"] for step in offset.steps if step["step"] == "background"] == [10.0] * len(MODALITIES)
    brain = clean.images != 0
    np.testing.assert_array_equal(offset.images != 0, brain)  # the same brain: zeros outside, as before the offset
    if direction is AXIAL:  # nothing resampled: the brain's voxels are the file's, offset included
        np.testing.assert_allclose(offset.images[brain], clean.images[brain] + 10.0, rtol=1e-6)


def test_a_t1_for_the_swap_check_is_registered_on_the_coarse_level_and_resampled(tmp_path):
    images = clinic_images() | {"t1": head_image((1.0, 1.0, 1.0), moved=motion((-2.0, 3.0, 1.0), (-2.0, 1.0, 3.0)))}
    write_nifti_case(tmp_path, "BraTS2021_00006", images)
    scan = discover_scans(tmp_path)[0]
    loaded = load_scan(scan, MODALITIES)
    t1, steps, why = study.load_companion(scan, "t1", loaded)
    assert why is None and t1.shape == loaded.images.shape[1:]
    assert [step["step"] for step in steps] == ["register", "resample"] and steps[0]["converged"]
    assert list(steps[0]["levels_mm"]) == [4.0]  # only the checks read it
    # Its lesion lands on T1ce's once the motion is undone.
    lesion, t1ce_lesion = t1 > 650, loaded.images[MODALITIES.index("t1ce")] > 650
    assert (lesion & t1ce_lesion).sum() / ((lesion.sum() + t1ce_lesion.sum()) / 2) > 0.9


def test_a_t1_that_is_missing_or_cannot_be_aligned_only_says_why(clinic_case, loaded, monkeypatch):
    scan = discover_scans(clinic_case.parent)[0]
    assert study.load_companion(scan, "t1", loaded) == (None, [], "no T1 file")
    nib.save(nib.load(clinic_case / "BraTS2021_00001_flair.nii.gz"), clinic_case / "BraTS2021_00001_t1.nii.gz")
    register = study.register_rigid
    monkeypatch.setattr(study, "register_rigid", lambda *a, **k: replace(register(*a, **k), mask_dice_after=0.4))
    try:
        volume, steps, why = study.load_companion(discover_scans(clinic_case.parent)[0], "t1", loaded)
    finally:
        (clinic_case / "BraTS2021_00001_t1.nii.gz").unlink()
    assert volume is None and [step["step"] for step in steps] == ["register"]
    assert why.startswith("the t1 series BraTS2021_00001_t1.nii.gz could not be aligned")


def test_a_brats_ready_cases_t1_is_its_file_as_it_is(tmp_path):
    images = {key: head_image((1.0, 1.0, 1.0), seed=i) for i, key in enumerate((*MODALITIES, "t1"))}
    write_nifti_case(tmp_path, "BraTS2021_00007", images)
    case = discover_scans(tmp_path)[0]
    t1, steps, why = study.load_companion(case, "t1", load_scan(case, MODALITIES))
    np.testing.assert_array_equal(t1, nib.load(case.files["t1"]).get_fdata(dtype=np.float32))
    assert steps == [] and why is None


def test_a_dicom_study_without_a_t1_series_says_so_in_a_few_words(tmp_path):
    from latup_edge.scans.dicom_write import StudyInfo, write_series

    study_info = StudyInfo.new(patient_id="P0009", seed=9)
    descriptions = {"t1ce": "AX T1 +C", "flair": "AX T2 FLAIR", "t2": "AX T2 TSE"}
    for number, (key, image) in enumerate(clinic_images().items(), start=2):
        write_series(image, tmp_path / key, description=descriptions[key], series_number=number, study=study_info)
    (scan,) = discover_scans(tmp_path)
    volume, steps, why = study.load_companion(scan, "t1", load_scan(scan, MODALITIES))
    assert (volume, steps, why) == (None, [], "no series matches T1 by the shipped modality_rules.json")


def test_a_dicom_study_with_a_constant_background_has_it_set_to_zero(tmp_path):
    from latup_edge.scans.dicom_write import StudyInfo, write_series

    descriptions = {"t1ce": "AX T1 +C", "flair": "AX T2 FLAIR", "t2": "AX T2 TSE"}
    for name, offset in (("clean", 0.0), ("offset", 10.0)):  # 10 outside the brain, as a rescale intercept leaves
        study_info = StudyInfo.new(patient_id=f"P-{name}", seed=9)
        for number, (key, image) in enumerate(clinic_images().items(), start=2):
            write_series(image + offset, tmp_path / name / key, description=descriptions[key], series_number=number,
                         study=study_info)  # fmt: skip
    clean, offset = (load_scan(discover_scans(tmp_path / name)[0], MODALITIES) for name in ("clean", "offset"))
    zeroed = {step["modality"]: step["offset"] for step in offset.steps if step["step"] == "background"}
    assert set(zeroed) == set(MODALITIES) and all(abs(value - 10.0) < 0.01 for value in zeroed.values())
    assert not [step for step in clean.steps if step["step"] == "background"]
    brain, found = clean.images != 0, offset.images != 0
    assert abs(int(found.sum()) - int(brain.sum())) < 0.005 * brain.sum()  # the same brain, not the whole grid


def test_a_file_given_for_two_modalities_is_refused_on_either_path(tmp_path):
    images = {key: head_image((1.0, 1.0, 1.0), seed=i) for i, key in enumerate(MODALITIES)}
    write_nifti_case(tmp_path / "ready", "BraTS2021_00007", images | {"t2": images["flair"]})
    with pytest.raises(
        ScanError, match=r"BraTS2021_00007_flair\.nii\.gz and BraTS2021_00007_t2\.nii\.gz hold the same"
    ):
        load_scan(discover_scans(tmp_path / "ready")[0], MODALITIES)  # BraTS-ready: nothing resampled
    clinic = clinic_images()
    write_nifti_case(tmp_path / "clinic", "BraTS2021_00008", clinic | {"t2": clinic["t1ce"]})
    with pytest.raises(ScanError, match=r"BraTS2021_00008_t1ce\.nii\.gz and BraTS2021_00008_t2\.nii\.gz hold the same"):
        load_scan(discover_scans(tmp_path / "clinic")[0], MODALITIES)  # resampled onto the model grid first


def test_distinct_modalities_are_logged_with_their_highest_correlation(loaded, tmp_path):
    (distinct,) = [step for step in loaded.steps if step["step"] == "distinct"]
    assert 0 < distinct["highest_correlation"] < 0.9999
    images = {key: head_image((1.0, 1.0, 1.0), seed=i) for i, key in enumerate(MODALITIES)}
    write_nifti_case(tmp_path, "BraTS2021_00009", images)
    (step,) = load_scan(discover_scans(tmp_path)[0], MODALITIES).steps
    assert 0 < step["distinct"]["highest_correlation"] < 0.9999
