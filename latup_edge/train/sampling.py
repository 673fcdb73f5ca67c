"""Training data: cases held in memory as their brain box, and tumour-aware random patches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from latup_edge.data.cases import BratsCase, load_case_images, load_case_labels
from latup_edge.data.preprocess import Crop, apply_crop, brain_box, normalize

ET = 3


@dataclass(frozen=True)
class TrainingCase:
    """One case preprocessed as at inference (``normalize`` with the run's method), cut to its brain box."""

    case_id: str
    images: np.ndarray  # float16 (C, X, Y, Z): half the memory; exact zeros stay exact (the brain mask)
    classes: np.ndarray  # uint8 (X, Y, Z)
    tumour_voxels: np.ndarray  # (n, 3) coordinates of tumour voxels, for tumour-centred patches

    @cached_property  # drawn from on every training sample: scan the box once
    def has_et(self) -> bool:
        return bool((self.classes == ET).any())


def load_training_case(case: BratsCase, normalization: str) -> TrainingCase:
    images, reference = load_case_images(case)
    classes, _ = load_case_labels(case, reference)
    normalized = normalize(images, normalization)
    crop = brain_box(normalized)
    boxed_classes = apply_crop(classes, crop)
    return TrainingCase(
        case_id=case.case_id,
        images=apply_crop(normalized, crop).astype(np.float16),
        classes=boxed_classes,
        tumour_voxels=np.argwhere(boxed_classes > 0).astype(np.int32),
    )


def choose_case(cases: Sequence[TrainingCase], rng: np.random.Generator, no_et_fraction: float = 0.0) -> TrainingCase:
    """A case drawn uniformly, or, with probability ``no_et_fraction``, one without ET.

    Non-enhancing tumours are about one case in ten; drawn that rarely, their patches rarely teach the
    network to paint a core without ET (docs/GENERALISATION.md, section 10). 0 draws exactly as before.
    """
    if no_et_fraction > 0:
        without_et = [case for case in cases if not case.has_et]
        if without_et and rng.random() < no_et_fraction:
            return without_et[rng.integers(len(without_et))]
    return cases[rng.integers(len(cases))]


def sample_patch(
    case: TrainingCase, patch: int, rng: np.random.Generator, tumour_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """A ``patch``^3 crop (images float32, classes int64), centred on tumour with ``tumour_fraction``.

    Other patches are centred on a uniformly random voxel of the brain box; patches stay inside
    the box where it is large enough and are zero-padded where it is not.
    """
    shape = case.classes.shape
    if len(case.tumour_voxels) and rng.random() < tumour_fraction:
        centre = case.tumour_voxels[rng.integers(len(case.tumour_voxels))]
    else:
        centre = np.array([rng.integers(size) for size in shape])
    start = []
    for c, size in zip(centre, shape, strict=True):
        low = int(c) - patch // 2
        start.append(min(max(low, 0), size - patch) if size >= patch else (size - patch) // 2)
    crop = Crop(shape, tuple(start), tuple(s + patch for s in start))
    return apply_crop(case.images, crop).astype(np.float32), apply_crop(case.classes, crop).astype(np.int64)
