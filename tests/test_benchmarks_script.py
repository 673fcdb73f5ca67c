"""benchmarks/latency_and_drift.py: its MONAI baseline is the network itself when one window covers the volume."""

import numpy as np
import pytest
import torch
from conftest import benchmark_script, narrow_network

pytest.importorskip("monai")


@pytest.fixture(scope="module")
def script():
    return benchmark_script("latency_and_drift")


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """Normalised (C, X, Y, Z) images: a noisy brain with a brighter lesion, values in [0, 1]."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0.2, 0.5, (3, 32, 32, 32)).astype(np.float32)
    images[:, 10:22, 12:24, 8:20] += 0.5
    return images / images.max()


def test_one_window_over_the_whole_volume_is_a_plain_forward(script, volume):
    model = narrow_network()
    scores = script.monai_scores(volume, model, roi=32)
    with torch.inference_mode():
        direct = model(torch.from_numpy(volume[None])).numpy()[0]
    assert scores.shape == direct.shape == (4, 32, 32, 32)
    np.testing.assert_allclose(scores, direct, rtol=1e-4, atol=1e-4)
    assert len(np.unique(direct.argmax(axis=0))) > 1  # the comparison covers more than one class


def test_half_overlapping_windows_tile_the_volume(script, volume):
    model, shapes = narrow_network(), []

    def counting(x):
        shapes.append(tuple(x.shape))
        return model(x)

    scores = script.monai_scores(volume, counting, roi=16, overlap=0.5)
    assert scores.shape == (4, 32, 32, 32) and np.isfinite(scores).all()
    # Steps of 8 over 32 voxels with 16-voxel windows: 3 per axis, one window per call.
    assert shapes == [(1, 3, 16, 16, 16)] * 27
