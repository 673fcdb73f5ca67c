"""Evaluate a model on a BraTS-format folder: per-case and summary Dice and HD95 per region, over
the full volume (the prediction is put back into the input's geometry before scoring)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from latup_edge.data.cases import BratsCase, CaseError, load_case_images, load_case_labels
from latup_edge.evaluate.metrics import region_metrics, summarise
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing
from latup_edge.runtime.volume import DEFAULT_TILING, Forward, Tiling, predict_classes


def evaluate_cases(
    cases: list[BratsCase],
    forward: Forward,
    progress: Callable[[BratsCase], None] = lambda case: None,
    *,
    normalization: str,
    postprocessing: Postprocessing = DEFAULT_POSTPROCESSING,
    tiling: Tiling = DEFAULT_TILING,
) -> dict[str, Any]:
    """Score every case that has a label map; cases that fail to load are listed, not fatal.

    ``normalization`` is the one the model behind ``forward`` was trained with (``model.config.normalization``).
    """
    per_case: dict[str, dict[str, dict[str, float]]] = {}
    failures: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for case in cases:
        try:
            images, reference = load_case_images(case)
            truth, _ = load_case_labels(case, reference)
        except CaseError as error:
            failures[case.case_id] = str(error)
            progress(case)
            continue
        started = time.perf_counter()
        predicted = predict_classes(images, forward, tiling, normalization=normalization, postprocessing=postprocessing)
        seconds[case.case_id] = round(time.perf_counter() - started, 2)
        per_case[case.case_id] = region_metrics(predicted, truth, spacing=reference.header.get_zooms()[:3])
        progress(case)
    return {"cases": per_case, "summary": summarise(per_case), "failures": failures, "seconds": seconds}
