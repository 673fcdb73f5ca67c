"""Synthetic DICOM series, as a scanner writes them: test data and clinic-like phantoms.

``write_series`` writes a ``SimpleITK.Image`` as one MR Image Storage file per slice (int16 pixels
with a rescale that keeps the float range, explicit VR little endian), with the geometry of the
image for any direction cosine matrix (axial, sagittal, coronal, oblique) and the tags a scanner
sets. UIDs are derived from ``seed`` when one is given, so the same call writes the same files.
``write_multiframe`` joins such a series into one enhanced (legacy-converted) multi-frame file and
``compress_files`` re-encodes files losslessly, as scanners and PACS also export them.

>>> study = StudyInfo.new("PAT001", seed=7)                                            # doctest: +SKIP
>>> files = write_series(image, Path("dicom/flair"), description="AX T2 FLAIR",
...                      series_number=4, study=study, seed=7)                        # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

ORIGINAL_IMAGE_TYPE: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
LOCALIZER_IMAGE_TYPE: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "LOCALIZER")
_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class StudyInfo:
    """The patient and study a synthetic series belongs to (shared by every series of one study)."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str  # YYYYMMDD
    frame_of_reference_uid: str
    study_description: str = "MR BRAIN W/WO CONTRAST"

    @classmethod
    def new(cls, patient_id: str, *, seed: int | None = None, study_date: str = "20240115") -> StudyInfo:
        """A study of ``patient_id`` with fresh UIDs (derived from ``seed`` when given)."""
        return cls(
            patient_id=patient_id,
            patient_name=f"PHANTOM^{patient_id}",
            study_uid=_uid(seed, "study", patient_id, study_date),
            study_date=study_date,
            frame_of_reference_uid=_uid(seed, "frame-of-reference", patient_id, study_date),
        )


def write_series(
    image: sitk.Image,
    folder: Path,
    *,
    description: str,
    series_number: int,
    study: StudyInfo,
    slice_order: Literal["ascending", "descending"] = "ascending",
    protocol: str | None = None,
    image_type: Sequence[str] = ORIGINAL_IMAGE_TYPE,
    modality: str = "MR",
    seed: int | None = None,
    manufacturer: str = "SIEMENS",
    model: str = "Skyra",
    repetition_time: float = 2000.0,
    echo_time: float = 10.0,
    contrast_agent: str | None = None,
) -> list[Path]:
    """Write a 3-D image as one DICOM file per slice into ``folder`` (created if missing); the files, by slice.

    ``contrast_agent`` sets ContrastBolusAgent (0018,0010), as a scanner records it on series acquired
    after a contrast injection.

    Slice ``k`` of the image (``sitk.GetArrayFromImage(image)[k]``) is one file; ``slice_order``
    "descending" numbers the instances (and names the files) from the last slice to the first, as
    some scanners do. The image's third axis must be its slice normal (the cross product of its
    first two direction columns, or its opposite). Raises FileExistsError rather than overwrite a
    file.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"write_series takes a scalar 3-D image, not {image.GetDimension()}-D")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    if abs(abs(float(normal @ direction[:, 2])) - 1.0) > 1e-6:
        raise ValueError("write_series needs slices stacked along their normal (an orthonormal direction matrix)")
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    slope, intercept = _rescale(values)
    stored = np.clip(np.rint((values - intercept) / slope), _INT16.min, _INT16.max).astype(np.int16)

    series_uid = _uid(seed, "series", study.study_uid, series_number, description)
    spacing = image.GetSpacing()
    n_slices = values.shape[0]
    order = range(n_slices) if slice_order == "ascending" else range(n_slices - 1, -1, -1)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = [Path()] * n_slices
    for instance, k in enumerate(order, start=1):
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds = _slice_dataset(
            stored[k],
            study=study,
            series_uid=series_uid,
            sop_uid=_uid(seed, "instance", series_uid, instance),
            series_number=series_number,
            instance=instance,
            description=description,
            protocol=protocol if protocol is not None else description,
            image_type=image_type,
            modality=modality,
            position=position,
            orientation=(*direction[:, 0], *direction[:, 1]),
            pixel_spacing=(spacing[1], spacing[0]),  # DICOM: between rows, then between columns
            slice_spacing=spacing[2],
            slice_location=float(np.dot(position, normal)),
            rescale=(slope, intercept),
            equipment=(manufacturer, model),
            timing=(repetition_time, echo_time),
        )
        if contrast_agent:
            ds.ContrastBolusAgent = contrast_agent
        paths[k] = _save_new(ds, folder / f"IM{series_number:03d}_{instance:04d}.dcm")
    return paths


def write_localizer(
    folder: Path,
    *,
    study: StudyInfo,
    series_number: int = 1,
    description: str = "localizer",
    size: int = 32,
    spacing: float = 8.0,
    seed: int | None = None,
) -> list[Path]:
    """Write a 3-plane localizer (one axial, one sagittal, one coronal slice through the centre) into ``folder``."""
    series_uid = _uid(seed, "series", study.study_uid, series_number, description)
    half = size * spacing / 2
    planes = {  # row direction, column direction: axial, sagittal, coronal in LPS
        "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
        "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
        "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    }
    yy, xx = np.mgrid[:size, :size]
    pixels = (1000 * np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size**2 / 8))).astype(np.int16)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for instance, (row, column) in enumerate(planes.values(), start=1):
        position = tuple(-half * (np.asarray(row) + np.asarray(column)))
        ds = _slice_dataset(
            pixels,
            study=study,
            series_uid=series_uid,
            sop_uid=_uid(seed, "instance", series_uid, instance),
            series_number=series_number,
            instance=instance,
            description=description,
            protocol=description,
            image_type=LOCALIZER_IMAGE_TYPE,
            modality="MR",
            position=position,
            orientation=(*row, *column),
            pixel_spacing=(spacing, spacing),
            slice_spacing=spacing,
            slice_location=0.0,
            rescale=(1.0, 0.0),
            equipment=("SIEMENS", "Skyra"),
            timing=(8.6, 4.0),
        )
        paths.append(_save_new(ds, folder / f"IM{series_number:03d}_{instance:04d}.dcm"))
    return paths


def _ds(value: float) -> str:
    """A DS string of ``value`` to 12 significant digits: pydicom writes 9.999999999999998 in 17 characters."""
    return format_number_as_ds(float(f"{float(value):.12g}"))


def _rescale(values: np.ndarray) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept that fit ``values`` into int16 (identity when they are int16 already)."""
    low, high = float(values.min()), float(values.max())
    if np.all(values == np.rint(values)) and low >= _INT16.min and high <= _INT16.max:
        return 1.0, 0.0
    if low >= 0:  # MR magnitude: intercept 0 keeps a skull-stripped background's zeros exact
        return float(_ds(high / 32767.0 if high > 0 else 1.0)), 0.0
    slope = float(_ds((high - low) / 65534.0 if high > low else 1.0))
    # The intercept as it will be stored (16 characters), so the stored integers use the value a reader sees.
    intercept = float(_ds(low - _INT16.min * slope - slope))
    return slope, intercept


def _slice_dataset(
    pixels: np.ndarray,
    *,
    study: StudyInfo,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    instance: int,
    description: str,
    protocol: str,
    image_type: Sequence[str],
    modality: str,
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: tuple[float, float],
    slice_spacing: float,
    slice_location: float,
    rescale: tuple[float, float],
    equipment: tuple[str, str],
    timing: tuple[float, float],
) -> Dataset:
    """One single-frame MR image as a scanner writes it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101500"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer, ds.ManufacturerModelName = equipment
    ds.InstitutionName = "Synthetic Clinic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.study_description
    ds.SeriesDescription = description
    ds.ProtocolName = protocol
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "3D"
    ds.SliceThickness = _ds(float(slice_spacing))
    ds.SpacingBetweenSlices = _ds(float(slice_spacing))
    ds.RepetitionTime, ds.EchoTime = (_ds(float(t)) for t in timing)
    ds.MagneticFieldStrength = "3"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [_ds(float(v)) for v in position]
    ds.ImageOrientationPatient = [_ds(float(v)) for v in orientation]
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(slice_location)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [_ds(float(v)) for v in pixel_spacing]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(rescale[1])
    ds.RescaleSlope = _ds(rescale[0])
    ds.RescaleType = "US"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def write_multiframe(
    files: Sequence[Path], path: Path, *, seed: int | None = None, shuffle_seed: int | None = None
) -> Path:
    """Join a single-frame series (``write_series``'s files) into one Legacy Converted Enhanced MR file at ``path``.

    This is how many scanners and PACS export a volume: one file, each frame's position, orientation,
    spacing and rescale in its functional groups. ``shuffle_seed`` shuffles the frames (pixels and
    functional groups together), so that a reader cannot rely on the file's frame order. Raises
    FileExistsError rather than overwrite a file.
    """
    datasets = [pydicom.dcmread(file) for file in files]
    first = datasets[0]
    converted = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets,
        series_instance_uid=_uid(seed, "multiframe", first.SeriesInstanceUID),
        series_number=int(first.SeriesNumber),
        sop_instance_uid=_uid(seed, "multiframe-instance", first.SeriesInstanceUID),
        instance_number=1,
    )
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(datasets))
        groups = list(converted.PerFrameFunctionalGroupsSequence)
        converted.PerFrameFunctionalGroupsSequence = [groups[i] for i in order]
        converted.PixelData = np.ascontiguousarray(converted.pixel_array[order]).tobytes()
    return _save_new(converted, Path(path))


def compress_files(files: Sequence[Path], transfer_syntax: str) -> list[Path]:
    """Re-encode DICOM files in place with a lossless ``transfer_syntax``, as a PACS may export them: RLE (pydicom),
    JPEG-LS (pyjpegls) or JPEG lossless, first-order prediction (GDCM's encoder, through SimpleITK)."""
    for file in files:
        ds = pydicom.dcmread(file)
        if transfer_syntax == JPEGLosslessSV1:  # pydicom has no encoder for it
            frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
            ds.PixelData = encapsulate([_gdcm_jpeg_lossless(frame) for frame in frames])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        else:
            ds.compress(transfer_syntax)
        ds.save_as(file, enforce_file_format=True)
    return list(files)


def _gdcm_jpeg_lossless(frame: np.ndarray) -> bytes:
    """One frame's JPEG lossless (process 14, selection value 1) bitstream, encoded by GDCM."""
    with tempfile.TemporaryDirectory() as scratch:
        path = str(Path(scratch) / "frame.dcm")
        writer = sitk.ImageFileWriter()
        writer.SetFileName(path)
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.Execute(sitk.GetImageFromArray(frame[None]))
        (encoded,) = generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1)
    return encoded


def _save_new(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` to ``path``, which must not exist yet."""
    with open(path, "xb") as f:  # "x": an existing file raises FileExistsError instead of being replaced
        pydicom.dcmwrite(f, ds, enforce_file_format=True)
    return path


def _uid(seed: int | None, *parts: object) -> str:
    """A DICOM UID: the same for the same ``seed`` and parts, a fresh one when ``seed`` is None."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[str(seed), *(str(part) for part in parts)])
