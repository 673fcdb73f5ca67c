"""DICOM series: written as scanners write them, found, told apart, assigned to modalities and read back."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEGLosslessSV1, JPEGLSLossless, RLELossless

from latup_edge.scans.dicom import (
    DicomError,
    DicomSeries,
    assign_modalities,
    find_series,
    group_studies,
    load_rules,
    read_series,
    told_by_contrast_agent,
)
from latup_edge.scans.dicom_write import StudyInfo, compress_files, write_localizer, write_multiframe, write_series

SIZE = (32, 30, 24)  # x (columns), y (rows), slices


def _rotation(x_degrees: float, z_degrees: float) -> np.ndarray:
    a, c = np.radians(x_degrees), np.radians(z_degrees)
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_z = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return about_z @ about_x


DIRECTIONS = {
    "axial": np.eye(3),
    # Row along anterior-to-posterior, column from head to feet: the slice normal points to the patient's right.
    "sagittal": np.column_stack([(0, 1, 0), (0, 0, -1), (-1, 0, 0)]),
    "coronal": np.column_stack([(1, 0, 0), (0, 0, -1), (0, 1, 0)]),
    "oblique": _rotation(7.0, 4.0),
}


def _image(direction: np.ndarray, spacing=(0.9, 1.1, 3.0), origin=(10.0, -20.0, 5.0), seed: int = 0) -> sitk.Image:
    """A float volume with smooth structure and noise, so that any flip or shift of slices changes it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in reversed(SIZE)), indexing="ij")
    values = 400 + 3.0 * x + 5.0 * y + 11.0 * z + rng.normal(0, 20, z.shape)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.flatten().tolist())
    return image


@pytest.mark.parametrize(
    ("orientation", "slice_order", "spacing"),
    [
        ("axial", "ascending", (1.0, 1.0, 1.0)),
        ("axial", "descending", (0.9, 1.1, 3.0)),
        ("sagittal", "ascending", (1.2, 0.8, 2.5)),
        ("coronal", "descending", (1.0, 1.0, 4.0)),
        ("oblique", "descending", (0.7, 0.7, 5.0)),
    ],
)
def test_a_series_reads_back_with_its_geometry_and_values(tmp_path, orientation, slice_order, spacing):
    image = _image(DIRECTIONS[orientation], spacing)
    study = StudyInfo.new("PAT1", seed=1)
    write_series(image, tmp_path, description="AX T2 FLAIR", series_number=4, study=study, slice_order=slice_order)
    (series,) = find_series(tmp_path)
    assert series.skip_reason is None
    assert (series.n_slices, series.rows, series.columns) == (SIZE[2], SIZE[1], SIZE[0])
    read = read_series(series)
    assert read.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-6)
    slope = float(pydicom.dcmread(series.files[0], stop_before_pixels=True).RescaleSlope)
    assert slope != 1.0  # the float range went through a real rescale
    difference = np.abs(sitk.GetArrayFromImage(read) - sitk.GetArrayFromImage(image))
    assert difference.max() <= slope / 2 + 1e-3


def test_a_series_in_any_instance_order_is_sorted_along_the_normal(tmp_path):
    image = _image(DIRECTIONS["axial"])
    write_series(
        image,
        tmp_path,
        description="t2",
        series_number=2,
        study=StudyInfo.new("P", seed=2),
        seed=2,
        slice_order="descending",
    )
    (series,) = find_series(tmp_path)
    instances = [int(pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber) for path in series.files]
    assert instances == list(range(SIZE[2], 0, -1))


def test_the_same_seed_writes_the_same_uids_and_files_are_never_overwritten(tmp_path):
    image = _image(DIRECTIONS["axial"])
    study = StudyInfo.new("P", seed=5)
    assert study == StudyInfo.new("P", seed=5)
    first = write_series(image, tmp_path / "a", description="t2", series_number=3, study=study, seed=5)
    second = write_series(image, tmp_path / "b", description="t2", series_number=3, study=study, seed=5)
    assert [pydicom.dcmread(p).SOPInstanceUID for p in first] == [pydicom.dcmread(p).SOPInstanceUID for p in second]
    with pytest.raises(FileExistsError):
        write_series(image, tmp_path / "a", description="t2", series_number=3, study=study, seed=5)


def test_series_are_grouped_into_studies_and_sorted_by_series_number(tmp_path):
    image = _image(DIRECTIONS["axial"])
    for patient, seed in (("A", 10), ("B", 20)):
        study = StudyInfo.new(patient, seed=seed, study_date=f"2024010{seed // 10}")
        for number, description in ((7, "t1_mprage"), (3, "t2_tse_tra"), (5, "t2_tirm_tra_dark-fluid")):
            write_series(
                image,
                tmp_path / patient / str(number),
                description=description,
                series_number=number,
                study=study,
                seed=seed,
            )
    (tmp_path / "A" / "README.txt").write_text("not DICOM")
    (tmp_path / "A" / "DICOMDIR").write_bytes(b"\0" * 200)
    series = find_series(tmp_path / "A", tmp_path / "B")
    studies = group_studies(series)
    assert len(studies) == 2
    assert [[s.series_number for s in members] for members in studies.values()] == [[3, 5, 7], [3, 5, 7]]
    assert [members[0].patient_id for members in studies.values()] == ["A", "B"]


def _write(folder: Path, study: StudyInfo, number: int, description: str, **options) -> list[Path]:
    return write_series(
        _image(DIRECTIONS["axial"]),
        folder / str(number),
        description=description,
        series_number=number,
        study=study,
        seed=number,
        **options,
    )


def test_what_cannot_be_a_model_input_is_listed_with_its_reason(tmp_path):
    study = StudyInfo.new("P", seed=3)
    write_localizer(tmp_path / "1", study=study, series_number=1, seed=3)
    _write(tmp_path, study, 2, "AX T1 +C MPR", image_type=("DERIVED", "SECONDARY", "MPR"))
    small = sitk.GetImageFromArray(np.ones((5, 16, 16), np.float32))
    write_series(small, tmp_path / "3", description="AX T2 single", series_number=3, study=study, seed=3)
    files = _write(tmp_path, study, 4, "AX T2 FSE")
    files[10].unlink()  # a missing slice: a gap in the stack
    _write(tmp_path, study, 5, "Survey_SHC", image_type=("ORIGINAL", "PRIMARY", "M", "ND"))
    _write(tmp_path, study, 6, "AX T2 FLAIR")
    reasons = {s.series_number: s.skip_reason for s in find_series(tmp_path)}
    assert reasons[1] == "a localizer"
    assert reasons[2].startswith("derived or secondary images")
    assert reasons[3].startswith("2-D, 5 slices")
    assert reasons[4].startswith("uneven slice spacing")
    assert reasons[5] == "a localizer"
    assert reasons[6] is None
    skipped = next(s for s in find_series(tmp_path) if s.series_number == 2)
    with pytest.raises(DicomError, match=r'series 2 "AX T1 \+C MPR" .* cannot be read as a volume: derived'):
        read_series(skipped)


def _series(
    number: int, description: str, protocol: str = "", skip_reason: str | None = None, contrast_agent: str = ""
) -> DicomSeries:
    return DicomSeries(
        series_uid=f"1.2.826.0.1.3680043.8.498.{number}",
        study_uid="1.2.826.0.1.3680043.8.498.77",
        patient_id="PAT001",
        study_date="20240115",
        series_number=number,
        description=description,
        protocol=protocol,
        image_type=("ORIGINAL", "PRIMARY"),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        files=(),
        n_slices=24,
        rows=32,
        columns=32,
        skip_reason=skip_reason,
        contrast_agent=contrast_agent,
    )


# Series descriptions as Siemens, GE and Philips scanners name them, and the modality each must be.
DESCRIPTIONS = [
    ("t2_tirm_tra_dark-fluid", "flair"),
    ("AX T2 FLAIR", "flair"),
    ("T2W_FLAIR", "flair"),
    ("Sag CUBE FLAIR", "flair"),
    ("t2_space_dark-fluid_sag_p2_iso", "flair"),
    ("Ax T2 FSE", "t2"),
    ("t2_tse_tra", "t2"),
    ("T2W_TSE", "t2"),
    ("t2_blade_tra", "t2"),
    ("AX T2 FRFSE", "t2"),
    ("t1_mprage_sag_p2_iso POST", "t1ce"),
    ("AX T1 +C", "t1ce"),
    ("Ax T1 SE C+", "t1ce"),
    ("T1W_3D_TFE_GD", "t1ce"),
    ("AX T1 FLAIR POST", "t1ce"),
    ("BRAVO POST", "t1ce"),
    ("T1_POSTCONTRAST", "t1ce"),
    ("sT1W_3D_FFE", "t1"),
    ("t1_mprage_sag_p2_iso", "t1"),
    ("AX T1 FLAIR", "t1"),
    ("T1 PRE", "t1"),
    ("t1_fl2d_tra", "t1"),
    ("AX T2* GRE", None),
    ("T2W_FFE", None),
    ("ep2d_diff_mddw_20_p2", None),
    ("Apparent Diffusion Coefficient (mm2/s)", None),
    ("SWI_Images", None),
    ("T1 MAP", None),
    ("ep2d_perf", None),
    # A legacy-converted enhanced file's description: the converter's suffix is not contrast enhancement.
    ("SAG T1 MPRAGE (enhanced conversion)", "t1"),
    ("AX T1 MPRAGE POST GD (enhanced conversion)", "t1ce"),
    ("AX T2 FLAIR 5mm (enhanced conversion)", "flair"),
]


@pytest.mark.parametrize(("description", "expected"), DESCRIPTIONS)
def test_the_shipped_rules_name_scanner_series_descriptions(description, expected):
    assert load_rules().modality_of(_series(1, description)) == expected


def test_the_protocol_is_read_only_when_the_description_matches_nothing():
    rules = load_rules()
    assert rules.modality_of(_series(1, "Series 7", protocol="t2_tse_tra")) == "t2"
    assert rules.modality_of(_series(1, "AX T1 +C", protocol="BRAIN FLAIR ROUTINE")) == "t1ce"
    assert rules.modality_of(_series(1, "ep2d_diff", protocol="t2_tse")) is None


def test_one_series_per_modality_is_assigned():
    series = [
        _series(1, "localizer", skip_reason="a localizer"),
        _series(3, "AX T2 FLAIR"),
        _series(4, "Ax T2 FSE"),
        _series(5, "AX T1"),
        _series(6, "AX T1 +C"),
        _series(7, "AX T2 FLAIR MPR", skip_reason="derived"),
    ]
    chosen = assign_modalities(series, load_rules())
    assert {key: s.series_number for key, s in chosen.items()} == {"flair": 3, "t1ce": 6, "t2": 4}
    assert set(assign_modalities(series, load_rules(), ("t1", "t2"))) == {"t1", "t2"}


def test_an_ambiguous_modality_is_refused_with_the_series_listed():
    series = [
        _series(3, "AX T2 FLAIR"),
        _series(4, "t2_tirm_tra_dark-fluid"),
        _series(5, "Ax T2 FSE"),
        _series(6, "AX T1 +C"),
    ]
    with pytest.raises(DicomError) as caught:
        assign_modalities(series, load_rules())
    message = str(caught.value)
    assert '2 series match FLAIR (3 "AX T2 FLAIR", 4 "t2_tirm_tra_dark-fluid")' in message
    assert "--rules" in message and "remove the extra series" in message
    assert "\n" not in message and not re.search(r"\.\s", message)  # one sentence


def test_two_t1_series_by_name_are_told_apart_by_the_contrast_agent_the_scanner_recorded():
    before, after = _series(5, "t1_mprage_sag_p2_iso"), _series(9, "t1_mprage_sag_p2_iso", contrast_agent="Gadovist")
    series = [_series(3, "AX T2 FLAIR"), _series(4, "Ax T2 FSE"), before, after]
    chosen = assign_modalities(series, load_rules(), ("flair", "t1ce", "t2", "t1"))
    assert chosen["t1ce"] is after and chosen["t1"] is before
    assert told_by_contrast_agent(after, load_rules()) and not told_by_contrast_agent(before, load_rules())
    # Both injected (all after the injection), or a series named T1ce: the names decide, or the study is refused.
    with pytest.raises(DicomError, match="no series matches T1ce and 2 series match T1"):
        assign_modalities([*series[:2], replace(before, contrast_agent="Gd"), after], load_rules(), ("t1ce", "t1"))
    named = assign_modalities([*series, _series(11, "AX T1 +C")], load_rules(), ("t1ce",))
    assert named["t1ce"].series_number == 11


def test_the_contrast_agent_is_read_from_the_files(tmp_path):
    study = StudyInfo.new(patient_id="PAT002", seed=2)
    _write(tmp_path, study, 2, "t1_mprage_sag", contrast_agent="Dotarem 10 ml")
    _write(tmp_path, study, 3, "t1_mprage_sag")
    assert {s.series_number: s.contrast_agent for s in find_series(tmp_path)} == {2: "Dotarem 10 ml", 3: ""}


def test_a_missing_modality_is_refused_with_every_series_found():
    series = [
        _series(1, "localizer", skip_reason="a localizer"),
        _series(3, "AX T2 FLAIR"),
        _series(5, "Ax T2 FSE"),
        _series(6, "AX T1"),
        _series(8, "ep2d_diff"),
    ]
    with pytest.raises(DicomError) as caught:
        assign_modalities(series, load_rules())
    message = str(caught.value)
    assert message.startswith("in study ...043.8.498.77 of patient PAT001, no series matches T1ce (series found: ")
    for listed in (
        '1 "localizer": skipped, a localizer',
        '3 "AX T2 FLAIR": FLAIR',
        '5 "Ax T2 FSE": T2',
        '6 "AX T1": T1',
        '8 "ep2d_diff": no rule matches',
    ):
        assert listed in message
    assert "--rules" in message and "export the missing series" in message and "extra series" not in message


def test_a_rules_file_of_ones_own_is_used_and_a_bad_one_is_one_sentence(tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"modalities": {"flair": {"match": ["^fl$"]}, "t2": {"match": ["^T2 ?A"]}}}))
    loaded = load_rules(rules)
    assert loaded.modality_of(_series(1, "FL")) == "flair"
    assert loaded.modality_of(_series(1, "AX T2 FLAIR")) is None
    assert loaded.source == str(rules)
    rules.write_text('{"modalities": {"flair": {"match": ["(unclosed"]}}}')
    with pytest.raises(DicomError, match=r"rules.json is not valid \(error: .*\): it must be JSON"):
        load_rules(rules)
    rules.write_text("{not json")
    with pytest.raises(DicomError, match="is not valid"):
        load_rules(rules)
    with pytest.raises(DicomError, match="cannot be read"):
        load_rules(tmp_path / "missing.json")


def test_undecodable_pixel_data_is_one_sentence(tmp_path):
    files = _write(tmp_path, StudyInfo.new("P", seed=4), 2, "AX T2 FSE")
    damaged = pydicom.dcmread(files[3])
    damaged.PixelData = damaged.PixelData[:100]  # a truncated transfer
    files[3].unlink()
    damaged.save_as(files[3])
    (series,) = find_series(tmp_path)
    with pytest.raises(DicomError, match=r'IM002_0004.dcm of series 2 "AX T2 FSE" .* holds 100 bytes of pixel data'):
        read_series(series)


def test_each_slice_keeps_its_own_rescale(tmp_path):
    image = sitk.GetImageFromArray(np.full((12, 8, 8), 100, np.float32))
    files = write_series(image, tmp_path, description="t2", series_number=2, study=StudyInfo.new("P", seed=6))
    rescaled = pydicom.dcmread(files[3])
    rescaled.RescaleSlope, rescaled.RescaleIntercept = "2", "5"  # as Philips and GE scale slices one by one
    files[3].unlink()
    rescaled.save_as(files[3])
    values = sitk.GetArrayFromImage(read_series(find_series(tmp_path)[0]))[:, 0, 0]
    assert values.tolist() == [100.0] * 3 + [205.0] + [100.0] * 8


def _assert_same_volume(read: sitk.Image, expected: sitk.Image) -> None:
    np.testing.assert_allclose(read.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetSpacing(), expected.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(read.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(expected))


@pytest.mark.parametrize("orientation", ["sagittal", "oblique"])
def test_a_multiframe_file_in_any_frame_order_reads_as_its_single_frame_series(tmp_path, orientation):
    image = _image(DIRECTIONS[orientation], (1.2, 0.8, 2.5))
    study = StudyInfo.new("P", seed=1)
    files = write_series(image, tmp_path / "single", description="T1 MPRAGE POST", series_number=7, study=study)
    (tmp_path / "multi").mkdir()
    write_multiframe(files, tmp_path / "multi" / "volume.dcm", seed=1, shuffle_seed=3)
    (series,) = find_series(tmp_path / "multi")
    assert series.skip_reason is None
    assert (series.n_slices, series.rows, series.columns) == (SIZE[2], SIZE[1], SIZE[0])
    assert list(series.frames) != sorted(series.frames)  # the file's frame order is not the slices' order
    assert series.description.startswith("T1 MPRAGE POST")
    _assert_same_volume(read_series(series), read_series(find_series(tmp_path / "single")[0]))


def test_each_frame_keeps_its_own_rescale(tmp_path):
    image = sitk.GetImageFromArray(np.full((12, 8, 8), 100, np.float32))
    files = write_series(
        image, tmp_path / "single", description="t2", series_number=2, study=StudyInfo.new("P", seed=6)
    )
    rescaled = pydicom.dcmread(files[3])
    rescaled.RescaleSlope, rescaled.RescaleIntercept = "2", "5"
    files[3].unlink()
    rescaled.save_as(files[3])
    (tmp_path / "multi").mkdir()
    write_multiframe(files, tmp_path / "multi" / "volume.dcm", shuffle_seed=0)
    values = sitk.GetArrayFromImage(read_series(find_series(tmp_path / "multi")[0]))[:, 0, 0]
    assert values.tolist() == [100.0] * 3 + [205.0] + [100.0] * 8


@pytest.mark.parametrize(
    "transfer_syntax", [RLELossless, JPEGLSLossless, JPEGLosslessSV1], ids=["RLE", "JPEG-LS", "JPEG-lossless"]
)
@pytest.mark.parametrize("form", ["single-frame", "multi-frame"])
def test_a_losslessly_compressed_series_reads_as_the_uncompressed_one(tmp_path, transfer_syntax, form):
    image = _image(DIRECTIONS["coronal"], (1.0, 1.0, 4.0))
    files = write_series(
        image, tmp_path / "plain", description="COR T2", series_number=3, study=StudyInfo.new("P", seed=2)
    )
    (tmp_path / "packed").mkdir()
    if form == "multi-frame":
        packed = [write_multiframe(files, tmp_path / "packed" / "volume.dcm", shuffle_seed=1)]
    else:
        packed = [Path(shutil.copy(file, tmp_path / "packed")) for file in files]
    compress_files(packed, transfer_syntax)
    assert pydicom.dcmread(packed[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax
    _assert_same_volume(
        read_series(find_series(tmp_path / "packed")[0]), read_series(find_series(tmp_path / "plain")[0])
    )


def test_multiframe_files_that_cannot_be_one_volume_are_skipped_with_their_reason(tmp_path):
    image = _image(DIRECTIONS["axial"], (1.0, 1.0, 3.0))
    study = StudyInfo.new("P", seed=3)
    first = write_series(image, tmp_path / "echo1", description="AX DUAL ECHO", series_number=5, study=study, seed=3)
    second = write_series(image, tmp_path / "echo2", description="AX DUAL ECHO", series_number=5, study=study, seed=3)
    for file in second:  # the same series, other instances
        echo = pydicom.dcmread(file)
        echo.SOPInstanceUID = echo.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        echo.save_as(file)
    (tmp_path / "echoes").mkdir()
    write_multiframe(first + second, tmp_path / "echoes" / "volume.dcm")  # two frames at every position
    (series,) = find_series(tmp_path / "echoes")
    assert series.skip_reason == "several slices at one position (multiple echoes, time points or duplicates)"

    bare = pydicom.dcmread(write_multiframe(first, tmp_path / "volume.dcm"))
    del bare.PerFrameFunctionalGroupsSequence  # an old-style multi-frame file: no frame positions
    (tmp_path / "bare").mkdir()
    bare.save_as(tmp_path / "bare" / "volume.dcm")
    (series,) = find_series(tmp_path / "bare")
    assert series.skip_reason.startswith("multi-frame files without per-frame positions")
    with pytest.raises(DicomError, match="cannot be read as a volume: multi-frame files without per-frame positions"):
        read_series(series)


def test_an_undecodable_multiframe_file_is_one_sentence(tmp_path):
    files = write_series(_image(DIRECTIONS["axial"]), tmp_path / "single", description="FLAIR", series_number=4,
                         study=StudyInfo.new("P", seed=4))  # fmt: skip
    (tmp_path / "multi").mkdir()
    damaged = pydicom.dcmread(write_multiframe(files, tmp_path / "multi" / "volume.dcm"))
    damaged.PixelData = damaged.PixelData[:1000]  # a truncated transfer
    damaged.save_as(tmp_path / "multi" / "volume.dcm")
    (series,) = find_series(tmp_path / "multi")
    with pytest.raises(DicomError, match=r'pixel data of series 4 "FLAIR.*volume.dcm cannot be decoded .*re-export'):
        read_series(series)
