"""The drift of a bundle's reduced precisions against fp32 on a folder of cases.

``run_drift`` opens one ``Predictor`` per precision of a bundle, runs each on every case
(``latup_edge.evaluate.drift.measure_drift`` does the scoring), adds the differences from fp32
(``latup_edge.evaluate.report.add_differences``) and, on request, writes the report folder
(``latup_edge.evaluate.report.write_report``).

>>> result = run_drift(Path("BraTS2021"), Path("bundle"), report=Path("drift-report"))  # doctest: +SKIP
>>> result["summary"]["int8"]["verdicts"]                                                # doctest: +SKIP
{'99': True, '99.9': False}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latup_edge.data.cases import discover_cases
from latup_edge.errors import LatupError
from latup_edge.evaluate.drift import REFERENCE, measure_drift, prepare_case, summarise_drift
from latup_edge.evaluate.report import CaseSlice, add_differences, case_slice, write_report
from latup_edge.runtime.bundle import Bundle, load_bundle
from latup_edge.runtime.openvino_backend import cpu_name, cpu_supports_bf16
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing, delivered_labels
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.tiling import Forward
from latup_edge.runtime.volume import DEFAULT_TILING, Tiling

REDUCED = ("bf16", "int8")
# The precision the overlay compares with fp32 when it was run (the one a bundle most often defaults to).
OVERLAY_PRECISION = "int8"


class _Recorded:
    """A Forward that keeps its last output, so the report can draw exactly what drift scored."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.last: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.last = self.forward(x)
        return self.last

    def take(self) -> np.ndarray:
        scores, self.last = self.last, None  # free the scores before the next case
        return scores


def labels_forward(predictor: Predictor) -> Forward:
    """A box Forward whose scores are one-hot of the labels ``predictor`` writes (``Predictor.box_labels``):
    how drift scores a bundle with a core network, whose labels come from two networks' argmax."""

    def forward(box: np.ndarray) -> np.ndarray:
        labels = predictor.box_labels(box)
        return (labels[None] == np.arange(4, dtype=np.uint8)[:, None, None, None]).astype(np.float32)[None]

    return forward


def reduced_precisions(bundle: Bundle, precisions: Sequence[str] | None = None) -> list[str]:
    """The precisions to compare with fp32: those asked for, or every one the bundle has and this CPU runs."""
    if precisions is None:
        runnable = [p for p in REDUCED if p in bundle.precisions and (p != "bf16" or cpu_supports_bf16())]
        if not runnable:
            raise LatupError(f"bundle {bundle.path} has no reduced precision this CPU runs: nothing to compare")
        return runnable
    unknown = [p for p in precisions if p not in REDUCED]
    if unknown or not precisions:
        raise LatupError(f"unknown precisions {unknown or '(none)'}: choose from {', '.join(REDUCED)}")
    return list(dict.fromkeys(precisions))


def drift_predictors(
    bundle: Bundle,
    names: Sequence[str],
    threads: int | None = None,
    opened: Mapping[str, Predictor] | None = None,
    tiling: Tiling = DEFAULT_TILING,
    mirror: str = "",
    postprocessing: Postprocessing = DEFAULT_POSTPROCESSING,
) -> dict[str, Predictor]:
    """One Predictor per precision in ``names``, reusing those in ``opened``; the bundle is not re-read.
    ``mirror``: test-time mirroring for each (``Predictor``'s).

    Precisions that failed the bundle's drift gate open too: measuring them is the point.
    """
    opened = opened or {}
    with warnings.catch_warnings():
        # The approval of each precision is reported in the result instead of as a warning.
        warnings.simplefilter("ignore")
        return {
            name: opened[name]
            if name in opened
            else Predictor.from_bundle(
                bundle, name, threads, tiling, allow_failed=True, mirror=mirror, postprocessing=postprocessing
            )
            for name in names
        }


def run_drift(
    data_dir: Path,
    bundle: Path | Bundle,
    precisions: Sequence[str] | None = None,
    threads: int | None = None,
    report: Path | None = None,
    progress: Callable[[str], None] = lambda case_id: None,
    opened: Mapping[str, Predictor] | None = None,
    tiling: Tiling = DEFAULT_TILING,
    postprocessing: Postprocessing = DEFAULT_POSTPROCESSING,
    mirror: str = "",
) -> dict[str, Any]:
    """Score fp32 and each reduced precision of ``bundle`` on every case under ``data_dir``.

    Per case, region and precision: Dice and HD95 against the labels when the case has them, their
    differences from fp32, and the agreement Dice with fp32 (only the agreement without labels).
    The summary gives MLPerf-style verdicts per precision (mean Dice >= 99 % and >= 99.9 % of fp32).
    Precisions that failed the bundle's drift gate are run too: measuring them is the point.
    With ``report``, also writes the report folder (``write_report``). ``bundle`` is a path (read and
    verified here) or a loaded ``Bundle``; ``opened`` holds predictors of it to reuse, by precision.
    Each precision runs every brain box as its predictor runs it (``Predictor.forward``): in ``tiling``,
    or in the tiling of the predictor given in ``opened``. The labels scored are the network's argmax
    after ``postprocessing`` (what ``segment`` writes; ``Postprocessing.none()`` scores the argmax).
    ``mirror`` runs every precision with that test-time mirroring (``latup_edge.runtime.volume.mirrored``).

    Returns ``{"bundle", "data_dir", "cpu", "threads", "precisions", "cases", "summary", "report"}``;
    ``precisions`` holds what each model resolved, its build verdict and whether the bundle approves it.
    """
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle))
    names = [REFERENCE, *reduced_precisions(loaded, precisions)]
    predictors = drift_predictors(loaded, names, threads, opened, tiling, mirror, postprocessing)
    if loaded.core is None:
        recorded = {name: _Recorded(predictor.forward) for name, predictor in predictors.items()}
        labels = delivered_labels(postprocessing)
    else:  # two networks: score the composed labels, at each precision for both networks
        recorded = {name: _Recorded(labels_forward(predictor)) for name, predictor in predictors.items()}
        labels = None
    compared = OVERLAY_PRECISION if OVERLAY_PRECISION in names else names[1]
    per_case: dict[str, Any] = {}
    slices: list[CaseSlice] = []
    for case in discover_cases(data_dir):
        prepared = prepare_case(case, normalization=loaded.normalization)
        per_case |= measure_drift([prepared], recorded, labels=labels)["cases"]
        scores = {name: forward.take() for name, forward in recorded.items()}
        if report is not None:
            slices.append(case_slice(prepared, scores[REFERENCE], scores[compared], compared))
        progress(case.case_id)
    add_differences(per_case)
    result = {
        "bundle": str(loaded.path),
        "data_dir": str(data_dir),
        "cpu": cpu_name(),
        "threads": threads,
        "precisions": {
            name: {
                "resolved": predictor.backend.model.resolved(),
                "shape_policy": predictor.shape_policy,
                "tiling": predictor.tiling,
                "mirror": predictor.mirror or None,
                "build_verdict": loaded.precisions[name].get("verdict"),
                "approved": name == REFERENCE or bool(loaded.precisions[name].get("eligible")),
            }
            for name, predictor in predictors.items()
        },
        "postprocessing": postprocessing.to_dict(),
        "cases": per_case,
        "summary": _labelled(summarise_drift(per_case, names), loaded),
        "report": str(report) if report is not None else None,
    }
    if report is not None:
        write_report(result, slices, report)
    return result


def _labelled(summary: dict[str, Any], bundle: Bundle) -> dict[str, Any]:
    """The summary, saying which labels were scored when a core network composed them."""
    if bundle.core is None:
        return summary
    return {name: row | {"labels": "composed, as segment writes them"} for name, row in summary.items()}
