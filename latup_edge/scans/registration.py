"""Rigid registration of one series onto the reference series, with its own quality figures.

Series of one session share the scanner frame, so registration starts from the headers (identity)
and only corrects what the patient moved between series: a few mm, a few degrees. Mattes mutual
information makes it work across contrasts (FLAIR onto T1ce); the Dice of the two foreground masks
after registration is a modality-independent check of the result for skull-stripped scans.

>>> registration = register_rigid(t1ce, flair)
>>> check_registration(registration, "FLAIR", "series 3")  # raises RegistrationError when it failed
>>> flair_on_grid, record = resample_onto(flair, grid, registration.transform, label="FLAIR")
>>> registration.to_log()["mask_dice_after"]
0.97
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from latup_edge.errors import LatupError
from latup_edge.evaluate.metrics import bounding_box
from latup_edge.scans.geometry import binned

# Below this foreground-mask Dice after registration the series do not overlap as one brain.
MIN_MASK_DICE = 0.85
# Plausible head motion between series of one session.
MAX_SHIFT_MM = 20.0
MAX_ROTATION_DEG = 15.0
# Registration runs on ~2 mm copies (bin-averaged), then a pyramid over them: 4 mm and 2 mm levels.
# Measured: 1 mm levels cost 4x the time for no gain under 0.3 mm error.
WORKING_SPACING_MM = 2.0
# (shrink factor of the working copies, smoothing sigma in mm) per level, coarsest first.
Pyramid = tuple[tuple[int, float], ...]
PYRAMID: Pyramid = ((2, 2.0), (1, 1.0))
# A series only the checks read (T1, for the swap checks) stops at the 4 mm level: 2.7-2.9x faster, error
# mean 0.41-0.50 / max 0.73-1.08 mm against 0.21-0.25 / 0.45-0.58 on 60 pairs (benchmarks/registration_box.py).
CHECKS_PYRAMID = PYRAMID[:1]
HISTOGRAM_BINS = 32
# The metric samples the reference's brain box plus this margin, not its whole field of view: a
# skull-stripped T1ce is mostly zeros, and sampling them cost a third of the registration's time.
FIXED_MARGIN_MM = 10.0
# The share of the box's voxels the metric samples. On the whole field of view 0.1 left two T1
# registrations 1.4-1.5 mm off (a noisy metric estimate; 300 iterations changed nothing) and 0.3 kept
# every one under 0.86 mm. On the box, 0.3 left one FLAIR of 60 at 1.37 mm; 0.5 of the box (about half the
# field of view) draws about as many samples as 0.3 of the whole did
# (benchmarks/registration_box.py). A 1 mm pyramid level reached 0.45 mm at 10 s a pair.
SAMPLING_FRACTION = 0.5


class RegistrationError(LatupError):
    """A series that could not be aligned with the reference series."""


@dataclass
class Registration:
    """A rigid registration's transform (reference points -> moving points) and its figures.

    ``translation_mm`` and ``rotation_deg`` are the Euler parameters (about the reference's centre);
    ``shift_mm`` and ``angle_deg`` their magnitudes. Metrics are Mattes MI (lower is better); the
    mask Dice compares the foregrounds of the reference and of the moving series resampled onto it.
    """

    transform: sitk.Euler3DTransform
    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    metric_before: float
    metric_after: float
    mask_dice_before: float
    mask_dice_after: float
    iterations: int
    stop_condition: str
    seconds: float
    converged: bool
    levels_mm: tuple[float, ...] = ()  # the pyramid's resolutions, coarsest first

    @property
    def shift_mm(self) -> float:
        return float(np.linalg.norm(self.translation_mm))

    @property
    def angle_deg(self) -> float:
        """The total rotation angle, from the rotation matrix's trace."""
        matrix = np.asarray(self.transform.GetMatrix()).reshape(3, 3)
        return math.degrees(math.acos(float(np.clip((np.trace(matrix) - 1) / 2, -1, 1))))

    def to_log(self) -> dict:
        """The record for the run log (JSON-ready, no transform object)."""
        record = {k: v for k, v in asdict(self).items() if k != "transform"}
        record["translation_mm"] = [round(v, 3) for v in self.translation_mm]
        record["rotation_deg"] = [round(v, 3) for v in self.rotation_deg]
        # The transform itself, exactly: Euler3DTransform's (angles rad, translation mm) and its centre.
        record["parameters"] = list(self.transform.GetParameters())
        record["fixed_parameters"] = list(self.transform.GetFixedParameters())
        return (
            {"step": "register"} | record | {"shift_mm": round(self.shift_mm, 3), "angle_deg": round(self.angle_deg, 3)}
        )


def foreground_mask(image: sitk.Image) -> np.ndarray:
    """Voxels above 5 % of the 99th percentile of the nonzero ones, holes filled; (z, y, x) bool.

    Skull-stripped scans are zero outside the brain; the threshold drops interpolation's faint edge.
    """
    values = sitk.GetArrayViewFromImage(image)
    nonzero = values[values > 0]
    if nonzero.size == 0:
        return np.zeros(values.shape, dtype=bool)
    return ndi.binary_fill_holes(values > 0.05 * np.percentile(nonzero, 99))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 0.0


def _mask_dice(fixed_mask: np.ndarray, fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return _dice(fixed_mask, foreground_mask(resampled))


def _brain_box(image: sitk.Image, mask: np.ndarray, margin_mm: float) -> sitk.Image:
    """``image`` cropped to the box of ``mask`` (z, y, x) plus ``margin_mm``; the whole image if it is empty."""
    if not mask.any():
        return image
    box = bounding_box(mask, margin=0)
    margins = [math.ceil(margin_mm / spacing) for spacing in image.GetSpacing()[::-1]]
    start = [max(int(s.start) - m, 0) for s, m in zip(box, margins, strict=True)]
    stop = [min(int(s.stop) + m, n) for s, m, n in zip(box, margins, mask.shape, strict=True)]
    size = [b - a for a, b in zip(start, stop, strict=True)]
    return sitk.RegionOfInterest(image, size[::-1], start[::-1])


def _method(seed: int, sampling: float, pyramid: Pyramid = PYRAMID) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads a seed of 0 as "the wall clock": shift by one so that seed=0 is deterministic too.
    method.SetMetricSamplingPercentage(sampling, seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.01, numberOfIterations=100, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6
    )
    # Scales from a 1 mm physical shift: one step moves a rotation and a translation alike.
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([shrink for shrink, _ in pyramid])
    method.SetSmoothingSigmasPerLevel([sigma for _, sigma in pyramid])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


# One registration at a time in a process: two at once (two reader threads) would each save and restore the
# global thread count, and one could leave it at 1 for the whole process, or at 2 under the other's metric.
_ONE_AT_A_TIME = threading.Lock()


@contextmanager
def _one_itk_thread() -> Iterator[None]:
    """ITK's threaded metric sums its samples in an order that varies from run to run: with 2 threads, four runs
    of one pair gave four transforms (equal to ~1e-9 mm, yet flipping ~100 label voxels of a case). One thread
    repeats exactly. The registration method's own thread count does not reach its metric; the global one does."""
    with _ONE_AT_A_TIME:
        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _fov_centre(image: sitk.Image) -> tuple[float, float, float]:
    centre_index = [(s - 1) / 2 for s in image.GetSize()]
    return image.TransformContinuousIndexToPhysicalPoint(centre_index)


def _metric(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, seed: int, sampling: float) -> float:
    """Mattes MI of the working copies under ``transform``, at their own resolution."""
    method = _method(seed, sampling)
    method.SetShrinkFactorsPerLevel([1])
    method.SetSmoothingSigmasPerLevel([0.0])
    method.SetInitialTransform(transform, inPlace=False)
    with _one_itk_thread():
        return float(method.MetricEvaluate(fixed, moving))


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    seed: int = 0,
    margin_mm: float | None = FIXED_MARGIN_MM,
    sampling: float = SAMPLING_FRACTION,
    pyramid: Pyramid = PYRAMID,
) -> Registration:
    """Rigidly register ``moving`` onto ``fixed`` (the reference): Mattes MI on a 4 mm / 2 mm ``pyramid``.

    Starts from the headers (identity about the reference's centre), never from image moments, which
    jump by centimetres when one series covers less of the head than the other. Random sampling with
    ``seed``, and the metric on one ITK thread, make it deterministic: the same pair gives the same
    transform, bit for bit. Measured on BraTS-like phantoms of 160 x 190 x 145 at 1 mm on 2 cores
    (tests/test_registration.py) with a sampling of 0.1: about 1 s per pair with its quality figures
    (0.4 s of it the registration itself); for a 267 x 267 x 155 T1ce against a 5 mm FLAIR or a 3 mm
    sagittal T2 (the quality figures on the 2 mm working copies) 2.4-2.6 s on two threads, about 4 s on
    one (2026-12-07), and 0.1-0.3 mm error on shifts of 4-7 mm with rotations of 3-5 degrees, across
    contrasts and from 5 mm slices.
    The metric samples the reference's brain box plus ``margin_mm`` (None: its whole field of view) at
    ``sampling`` of its voxels. On the 60 moved series of 20 independent-generator clinic studies,
    against the whole field of view at 0.3 (before): 10-17 % less time a pair, error mean 0.21-0.23 mm
    against 0.28-0.30, max 0.45 against 0.81; the box at 0.3 saved 33-38 % but left one FLAIR at
    1.37 mm (``benchmarks/registration_box.py``, docs/CLINIC_INPUT.md). ``CHECKS_PYRAMID`` (the 4 mm level
    alone) serves a series that only the swap checks read.
    """
    start = time.perf_counter()
    initial = sitk.Euler3DTransform()
    initial.SetCenter(_fov_centre(fixed))
    fixed_small, moving_small = binned(fixed, WORKING_SPACING_MM), binned(moving, WORKING_SPACING_MM)
    fixed_mask = foreground_mask(fixed_small)
    fixed_box = fixed_small if margin_mm is None else _brain_box(fixed_small, fixed_mask, margin_mm)

    method = _method(seed, sampling, pyramid)
    method.SetInitialTransform(initial, inPlace=False)
    with _one_itk_thread():
        found = sitk.Euler3DTransform(method.Execute(fixed_box, moving_small).GetNthTransform(0))

    # The quality figures on the working copies too: a mask Dice at 2 mm judges a rigid fit as well, 5x cheaper.
    # It compares whole fields of view, so that a brain moved out of the box still counts against the fit.
    parameters = found.GetParameters()
    registration = Registration(
        transform=found,
        translation_mm=tuple(float(v) for v in parameters[3:]),
        rotation_deg=tuple(math.degrees(v) for v in parameters[:3]),
        metric_before=round(_metric(fixed_box, moving_small, initial, seed, sampling), 4),
        metric_after=round(_metric(fixed_box, moving_small, found, seed, sampling), 4),
        mask_dice_before=round(_mask_dice(fixed_mask, fixed_small, moving_small, initial), 4),
        mask_dice_after=round(_mask_dice(fixed_mask, fixed_small, moving_small, found), 4),
        iterations=int(method.GetOptimizerIteration()),
        stop_condition=method.GetOptimizerStopConditionDescription(),
        seconds=0.0,
        converged=False,
        levels_mm=tuple(WORKING_SPACING_MM * shrink for shrink, _ in pyramid),
    )
    registration.converged = _failure(registration) is None
    registration.seconds = round(time.perf_counter() - start, 3)
    return registration


def _failure(registration: Registration) -> str | None:
    """What makes a registration implausible, as a clause, or None when it holds."""
    if registration.mask_dice_after < MIN_MASK_DICE:
        return (
            f"its brain mask overlaps the reference's with Dice {registration.mask_dice_after:.2f} after registration "
            f"(at least {MIN_MASK_DICE} expected)"
        )
    if registration.shift_mm > MAX_SHIFT_MM:
        return (
            f"it needed a {registration.shift_mm:.1f} mm shift "
            f"(head motion within a session is under {MAX_SHIFT_MM:.0f} mm)"
        )
    if registration.angle_deg > MAX_ROTATION_DEG:
        return (
            f"it needed a {registration.angle_deg:.1f} degree rotation "
            f"(head motion within a session is under {MAX_ROTATION_DEG:.0f} degrees)"
        )
    return None


def check_registration(registration: Registration, modality: str, series_label: str) -> None:
    """Raise ``RegistrationError`` (one sentence) when the registration failed by its own figures."""
    failure = _failure(registration)
    if failure is not None:
        raise RegistrationError(
            f"the {modality} series {series_label} could not be aligned with the reference series: {failure}; "
            "check that both series belong to the same patient and session, or co-register them beforehand."
        )


def logged_transform(step: dict) -> sitk.Euler3DTransform:
    """The transform a run log's ``register`` step holds (``Registration.to_log``), rebuilt exactly."""
    transform = sitk.Euler3DTransform()
    transform.SetFixedParameters(step["fixed_parameters"])
    transform.SetParameters(step["parameters"])
    return transform


def registration_error_mm(true: sitk.Transform, found: sitk.Transform, mask: sitk.Image, points: int = 20000) -> float:
    """Mean distance (mm) between where ``true`` and ``found`` send the voxels of ``mask`` (nonzero).

    Up to ``points`` voxels, evenly strided (deterministic), are used.
    """
    indices = np.argwhere(sitk.GetArrayViewFromImage(mask) != 0)[:, ::-1]
    if indices.size == 0:
        raise ValueError("the mask has no nonzero voxel")
    indices = indices[:: max(1, len(indices) // points)]
    distances = []
    for index in indices:
        point = mask.TransformIndexToPhysicalPoint([int(i) for i in index])
        distances.append(np.linalg.norm(np.subtract(true.TransformPoint(point), found.TransformPoint(point))))
    return float(np.mean(distances))
