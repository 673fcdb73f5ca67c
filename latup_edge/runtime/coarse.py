"""A coarse pass over the whole brain box that gates what the windows find.

Windows (``--tiling sliding``) see part of the brain each, normalised over the brain inside them; in
a window that holds no tumour the network can paint one (docs/RUNTIME.md: 2 of 80 independent cases
grew a false tumour far from the real one, which the whole box, seeing the whole brain, did not).
The coarse pass is the whole box at half resolution: the normalised box mean-pooled 2x2x2 (the brain
where at least half of a pooled voxel is brain, exact zeros elsewhere), normalised again, one pass
of the same network (1/8 of the whole box's voxels, so about 1/8 of its memory and time), its argmax
repeated back to full resolution. A tumour component of the windows' argmax that touches no voxel of
the coarse whole tumour (grown by ``GATE_DILATION`` voxels) becomes background before the labels are
post-processed, provided some other component does touch it: the gate never empties a case, so a
tumour the coarse pass misses keeps whatever the windows found.

The coarse labels are the raw argmax, not post-processed: measured, post-processing them removed a
non-enhancing tumour (coreless at half resolution) and kept two small false components with a core,
and the gate then deleted the whole real tumour in 2 of 20 independent cases (docs/GENERALISATION.md,
section 12).

Only for networks with brain statistics and a brain-only normalisation: they compute the same
function on a padded box, and a box normalised inside the brain can be normalised again after pooling.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from latup_edge.data.preprocess import SIZE_MULTIPLE, normalize
from latup_edge.runtime.tiling import Forward

COARSE_FACTOR = 2
GATE_DILATION = 2  # voxels of the full-resolution box


def coarse_input(box: np.ndarray, normalization: str) -> np.ndarray:
    """A normalised brain box (1, C, D, H, W), sides multiples of 2 -> its half-resolution input (1, C, d, h, w),
    normalised with ``normalization`` and zero-padded at the ends to multiples of ``SIZE_MULTIPLE``."""
    _, channels, *sides = box.shape
    f = COARSE_FACTOR
    if any(side % f for side in sides):
        raise ValueError(f"brain box sides {tuple(sides)} are not multiples of {f}")
    small = [side // f for side in sides]
    pooled = box[0].reshape(channels, small[0], f, small[1], f, small[2], f).mean(axis=(2, 4, 6), dtype=np.float32)
    brain = np.any(box[0] != 0, axis=0).reshape(small[0], f, small[1], f, small[2], f).mean(axis=(1, 3, 5)) >= 0.5
    pooled *= brain
    padded = [-(-side // SIZE_MULTIPLE) * SIZE_MULTIPLE for side in small]
    out = np.zeros((1, channels, *padded), dtype=np.float32)
    out[(0, slice(None), *(slice(0, side) for side in small))] = normalize(pooled, normalization)
    return out


def coarse_tumour(box: np.ndarray, forward: Forward, normalization: str) -> np.ndarray:
    """The whole tumour (bool, D x H x W) of the argmax of one half-resolution pass of ``forward`` over ``box``."""
    sides = box.shape[-3:]
    logits = forward(coarse_input(box, normalization))[0]
    small = tuple(side // COARSE_FACTOR for side in sides)
    tumour = np.argmax(logits[(slice(None), *(slice(0, s) for s in small))], axis=0) > 0
    for axis in range(3):
        tumour = tumour.repeat(COARSE_FACTOR, axis=axis)
    return tumour


def outside(classes: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """The voxels (bool) of every tumour component of ``classes`` that touches no voxel of ``tumour`` grown
    by ``GATE_DILATION``; none when no component touches it (or ``tumour`` is empty): the gate chooses
    among the windows' components, it never removes them all. Components are 6-connected, as in
    post-processing."""
    components, count = ndimage.label(classes > 0)
    touching = np.zeros(count + 1, dtype=bool)
    if tumour.any():
        touching[np.unique(components[ndimage.binary_dilation(tumour, iterations=GATE_DILATION)])] = True
    if not touching[1:].any():
        return np.zeros(classes.shape, dtype=bool)
    touching[0] = True
    return ~touching[components]


def gate(probabilities: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """``probabilities`` (1, K, D, H, W) with the components ``outside`` ``tumour`` set to background, in place."""
    cleared = outside(np.argmax(probabilities[0], axis=0), tumour)
    if cleared.any():
        probabilities[0, 0][cleared] = 1.0
        probabilities[0, 1:][:, cleared] = 0.0
    return probabilities


def gated(windows: Forward, forward: Forward, normalization: str) -> Forward:
    """``windows`` (blended probabilities of a box) gated by a coarse pass of ``forward`` (``gate``)."""

    def run(box: np.ndarray) -> np.ndarray:
        tumour = coarse_tumour(box, forward, normalization)
        return gate(windows(box), tumour)

    return run
