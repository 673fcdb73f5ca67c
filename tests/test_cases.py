"""Case discovery, loading, validation and saving, on small NIfTI files written to tmp_path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from latup_edge import fileio
from latup_edge.data.cases import (
    BratsCase,
    CaseError,
    discover_cases,
    load_case_images,
    load_case_labels,
    save_label_map,
)
from latup_edge.data.naming import MODALITIES, MODEL_MODALITIES, case_filename

SHAPE = (16, 18, 12)
AFFINE = np.array([[-1.0, 0, 0, 90], [0, -1.0, 0, 126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
# A class map with every class; stored as BraTS labels it holds ET as 4 (2021) or 3 (2023).
CLASSES = np.zeros(SHAPE, dtype=np.uint8)
CLASSES[4:8, 4:8, 4:8], CLASSES[5:7, 5:7, 5:7], CLASSES[8:10, 8:10, 2:4] = 2, 1, 3


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_case(
    folder: Path,
    case_id: str,
    naming: str,
    compressed: bool = True,
    keys: tuple[str, ...] = (*MODALITIES, "seg"),
    seg_folder: Path | None = None,
) -> dict[str, Path]:
    """Write a small case: random positive images and a label map in the naming's convention."""
    rng = np.random.default_rng(len(case_id))
    paths = {}
    for key in keys:
        if key == "seg":
            data = np.where(CLASSES == 3, 3 if naming == "2023" else 4, CLASSES).astype(np.uint8)
            target = seg_folder or folder
        else:
            data = rng.uniform(1, 100, size=SHAPE).astype(np.float32)
            target = folder
        paths[key] = write_nifti(target / case_filename(case_id, key, naming, compressed), data)
    return paths


def one_case(tmp_path: Path, **overrides: np.ndarray) -> tuple[BratsCase, dict[str, Path]]:
    """A 2021 case whose files are replaced by the given arrays (key -> data)."""
    paths = write_case(tmp_path / "BraTS2021_00042", "BraTS2021_00042", "2021")
    for key, data in overrides.items():
        write_nifti(paths[key], data)
    (case,) = discover_cases(tmp_path)
    return case, paths


def assert_names(error: pytest.ExceptionInfo[CaseError], path: Path) -> None:
    message = str(error.value)
    assert "BraTS2021_00042" in message and path.name in message
    assert error.value.case_id == "BraTS2021_00042" and error.value.path == path


# --- discovery -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("naming", "case_id", "compressed"),
    [
        ("2020", "BraTS20_Training_001", False),
        ("2021", "BraTS2021_00000", True),
        ("2023", "BraTS-GLI-00000-000", True),
        ("nnunet", "BraTS_00000", True),
    ],
)
def test_discovers_each_naming_in_case_folders(tmp_path: Path, naming: str, case_id: str, compressed: bool) -> None:
    paths = write_case(tmp_path / case_id, case_id, naming, compressed)
    write_case(tmp_path / "second", case_id + "9", naming, compressed)
    found = discover_cases(tmp_path)
    assert [case.case_id for case in found] == [case_id, case_id + "9"]
    case = found[0]
    assert case.naming == naming and case.folder == tmp_path / case_id
    assert case.files == {key: paths[key] for key in MODALITIES}
    assert case.seg == paths["seg"] and case.missing() == []


def test_modality_names_are_read_whatever_their_case_and_t1ce_by_its_other_names(tmp_path: Path) -> None:
    for suffix in ("FLAIR", "T1", "T1c", "T2", "seg"):  # UCSF-PDGM's style
        write_nifti(tmp_path / "a" / f"UCSF-PDGM-0004_{suffix}.nii.gz", np.ones(SHAPE, np.float32))
    for suffix in ("Flair", "t1Gd", "T2", "t1"):
        write_nifti(tmp_path / "b" / f"Case7_{suffix}.nii.gz", np.ones(SHAPE, np.float32))
    write_nifti(tmp_path / "c" / "BraTS-GLI-00003-000-T2F.nii.gz", np.ones(SHAPE, np.float32))
    gli, case7, ucsf = discover_cases(tmp_path)  # sorted by case id
    assert ucsf.case_id == "UCSF-PDGM-0004" and set(ucsf.files) == set(MODALITIES) and ucsf.seg is not None
    assert ucsf.files["t1ce"].name == "UCSF-PDGM-0004_T1c.nii.gz"
    assert ucsf.files["t1"].name == "UCSF-PDGM-0004_T1.nii.gz"
    assert case7.files["t1ce"].name == "Case7_t1Gd.nii.gz" and case7.missing() == []
    assert (gli.case_id, gli.naming, list(gli.files)) == ("BraTS-GLI-00003-000", "2023", ["flair"])
    write_nifti(tmp_path / "b" / "Case7_t1ce.nii.gz", np.ones(SHAPE, np.float32))
    with pytest.raises(CaseError, match="case Case7 has two t1ce files"):
        discover_cases(tmp_path / "b")


def test_discovers_a_flat_folder_and_a_single_case_folder(tmp_path: Path) -> None:
    for case_id in ("BraTS2021_00002", "BraTS2021_00001"):
        write_case(tmp_path, case_id, "2021")
    (tmp_path / "notes.txt").write_text("not a case")
    write_nifti(tmp_path / "atlas.nii.gz", np.ones(SHAPE, np.float32))  # follows no convention
    write_nifti(tmp_path / "._BraTS2021_00003_t1.nii.gz", np.ones(SHAPE, np.float32))  # macOS fork
    assert [case.case_id for case in discover_cases(tmp_path)] == ["BraTS2021_00001", "BraTS2021_00002"]
    write_case(tmp_path / "one", "BraTS2021_00007", "2021")
    assert [case.case_id for case in discover_cases(tmp_path / "one")] == ["BraTS2021_00007"]


def test_a_case_folder_of_bare_names_is_the_case_its_folder_names(tmp_path: Path) -> None:
    for name in ("FLAIR.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz", "seg.nii.gz"):
        write_nifti(tmp_path / "patient_7" / name, np.ones(SHAPE, np.float32))
    for name in ("t2f.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t1n.nii.gz"):  # BraTS 2023's suffixes, bare
        write_nifti(tmp_path / "patient_8" / name, np.ones(SHAPE, np.float32))
    write_nifti(tmp_path / "patient_9" / "flair.nii", np.ones(SHAPE, np.float32))
    seven, eight, nine = discover_cases(tmp_path)
    assert (seven.case_id, seven.naming, seven.missing(), seven.seg.name) == ("patient_7", "2021", [], "seg.nii.gz")
    assert seven.files["flair"].name == "FLAIR.nii.gz"
    assert (eight.case_id, eight.naming, eight.missing()) == ("patient_8", "2023", [])
    assert eight.files["t1ce"].name == "t1c.nii.gz" and eight.default_labels() == "2023"
    assert nine.missing() == ["t1ce", "t2"] and nine.expected_path("t2") == tmp_path / "patient_9" / "t2.nii"
    assert eight.expected_path("seg") == tmp_path / "patient_8" / "seg.nii.gz"


def test_overlapping_roots_find_each_case_once(tmp_path: Path) -> None:
    write_case(tmp_path / "a", "BraTS2021_00001", "2021")
    assert len(discover_cases(tmp_path, tmp_path / "a")) == 1


def test_discovers_nnunet_images_and_labels_folders(tmp_path: Path) -> None:
    dataset = tmp_path / "Dataset137_BraTS2021"
    paths = write_case(dataset / "imagesTr", "BraTS_00003", "nnunet", seg_folder=dataset / "labelsTr")
    write_case(dataset / "imagesTs", "BraTS_00004", "nnunet", keys=MODALITIES)
    train, test = discover_cases(dataset)
    assert train.files["flair"].name == "BraTS_00003_0003.nii.gz"
    assert train.seg == paths["seg"] == dataset / "labelsTr" / "BraTS_00003.nii.gz"
    assert test.case_id == "BraTS_00004" and test.seg is None


def test_discovery_reports_but_does_not_raise_for_a_missing_modality(tmp_path: Path) -> None:
    write_case(tmp_path, "BraTS2021_00042", "2021", keys=("t1", "t1ce", "flair"))
    (case,) = discover_cases(tmp_path)
    assert case.missing() == ["t2"] and case.missing(("t1",)) == []


def test_missing_or_empty_root_names_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="does not exist"):
        discover_cases(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("")
    with pytest.raises(CaseError, match=r"no BraTS case found under .*BraTS2021_00001_flair\.nii\.gz"):
        discover_cases(tmp_path)


def test_two_files_for_one_modality_is_an_error(tmp_path: Path) -> None:
    paths = write_case(tmp_path, "BraTS2021_00042", "2021")
    write_nifti(paths["t2"].with_name("BraTS2021_00042_t2.nii"), np.ones(SHAPE, np.float32))
    with pytest.raises(CaseError, match="two t2 files"):
        discover_cases(tmp_path)


def test_follows_symlinked_case_folders_and_files(tmp_path: Path) -> None:
    # An archive assembled as people do: links to case folders kept elsewhere, and a case of linked files.
    real = tmp_path / "real"
    first = write_case(real / "one", "BraTS2021_00001", "2021")
    write_case(real / "two", "BraTS2021_00002", "2021")
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "BraTS2021_00001").symlink_to(real / "one", target_is_directory=True)
    (archive / "BraTS2021_00002").symlink_to(real / "two", target_is_directory=True)
    linked = archive / "BraTS2021_00003"
    linked.mkdir()
    for key, path in first.items():
        (linked / case_filename("BraTS2021_00003", key, "2021")).symlink_to(path)
    (archive / "BraTS2021_00004_t1.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")  # a dangling link
    found = discover_cases(archive)
    assert [case.case_id for case in found] == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]
    assert found[0].folder == archive / "BraTS2021_00001"  # the path as the archive names it
    assert found[0].files["t1"] == archive / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz"
    assert found[2].files["flair"].resolve() == first["flair"] and found[2].missing() == []
    images, _ = load_case_images(found[2])
    assert np.array_equal(images, load_case_images(found[0])[0])


def test_a_symlink_cycle_ends_and_each_case_is_found_once(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    write_case(root / "a", "BraTS2021_00001", "2021")
    write_case(root / "b", "BraTS2021_00002", "2021")
    (root / "a" / "back-to-root").symlink_to(root, target_is_directory=True)  # a cycle through the root
    (root / "b" / "self").symlink_to(root / "b", target_is_directory=True)  # a folder linking to itself
    (root / "again").symlink_to(root / "a", target_is_directory=True)  # one real folder reached twice
    found = discover_cases(root)
    assert [(case.case_id, case.folder) for case in found] == [
        ("BraTS2021_00001", root / "a"),
        ("BraTS2021_00002", root / "b"),
    ]


# --- loading ---------------------------------------------------------------------------------


def test_loads_images_in_model_order_as_float32(tmp_path: Path) -> None:
    case, paths = one_case(tmp_path)
    images, reference = load_case_images(case)
    assert images.shape == (3, *SHAPE) and images.dtype == np.float32
    for channel, key in enumerate(MODEL_MODALITIES):
        np.testing.assert_array_equal(images[channel], nib.load(paths[key]).get_fdata(dtype=np.float32))
    assert reference.get_filename() == str(paths["flair"]) and not reference.in_memory
    np.testing.assert_array_equal(reference.affine, AFFINE)


def test_loads_labels_of_either_convention(tmp_path: Path) -> None:
    case, _ = one_case(tmp_path)
    classes, convention = load_case_labels(case, load_case_images(case)[1])
    assert convention == "2021" and classes.dtype == np.uint8
    np.testing.assert_array_equal(classes, CLASSES)
    write_case(tmp_path / "new", "BraTS-GLI-00001-000", "2023")
    classes, convention = load_case_labels(discover_cases(tmp_path / "new")[0])
    assert convention == "2023"
    np.testing.assert_array_equal(classes, CLASSES)


def test_accepts_a_volume_with_a_trailing_axis_of_one(tmp_path: Path) -> None:
    case, _ = one_case(tmp_path, t2=np.ones((*SHAPE, 1), np.float32))
    images, _ = load_case_images(case)
    assert images.shape == (3, *SHAPE) and (images[2] == 1).all()


def test_a_constant_background_is_set_to_zero_on_every_read(tmp_path: Path) -> None:
    brain = np.zeros(SHAPE, np.float32)
    brain[3:13, 3:15, 3:9] = np.random.default_rng(0).uniform(1, 100, (10, 12, 6))
    case, _ = one_case(tmp_path, t2=brain - 0.5)  # a whole-volume z-score leaves a negative constant outside
    offsets: dict[str, dict] = {}
    images, _ = load_case_images(case, offsets=offsets)
    np.testing.assert_array_equal(images[2], np.where(brain == 0, 0, brain - 0.5))
    assert offsets == {"t2": {"offset": -0.5, "zeroed": int((brain == 0).sum())}}
    np.testing.assert_array_equal(load_case_images(case)[0], images)  # evaluate, drift, build and train read it so


# --- one test per validation rule --------------------------------------------------------------


def test_missing_modality_names_the_expected_file(tmp_path: Path) -> None:
    case, paths = one_case(tmp_path)
    paths["t2"].unlink()
    (case,) = discover_cases(tmp_path)
    with pytest.raises(CaseError, match="t2 missing") as error:
        load_case_images(case)
    assert_names(error, paths["t2"])


def test_shape_mismatch(tmp_path: Path) -> None:
    case, paths = one_case(tmp_path, t2=np.ones((16, 18, 11), np.float32))
    with pytest.raises(CaseError, match="16x18x11 but .* is 16x18x12") as error:
        load_case_images(case)
    assert_names(error, paths["t2"])


def test_affine_mismatch(tmp_path: Path) -> None:
    case, paths = one_case(tmp_path)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    write_nifti(paths["t1ce"], np.ones(SHAPE, np.float32), shifted)
    with pytest.raises(CaseError, match="affine that differs") as error:
        load_case_images(case)
    assert_names(error, paths["t1ce"])


def test_affine_within_tolerance_is_accepted(tmp_path: Path) -> None:
    case, paths = one_case(tmp_path)
    write_nifti(paths["t1ce"], np.ones(SHAPE, np.float32), AFFINE + 1e-4)
    assert load_case_images(case)[0].shape == (3, *SHAPE)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_values(tmp_path: Path, bad_value: float) -> None:
    data = np.ones(SHAPE, np.float32)
    data[3, 4, 5] = bad_value
    case, paths = one_case(tmp_path, t1ce=data)
    with pytest.raises(CaseError, match="1 NaN or infinite voxels") as error:
        load_case_images(case)
    assert_names(error, paths["t1ce"])


def test_four_d_volume(tmp_path: Path) -> None:
    case, paths = one_case(tmp_path, flair=np.ones((*SHAPE, 2), np.float32))
    with pytest.raises(CaseError, match="16x18x12x2 but one 3-D volume") as error:
        load_case_images(case)
    assert_names(error, paths["flair"])


@pytest.mark.parametrize("key", ["t2", "seg"])
def test_truncated_file_fails_at_load(tmp_path: Path, key: str) -> None:
    # Random labels compress poorly, so half the file still holds the whole header.
    noisy_seg = np.random.default_rng(0).choice(np.array([0, 1, 2, 4], np.uint8), size=SHAPE)
    case, paths = one_case(tmp_path, seg=noisy_seg)
    content = paths[key].read_bytes()
    paths[key].write_bytes(content[: len(content) // 2])
    with pytest.raises(CaseError, match="truncated or damaged") as error:
        load_case_images(case) if key != "seg" else load_case_labels(case)
    assert_names(error, paths[key])


def test_truncated_uncompressed_file_fails_at_load(tmp_path: Path) -> None:
    paths = write_case(tmp_path, "BraTS2021_00042", "2021", compressed=False)
    paths["t2"].write_bytes(paths["t2"].read_bytes()[:2000])
    with pytest.raises(CaseError, match="truncated or damaged") as error:
        load_case_images(discover_cases(tmp_path)[0])
    assert_names(error, paths["t2"])


@pytest.mark.parametrize("garbage", [b"", b"not a nifti file" * 40])
def test_unreadable_file(tmp_path: Path, garbage: bytes) -> None:
    case, paths = one_case(tmp_path)
    paths["flair"].write_bytes(garbage)
    with pytest.raises(CaseError, match="not a readable NIfTI file") as error:
        load_case_images(case)
    assert_names(error, paths["flair"])


def test_all_zero_volume(tmp_path: Path) -> None:
    case, paths = one_case(tmp_path, t2=np.zeros(SHAPE, np.int16))
    with pytest.raises(CaseError, match="all zeros") as error:
        load_case_images(case)
    assert_names(error, paths["t2"])


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.where(CLASSES == 3, 5, CLASSES), r"\[5\]"),
        (np.where(CLASSES == 1, 4, CLASSES), "both 3 and 4"),
        (CLASSES + np.float32(0.5), "non-integer"),
    ],
)
def test_seg_with_bad_values(tmp_path: Path, labels: np.ndarray, match: str) -> None:
    case, paths = one_case(tmp_path, seg=labels)
    with pytest.raises(CaseError, match=match) as error:
        load_case_labels(case)
    assert_names(error, paths["seg"])


def test_seg_off_the_image_grid(tmp_path: Path) -> None:
    case, paths = one_case(tmp_path, seg=np.zeros((16, 18, 10), np.uint8))
    _, reference = load_case_images(case)
    with pytest.raises(CaseError, match="16x18x10 but .*flair.* is 16x18x12") as error:
        load_case_labels(case, reference)
    assert_names(error, paths["seg"])


def test_case_without_seg(tmp_path: Path) -> None:
    paths = write_case(tmp_path, "BraTS2021_00042", "2021", keys=MODALITIES)
    with pytest.raises(CaseError, match="no label file") as error:
        load_case_labels(discover_cases(tmp_path)[0])
    assert_names(error, paths["flair"].with_name("BraTS2021_00042_seg.nii.gz"))


# --- saving ----------------------------------------------------------------------------------


def oblique_reference(path: Path) -> nib.Nifti1Image:
    """A reference file whose qform and sform differ, with their own codes, zooms and units."""
    sform = np.array([[0.9, 0.1, 0, 10], [-0.1, 0.9, 0, -20], [0, 0, 2.5, 5], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.ones(SHAPE, np.int16), None)
    image.set_qform(np.diag([0.9, 0.9, 2.5, 1]), code=1)
    image.set_sform(sform, code=2)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_slope_inter(2.0, 1.0)
    nib.save(image, path)
    return nib.load(path)


@pytest.mark.parametrize(("convention", "et_label", "name"), [("2021", 4, "out.nii.gz"), ("2023", 3, "out.nii")])
def test_saved_label_map_keeps_the_reference_geometry(
    tmp_path: Path, convention: str, et_label: int, name: str
) -> None:
    reference = oblique_reference(tmp_path / "ref.nii.gz")
    before = hashlib.sha256((tmp_path / "ref.nii.gz").read_bytes()).hexdigest()
    path = save_label_map(CLASSES, reference, tmp_path / name, convention)
    saved = nib.load(path)
    assert saved.get_data_dtype() == np.uint8 and saved.shape == SHAPE
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), np.where(CLASSES == 3, et_label, CLASSES))
    np.testing.assert_array_equal(saved.affine, reference.affine)
    for field in ("qform_code", "sform_code", "pixdim", "xyzt_units", "srow_x", "quatern_b", "qoffset_x"):
        np.testing.assert_array_equal(saved.header[field], reference.header[field])
    assert saved.header.get_zooms() == reference.header.get_zooms()
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")  # gzip magic
    assert hashlib.sha256((tmp_path / "ref.nii.gz").read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ref.nii.gz", name])


def test_saved_label_map_loads_back_as_the_same_classes(tmp_path: Path) -> None:
    case, paths = one_case(tmp_path)
    _, reference = load_case_images(case)
    paths["seg"].unlink()
    save_label_map(CLASSES, reference, paths["seg"], "2023")
    classes, convention = load_case_labels(discover_cases(tmp_path)[0], reference)
    assert convention == "2023"
    np.testing.assert_array_equal(classes, CLASSES)


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = oblique_reference(tmp_path / "ref.nii.gz")
    with pytest.raises(OSError):
        save_label_map(CLASSES, reference, tmp_path / "absent" / "out.nii.gz")
    assert not (tmp_path / "absent").exists()

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_label_map(CLASSES, reference, tmp_path / "out.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["ref.nii.gz"]


def test_save_refuses_bad_input_and_the_reference_file(tmp_path: Path) -> None:
    reference = oblique_reference(tmp_path / "ref.nii.gz")
    with pytest.raises(ValueError, match="input image itself"):
        save_label_map(CLASSES, reference, tmp_path / "ref.nii.gz")
    with pytest.raises(ValueError, match="classes must be 0-3"):
        save_label_map(CLASSES + 1, reference, tmp_path / "out.nii.gz")
    with pytest.raises(ValueError, match="reference is 16x18x12"):
        save_label_map(CLASSES[:-1], reference, tmp_path / "out.nii.gz")
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        save_label_map(CLASSES, reference, tmp_path / "out.img")
    assert [p.name for p in tmp_path.iterdir()] == ["ref.nii.gz"]


def test_saved_file_gets_ordinary_permissions(tmp_path: Path) -> None:
    reference = oblique_reference(tmp_path / "ref.nii.gz")
    path = save_label_map(CLASSES, reference, tmp_path / "out.nii.gz")
    assert path.stat().st_mode & 0o777 == (tmp_path / "ref.nii.gz").stat().st_mode & 0o777
    assert os.access(path, os.R_OK)
