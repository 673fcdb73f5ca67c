"""Predictors that tests/test_distributed.py hands to Dask workers, which import them by name.

Worker processes never see a test's monkeypatching: a test changes what a worker runs by passing
``segment_distributed(open_predictor=functools.partial(open_slow, ...))``. No torch here: workers
import only the runtime.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np

from latup_edge.runtime.cluster import open_predictor
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.segment import SegmentSettings
from latup_edge.runtime.volume import Prediction


class SlowPredictor(Predictor):
    """Predicts as usual after ``seconds``, leaving ``<pid>-<id>.started`` and then ``.done`` in ``markers``."""

    seconds = 0.0
    markers = Path()

    def predict(self, images: np.ndarray, probabilities: bool = False) -> Prediction:
        marker = self.markers / f"{os.getpid()}-{uuid.uuid4().hex}"
        marker.with_suffix(".started").touch()
        time.sleep(self.seconds)
        prediction = super().predict(images, probabilities)
        marker.with_suffix(".done").touch()
        return prediction


def open_slow(settings: SegmentSettings, seconds: float, markers: Path) -> SlowPredictor:
    predictor = open_predictor(settings, SlowPredictor)
    predictor.seconds, predictor.markers = seconds, markers
    return predictor


class FatalPredictor(Predictor):
    """Ends its worker process at once, as a segfault or the OOM killer would, on images of ``fatal_shape``."""

    fatal_shape: tuple[int, ...] = ()

    def predict(self, images: np.ndarray, probabilities: bool = False) -> Prediction:
        if images.shape[1:] == self.fatal_shape:
            os._exit(1)
        return super().predict(images, probabilities)


def open_fatal(settings: SegmentSettings, fatal_shape: tuple[int, ...]) -> FatalPredictor:
    predictor = open_predictor(settings, FatalPredictor)
    predictor.fatal_shape = tuple(fatal_shape)
    return predictor
