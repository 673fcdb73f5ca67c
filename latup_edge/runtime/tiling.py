"""Sliding-window inference as small pure functions on arrays, after nnU-Net's
``compute_steps_for_sliding_window`` and ``compute_gaussian``.

Windows overlap; each window's softmax probabilities are weighted by a Gaussian that trusts the
window's centre (full context) over its border (zero-padded context), and the weighted sums are
divided by the summed weights.

We average probabilities, not logits (nnU-Net v2 and MONAI average whatever the network returns,
usually logits): a probability is bounded, so a window with an overconfident, large-magnitude logit
at its poorly-informed border cannot outvote the better-placed windows by magnitude alone, and the
blend is already the probability map that ``segment --probabilities`` writes.

>>> window_starts(144, 128, 0.5)
[0, 16]

``fitted_windows`` shapes the windows to the box instead: the fewest voxels computed with windows of
at most ``window``^3 voxels (the memory bound), so a 160x192x160 box runs 8 windows of 88x104x88
(1.3x its voxels) where 96^3 cubes need 12 (2.2x).

>>> fitted_windows((160, 192, 160), 96, 1 / 6)
((88, 104, 88), [[0, 72], [0, 88], [0, 72]])
>>> x = np.zeros((1, 3, 40, 24, 16), np.float32)
>>> sliding_window_scores(x, lambda w: np.zeros((1, 4, *w.shape[2:]), np.float32), 32, 0.5).shape
(1, 4, 40, 24, 16)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``window`` voxels that cover an axis of ``size`` voxels.

    The first starts at 0 and the last at ``size - window``; starts are evenly spaced, with a step
    of at most ``floor(window * (1 - overlap))`` voxels. An axis no longer than the window gets one
    window at 0 (the caller pads it).
    """
    if size < 1 or window < 1:
        raise ValueError(f"size and window must be positive, got {size} and {window}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= window:
        return [0]
    # The floor makes "step <= target" hold after rounding the evenly spaced starts to integers.
    target_step = max(math.floor(window * (1 - overlap)), 1)
    return spread_starts(size, window, math.ceil((size - window) / target_step) + 1)


def spread_starts(size: int, window: int, count: int) -> list[int]:
    """``count`` evenly spaced starts of ``window``-long windows, the first at 0 and the last at ``size - window``."""
    return [0] if count == 1 else [round(i * (size - window) / (count - 1)) for i in range(count)]


def fitted_windows(
    shape: Sequence[int], window: int, overlap: float, multiple: int = 8
) -> tuple[tuple[int, ...], list[list[int]]]:
    """One window shape and its starts per axis that tile ``shape`` at the least computed volume.

    Every window holds at most ``window``^3 voxels (the memory of a ``window``^3 cube); neighbours
    share at least ``overlap * window`` voxels; a split side is a multiple of ``multiple`` and at least
    two thirds of ``window`` (thin slabs would lose the network's context). Ties go to fewer windows,
    then to the most cubic shape. An axis that is not split keeps its own length (a multiple of
    ``multiple`` is expected: brain boxes are).
    """
    if window < multiple or not 0 <= overlap < 1:
        raise ValueError(f"need a window of at least {multiple} and an overlap in [0, 1), got {window} and {overlap}")
    shared = round(overlap * window)
    shortest = -(-math.ceil(window * 2 / 3) // multiple) * multiple
    options = []  # per axis: (count, side) pairs that cover it with the overlap
    for size in shape:
        axis = [(1, int(size))]
        for count in range(2, size // max(shortest - shared, 1) + 3):
            side = -(-math.ceil((size + (count - 1) * shared) / count) // multiple) * multiple
            if shortest <= side < size:
                axis.append((count, side))
        options.append(axis)
    best = None
    for choice in itertools.product(*options):
        counts, sides = zip(*choice, strict=True)
        if math.prod(sides) > window**3:
            continue
        rank = (math.prod(counts) * math.prod(sides), math.prod(counts), max(sides) / min(sides))
        if best is None or rank < best[0]:
            best = (rank, sides, counts)
    if best is None:  # every axis unsplit is over budget and no split fits: fall back to cubes
        cube = (window,) * len(shape)
        return cube, [window_starts(size, window, overlap) for size in shape]
    _, sides, counts = best
    return tuple(sides), [spread_starts(*axis) for axis in zip(shape, sides, counts, strict=True)]


def gaussian_importance(window_shape: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """A float32 Gaussian over ``window_shape``, 1 at the centre, sigma ``sigma_scale`` x each side.

    No entry is zero (a voxel covered only by window corners still gets a finite average).
    """
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = np.ones((), dtype=np.float64)
    for length in window_shape:
        offsets = np.arange(length) - (length - 1) / 2
        weights = np.multiply.outer(weights, np.exp(-0.5 * (offsets / (length * sigma_scale)) ** 2))
    weights = (weights / weights.max()).astype(np.float32)
    smallest = weights[weights > 0].min()
    return np.maximum(weights, smallest)


def softmax(scores: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax over ``axis`` in float32, stable for large logits."""
    shifted = np.asarray(scores, dtype=np.float32) - np.max(scores, axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def sliding_window_scores(
    x: np.ndarray,
    forward: Forward,
    window: int | Sequence[int],
    overlap: float,
    *,
    fitted: bool = False,
    needed: np.ndarray | None = None,
) -> np.ndarray:
    """Class probabilities (1, K, D, H, W) for an input (1, C, D, H, W), stitched from windows.

    Windows are ``window``-sided cubes placed by ``window_starts`` or, with ``fitted``, shaped to the
    input by ``fitted_windows`` (``window`` then bounds their voxels). An axis shorter than the window
    is zero-padded (centred) to the window and cropped back; each window's logits go through a
    softmax and are averaged with Gaussian weights (``gaussian_importance``).

    ``needed`` (a (D, H, W) boolean map): run only the windows that hold a needed voxel. Every window
    over a needed voxel runs, so its probabilities are exactly those of all windows; a voxel no run
    window covers gets 0 for every class.
    """
    if x.ndim != 5 or x.shape[0] != 1:
        raise ValueError(f"expected an input of shape (1, C, D, H, W), got {x.shape}")
    spatial = x.shape[2:]
    if needed is not None and (needed.shape != spatial or not needed.any()):
        raise ValueError(f"needed must be a (D, H, W) map of {spatial} with a voxel set, got {needed.shape}")
    if fitted:
        if not isinstance(window, int):
            raise ValueError(f"a fitted tiling takes one window side (a voxel budget), got {window}")
        windows, fitted_starts = fitted_windows(spatial, window, overlap)
    else:
        windows = tuple(window) if isinstance(window, Sequence) else (window,) * 3
    before = [max(w - s, 0) // 2 for s, w in zip(spatial, windows, strict=True)]
    after = [max(w - s, 0) - b for s, w, b in zip(spatial, windows, before, strict=True)]
    padded = np.pad(x, [(0, 0), (0, 0), *zip(before, after, strict=True)]) if any(before + after) else x
    padded_shape = padded.shape[2:]
    if needed is not None and padded_shape != spatial:
        needed = np.pad(needed, list(zip(before, after, strict=True)))

    importance = gaussian_importance(windows)
    total = None
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    starts = (
        fitted_starts
        if fitted and padded_shape == spatial
        else [window_starts(s, w, overlap) for s, w in zip(padded_shape, windows, strict=True)]
    )
    for d in starts[0]:
        for h in starts[1]:
            for w in starts[2]:
                region = (slice(d, d + windows[0]), slice(h, h + windows[1]), slice(w, w + windows[2]))
                if needed is not None and not needed[region].any():
                    continue
                probabilities = softmax(forward(padded[(slice(None), slice(None), *region)]))[0]
                if total is None:  # the class count is known only after the first window
                    total = np.zeros((probabilities.shape[0], *padded_shape), dtype=np.float32)
                total[(slice(None), *region)] += probabilities * importance
                weight_sum[region] += importance
    np.divide(total, weight_sum, out=total, where=weight_sum > 0)  # uncovered (skipped) voxels stay 0
    inside = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    return np.ascontiguousarray(total[(slice(None), *inside)])[None]
