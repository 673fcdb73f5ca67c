"""The tumour labels as a DICOM Segmentation (SEG) of the series they were made on, and back.

``write_dicom_seg`` stores a class map (0 background, 1 NCR, 2 ED, 3 ET, on the reference series'
own grid) as a BINARY DICOM SEG with three segments coded in SNOMED CT, which a PACS or viewer
shows over the reference series. ``read_dicom_seg`` gives the class map back, exactly.

>>> labels = sitk.GetArrayFromImage(native_labels)                             # doctest: +SKIP
>>> write_dicom_seg(labels, chosen["t1ce"], Path("out/PAT001_seg.dcm"))        # doctest: +SKIP
>>> np.array_equal(read_dicom_seg(Path("out/PAT001_seg.dcm"), chosen["t1ce"]), labels)  # doctest: +SKIP
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from latup_edge import __version__
from latup_edge.fileio import atomic_write
from latup_edge.scans.dicom import DicomError, DicomSeries

SEG_SERIES_NUMBER = 900  # after the scanner's series, where PACS lists put results


@dataclass(frozen=True)
class TumourSegment:
    """One tumour class as a DICOM segment: its value in the class map, its label and its SNOMED CT type."""

    value: int
    label: str
    description: str
    property_type: Code


# BraTS's classes; the SEG's segment numbers are their values, so a label-map reader sees the same numbers.
TUMOUR_SEGMENTS: tuple[TumourSegment, ...] = (
    TumourSegment(1, "NCR", "necrotic tumour core", codes.SCT.Necrosis),
    TumourSegment(2, "ED", "peritumoral edema", codes.SCT.Edema),
    TumourSegment(3, "ET", "enhancing tumour", codes.SCT.Neoplasm),
)


def write_dicom_seg(
    classes: np.ndarray,
    reference: DicomSeries,
    path: Path,
    *,
    series_number: int = SEG_SERIES_NUMBER,
    description: str = "LATUP-Net tumour segmentation",
) -> Path:
    """Write ``classes`` (uint8, 0-3, on the grid of ``reference``) as a DICOM SEG at ``path``, atomically.

    ``classes`` is in SimpleITK array order, ``(slice, row, column)`` with slices in the order of
    ``reference.files``, as ``sitk.GetArrayFromImage(read_series(reference))`` gives it. Every
    segment is described even when it is empty (a case without ET), so readers always find NCR, ED
    and ET; frames without any label are not stored.
    """
    classes = np.asarray(classes)
    expected = (reference.n_slices, reference.rows, reference.columns)
    if classes.shape != expected:
        raise ValueError(f"the class map has shape {classes.shape}, but {reference.label} has {expected}")
    if classes.size and (classes.min() < 0 or classes.max() > len(TUMOUR_SEGMENTS)):
        raise ValueError(f"the class map holds values outside 0-{len(TUMOUR_SEGMENTS)}")
    if reference.frames:  # a multi-frame reference: the SEG's frames follow the file's frame order
        sources = [pydicom.dcmread(_one_multiframe_file(reference), stop_before_pixels=True)]
        in_file_order = np.zeros_like(classes)
        in_file_order[list(reference.frames)] = classes
        classes = in_file_order
    else:
        sources = [pydicom.dcmread(file, stop_before_pixels=True) for file in reference.files]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="LATUP-Net", family=codes.cid7162.ArtificialIntelligence, version=__version__, source="latup-edge"
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=segment.value,
            segment_label=segment.label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=segment.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for segment in TUMOUR_SEGMENTS
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=classes.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="latup-edge",
        manufacturer_model_name="LATUP-Net",
        software_versions=__version__,
        device_serial_number="none",
        series_description=description,
        # An empty case still gets its frames: a SEG without frames is not valid.
        omit_empty_frames=bool(classes.any()),
    )
    return atomic_write(Path(path), lambda temporary: seg.save_as(temporary, enforce_file_format=True))


def read_dicom_seg(path: Path, reference: DicomSeries) -> np.ndarray:
    """The class map (uint8, 0-3) of a DICOM SEG on the grid of ``reference``, in ``write_dicom_seg``'s order.

    Segments are recognised by their labels (NCR, ED, ET), not by their numbers, so a SEG written
    by another tool with the same labels reads too; slices the SEG has no frame for are background.
    """
    try:
        seg = hd.seg.segread(path)
    except (InvalidDicomError, OSError, AttributeError, ValueError, KeyError) as error:
        raise DicomError(f"{path} cannot be read as a DICOM SEG ({type(error).__name__}: {error})") from None
    values = {segment.label: segment.value for segment in TUMOUR_SEGMENTS}
    lookup = np.zeros(max(seg.segment_numbers, default=0) + 1, dtype=np.uint8)
    for number in seg.segment_numbers:
        label = seg.get_segment_description(number).segment_label
        if label not in values:
            raise DicomError(
                f"{path} has a segment {number} labelled {label!r}, not one of {', '.join(values)}: "
                "it is not a tumour segmentation of this tool's classes"
            )
        lookup[number] = values[label]
    uids = [
        str(pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        for file in dict.fromkeys(reference.files)
    ]
    try:
        if reference.frames:
            numbers = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=uids[0],
                source_frame_numbers=[frame + 1 for frame in reference.frames],
                combine_segments=True,
                assert_missing_frames_are_empty=True,
                dtype=np.uint16,
            )
        else:
            numbers = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=uids,
                combine_segments=True,
                assert_missing_frames_are_empty=True,
                dtype=np.uint16,
            )
    except (ValueError, KeyError, RuntimeError) as error:
        raise DicomError(
            f"{path} does not segment {reference.label} ({error}): pass the series the SEG was made on"
        ) from None
    return lookup[numbers]


def _one_multiframe_file(reference: DicomSeries) -> Path:
    """The one file of a multi-frame reference; a SEG can reference the frames of one multi-frame image only."""
    files = list(dict.fromkeys(reference.files))
    if len(files) != 1 or None in reference.frames:
        raise DicomError(
            f"{reference.label} spans {len(files)} files, some multi-frame: a DICOM SEG can reference the frames "
            "of one multi-frame image only; write the labels as NIfTI (without --dicom-seg)"
        )
    return files[0]
