"""One patient's scans, whatever their form, onto the model's grid and the labels back onto theirs.

A scan to segment is a BraTS case (NIfTI files named by a BraTS or nnU-Net convention, of any
orientation and spacing) or a DICOM study (series grouped by StudyInstanceUID, modalities assigned
by the rules of ``latup_edge.scans.dicom``). ``load_scan`` gives the network its input on the model
grid: 1 mm isotropic, BraTS's LPS voxel order, every modality on the reference's grid (T1ce, as
BraTS registers to it); a reference already at 0.88-1 mm on an axis-aligned grid keeps its
own voxels, only reoriented (``model_grid_for``), so its labels come back without resampling.
A BraTS-ready case (all modalities on one 1 mm LPS grid) takes exactly the path of
``load_case_images``: nothing is resampled, so its labels are byte-identical to it.
On either path a background that holds one nonzero constant (an intensity offset) is first set to 0.
Anything else is reoriented, resampled and, when its modalities do not share the reference's grid,
rigidly registered to it, each step recorded with its parameters and quality figure; a brain that
is not skull-stripped, a series too short to hold a brain or a registration that failed its own
quality figure is refused with one sentence. ``labels_on_native_grid`` brings the labels back onto
the reference series' own grid.

>>> scans = discover_scans(Path("clinic"))                                  # doctest: +SKIP
>>> loaded = load_scan(scans[0], ("flair", "t1ce", "t2"))                    # doctest: +SKIP
>>> [step["step"] for step in loaded.steps]                                  # doctest: +SKIP
['check', 'register', 'resample', 'resample', 'resample']
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from latup_edge.data.cases import (
    AFFINE_ATOL,
    BratsCase,
    CaseError,
    NoCaseFound,
    discover_cases,
    load_case_images,
    read_case_volume,
    zero_constant_background,
)
from latup_edge.errors import LatupError, first_line
from latup_edge.scans.checks import check_coverage, check_distinct, check_skull_stripped
from latup_edge.scans.dicom import (
    MODALITY_NAMES,
    DicomError,
    DicomSeries,
    ModalityRules,
    assign_modalities,
    find_series,
    group_studies,
    load_rules,
    read_series,
    told_by_contrast_agent,
)
from latup_edge.scans.geometry import (
    labels_to_native,
    model_grid_for,
    nifti_to_sitk,
    resample_onto,
    shares_lattice,
    sitk_to_nifti,
)
from latup_edge.scans.registration import CHECKS_PYRAMID, PYRAMID, Pyramid, check_registration, register_rigid

REFERENCE_MODALITY = "t1ce"  # BraTS registers every sequence to T1ce
# BraTS's voxel order: the affine's rotation part is diag(-1, -1, 1) (nibabel axcodes L, P, S).
BRATS_ROTATION = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class DicomStudy:
    """The DICOM series of one study, as found on disk (headers only; nothing is decoded until loading)."""

    case_id: str
    folder: Path
    series: tuple[DicomSeries, ...]

    @property
    def skipped(self) -> list[dict[str, str]]:
        """The series that cannot be model inputs (localisers, 2-D, derived ...), with the reason of each."""
        return [{"series": s.label, "reason": s.skip_reason} for s in self.series if s.skip_reason]


Scan = BratsCase | DicomStudy


@dataclass
class NativeGrid:
    """Where the labels go back to: the reference series' own grid, and the model grid they were made on."""

    grid: sitk.Image  # the model grid (1 mm, LPS voxel order) the network ran on
    native: sitk.Image  # the reference series' grid (its data is not needed, only its geometry)
    header: nib.Nifti1Image  # the NIfTI whose geometry the label file takes
    series: DicomSeries | None  # the reference DICOM series (a DICOM SEG references it), None for NIfTI


@dataclass
class LoadedScan:
    """A scan ready for the network: ``images`` (C, X, Y, Z) float32 on the model grid, ``reference`` its NIfTI
    geometry, ``native`` None when the scan was BraTS-ready (labels go on ``reference`` as they are)."""

    images: np.ndarray
    reference: nib.Nifti1Image
    native: NativeGrid | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    # The coarsest acquisition: per axis, sorted finest first, the largest spacing of any modality (mm).
    acquired_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


def discover_scans(*roots: Path | str) -> list[Scan]:
    """Every BraTS case and every DICOM study under ``roots``, sorted by case id.

    BraTS cases are found as ``discover_cases`` finds them; DICOM files anywhere under a root are
    grouped into studies (``find_series``, ``group_studies``). A study's case id is its PatientID and
    StudyDate (``P001_20260315``), with the end of its StudyInstanceUID added when two studies would
    share it. Raises CaseError when a root is missing or holds neither.
    """
    if not roots:
        raise CaseError("no folder given: pass one or more folders of BraTS cases or DICOM studies")
    scans: list[Scan] = []
    for root in map(Path, roots):
        series = find_series(root) if root.is_dir() else []
        try:
            scans += discover_cases(root)
        except NoCaseFound:
            if not series:
                raise CaseError(
                    f"no BraTS case or DICOM series found under {root}: expected BraTS-named NIfTI files "
                    "(BraTS2021_00000_flair.nii.gz ...) or DICOM files of an MR study",
                    path=root,
                ) from None
        except CaseError:
            if not series:
                raise  # its own sentence: a missing folder, a dataset.json that cannot be used ...
        scans += _studies(root, series)
    return sorted(scans, key=lambda scan: (scan.case_id, str(scan.folder)))


def _studies(root: Path, series: list[DicomSeries]) -> list[DicomStudy]:
    studies = []
    for study_uid, members in group_studies(series).items():
        first = members[0]
        folder = Path(_common_folder([path for s in members for path in s.files]) or root)
        studies.append(DicomStudy(_safe_id(f"{first.patient_id or 'anonymous'}_{first.study_date or study_uid[-8:]}"),
                                  folder, tuple(members)))  # fmt: skip
    counts: dict[str, int] = {}
    for study in studies:
        counts[study.case_id] = counts.get(study.case_id, 0) + 1
    return [
        DicomStudy(f"{s.case_id}_{s.series[0].study_uid[-6:].replace('.', '')}", s.folder, s.series)
        if counts[s.case_id] > 1
        else s
        for s in studies
    ]


def _common_folder(paths: Sequence[Path]) -> str:
    return os.path.commonpath([str(path.parent) for path in paths]) if paths else ""


def _safe_id(text: str) -> str:
    """A case id usable as a file name: letters, digits, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "study"


def is_brats_ready(images: Sequence[nib.Nifti1Image]) -> bool:
    """All modalities on one grid, 1 mm isotropic, BraTS's LPS voxel order: nothing to resample."""
    first = images[0]
    if not np.allclose(first.affine[:3, :3], BRATS_ROTATION, atol=AFFINE_ATOL):
        return False
    return all(
        image.shape[:3] == first.shape[:3] and np.abs(image.affine - first.affine).max() <= AFFINE_ATOL
        for image in images[1:]
    )


def load_scan(scan: Scan, modalities: Sequence[str], rules: ModalityRules | Path | None = None) -> LoadedScan:
    """Load a scan onto the model grid (see the module's docstring); CaseError or a ScanError sentence if it cannot."""
    if isinstance(scan, BratsCase):
        headers = _nifti_headers(scan, modalities)
        if is_brats_ready(headers):
            offsets: dict[str, dict] = {}
            images, reference = load_case_images(scan, modalities, offsets)
            # Nothing is resampled (the labels of load_case_images), but a head with its skull is still refused.
            names = [scan.files[key].name for key in modalities]
            checks = {
                key: _skull_check_of_array(volume, name)
                for key, volume, name in zip(modalities, images, names, strict=True)
            }
            distinct = check_distinct(images, names)
            steps = [{"step": "none", "why": "BraTS-ready: one 1 mm LPS grid", "checks": checks, "distinct": distinct}]
            steps += _background_steps(offsets)
            spacing = tuple(sorted(float(z) for z in reference.header.get_zooms()[:3]))
            return LoadedScan(images, reference, None, steps, spacing)
        volumes, labels, header, offsets = {}, {}, None, {}
        for key in modalities:
            volume, image = read_case_volume(scan, key, offsets)
            volumes[key] = nifti_to_sitk(nib.Nifti1Image(volume, image.affine, image.header))
            labels[key] = scan.files[key].name
            if key == REFERENCE_MODALITY:
                header = image
        return _onto_model_grid(volumes, labels, header, None, _background_steps(offsets))

    rules = rules if isinstance(rules, ModalityRules) else load_rules(rules)
    chosen = assign_modalities(list(scan.series), rules, modalities)
    volumes, offsets = {}, {}
    for key, series in chosen.items():
        volumes[key] = _read_series(series, key, offsets)
    labels = {key: series.label for key, series in chosen.items()}
    assign: dict[str, Any] = {"step": "assign", "series": labels}
    if "t1ce" in chosen and told_by_contrast_agent(chosen["t1ce"], rules):
        assign["t1ce_by"] = f"its ContrastBolusAgent {chosen['t1ce'].contrast_agent!r}: its name matches T1"
    steps = [{"step": "skip", **skipped} for skipped in scan.skipped]
    loaded = _onto_model_grid(volumes, labels, None, chosen.get(REFERENCE_MODALITY), _background_steps(offsets))
    loaded.steps[:0] = [*steps, assign]
    return loaded


def _read_series(series: DicomSeries, key: str, offsets: dict[str, dict]) -> sitk.Image:
    """``read_series`` with a constant background set to 0, as the NIfTI readers set it (a rescale intercept can
    leave one outside the brain); ``offsets[key]`` receives its figures."""
    image = read_series(series)
    values = sitk.GetArrayFromImage(image)
    if (found := zero_constant_background(values)) is None:
        return image
    offsets[key] = found
    zeroed = sitk.GetImageFromArray(values)
    zeroed.CopyInformation(image)
    return zeroed


def _background_steps(offsets: dict[str, dict]) -> list[dict[str, Any]]:
    """The log's record of each modality whose constant background was set to 0 (``zero_constant_background``)."""
    return [{"step": "background", "modality": key, **found} for key, found in offsets.items()]


def _nifti_headers(case: BratsCase, modalities: Sequence[str]) -> list[nib.Nifti1Image]:
    missing = case.missing(modalities)
    if missing:  # load_case_images says it in its own sentence
        load_case_images(case, modalities)
    return [nib.load(case.files[key]) for key in modalities]


def _skull_check_of_array(volume: np.ndarray, label: str) -> dict:
    """``check_skull_stripped`` of a 1 mm ``(X, Y, Z)`` array, on every second voxel (the check works at 2 mm)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume[::2, ::2, ::2].T))
    image.SetSpacing((2.0, 2.0, 2.0))
    return check_skull_stripped(image, label)


def _check_all(volumes: dict[str, sitk.Image], labels: dict[str, str]) -> list[dict[str, Any]]:
    """Coverage and skull stripping of every modality (ScanError sentences), their figures for the log."""
    return [
        {
            "step": "check",
            "modality": key,
            **check_coverage(volume, labels[key]),
            **check_skull_stripped(volume, labels[key]),
        }  # fmt: skip
        for key, volume in volumes.items()
    ]


def _onto_model_grid(
    volumes: dict[str, sitk.Image],
    labels: dict[str, str],
    header: nib.Nifti1Image | None,
    series: DicomSeries | None,
    steps: list[dict[str, Any]],
) -> LoadedScan:
    """Check, register to the reference, resample onto the model grid; every step appended to ``steps``."""
    steps = steps + _check_all(volumes, labels)
    reference = volumes[REFERENCE_MODALITY] if REFERENCE_MODALITY in volumes else next(iter(volumes.values()))
    grid = model_grid_for(reference)
    images = np.empty((len(volumes), *grid.GetSize()), np.float32)
    for channel, (key, volume) in enumerate(volumes.items()):
        images[channel] = _aligned(volume, key, labels[key], reference, grid, steps)
    if REFERENCE_MODALITY in volumes:
        steps.append(share_brain_mask(images, list(volumes).index(REFERENCE_MODALITY), list(volumes)))
    steps.append({"step": "distinct", **check_distinct(images, list(labels.values()))})
    native_header = header if header is not None else sitk_to_nifti(reference)
    spacing = np.max([sorted(volume.GetSpacing()) for volume in volumes.values()], axis=0)
    native = NativeGrid(grid, reference, native_header, series)
    return LoadedScan(images, sitk_to_nifti(grid), native, steps, tuple(round(float(s), 4) for s in spacing))


def share_brain_mask(images: np.ndarray, reference: int, keys: Sequence[str]) -> dict[str, Any]:
    """In place: every channel takes the reference's brain (its nonzero voxels), as BraTS applies one mask to all.

    A series acquired thick or moved ends its brain up to a slab away from T1ce's; where only it is nonzero the
    network saw a brain with FLAIR and T1ce at 0, a voxel training never had (all its modalities share one
    mask), and painted oedema along the cortex. Outside the reference's brain every channel becomes 0; inside,
    a channel's own zeros take its nearest nonzero value.
    """
    start = time.perf_counter()
    brain = images[reference] != 0
    box = ndimage.find_objects(brain.astype(np.uint8))  # the nearest value is sought within the brain's box
    cleared, filled = {}, {}
    for key, channel in zip(keys, images, strict=True):
        outside = ~brain & (channel != 0)
        cleared[key], filled[key] = int(outside.sum()), 0
        channel[outside] = 0
        if not box:  # no reference brain: nothing to fill
            continue
        inner, within = channel[box[0]], brain[box[0]]
        holes = within & (inner == 0)
        if holes.any() and (inner != 0).any():
            # City-block nearest, not Euclidean: a fill needs no exact distance, and it takes a third of the time.
            nearest = ndimage.distance_transform_cdt(
                inner == 0, metric="taxicab", return_distances=False, return_indices=True
            )
            inner[holes] = inner[tuple(nearest)][holes]
            filled[key] = int(holes.sum())
    return {"step": "brain mask", "from": keys[reference], "voxels": int(brain.sum()), "cleared": cleared,
            "filled": filled, "seconds": round(time.perf_counter() - start, 3)}  # fmt: skip


def _aligned(
    volume: sitk.Image,
    key: str,
    label: str,
    reference: sitk.Image,
    grid: sitk.Image,
    steps: list[dict[str, Any]],
    pyramid: Pyramid = PYRAMID,
) -> np.ndarray:
    """``volume`` registered to ``reference`` (unless they share a grid) on ``pyramid`` and resampled onto
    ``grid``, as an (X, Y, Z) array; each step appended to ``steps``. RegistrationError when the registration
    failed."""
    transform = None
    if volume is not reference and not _same_grid(volume, reference):
        registration = register_rigid(reference, volume, pyramid=pyramid)
        steps.append({"step": "register", "modality": key, "series": label, **registration.to_log()})
        check_registration(registration, key, label)
        transform = registration.transform
    if transform is None and _same_grid(volume, grid):
        resampled, record = volume, {"step": "resample", "modality": key, "interpolation": "none"}
    else:
        resampled, record = resample_onto(volume, grid, transform, label=label)
        record = {**record, "modality": key}
    steps.append(record)
    return sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)  # a copy: a view dies with ``resampled``


def load_companion(
    scan: Scan, key: str, loaded: LoadedScan, rules: ModalityRules | Path | None = None
) -> tuple[np.ndarray | None, list[dict[str, Any]], str | None]:
    """A series the network does not read (T1, for the swap checks) on ``loaded``'s model grid, aligned
    as the inputs were (registered to the reference series, on the 4 mm level alone, and resampled), or as it
    is on a BraTS-ready grid.

    Returns ``(volume, steps, None)``, or ``(None, steps, why)`` where the scan has no such series or it
    cannot be read or aligned: a companion series never fails the case.
    """
    name = MODALITY_NAMES.get(key, key)
    steps: list[dict[str, Any]] = []
    try:
        if isinstance(scan, BratsCase):
            if key not in scan.files:
                return None, steps, f"no {name} file"
            array, image = read_case_volume(scan, key)
            if loaded.native is None:  # BraTS-ready: the file as it is, or nothing (no reference to register to)
                on_grid = array.shape == loaded.images.shape[1:] and np.allclose(image.affine, loaded.reference.affine)
                return (array, steps, None) if on_grid else (None, steps, f"the {name} file is not on the case's grid")
            volume, label = nifti_to_sitk(nib.Nifti1Image(array, image.affine, image.header)), scan.files[key].name
        else:
            rules = rules if isinstance(rules, ModalityRules) else load_rules(rules)
            try:
                (series,) = assign_modalities(list(scan.series), rules, (key,)).values()
            except DicomError:  # its sentence lists the whole study: the log needs only the count
                count = sum(not s.skip_reason and rules.modality_of(s) == key for s in scan.series)
                return None, steps, f"{count or 'no'} series match{'es' if count < 2 else ''} {name} by {rules.source}"
            volume, label = _read_series(series, key, {}), series.label
        assert loaded.native is not None  # a DICOM study is never BraTS-ready
        # Only the checks read it: the coarse level alone aligns it well enough for rank statistics.
        aligned = _aligned(volume, key, label, loaded.native.native, loaded.native.grid, steps, CHECKS_PYRAMID)
        return aligned, steps, None
    except (LatupError, OSError, RuntimeError) as error:  # SimpleITK and file errors too: the case stands
        return None, steps, first_line(error)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=AFFINE_ATOL)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=AFFINE_ATOL)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=AFFINE_ATOL)
    )


def labels_on_native_grid(
    native: NativeGrid, classes: np.ndarray, probabilities: np.ndarray | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The model-grid labels (X, Y, Z) on the reference series' grid, in its NIfTI voxel order (X, Y, Z).

    Label-aware: each class's probability is interpolated linearly onto the native grid and the
    largest wins (``labels_to_native``), with the post-processed classes imposed where they differ
    from the raw argmax, so a component removed on the model grid stays removed.
    """
    start = time.perf_counter()
    if probabilities is None:
        probabilities = np.stack([classes == k for k in range(4)]).astype(np.float32)
    native_classes = labels_to_native(probabilities, native.grid, native.native, override=classes)
    interpolation = (
        "none: reoriented (the network ran on the reference's own voxels)"
        if shares_lattice(native.grid, native.native)
        else "linear per class probability, then argmax"
    )
    record = {"step": "labels to native grid", "interpolation": interpolation,
              "shape": list(native.native.GetSize()), "seconds": round(time.perf_counter() - start, 3)}  # fmt: skip
    return np.ascontiguousarray(native_classes.transpose(2, 1, 0)), record
