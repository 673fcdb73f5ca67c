"""Refusals of series the model cannot segment: a head that is not skull-stripped, a slab too short,
two modalities that hold one image.

Each check returns its figures for the run log, or raises ``ScanError``, one sentence naming the
series and what to do.

>>> check_skull_stripped(flair, "FLAIR series 'AX FLAIR'")
{'zero_fraction': 0.998, 'foreground_ml': 1432.1, 'shell_ratio': 0.82}
>>> check_coverage(flair, "FLAIR series 'AX FLAIR'")
{'extent_mm': [160.0, 190.0, 145.0]}
>>> check_distinct(images, ["FLAIR file 'a_flair.nii.gz'", "T1ce file ...", "T2 file ..."])
{'highest_correlation': 0.412}
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from latup_edge.data.cases import constant_background
from latup_edge.errors import LatupError
from latup_edge.scans.geometry import binned, physical_extent_mm, voxel_volume_ml

# Skull-stripped scans are exact zeros outside the brain; a head has a noise floor there.
MIN_ZERO_FRACTION = 0.5
# Brains are 0.9-2.0 L (BraTS), up to 2.64 L from a generator's MNI anatomy scaled by +10 %; a head with skull
# and scalp 3-5 L.
MAX_BRAIN_ML = 3200.0
# A brain is 130-170 mm long along every axis; under this, a series cannot hold one.
MIN_COVERAGE_MM = 100.0
_SHELL_MM = 5.0
# Two acquisitions carry independent noise and different tissue contrasts; only a copy (rescaled or
# re-quantised at most) correlates this closely with another modality inside the brain.
COPY_CORRELATION = 0.9999
_COPY_SAMPLE = 200_000
CHECK_SPACING_MM = 2.0


class ScanError(LatupError):
    """A series the model cannot segment as it is."""


def _foreground(values: np.ndarray) -> np.ndarray:
    """The nonzero voxels where most of the grid is exact zeros (a skull-stripped scan, even z-scored),
    else those above Otsu's threshold; holes filled: the brain, or the whole head with its dark skull."""
    if np.count_nonzero(values) < MIN_ZERO_FRACTION * values.size:
        return ndi.binary_fill_holes(values != 0)
    sample = values[:: max(1, values.shape[0] // 64)].astype(np.float32)
    threshold = sitk.OtsuThresholdImageFilter()
    threshold.Execute(sitk.GetImageFromArray(sample))
    return ndi.binary_fill_holes(values > threshold.GetThreshold())


def check_skull_stripped(image: sitk.Image, label: str) -> dict:
    """Raise ``ScanError`` when ``image`` still holds skull and scalp; else its figures for the log.

    ``zero_fraction``: the share of exact zeros outside the (dilated) foreground, ~1 for a
    skull-stripped scan and ~0 for a head's noise floor; ``foreground_ml``: the foreground's volume
    (``_foreground``); ``shell_ratio``: the mean intensity of its outer 5 mm over the median inside,
    above 1 when a bright scalp surrounds it (logged only). A scan is refused when its zero fraction
    is under 0.5 or its foreground over 3.2 L.
    """
    # At about 2 mm: the figures are coarse by nature and the morphology costs 8x less than at 1 mm.
    image = binned(image, CHECK_SPACING_MM)
    values = sitk.GetArrayViewFromImage(image)
    foreground = _foreground(values)
    spacing_zyx = np.asarray(image.GetSpacing())[::-1]
    margin = np.maximum(1, np.round(2.0 / spacing_zyx)).astype(int)
    dilated = ndi.binary_dilation(foreground, np.ones(2 * margin + 1, dtype=bool))
    background = values[~dilated]
    zero_fraction = float(np.mean(background == 0)) if background.size else 1.0
    foreground_ml = float(foreground.sum()) * voxel_volume_ml(image)
    depth = ndi.distance_transform_edt(foreground, sampling=spacing_zyx)
    shell, inside = values[(depth > 0) & (depth <= _SHELL_MM)], values[depth > _SHELL_MM]
    shell_ratio = float(shell.mean() / np.median(inside)) if shell.size and inside.size and np.median(inside) else 0.0
    figures = {
        "zero_fraction": round(zero_fraction, 4),
        "foreground_ml": round(foreground_ml, 1),
        "shell_ratio": round(shell_ratio, 3),
    }
    if zero_fraction < MIN_ZERO_FRACTION and (offset := constant_background(background)) is not None:
        raise ScanError(
            f"{label} has the constant {offset:g} instead of 0 outside the brain (an intensity offset, such as a "
            f"NIfTI scl_inter or a DICOM rescale intercept): export it again with 0 outside the brain."
        )
    remedy = "strip the skull with HD-BET or SynthStrip, which writes exact zeros outside the brain, first."
    if zero_fraction < MIN_ZERO_FRACTION:
        raise ScanError(
            f"{label} is not skull-stripped: only {100 * zero_fraction:.0f} % of its background is exact zeros "
            f"(a skull-stripped scan has over {100 * MIN_ZERO_FRACTION:.0f} %), so it holds a head or a noise floor "
            f"around its {foreground_ml / 1000:.1f} L foreground; {remedy}"
        )
    if foreground_ml > MAX_BRAIN_ML:
        raise ScanError(
            f"{label} is not skull-stripped: its foreground is {foreground_ml / 1000:.1f} L, more than any brain "
            f"(at most {MAX_BRAIN_ML / 1000:.1f} L), so it holds a head; {remedy}"
        )
    return figures


def check_coverage(image: sitk.Image, label: str) -> dict:
    """Raise ``ScanError`` when ``image`` is shorter than 100 mm along an axis; else its extents for the log."""
    extent = physical_extent_mm(image)
    shortest = int(np.argmin(extent))
    if extent[shortest] < MIN_COVERAGE_MM:
        raise ScanError(
            f"{label} covers only {extent[shortest]:.0f} mm along its axis {shortest} "
            f"(a brain needs 130-170 mm, at least {MIN_COVERAGE_MM:.0f} mm): export the whole-brain series instead."
        )
    return {"extent_mm": [round(e, 1) for e in extent]}


def check_distinct(images: np.ndarray, labels: list[str]) -> dict:
    """Raise ``ScanError`` when two modalities of ``images`` (C, X, Y, Z) on one grid hold the same image
    (Pearson correlation at least ``COPY_CORRELATION`` where both are nonzero: a file given twice, under
    two names); else the highest correlation of two channels, for the log (None: nothing to compare)."""
    both = np.flatnonzero(np.all(images != 0, axis=0))
    sample = both[:: max(1, both.size // _COPY_SAMPLE)]  # indices only: no copy of the whole brain
    if sample.size < 2:
        return {"highest_correlation": None}
    values = images.reshape(len(images), -1)[:, sample].astype(np.float64)
    highest = None
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            if values[a].std() == 0 or values[b].std() == 0:
                continue
            correlation = float(np.corrcoef(values[a], values[b])[0, 1])
            if correlation >= COPY_CORRELATION:
                raise ScanError(
                    f"{labels[a]} and {labels[b]} hold the same image (correlation {correlation:.5f} inside the "
                    "brain; two acquisitions differ): one of them is a copy of the other, so give each modality "
                    "its own image."
                )
            highest = correlation if highest is None else max(highest, correlation)
    return {"highest_correlation": None if highest is None else round(highest, 4)}
