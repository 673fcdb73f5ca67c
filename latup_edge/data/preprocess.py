"""Preprocessing as small pure functions on arrays: intensity scaling and cropping.

Arrays are channel-first, ``(..., X, Y, Z)``. A ``Crop`` records where a model input sits in the
original volume, so a prediction can be put back with ``undo_crop``.

>>> crop = paper_crop((240, 240, 155))
>>> crop.start, crop.stop
((56, 56, 13), (184, 184, 141))
>>> images = np.ones((3, 240, 240, 155), dtype=np.float32)
>>> apply_crop(images, crop).shape
(3, 128, 128, 128)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latup_edge.errors import LatupError

Shape3 = tuple[int, int, int]
# LATUP-Net pools three times (2**3): every network input side, so every brain box, is a multiple of 8.
# It lives here, below the network, so that code without torch (the runtime, calibration) can read it.
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class Crop:
    """Where a model input sits in the original volume, so the prediction can be put back.

    ``start`` is inclusive and ``stop`` exclusive; ``start < 0`` or ``stop > original_shape``
    means the crop reaches beyond the image there and is zero-padded.
    """

    original_shape: Shape3
    start: Shape3
    stop: Shape3

    def __post_init__(self) -> None:
        # Coordinates read back from JSON arrive as lists: store plain int tuples so crops compare equal.
        for name in ("original_shape", "start", "stop"):
            object.__setattr__(self, name, tuple(int(value) for value in getattr(self, name)))
        if not len(self.original_shape) == len(self.start) == len(self.stop) == 3:
            raise ValueError(f"a crop is 3-D, got {self}")
        if any(stop <= start for start, stop in zip(self.start, self.stop, strict=True)):
            raise ValueError(f"a crop must have stop > start on every axis, got {self}")

    @property
    def shape(self) -> Shape3:
        """The shape of the cropped volume."""
        return tuple(stop - start for start, stop in zip(self.start, self.stop, strict=True))

    def _slices(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Matching slices of the part inside the image: (in the original, in the crop)."""
        original, cropped = [], []
        for size, start, stop in zip(self.original_shape, self.start, self.stop, strict=True):
            low = min(max(start, 0), size)
            high = max(min(stop, size), low)  # a crop wholly outside the image overlaps nothing
            original.append(slice(low, high))
            cropped.append(slice(low - start, high - start))
        return tuple(original), tuple(cropped)


def minmax_normalize(images: np.ndarray) -> np.ndarray:
    """Scale each channel of ``(C, ...)`` images to [0, 1] over the whole volume (float32).

    This is the paper's preprocessing. A constant channel becomes zeros.
    """
    normalized = images.astype(np.float32, copy=True)
    for channel in normalized:
        low, high = channel.min(), channel.max()
        if high > low:
            channel -= low
            channel /= high - low
        else:
            channel[...] = 0
    return normalized


# Brain voxels are clipped to these percentiles before the z-score: a few hot voxels do not set the scale.
ZSCORE_PERCENTILES = (0.5, 99.5)
NORMALIZATIONS: tuple[str, ...] = ("minmax", "zscore-brain")
# Normalisations computed over brain voxels only: the brain box alone gives the same values.
BRAIN_ONLY_NORMALIZATIONS: tuple[str, ...] = ("zscore-brain",)


def zscore_brain_normalize(images: np.ndarray) -> np.ndarray:
    """Per channel of ``(C, ...)``: clip brain voxels to their 0.5-99.5th percentiles, z-score them over
    the brain, and leave exact zeros outside it (float32).

    The brain is the voxels non-zero in any channel (skull-stripped BraTS). Unlike min-max, the scale
    does not hinge on the brightest voxel, nor on how much background the volume holds. A channel
    constant over the brain becomes zeros there.
    """
    brain = np.any(images != 0, axis=0)
    normalized = np.zeros(images.shape, dtype=np.float32)
    if not brain.any():
        return normalized
    for channel, out in zip(images, normalized, strict=True):
        values = channel[brain].astype(np.float32)
        low, high = np.percentile(values, ZSCORE_PERCENTILES)
        np.clip(values, low, high, out=values)
        spread = values.std()
        out[brain] = (values - values.mean()) / spread if spread > 0 else 0
    return normalized


def normalize(images: np.ndarray, method: str) -> np.ndarray:
    """Normalise ``(C, ...)`` modality images with ``method`` (one of NORMALIZATIONS) to float32."""
    if method == "minmax":
        return minmax_normalize(images)
    if method == "zscore-brain":
        return zscore_brain_normalize(images)
    raise LatupError(f"unknown normalisation {method!r}: choose {' or '.join(NORMALIZATIONS)}")


def _centred(shape: Sequence[int], size: Sequence[int]) -> Crop:
    # For an odd difference the extra voxel goes after the crop: 155 -> 128 starts at 13.
    start = tuple((dim - length) // 2 for dim, length in zip(shape, size, strict=True))
    stop = tuple(begin + length for begin, length in zip(start, size, strict=True))
    return Crop(tuple(shape), start, stop)


def paper_crop(shape: Sequence[int], size: int = 128) -> Crop:
    """The paper's centre crop to ``size``^3; for 240x240x155 it is exactly [56:184, 56:184, 13:141].

    Other shapes are centred the same way; a side shorter than ``size`` is zero-padded.
    """
    return _centred(shape, (size,) * 3)


def brain_box(images: np.ndarray, multiple: int = SIZE_MULTIPLE, margin: int = 0) -> Crop:
    """The box around the voxels that are non-zero in any channel (skull-stripped brain).

    Works on ``(..., X, Y, Z)``. The box is grown by ``margin`` voxels (within the image), then
    each side is grown to a multiple of ``multiple``, centred on the brain and shifted to stay
    inside the image when it fits; where it does not fit, it is zero-padded beyond the image
    evenly. Raises ValueError for an all-zero volume.
    """
    if multiple < 1 or margin < 0:
        raise ValueError(f"multiple must be >= 1 and margin >= 0, got {multiple} and {margin}")
    shape = images.shape[-3:]
    brain = np.any(images != 0, axis=tuple(range(images.ndim - 3)))
    if not brain.any():
        raise ValueError("the volume is all zeros: there is no brain to box")
    start, stop = [], []
    for axis, size in enumerate(shape):
        present = np.flatnonzero(brain.any(axis=tuple(other for other in range(3) if other != axis)))
        low, high = max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, size)
        length = -(-(high - low) // multiple) * multiple
        if length > size:
            low = (size - length) // 2
        else:
            low = min(max(low - (length - (high - low)) // 2, 0), size - length)
        start.append(low)
        stop.append(low + length)
    return Crop(tuple(shape), tuple(start), tuple(stop))


def apply_crop(volume: np.ndarray, crop: Crop, fill: float = 0) -> np.ndarray:
    """Cut ``crop`` out of ``(..., X, Y, Z)`` (a new array), with ``fill`` where it leaves the image."""
    if volume.shape[-3:] != tuple(crop.original_shape):
        raise ValueError(f"volume is {volume.shape[-3:]} but the crop is for {crop.original_shape}")
    cropped = np.full((*volume.shape[:-3], *crop.shape), fill, dtype=volume.dtype)
    inside_original, inside_crop = crop._slices()
    cropped[(..., *inside_crop)] = volume[(..., *inside_original)]
    return cropped


def undo_crop(cropped: np.ndarray, crop: Crop, fill: float = 0) -> np.ndarray:
    """Put ``(..., *crop.shape)`` back into ``(..., *crop.original_shape)``, ``fill`` elsewhere."""
    if cropped.shape[-3:] != crop.shape:
        raise ValueError(f"cropped volume is {cropped.shape[-3:]} but the crop is {crop.shape}")
    restored = np.full((*cropped.shape[:-3], *crop.original_shape), fill, dtype=cropped.dtype)
    inside_original, inside_crop = crop._slices()
    restored[(..., *inside_original)] = cropped[(..., *inside_crop)]
    return restored
