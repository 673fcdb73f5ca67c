"""DICOM SEG: the tumour classes on the reference series' grid, written and read back exactly."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from latup_edge.scans.dicom import DicomError, find_series, read_series
from latup_edge.scans.dicom_seg import read_dicom_seg, write_dicom_seg
from latup_edge.scans.dicom_write import StudyInfo, write_multiframe, write_series


@pytest.fixture(scope="module", params=["single-frame", "multi-frame"])
def reference(tmp_path_factory, request):
    """An oblique series stored in descending instance order, 24 slices of 30 x 32; or the same series as one
    multi-frame file whose frames are shuffled."""
    folder = tmp_path_factory.mktemp("series")
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(300, 50, (24, 30, 32)).astype(np.float32))
    a = np.radians(6.0)
    image.SetDirection([1, 0, 0, 0, np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a)])
    image.SetSpacing((0.9, 0.9, 2.0))
    files = write_series(
        image,
        folder,
        description="AX T1 +C",
        series_number=6,
        study=StudyInfo.new("P", seed=1),
        seed=1,
        slice_order="descending",
    )
    if request.param == "multi-frame":
        folder = tmp_path_factory.mktemp("multiframe")
        write_multiframe(files, folder / "volume.dcm", seed=1, shuffle_seed=5)
    (series,) = find_series(folder)
    assert bool(series.frames) == (request.param == "multi-frame")
    return series


def _classes(with_et: bool = True) -> np.ndarray:
    classes = np.zeros((24, 30, 32), np.uint8)
    classes[6:14, 8:20, 10:22] = 2
    classes[8:12, 10:18, 12:20] = 1
    if with_et:
        classes[9:11, 9:11, 11:21] = 3
    classes[13, 0, 31] = 1  # one voxel at a corner: exactness, not only blobs
    return classes


@pytest.mark.parametrize("with_et", [True, False])
def test_the_classes_read_back_exactly(tmp_path, reference, with_et):
    classes = _classes(with_et)
    path = write_dicom_seg(classes, reference, tmp_path / "seg.dcm")
    back = read_dicom_seg(path, reference)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, classes)
    assert back.shape == sitk.GetArrayFromImage(read_series(reference)).shape


def test_the_seg_names_its_segments_and_algorithm_and_is_not_a_model_input(tmp_path, reference):
    path = write_dicom_seg(_classes(), reference, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert labels == ["NCR", "ED", "ET"]
    types = [seg.get_segment_description(n).segmented_property_type.value for n in seg.segment_numbers]
    assert types == ["6574001", "79654002", "108369006"]
    algorithm = seg.get_segment_description(1).algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmSource) == ("LATUP-Net", "latup-edge")
    assert seg.StudyInstanceUID == reference.study_uid
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]  # the atomic write left no temporary file
    (found,) = [s for s in find_series(tmp_path)]
    assert found.skip_reason == "not an MR or CT image series (modality SEG)"


def test_an_empty_case_and_bad_input(tmp_path, reference):
    empty = np.zeros((24, 30, 32), np.uint8)
    np.testing.assert_array_equal(
        read_dicom_seg(write_dicom_seg(empty, reference, tmp_path / "e.dcm"), reference), empty
    )
    with pytest.raises(ValueError, match="shape"):
        write_dicom_seg(empty[1:], reference, tmp_path / "x.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file")
    with pytest.raises(DicomError, match="junk.dcm cannot be read as a DICOM SEG"):
        read_dicom_seg(tmp_path / "junk.dcm", reference)


def test_each_seg_frame_lies_on_the_slice_it_labels(tmp_path, reference):
    classes = _classes()
    seg = hd.seg.segread(write_dicom_seg(classes, reference, tmp_path / "seg.dcm"))
    image = read_series(reference)
    assert len(seg.PerFrameFunctionalGroupsSequence) > 10
    for item, pixels in zip(seg.PerFrameFunctionalGroupsSequence, seg.pixel_array, strict=True):
        position = tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        index = image.TransformPhysicalPointToIndex(position)
        assert index[:2] == (0, 0)
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        np.testing.assert_array_equal(pixels, classes[index[2]] == number)  # by geometry alone, not by frame order
