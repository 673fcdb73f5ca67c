"""Clinic-like studies made from BraTS-ready cases: what a scanner would have written, with the truth kept.

``clinic_series`` turns one BraTS-ready case (1 mm, one grid) into the series of a clinic study:
T1ce at 0.9 x 0.9 x 1 mm axial, FLAIR at 0.9 x 0.9 x 5 mm axial (thick slices, averaged over their
thickness), T2 at 1 x 1 x 3 mm sagittal in reversed slice order and, where the case has one, a 1 mm
sagittal T1 (not a network input: the swap checks read it), each but T1ce after a known rigid head
motion of a few mm and degrees (the patient moved between series; T1's is drawn last, so the others'
are what they were without it). ``write_clinic_study`` writes them as DICOM series with scanner-like
tags, plus a localiser that must be skipped, and returns the truth: each series' transform and the
labels on T1ce's own grid. Test data and benchmarks only: it never feeds training or calibration.

>>> truth = write_clinic_study(images, labels, Path("study"), seed=3)   # doctest: +SKIP
>>> truth.motion["flair"].GetParameters()                                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from latup_edge.data.cases import BratsCase, load_case_labels
from latup_edge.scans.dicom_write import StudyInfo, write_localizer, write_multiframe, write_series
from latup_edge.scans.geometry import classes_to_native, nifti_to_sitk

# (spacing mm, direction cosines as columns, slice order, slice thickness averaged) per modality.
# Sagittal slices, right-handed: rows run to posterior, columns to inferior, slices to the right (LPS terms).
SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
ACQUISITIONS: dict[str, dict] = {
    "t1ce": {"spacing": (0.9, 0.9, 1.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1), "order": "ascending",
             "description": "AX T1 MPRAGE POST GD"},
    "flair": {"spacing": (0.9, 0.9, 5.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1), "order": "ascending",
              "description": "AX T2 FLAIR 5mm"},
    "t2": {"spacing": (1.0, 1.0, 3.0), "direction": SAGITTAL, "order": "descending",
           "description": "SAG T2 TSE 3mm"},
    "t1": {"spacing": (1.0, 1.0, 1.0), "direction": SAGITTAL, "order": "ascending",
           "description": "SAG T1 MPRAGE"},
}  # fmt: skip


@dataclass
class ClinicTruth:
    """What the study was made from: each modality's head motion (fixed T1ce -> that series) and the labels."""

    motion: dict[str, sitk.Euler3DTransform]
    labels_native: sitk.Image  # network classes on T1ce's own grid (label-aware from 1 mm, as segment's own)
    folders: dict[str, Path] = field(default_factory=dict)


def case_volumes(case: BratsCase, modalities=("t1ce", "flair", "t2", "t1")) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """A BraTS-ready case's modalities (those it has) and its network classes (uint8) as SimpleITK images."""
    images = {key: nifti_to_sitk(nib.load(case.files[key])) for key in modalities if key in case.files}
    classes, _ = load_case_labels(case)
    reference = nib.load(case.files[modalities[0]])
    labels = nifti_to_sitk(nib.Nifti1Image(classes.astype(np.float32), reference.affine))
    return images, sitk.Cast(labels, sitk.sitkUInt8)


def random_motion(rng: np.random.Generator, center: tuple[float, ...], mm: float = 4.0, degrees: float = 4.0):
    """A rigid head motion of up to ``mm`` per axis and ``degrees`` per axis about the brain's centre."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(center)
    transform.SetRotation(*np.deg2rad(rng.uniform(-degrees, degrees, 3)))
    transform.SetTranslation(tuple(rng.uniform(-mm, mm, 3)))
    return transform


def acquisition_grid(image: sitk.Image, spacing, direction) -> sitk.Image:
    """An empty grid of ``spacing`` and ``direction`` covering ``image``'s field of view (the scanner's box)."""
    last = np.array(image.GetSize()) - 1
    corners = [image.TransformIndexToPhysicalPoint([int(c) for c in np.array(i) * last]) for i in np.ndindex(2, 2, 2)]
    matrix = np.array(direction, float).reshape(3, 3)
    local = np.array(corners) @ matrix  # coordinates along the new axes
    low, high = local.min(0), local.max(0)
    size = [int(np.ceil((h - lo) / s)) + 1 for lo, h, s in zip(low, high, spacing, strict=True)]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(s) for s in spacing))
    grid.SetDirection(tuple(float(d) for d in matrix.ravel()))
    grid.SetOrigin(tuple(float(v) for v in matrix @ low))
    return grid


def acquire(image: sitk.Image, grid: sitk.Image, motion: sitk.Transform | None) -> sitk.Image:
    """What a scanner records of ``image`` on ``grid`` after ``motion``: slices averaged over their thickness."""
    thickness = grid.GetSpacing()[2]
    source = image
    if thickness > 1.5:  # a thick slice integrates the tissue across it: smooth along the slice normal first
        source = _smooth_along(image, np.array(grid.GetDirection()).reshape(3, 3)[:, 2], thickness)
    inverse = motion.GetInverse() if motion is not None else sitk.Transform()
    acquired = sitk.Resample(source, grid, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    # Skull stripping runs on the acquired series: zero outside its brain, as BraTS-style data are
    # (the slice profile's tails would otherwise leave faint nonzero voxels along the whole column).
    support = sitk.Resample(sitk.Cast(image != 0, sitk.sitkFloat32), grid, inverse, sitk.sitkLinear, 0.0)
    return sitk.Mask(sitk.Clamp(acquired, sitk.sitkFloat32, 0.0), support >= 0.5)


def _smooth_along(image: sitk.Image, normal: np.ndarray, thickness: float) -> sitk.Image:
    axis = int(np.argmax(np.abs(np.array(image.GetDirection()).reshape(3, 3).T @ normal)))
    smooth = sitk.RecursiveGaussianImageFilter()  # along one axis only (mm, physical units)
    smooth.SetSigma(thickness / 2.355)  # a Gaussian slice profile of FWHM = the thickness
    smooth.SetDirection(axis)
    return smooth.Execute(sitk.Cast(image, sitk.sitkFloat32))


def clinic_series(
    images: dict[str, sitk.Image],
    labels: sitk.Image,
    seed: int,
    mm: float = 4.0,
    degrees: float = 4.0,
    acquisitions: dict[str, dict] | None = None,
) -> tuple[dict[str, sitk.Image], ClinicTruth]:
    """The clinic series of a BraTS-ready case (see the module docstring) and their truth.

    ``acquisitions`` replaces some entries of ``ACQUISITIONS`` (e.g. a 1 mm FLAIR, to see what its
    thick slices cost)."""
    acquisitions = ACQUISITIONS | (acquisitions or {})
    rng = np.random.default_rng(seed)
    reference = images["t1ce"]
    center = reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in reference.GetSize()])
    motion: dict[str, sitk.Euler3DTransform] = {}
    series: dict[str, sitk.Image] = {}
    t1ce_grid = None
    for key, image in images.items():
        acquisition = acquisitions[key]
        grid = acquisition_grid(reference, acquisition["spacing"], acquisition["direction"])
        moved = None if key == "t1ce" else random_motion(rng, center, mm, degrees)
        if moved is not None:
            motion[key] = moved
        series[key] = acquire(image, grid, moved)
        if key == "t1ce":
            t1ce_grid = grid
    assert t1ce_grid is not None
    # The truth takes the operator segment's labels take (one-hot, linear, argmax): with nearest
    # neighbour here, a perfect prediction moved to this grid would lose 0.02 ET Dice to the scoring.
    classes = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
    labels_native = sitk.GetImageFromArray(classes_to_native(classes, labels, t1ce_grid))
    labels_native.CopyInformation(t1ce_grid)
    return series, ClinicTruth(motion, labels_native)


def write_clinic_study(
    images: dict[str, sitk.Image],
    labels: sitk.Image,
    folder: Path,
    seed: int,
    patient_id: str = "P0001",
    descriptions: dict[str, str] | None = None,
    multiframe: Sequence[str] = (),
) -> ClinicTruth:
    """Write the clinic series of a case as one DICOM study under ``folder`` (one subfolder a series).

    ``descriptions`` replaces some series' SeriesDescription (a mix-up: ``{"t1": "AX T1 MPRAGE POST GD",
    "t1ce": "SAG T1 MPRAGE"}`` names the pre-contrast series as the post-contrast one and the reverse).
    The series of the modalities in ``multiframe`` are written as one legacy-converted enhanced MR file
    each, with shuffled frames, as many scanners and PACS export them."""
    names = {key: acquisition["description"] for key, acquisition in ACQUISITIONS.items()} | (descriptions or {})
    series, truth = clinic_series(images, labels, seed)
    study = StudyInfo.new(patient_id=patient_id, seed=seed)
    write_localizer(Path(folder) / "01_localizer", study=study, series_number=1, seed=seed)
    for number, (key, image) in enumerate(series.items(), start=2):
        acquisition = ACQUISITIONS[key]
        target = Path(folder) / f"{number:02d}_{key}"
        files = write_series(image, target, description=names[key], series_number=number, study=study,
                             slice_order=acquisition["order"])  # fmt: skip
        if key in multiframe:
            write_multiframe(files, target / "volume.dcm", seed=seed, shuffle_seed=seed + number)
            for file in files:
                file.unlink()
        truth.folders[key] = target
    return truth
