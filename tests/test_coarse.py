"""The coarse whole-box pass that gates windows (latup_edge/runtime/coarse.py)."""

from __future__ import annotations

import numpy as np

from latup_edge.runtime.coarse import coarse_input, gate, outside
from latup_edge.runtime.postprocess import Postprocessing
from latup_edge.runtime.volume import predict_volume


def brain_box(shape=(40, 48, 32), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    box = np.zeros((1, 3, *shape), dtype=np.float32)
    box[0, :, 4:-4, 4:-4, 4:-4] = rng.normal(size=(3, shape[0] - 8, shape[1] - 8, shape[2] - 8))
    return box


def test_coarse_input_is_the_box_at_half_resolution_normalised_inside_the_brain_and_padded_to_8():
    small = coarse_input(brain_box(), "zscore-brain")
    assert small.shape == (1, 3, 24, 24, 16)  # 20 x 24 x 16 padded to multiples of 8
    inside = small[0, :, 2:18, 2:22, 2:14]
    assert np.all(inside != 0) and np.all(small[0, :, 20:] == 0) and np.all(small[0, :, :2] == 0)
    np.testing.assert_allclose(inside.reshape(3, -1).mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(inside.reshape(3, -1).std(axis=1), 1, atol=1e-3)


def test_outside_takes_the_components_that_touch_no_coarse_tumour_when_one_does():
    classes = np.zeros((30, 30, 30), np.uint8)
    classes[2:8, 2:8, 2:8] = 2  # near the coarse tumour: a gap of one voxel, within reach of the dilation
    classes[20:26, 20:26, 20:26] = 1  # far from it
    tumour = np.zeros(classes.shape, bool)
    tumour[9:12, 4:6, 4:6] = True
    cleared = outside(classes, tumour)
    assert cleared[22, 22, 22] and not cleared[4, 4, 4] and cleared.sum() == 216
    assert not outside(classes, np.zeros_like(tumour)).any()
    # A coarse tumour that touches none of the components chooses nothing: the gate never empties a case.
    elsewhere = np.zeros(classes.shape, bool)
    elsewhere[14, 14, 14] = True
    assert not outside(classes, elsewhere).any()

    probabilities = np.zeros((1, 4, 30, 30, 30), np.float32)
    probabilities[0, 0] = 1
    probabilities[0, :, 2:8, 2:8, 2:8] = np.array([0.1, 0.1, 0.7, 0.1])[:, None, None, None]
    probabilities[0, :, 20:26, 20:26, 20:26] = np.array([0.2, 0.6, 0.1, 0.1])[:, None, None, None]
    gated = np.argmax(gate(probabilities, tumour)[0], axis=0)
    assert gated[4, 4, 4] == 2 and gated[22, 22, 22] == 0


def bright_spots(x: np.ndarray) -> np.ndarray:
    """A stand-in network: oedema wherever the first channel is above 2 (z-scores), else background."""
    logits = np.zeros((1, 4, *x.shape[2:]), np.float32)
    logits[0, 2] = (x[0, 0] > 2.0) * 2.0 - 1.0
    return logits


def test_windows_lose_a_speck_the_coarse_pass_does_not_see_and_keep_the_tumour_it_does():
    rng = np.random.default_rng(1)
    images = np.zeros((3, 80, 80, 80), np.float32)
    images[:, 8:72, 8:72, 8:72] = rng.uniform(1.0, 1.2, size=(3, 64, 64, 64))
    images[0, 20:36, 20:36, 20:36] = 6.0  # a tumour: bright at full and at half resolution
    images[0, 60, 60, 60] = 40.0  # a one-voxel speck: pooling dilutes it to under the threshold
    run = {"normalization": "zscore-brain", "window": 32, "overlap": 0.25}
    windows = predict_volume(images, bright_spots, "sliding", postprocessing=Postprocessing.none(), **run).classes
    assert windows[60, 60, 60] == 2 and windows[28, 28, 28] == 2
    no_rules_but_the_gate = Postprocessing(min_et_voxels=0, min_component_fraction=0, drop_coreless=False)
    gated = predict_volume(images, bright_spots, "sliding", postprocessing=no_rules_but_the_gate, **run).classes
    assert gated[60, 60, 60] == 0 and gated[28, 28, 28] == 2
    # The whole box sees the whole brain already: it is never gated.
    whole = predict_volume(images, bright_spots, "whole", postprocessing=no_rules_but_the_gate, **run).classes
    assert whole[60, 60, 60] == 2
