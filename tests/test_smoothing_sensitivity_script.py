"""benchmarks/smoothing_sensitivity.py: a thick-slice condition changes one modality, along one axis."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "smoothing_sensitivity.py"


def _script():
    spec = importlib.util.spec_from_file_location("smoothing_sensitivity", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_thick_changes_one_modality_along_one_axis():
    rng = np.random.default_rng(0)
    images = rng.uniform(1, 2, (3, 6, 6, 6)).astype(np.float32)
    out = _script().thick(images, ("flair", "t1ce", "t2"), "t2:x:3")
    assert np.array_equal(out[:2], images[:2])
    assert not np.allclose(out[2], images[2])
    assert np.allclose(out[2].mean(axis=0), images[2].mean(axis=0), atol=0.2)
