"""benchmarks/histogram_standardisation.py: a scan's landmarks land on the standard ones, the brain stays the brain."""

import numpy as np
from conftest import benchmark_script


def test_landmarks_map_onto_the_standard_and_the_background_stays_zero():
    script = benchmark_script("histogram_standardisation")
    rng = np.random.default_rng(0)
    image = np.zeros((20, 20, 20))
    brain = np.zeros(image.shape, bool)
    brain[3:17, 3:17, 3:17] = True
    image[brain] = rng.gamma(2.0, 50.0, brain.sum()) + 5  # skewed, as a gamma-distorted scan
    standard = np.array([0, 0.2, 0.3, 0.38, 0.45, 0.5, 0.56, 0.62, 0.7, 0.8, 1.0])
    out = script.standardise(image, brain, standard)
    assert np.all(out[~brain] == 0) and np.all(out[brain] > 0)  # "non-zero" still marks exactly the brain
    marks = (np.percentile(out[brain], script.LANDMARKS) - script.FLOOR) / script.SCALE
    np.testing.assert_allclose(marks, standard, atol=2e-3)
    order = np.argsort(image[brain])
    assert np.all(np.diff(out[brain][order]) >= 0)  # monotonic: no tissue changes places with another
