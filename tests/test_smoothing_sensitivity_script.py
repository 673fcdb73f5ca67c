"""benchmarks/smoothing_sensitivity.py: a thick-slice condition changes one modality, along one axis."""

import numpy as np
from conftest import benchmark_script


def _script():
    return benchmark_script("smoothing_sensitivity")


def test_thick_changes_one_modality_along_one_axis():
    rng = np.random.default_rng(0)
    images = rng.uniform(1, 2, (3, 6, 6, 6)).astype(np.float32)
    out = _script().thick(images, ("flair", "t1ce", "t2"), "t2:x:3")
    assert np.array_equal(out[:2], images[:2])
    assert not np.allclose(out[2], images[2])
    assert np.allclose(out[2].mean(axis=0), images[2].mean(axis=0), atol=0.2)
