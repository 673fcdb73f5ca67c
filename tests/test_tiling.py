"""Sliding windows: the steps cover every voxel, the Gaussian is sane, and stitching is exact."""

import math

import numpy as np
import pytest

from latup_edge.data.preprocess import apply_crop, brain_box, undo_crop
from latup_edge.errors import LatupError
from latup_edge.runtime.postprocess import Postprocessing
from latup_edge.runtime.tiling import (
    fitted_windows,
    gaussian_importance,
    sliding_window_scores,
    softmax,
    window_starts,
)
from latup_edge.runtime.volume import predict_classes, predict_probabilities, predict_volume


def pointwise(x: np.ndarray) -> np.ndarray:
    """A forward whose logits at a voxel depend only on the input there: 4 classes from 3 channels."""
    return np.concatenate([x, x.sum(axis=1, keepdims=True) * 0.5], axis=1)


def ramps(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """(1, 3, D, H, W): linear ramps in the voxel coordinates plus noise, so no two voxels agree."""
    grid = np.stack(np.meshgrid(*(np.linspace(-2, 3, n) for n in shape), indexing="ij"))
    noise = np.random.default_rng(seed).normal(0, 0.3, grid.shape)
    return (grid + noise).astype(np.float32)[None]


@pytest.mark.parametrize("size", [1, 7, 16, 17, 100, 128, 129, 144, 176, 240])
@pytest.mark.parametrize("window", [16, 128])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
def test_window_starts_cover_every_voxel_evenly(size, window, overlap):
    starts = window_starts(size, window, overlap)
    assert starts[0] == 0
    if size <= window:
        assert starts == [0]
        return
    assert starts[-1] == size - window
    covered = np.zeros(size, bool)
    for start in starts:
        covered[start : start + window] = True
    assert covered.all()
    steps = np.diff(starts)
    assert (steps > 0).all() and steps.max() <= window * (1 - overlap) and steps.max() - steps.min() <= 1


def test_window_starts_match_the_brain_box_example():
    assert window_starts(144, 128, 0.5) == [0, 16]
    assert window_starts(176, 128, 0.5) == [0, 48]
    assert len(window_starts(240, 128, 0.5)) == 3


@pytest.mark.parametrize("overlap", [-0.1, 1.0])
def test_window_starts_refuse_an_overlap_outside_0_1(overlap):
    with pytest.raises(ValueError, match="overlap"):
        window_starts(100, 32, overlap)


BRAIN_BOXES = [(160, 192, 160), (136, 192, 144), (144, 176, 120), (152, 168, 152), (240, 240, 160), (96, 96, 96)]


@pytest.mark.parametrize("shape", BRAIN_BOXES)
@pytest.mark.parametrize("overlap", [1 / 6, 0.25])
def test_fitted_windows_cover_the_box_within_the_memory_bound_and_the_overlap(shape, overlap):
    sides, starts = fitted_windows(shape, 96, overlap)
    assert math.prod(sides) <= 96**3
    for size, side, axis in zip(shape, sides, starts, strict=True):
        assert axis[0] == 0 and axis[-1] + side == size  # the first and last windows reach the box's faces
        if len(axis) > 1:
            assert side % 8 == 0 and side >= 64
            assert min(np.diff(axis)) > 0 and side - max(np.diff(axis)) >= round(overlap * 96)


@pytest.mark.parametrize("shape", BRAIN_BOXES)
def test_fitted_windows_compute_no_more_than_cubes(shape):
    sides, starts = fitted_windows(shape, 96, 0.25)
    fitted = math.prod(len(axis) for axis in starts) * math.prod(sides)
    cubes = math.prod(len(window_starts(size, 96, 0.25)) for size in shape) * 96**3
    assert math.prod(shape) <= fitted <= cubes


def test_fitted_windows_of_a_typical_brain_box_need_a_third_fewer_voxels_than_cubes():
    assert fitted_windows((160, 192, 160), 96, 1 / 6) == ((88, 104, 88), [[0, 72], [0, 88], [0, 72]])
    # 8 windows of 88x104x88: 1.31x the box's voxels, where twelve 96^3 cubes compute 2.16x.


@pytest.mark.parametrize("shape", [(32, 32, 32), (24, 40, 17)])
def test_gaussian_is_positive_normalised_and_peaks_in_the_centre(shape):
    weights = gaussian_importance(shape)
    assert weights.dtype == np.float32 and weights.shape == shape
    assert weights.min() > 0 and weights.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(weights), shape)
    assert all(abs(p - (n - 1) / 2) <= 0.5 for p, n in zip(peak, shape, strict=True))
    # Symmetric about the centre on every axis.
    assert np.allclose(weights, weights[::-1, ::-1, ::-1])


@pytest.mark.parametrize(
    ("shape", "window", "overlap"),
    [
        ((40, 40, 40), 16, 0.5),
        ((33, 17, 50), 16, 0.25),
        ((48, 24, 32), 16, 0.8),
        ((64, 64, 64), 32, 0.0),
        ((10, 12, 9), 16, 0.5),  # smaller than the window on every axis: padded
        ((40, 8, 20), 16, 0.5),  # smaller on one axis only
    ],
)
def test_stitching_a_pointwise_function_is_exact(shape, window, overlap):
    x = ramps(shape)
    calls = []

    def forward(window_input: np.ndarray) -> np.ndarray:
        calls.append(window_input.shape)
        return pointwise(window_input)

    stitched = sliding_window_scores(x, forward, window, overlap)
    assert stitched.shape == (1, 4, *shape) and stitched.dtype == np.float32
    np.testing.assert_allclose(stitched, softmax(pointwise(x)), rtol=1e-5, atol=1e-6)
    assert all(call == (1, 3, window, window, window) for call in calls)


@pytest.mark.parametrize(("shape", "window"), [((40, 40, 40), 16), ((48, 24, 32), 16), ((64, 40, 24), 24)])
def test_stitching_fitted_windows_of_a_pointwise_function_is_exact(shape, window):
    x = ramps(shape)
    calls = []

    def forward(window_input: np.ndarray) -> np.ndarray:
        calls.append(window_input.shape[2:])
        return pointwise(window_input)

    stitched = sliding_window_scores(x, forward, window, 0.25, fitted=True)
    np.testing.assert_allclose(stitched, softmax(pointwise(x)), rtol=1e-5, atol=1e-6)
    assert len(calls) > 1 and len(set(calls)) == 1 and math.prod(calls[0]) <= window**3


def test_stitching_uses_every_window_and_weights_them():
    """A forward that returns a different constant per window: the blend lies between them."""
    x = np.zeros((1, 3, 48, 16, 16), np.float32)
    seen = []

    def forward(window_input: np.ndarray) -> np.ndarray:
        seen.append(len(seen))
        logits = np.zeros((1, 2, *window_input.shape[2:]), np.float32)
        logits[:, 1] = 5.0 * len(seen)  # later windows are more sure of class 1
        return logits

    probabilities = sliding_window_scores(x, forward, 16, 0.5)[0, 1]
    assert len(seen) == 5
    # Voxels at the first window's centre lean on it; the last window's centre on the last.
    assert probabilities[4].mean() < probabilities[44].mean()
    np.testing.assert_allclose(sliding_window_scores(x, forward, 16, 0.5)[0].sum(axis=0), 1, rtol=1e-6)


def window_dependent(window_input: np.ndarray) -> np.ndarray:
    """A forward whose logits also depend on the whole window (its mean), as a network's context does."""
    return pointwise(window_input) + window_input.mean()


def test_windows_over_no_needed_voxel_are_skipped_and_the_needed_voxels_are_exact():
    x = ramps((48, 40, 32))
    needed = np.zeros(x.shape[2:], bool)
    needed[2:6, 3:8, 1:4] = True  # in the first window along every axis only
    calls = []

    def forward(window_input: np.ndarray) -> np.ndarray:
        calls.append(1)
        return window_dependent(window_input)

    everywhere = sliding_window_scores(x, forward, 16, 0.25, fitted=True)
    run_everywhere = len(calls)
    calls.clear()
    skipping = sliding_window_scores(x, forward, 16, 0.25, fitted=True, needed=needed)
    assert 0 < len(calls) < run_everywhere
    np.testing.assert_array_equal(skipping[0][:, needed], everywhere[0][:, needed])
    assert not skipping[0][:, -1, -1, -1].any()  # covered by no window that ran: 0 for every class
    with pytest.raises(ValueError, match="a voxel set"):
        sliding_window_scores(x, forward, 16, 0.25, fitted=True, needed=np.zeros_like(needed))


def test_a_needed_map_is_padded_with_a_box_smaller_than_the_window():
    x = ramps((10, 12, 9))
    needed = np.zeros(x.shape[2:], bool)
    needed[3, 4, 5] = True
    np.testing.assert_array_equal(
        sliding_window_scores(x, window_dependent, 16, 0.5, needed=needed),
        sliding_window_scores(x, window_dependent, 16, 0.5),
    )


def brain(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """(3, X, Y, Z) raw images: noise inside an off-centre box, zeros (skull-stripped) outside."""
    images = np.zeros((3, *shape), np.float32)
    rng = np.random.default_rng(seed)
    images[:, 5 : shape[0] - 9, 3 : shape[1] - 4, 6 : shape[2] - 2] = rng.random(
        (3, shape[0] - 14, shape[1] - 7, shape[2] - 8), dtype=np.float32
    )
    return images


def test_whole_and_sliding_agree_for_a_pointwise_network():
    images = brain((60, 52, 44))
    whole = predict_volume(images, pointwise, "whole", probabilities=True, normalization="minmax")
    sliding = predict_volume(
        images, pointwise, "sliding", window=16, overlap=0.5, probabilities=True, normalization="minmax"
    )
    np.testing.assert_array_equal(whole.classes, sliding.classes)
    np.testing.assert_allclose(whole.probabilities, sliding.probabilities, rtol=1e-5, atol=1e-6)


def test_probabilities_cover_the_full_shape_and_are_background_outside_the_box():
    images = brain((60, 52, 44))
    probabilities = predict_probabilities(images, pointwise, normalization="minmax")
    assert probabilities.shape == (4, 60, 52, 44) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1, rtol=1e-5)
    crop = brain_box(images)
    outside = np.ones((60, 52, 44), bool)
    outside[tuple(slice(max(a, 0), b) for a, b in zip(crop.start, crop.stop, strict=True))] = False
    assert outside.any() and (probabilities[0][outside] == 1).all()
    raw = predict_classes(images, pointwise, normalization="minmax", postprocessing=Postprocessing.none())
    assert (np.argmax(probabilities, axis=0) == raw).all()  # probabilities are the network's, before the rules


def test_predict_classes_keeps_its_one_pass_behaviour_for_existing_callers():
    images = brain((60, 52, 44))
    shapes = []

    def forward(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return pointwise(x)

    classes = predict_classes(images, forward, normalization="minmax")
    assert classes.shape == (60, 52, 44) and classes.dtype == np.uint8
    assert shapes == [(1, 3, *brain_box(images).shape)]


@pytest.mark.parametrize(("tiling", "window"), [("tiles", 128), ("sliding", 100), ("sliding", 0), ("sliding", -8)])
def test_predict_refuses_an_unknown_tiling_or_a_window_not_a_positive_multiple_of_8(tiling, window):
    with pytest.raises(LatupError, match="tiling|positive multiple of 8"):
        predict_classes(brain((24, 24, 24)), pointwise, tiling=tiling, window=window, normalization="minmax")


def test_the_normalisation_has_no_default():
    with pytest.raises(TypeError, match="normalization"):
        predict_classes(brain((24, 24, 24)), pointwise)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown normalisation"):
        predict_classes(brain((24, 24, 24)), pointwise, normalization="percentile")


def zscore_by_hand(images: np.ndarray) -> np.ndarray:
    """Per channel: brain voxels clipped to their 0.5-99.5th percentiles, minus their mean, over their std."""
    brain_voxels = (images != 0).any(axis=0)
    normalized = np.zeros(images.shape, np.float32)
    for channel, out in zip(images, normalized, strict=True):
        values = np.clip(channel[brain_voxels], *np.percentile(channel[brain_voxels], (0.5, 99.5)))
        out[brain_voxels] = (values - values.mean()) / values.std()
    return normalized


def test_a_zscore_model_is_fed_its_own_normalisation():
    import torch

    from latup_edge.models.latup_net import LATUPNet, LATUPNetConfig
    from latup_edge.runtime.volume import torch_forward

    torch.manual_seed(0)
    model = LATUPNet(LATUPNetConfig(base_filters=4, statistics="brain", normalization="zscore-brain")).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.bias.zero_()  # a random network with biases predicts one class everywhere
    images = 200 + 700 * brain((44, 40, 36), seed=3)
    images[:, (images[0] == 200)] = 0  # skull-stripped: zeros outside the brain
    seen = []
    network = torch_forward(model)

    def forward(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return network(x)

    raw = Postprocessing.none()  # a random network's labels: compared with the argmax by hand
    classes = predict_classes(images, forward, normalization=model.config.normalization, postprocessing=raw)
    crop = brain_box(images)
    by_hand = apply_crop(zscore_by_hand(images), crop)[None]
    np.testing.assert_allclose(seen[0], by_hand, atol=1e-5)
    expected = undo_crop(np.argmax(network(by_hand)[0], axis=0).astype(np.uint8), crop)
    assert len(np.unique(expected)) > 1 and (classes == expected).mean() > 0.999
    predict_classes(images, forward, normalization="minmax")
    assert not np.allclose(seen[1], by_hand, atol=1e-2)  # min-max would have fed another input


@pytest.mark.parametrize("tiling", ["whole", "sliding"])
def test_labels_the_network_paints_outside_the_brain_are_cleared(tiling):
    images = brain((60, 52, 44))

    def oedema_everywhere(x: np.ndarray) -> np.ndarray:
        logits = np.zeros((x.shape[0], 4, *x.shape[2:]), np.float32)
        logits[:, 2] = 1.0  # a network whose background margin flipped: oedema in the whole box
        logits[:, 1, 20:30, 20:30, 20:30] = 2.0  # around a necrotic core
        return logits

    kwargs = {"normalization": "zscore-brain", "window": 32}
    classes = predict_classes(images, oedema_everywhere, tiling, **kwargs)
    inside = (images != 0).any(axis=0)
    assert (classes[~inside] == 0).all() and (classes[inside] > 0).all()
    off = Postprocessing(clear_outside_brain=False)
    painted = predict_classes(images, oedema_everywhere, tiling, postprocessing=off, **kwargs)
    assert (painted[~inside] > 0).any()  # the box around the brain, left painted without the rule
