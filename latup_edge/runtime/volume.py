"""Whole-volume prediction: normalise, crop to the brain box, run the network, put the labels back.

Every backend plugs in as a ``Forward``: a function from a (1, C, D, H, W) float32 input to
(1, K, D, H, W) class logits. This module is the one pre- and post-processing path that every
backend shares, so all of them see identical inputs.

Tiling over the brain box (padded to a multiple of 8), ``box_forward``:

- ``sliding`` (the default since 2026-12-04): windows shaped to the box
  (``latup_edge.runtime.tiling.fitted_windows``), at most ``window``^3 voxels each (96: the process
  peaks under 1.5 GB), neighbours sharing at least ``overlap`` x ``window`` voxels, blended with
  Gaussian weights. Against the whole box (docs/RUNTIME.md, docs/GENERALISATION.md section 12): the
  same time within about 10 %, 2.4x less memory, a higher mean Dice on all six independent sets; chosen by
  rules written down before the last two sets were made. Each window normalises over the brain inside
  it, so its labels are not the whole box's: 3 of 120 independent cases score WT under 0.7 in windows
  (a false tumour far from the real one, oedema grown around a small tumour), 1 on whole boxes.
- ``whole``: one pass over the box, padded to its ``bucket``; its peak grows with the box (3.3-3.6 GB
  for a 240x240x155 case). The shipped bundle's recorded INT8 gate was measured in this mode.

>>> classes = predict_classes(images, forward, normalization="minmax")        # doctest: +SKIP
>>> prediction = predict_volume(images, forward, "sliding", probabilities=True,
...                             normalization=model.config.normalization)   # doctest: +SKIP
>>> prediction.probabilities.shape                                          # doctest: +SKIP
(4, 240, 240, 155)

The normalisation is always the one the model was trained with, so it has no default: a model's
config names it (``model.config.normalization``; ``Bundle.normalization`` for a bundle).

Two networks (a bundle with a core network, ``core``): the first labels the whole tumour, then the core network
runs only the windows over that tumour (``core_scores``; its labels are read nowhere else, so they are exact),
and each frees its OpenVINO activations after its pass (``Backend.release``), so a two-network case peaks about
where a one-network case does.

Test-time mirroring (``mirror``, after nnU-Net's): the network also runs on the box mirrored along
some spatial axes (``"x"``: left-right, 2 passes; ``"xyz"``: all 8 mirror images), each output is
mirrored back, and the logits are averaged (``mirrored``). Training flipped every axis, so each
mirror image is a case the network knows; the cost is one pass per image.

Shape buckets (``bucket``, whole tiling): OpenVINO sets up kernels (~1.8 s) the first time it sees an
input shape, and every brain box has its own. ``bucket=32`` zero-pads the box at the end of each axis
to the next multiple of 32 (``bucket_shape``) and crops the logits back (``bucketed``), so boxes
share a few shapes. Only for networks with brain statistics: they compute the same function on the
padded box; volume statistics average over the padding and change the labels. Sliding windows
always run ``window``^3 inputs, so they need no bucket.

>>> bucket_shape((152, 184, 160), 32)
(160, 192, 160)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

import numpy as np

from latup_edge.data.preprocess import (
    BRAIN_ONLY_NORMALIZATIONS,
    SIZE_MULTIPLE,
    Crop,
    apply_crop,
    brain_box,
    normalize,
    undo_crop,
)
from latup_edge.errors import LatupError
from latup_edge.runtime.postprocess import (
    CLASS_COUNT,
    DEFAULT_POSTPROCESSING,
    ET,
    Postprocessing,
    compose_probabilities,
    delivered_classes,
    largest_removed_and_kept,
)
from latup_edge.runtime.qa import unsure_fraction, unsure_voxels
from latup_edge.runtime.tiling import Forward, sliding_window_scores, softmax

Tiling = Literal["whole", "sliding"]
TILINGS: tuple[str, ...] = get_args(Tiling)
DEFAULT_TILING: Tiling = "sliding"
# Windows of at most 96^3 voxels sharing a quarter of 96: peak under 1.5 GB (docs/RUNTIME.md measures it).
DEFAULT_WINDOW = 96
DEFAULT_OVERLAP = 0.25
# How brain boxes become network input shapes: each box as it is, or padded up to a multiple of 32.
ShapePolicy = Literal["exact", "bucket32"]
SHAPE_POLICIES: tuple[str, ...] = get_args(ShapePolicy)
BUCKETS: dict[str, int | None] = {"exact": None, "bucket32": 32}

# Test-time mirroring: axis letters of the (X, Y, Z) box; "" runs the network once.
MIRROR_AXES: dict[str, int] = {"x": 0, "y": 1, "z": 2}

__all__ = [
    "Forward",
    "mirror_axes",
    "mirror_name",
    "mirrored",
    "Prediction",
    "ShapePolicy",
    "bucket_shape",
    "BoxForward",
    "box_forward",
    "bucketed",
    "core_scores",
    "network_scores",
    "normalized_box",
    "pad_to_shape",
    "predict_classes",
    "predict_probabilities",
    "predict_volume",
    "torch_forward",
    "tumour_region",
]


class BoxForward(Protocol):
    """How a normalised brain box goes through a network (``box_forward``): scores (1, K, D, H, W) for a box
    (1, C, D, H, W). ``needed`` (a (D, H, W) boolean map) lets sliding windows skip the windows over no needed
    voxel: scores are then exact on the needed voxels only (``tiling.sliding_window_scores``)."""

    def __call__(self, box: np.ndarray, needed: np.ndarray | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Prediction:
    """A prediction on the full input grid: classes (uint8, 0-3) and, on request, probabilities."""

    classes: np.ndarray
    probabilities: np.ndarray | None = None  # (K, X, Y, Z) float32; background is 1 outside the box
    seconds: dict[str, float] = field(default_factory=dict)  # pre, network, post
    low_confidence_fraction: float | None = None  # of the predicted tumour, max softmax < 0.5
    # voxels of the largest tumour component post-processing removed, and of the largest it kept
    removed_and_kept_voxels: tuple[int, int] = (0, 0)
    # the most ET voxels a removed component held, and a kept one holds
    removed_and_kept_et_voxels: tuple[int, int] = (0, 0)


def bucket_shape(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Each side of ``shape`` rounded up to the next multiple of ``multiple`` (a side already on it stays)."""
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    return tuple(-(-int(side) // multiple) * multiple for side in shape)


def pad_to_shape(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``x`` (..., D, H, W) zero-padded at the end of its last three axes to ``shape`` (``x`` itself if equal)."""
    spatial = x.shape[-3:]
    if any(target < side for side, target in zip(spatial, shape, strict=True)):
        raise ValueError(f"cannot pad {spatial} to the smaller {tuple(shape)}")
    if tuple(spatial) == tuple(shape):
        return x
    after = [(0, target - side) for side, target in zip(spatial, shape, strict=True)]
    return np.pad(x, [(0, 0)] * (x.ndim - 3) + after)


def bucketed(forward: Forward, multiple: int) -> Forward:
    """A Forward that pads its input to ``bucket_shape(..., multiple)`` at the end and crops the logits back."""

    def forward_in_bucket(x: np.ndarray) -> np.ndarray:
        spatial = x.shape[-3:]
        scores = forward(pad_to_shape(x, bucket_shape(spatial, multiple)))
        return np.ascontiguousarray(scores[(..., *(slice(0, side) for side in spatial))])

    return forward_in_bucket


def mirror_axes(mirror: str) -> tuple[int, ...]:
    """The spatial axes of a mirror spec: ``""`` or ``"none"`` -> (), ``"x"`` -> (0,), ``"xyz"`` -> (0, 1, 2)."""
    spec = "" if mirror == "none" else mirror
    if any(letter not in MIRROR_AXES for letter in spec) or len(set(spec)) != len(spec):
        raise LatupError(f"unknown mirroring {mirror!r}: give none, or axis letters from xyz (x: left-right, xyz: all)")
    return tuple(sorted(MIRROR_AXES[letter] for letter in spec))


def mirror_name(axes: Sequence[int]) -> str:
    """The canonical spec of mirror ``axes``: (0, 2) -> ``"xz"``; () -> ``""``."""
    return "".join("xyz"[axis] for axis in sorted(axes))


def mirrored(forward: Forward, axes: Sequence[int]) -> Forward:
    """``forward`` averaged over the 2^len(``axes``) mirror images of its (1, C, D, H, W) input along the
    spatial ``axes`` (0-2): each image's logits are mirrored back, then all are averaged (as nnU-Net does)."""
    if not axes:
        return forward
    images = [
        tuple(axis + 2 for axis, on in zip(axes, flags, strict=True) if on) for flags in np.ndindex(*(2,) * len(axes))
    ]

    def forward_mirrored(x: np.ndarray) -> np.ndarray:
        total = None
        for flip in images:
            scores = forward(np.ascontiguousarray(np.flip(x, flip)) if flip else x)
            scores = np.flip(scores, flip) if flip else scores
            total = scores.astype(np.float32) if total is None else total + scores
        return total / np.float32(len(images))

    return forward_mirrored


def box_forward(
    forward: Forward,
    tiling: Tiling = DEFAULT_TILING,
    window: int = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
    bucket: int | None = None,
    mirror: Sequence[int] = (),
) -> BoxForward:
    """How a normalised brain box (1, C, D, H, W) goes through ``forward``: one pass (padded to ``bucket``,
    logits back) or fitted sliding windows (blended probabilities back). Either way argmax gives the classes.
    ``mirror`` (spatial axes, ``mirror_axes``) averages each pass over its mirror images (``mirrored``).
    Only sliding windows use ``needed`` (``BoxForward``); one pass computes every voxel anyway.
    """
    forward = mirrored(forward, mirror)
    if tiling not in TILINGS:
        raise LatupError(f"unknown tiling {tiling!r}: choose {' or '.join(TILINGS)}")
    if window < SIZE_MULTIPLE or window % SIZE_MULTIPLE:
        raise LatupError(
            f"the window must be a positive multiple of {SIZE_MULTIPLE}, got {window}: {DEFAULT_WINDOW} is usual"
        )
    if bucket is not None and (bucket < SIZE_MULTIPLE or bucket % SIZE_MULTIPLE):
        raise LatupError(f"the bucket must be a positive multiple of {SIZE_MULTIPLE}, got {bucket}: 32 is usual")
    if tiling == "whole":
        whole = bucketed(forward, bucket) if bucket else forward
        return lambda box, needed=None: whole(box)
    return lambda box, needed=None: sliding_window_scores(box, forward, window, overlap, fitted=True, needed=needed)


def network_scores(
    box: np.ndarray,
    forward: Forward,
    core: Forward | None,
    tiling: Tiling = DEFAULT_TILING,
    window: int = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
    bucket: int | None = None,
    mirror: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray | None]:
    """The scores of ``forward`` and of the ``core`` network (None without one) for a normalised brain box, as
    ``predict_volume`` runs them: the core network over ``forward``'s raw tumour only (``core_scores``)."""
    settings = (tiling, window, overlap, bucket, mirror)
    scores = box_forward(forward, *settings)(box)
    if core is None:
        return scores, None
    _release(forward)
    return scores, core_scores(box, np.argmax(scores[0], axis=0) > 0, core, *settings)


def tumour_region(tumour: np.ndarray, window: int, margin: int) -> tuple[slice, ...]:
    """The part of a brain box the core network needs: ``tumour``'s bounding box grown by ``margin`` voxels, each
    side at least ``window`` (the context of one window) or the whole box, on multiples of ``SIZE_MULTIPLE``.

    >>> tumour = np.zeros((160, 192, 160), bool); tumour[60:100, 70:90, 10:30] = True
    >>> tumour_region(tumour, 96, 16)
    (slice(32, 128, None), slice(32, 128, None), slice(0, 96, None))
    """
    region = []
    for axis, size in enumerate(tumour.shape):
        present = np.flatnonzero(tumour.any(axis=tuple(other for other in range(3) if other != axis)))
        low, high = int(present[0]) - margin, int(present[-1]) + 1 + margin
        length = min(size, max(window, -(-(high - low) // SIZE_MULTIPLE) * SIZE_MULTIPLE))
        start = min(max((low + high - length) // 2, 0), size - length)
        region.append(slice(start, start + length))
    return tuple(region)


def core_scores(
    box: np.ndarray,
    tumour: np.ndarray | None,
    core: Forward,
    tiling: Tiling = DEFAULT_TILING,
    window: int = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
    bucket: int | None = None,
    mirror: Sequence[int] = (),
    margin: int | None = None,
) -> np.ndarray:
    """The core network's scores for a normalised brain box, after the first network ran on it.

    They are read only inside the first network's raw ``tumour`` (``compose_regions``; the label rules only remove
    tumour), so the core network runs only the windows over it, and not at all without one: exact there, 0
    elsewhere. ``margin`` (an int) runs it instead on ``tumour_region``, windows fitted to the tumour and that many
    voxels around it: less work, other windows, so other labels (screened, not adopted: docs/RUNTIME.md).
    ``tumour`` None runs it on every voxel (composed probabilities need that). It frees its activations afterwards
    (``Backend.release``), as callers free the first network's before it runs: the two never hold theirs at once.
    """
    if tumour is not None and not tumour.any():
        return np.zeros((1, CLASS_COUNT, *box.shape[2:]), np.float32)
    run_box = box_forward(core, tiling, window, overlap, bucket, mirror)
    if tumour is None or margin is None:
        scores = run_box(box, tumour)
    else:
        region = tumour_region(tumour, window, margin)
        scores = np.zeros((1, CLASS_COUNT, *box.shape[2:]), np.float32)
        scores[(slice(None), slice(None), *region)] = run_box(np.ascontiguousarray(box[(..., *region)]), tumour[region])
    _release(core)
    return scores


def _release(forward: Forward) -> None:
    """Free a backend's activations between its turns (``Backend.release``); a plain function has none."""
    release = getattr(forward, "release", None)
    if release is not None:
        release()


def predict_volume(
    images: np.ndarray,
    forward: Forward,
    tiling: Tiling = DEFAULT_TILING,
    window: int = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
    probabilities: bool = False,
    *,
    normalization: str,
    bucket: int | None = None,
    postprocessing: Postprocessing = DEFAULT_POSTPROCESSING,
    mirror: Sequence[int] = (),
    core: Forward | None = None,
) -> Prediction:
    """Predict raw (C, X, Y, Z) modality images: classes and, with ``probabilities``, the softmax.

    The images are normalised with ``normalization`` (the model's own), cropped to the brain box
    (padded to a multiple of 8), run in one pass (``whole``) or in windows of at most ``window``^3
    voxels shaped to the box, sharing at least ``overlap`` x ``window`` voxels (``sliding``), and put
    back into the full shape with background outside the box.
    ``bucket`` (whole only; a multiple of 8) runs the box zero-padded at its ends to a multiple of
    ``bucket`` (see the module docstring: only for brain-statistics networks). The classes then
    go through ``postprocessing`` (``latup_edge.runtime.postprocess``); probabilities do not.
    ``mirror`` (spatial axes) averages the network over mirror images of the box (module docstring).
    ``core``: a second network, run on the same box in the same way, that labels the parts of ``forward``'s
    whole tumour (``postprocess.compose_regions``); the probabilities are then composed too. Without
    ``probabilities`` it runs only over ``forward``'s tumour (``core_scores``): the same labels.
    """
    settings = (tiling, window, overlap, bucket, mirror)
    run_box = box_forward(forward, *settings)  # refuses bad settings before any work
    clock = _Clock()
    box, crop = normalized_box(images, normalization)
    clock.lap("pre")
    scores = run_box(box)[0]
    if core is not None:
        _release(forward)  # before anything else is allocated: the core network's activations come next
    # Softmax is monotone: the argmax of logits (whole) and of probabilities (sliding) agree.
    raw_classes = np.argmax(scores, axis=0).astype(np.uint8)
    # QA: where the top class is under 0.5, from the box's scores (no full-size copy).
    unsure = unsure_voxels(scores, logits=tiling == "whole")
    core_classes = core_box_scores = None
    if core is not None:
        if not probabilities:
            del scores  # only the labels are left to make: free the scores before the core network's activations
        core_box_scores = core_scores(box, None if probabilities else raw_classes > 0, core, *settings)[0]
        core_classes = np.argmax(core_box_scores, axis=0).astype(np.uint8)
    clock.lap("network")
    box_classes = delivered_classes(raw_classes, postprocessing, box[0], core_classes)
    removed_and_kept = largest_removed_and_kept(raw_classes, box_classes, box[0])
    removed_and_kept_et = largest_removed_and_kept(raw_classes, box_classes, box[0], counted=raw_classes == ET)
    del box, raw_classes
    confidence = round(unsure_fraction(unsure, box_classes), 4)
    classes = undo_crop(box_classes, crop)
    del box_classes
    if not probabilities:
        clock.lap("post")
        return Prediction(classes, None, clock.seconds, confidence, removed_and_kept, removed_and_kept_et)
    box_probabilities = softmax(scores, axis=0) if tiling == "whole" else scores
    if core_box_scores is not None:
        core_probabilities = softmax(core_box_scores, axis=0) if tiling == "whole" else core_box_scores
        box_probabilities = compose_probabilities(box_probabilities, core_probabilities)
    full = undo_crop(box_probabilities, crop)
    full[0] = undo_crop(box_probabilities[0], crop, fill=1)  # outside the brain box is background
    clock.lap("post")
    return Prediction(classes, full, clock.seconds, confidence, removed_and_kept, removed_and_kept_et)


def normalized_box(images: np.ndarray, normalization: str) -> tuple[np.ndarray, Crop]:
    """Raw (C, X, Y, Z) images -> the normalised brain box the networks see, (1, C, D, H, W), and its crop."""
    if normalization in BRAIN_ONLY_NORMALIZATIONS:  # the box holds the whole brain: normalise the box only
        crop = brain_box(images, multiple=SIZE_MULTIPLE)
        return normalize(apply_crop(images, crop), normalization)[None], crop
    normalized = normalize(images, normalization)
    crop = brain_box(normalized, multiple=SIZE_MULTIPLE)
    return apply_crop(normalized, crop)[None], crop  # the full-size normalised copy goes with this frame


class _Clock:
    """Seconds per stage, each lap measured from the previous one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now


def predict_classes(
    images: np.ndarray,
    forward: Forward,
    tiling: Tiling = DEFAULT_TILING,
    window: int = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
    *,
    normalization: str,
    postprocessing: Postprocessing = DEFAULT_POSTPROCESSING,
) -> np.ndarray:
    """Class map (uint8, 0-3) of the full input shape from raw (C, X, Y, Z) modality images."""
    return predict_volume(
        images, forward, tiling, window, overlap, normalization=normalization, postprocessing=postprocessing
    ).classes


def predict_probabilities(
    images: np.ndarray,
    forward: Forward,
    tiling: Tiling = DEFAULT_TILING,
    window: int = DEFAULT_WINDOW,
    overlap: float = DEFAULT_OVERLAP,
    *,
    normalization: str,
) -> np.ndarray:
    """Class probabilities (K, X, Y, Z) float32 of the full input shape; they sum to 1 per voxel."""
    prediction = predict_volume(images, forward, tiling, window, overlap, True, normalization=normalization)
    return prediction.probabilities


def torch_forward(model, bf16: bool = False) -> Forward:
    """A Forward over a PyTorch LATUP-Net (eval mode, no grad; bf16 autocast on request)."""
    import torch

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return forward
