"""Training-time augmentation of one patch: mirror flips, a small rotation + scaling, per-modality thick-slice
acquisitions, and per-modality intensity changes (gamma, contrast, brightness, noise, blur), numpy/scipy only.

The brain is where any channel is non-zero; the network computes its mask the same way, so the
background stays exactly 0 through every step. Intensity changes are monotone per modality, so the
labels stay valid. Every random number comes from the caller's ``rng``: the same generator state and
settings give byte-identical outputs.

Example::

    rng = np.random.default_rng(seed)
    images, classes = augment_patch(images, classes, rng, Augmentation())
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

_PROBABILITIES = ("flip", "spatial_p", "intensity_p", "thick_p")
_BELOW_ONE = ("scale", "contrast")  # a factor 1 - value must stay positive


@dataclass(frozen=True)
class Augmentation:
    """Each field is one augmentation's probability or range; 0 (or None) switches it off."""

    flip: float = 0.5  # probability, per axis, of a mirror flip (all three axes independently)
    rotate_deg: float = 10.0  # max |angle| per axis of a small rotation (applied with probability `spatial_p`)
    scale: float = 0.1  # isotropic scale drawn in [1-scale, 1+scale]
    spatial_p: float = 0.3  # probability that a patch gets rotation + scaling
    gamma: float = 0.3  # per-modality gamma exp(U(-g, g)) on brain voxels rescaled to [0,1] and back
    contrast: float = 0.25  # per-modality multiplicative contrast about the brain mean, factor in [1-c, 1+c]
    brightness: float = 0.2  # per-modality additive shift, in units of the brain std
    noise: float = 0.1  # max std of additive Gaussian noise (units of the brain std), brain voxels only
    blur_sigma: float = 1.0  # max Gaussian blur sigma in voxels (applied per modality with probability intensity_p)
    intensity_p: float = 0.5  # probability of each intensity augmentation, per modality
    # A clinic's 5 mm FLAIR read back on 1 mm: off by default, so earlier recipes draw the same numbers.
    thick_p: float = 0.0  # probability, per modality, of a thick-slice acquisition along a random axis
    thick_max: float = 6  # its slices are 2..thick_max voxels thick

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if value < 0:
                raise ValueError(f"Augmentation.{item.name} must be >= 0 (0 switches it off), got {value}.")
            if item.name in _PROBABILITIES and value > 1:
                raise ValueError(f"Augmentation.{item.name} is a probability and must be <= 1, got {value}.")
            if item.name in _BELOW_ONE and value >= 1:
                raise ValueError(f"Augmentation.{item.name} must be < 1 so the factor stays positive, got {value}.")
        if self.thick_p and self.thick_max < 2:
            raise ValueError(f"Augmentation.thick_max must be >= 2 voxels when thick_p is on, got {self.thick_max}.")

    @classmethod
    def off(cls) -> Augmentation:
        """Everything disabled: ``augment_patch`` returns copies of its inputs."""
        return cls(**{item.name: 0.0 for item in fields(cls)})

    def to_dict(self) -> dict:
        return asdict(self)


def augment_patch(
    images: np.ndarray, classes: np.ndarray, rng: np.random.Generator, aug: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    """images (C, X, Y, Z) float32 already normalised (z-scored inside the brain, exact 0 outside); classes (X, Y, Z)
    int64. Returns new arrays of the same shapes and dtypes; inputs are never modified.

    Spatial transforms come first (flips, then rotation + scaling with probability ``spatial_p``), then
    each modality's thick-slice acquisition (probability ``thick_p``), then each modality's intensity
    augmentations, each with probability ``intensity_p``.
    """
    if images.ndim != 4 or images.shape[1:] != classes.shape:
        raise ValueError(
            f"augment_patch expects images (C, X, Y, Z) and classes (X, Y, Z), got {images.shape} and {classes.shape}."
        )
    images, classes = _flip(images, classes, rng, aug.flip)
    if (aug.rotate_deg or aug.scale) and _drawn(rng, aug.spatial_p):
        images, classes = _rotate_and_scale(images, classes, rng, aug)
    _thick_acquisitions(images, rng, aug)
    _augment_intensities(images, rng, aug)
    return images, classes


def _flip(images: np.ndarray, classes: np.ndarray, rng: np.random.Generator, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Mirror each spatial axis independently with probability ``p``; returns contiguous copies."""
    axes = [axis for axis in range(3) if _drawn(rng, p)]
    if axes:
        images = np.flip(images, [axis + 1 for axis in axes])
        classes = np.flip(classes, axes)
    return images.copy(), classes.copy()


def _rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """The 3x3 rotation by ``angles`` (radians) about the first, second and third axis, in that order."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [other for other in range(3) if other != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = np.cos(angle)
        turn[i, j], turn[j, i] = -np.sin(angle), np.sin(angle)
        matrix = turn @ matrix
    return matrix


def _rotate_and_scale(
    images: np.ndarray, classes: np.ndarray, rng: np.random.Generator, aug: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    angles = np.deg2rad(rng.uniform(-aug.rotate_deg, aug.rotate_deg, 3)) if aug.rotate_deg else np.zeros(3)
    zoom = rng.uniform(1 - aug.scale, 1 + aug.scale) if aug.scale else 1.0
    # affine_transform maps each output voxel to the input voxel it samples: the inverse rotation and scale.
    matrix = _rotation_matrix(angles).T / zoom
    centre = (np.array(classes.shape) - 1) / 2
    offset = centre - matrix @ centre
    moved = np.empty_like(images)
    for channel, out in zip(images, moved, strict=True):
        ndimage.affine_transform(channel, matrix, offset, output=out, order=1, mode="constant", cval=0.0)
    # Labels and brain mask packed into one array: one nearest-neighbour pass moves both with the same coordinates.
    packed = classes * 2 + np.any(images != 0, axis=0)
    packed = ndimage.affine_transform(packed, matrix, offset, order=0, mode="constant", cval=0)
    moved *= (packed & 1).astype(bool)
    return moved, packed >> 1


def _thick_acquisitions(images: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> None:
    """In place: each modality, with probability ``thick_p``, as if acquired in thick slices along a random axis."""
    if not aug.thick_p:
        return  # draws nothing, so a recipe without it keeps its random stream
    brain = np.any(images != 0, axis=0)
    for channel in images:
        if _drawn(rng, aug.thick_p):
            axis, thickness = int(rng.integers(3)), int(rng.integers(2, int(aug.thick_max) + 1))
            channel[...] = thick_slices(channel, brain, axis, thickness)


def _augment_intensities(images: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> None:
    """In place, per modality, brain voxels only: blur, then gamma, contrast, brightness and noise."""
    p = aug.intensity_p
    if not p or not any((aug.blur_sigma, aug.gamma, aug.contrast, aug.brightness, aug.noise)):
        return
    brain = np.any(images != 0, axis=0)
    if not brain.any():
        return
    for channel in images:
        if aug.blur_sigma and _drawn(rng, p):
            blur_inside(channel, brain, rng.uniform(0, aug.blur_sigma))
        values = channel[brain]
        if aug.gamma and _drawn(rng, p):
            low, high = values.min(), values.max()
            if high > low:
                unit = (values - low) / (high - low)
                values = unit ** float(np.exp(rng.uniform(-aug.gamma, aug.gamma))) * (high - low) + low
        if aug.contrast and _drawn(rng, p):
            mean = values.mean()
            values = (values - mean) * rng.uniform(1 - aug.contrast, 1 + aug.contrast) + mean
        if aug.brightness and _drawn(rng, p):
            values = values + rng.uniform(-aug.brightness, aug.brightness) * values.std()
        if aug.noise and _drawn(rng, p):
            sigma = rng.uniform(0, aug.noise) * float(values.std())
            values = values + sigma * rng.standard_normal(values.shape, dtype=np.float32)
        channel[brain] = values


def blur_inside(channel: np.ndarray, brain: np.ndarray, sigma: float) -> None:
    """In place: Gaussian blur of the brain only, normalised by the blurred mask so the brain edge does not darken."""
    mask = brain.astype(np.float32)
    blurred = ndimage.gaussian_filter(channel * mask, sigma, mode="constant")
    weight = ndimage.gaussian_filter(mask, sigma, mode="constant")
    channel[brain] = blurred[brain] / weight[brain]


def thick_slices(channel: np.ndarray, brain: np.ndarray, axis: int, thickness: int) -> np.ndarray:
    """``channel`` as a scan of ``thickness``-voxel slices along ``axis`` shows it back on the 1 mm grid: each slice the
    mean of its voxels inside the brain, read back by linear interpolation between slice centres; outside stays 0."""
    mask = brain.astype(np.float32)
    starts = np.arange(0, channel.shape[axis], thickness)
    sums = np.add.reduceat(channel * mask, starts, axis=axis)
    weights = np.add.reduceat(mask, starts, axis=axis)
    slices = np.divide(sums, weights, out=np.zeros_like(sums), where=weights > 0)
    centres = starts + (np.minimum(starts + thickness, channel.shape[axis]) - starts - 1) / 2
    position = np.interp(np.arange(channel.shape[axis]), centres, np.arange(len(starts)))
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(starts) - 1)
    shape = [1, 1, 1]
    shape[axis] = -1
    weight = (position - low).reshape(shape).astype(np.float32)
    back = np.take(slices, low, axis=axis) * (1 - weight) + np.take(slices, high, axis=axis) * weight
    return np.where(brain, back, 0).astype(channel.dtype)


def _drawn(rng: np.random.Generator, p: float | None) -> bool:
    return bool(p) and rng.random() < p
