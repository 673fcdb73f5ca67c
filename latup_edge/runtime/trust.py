"""Trust in a deployed bundle, case by case: the INT8 drift audit, input checks and QA flags.

The drift gate judges a bundle's INT8 once, at build time, on its own held-out split; a clinic's
unlabelled scans may differ. ``AuditPlan`` picks the cases of a run on which the float reference
(fp32, from the same bundle) also runs; ``audit_case`` records their agreement Dice per region with
the default precision, against the bundle's own gate (its ``min_agreement``); ``audit_summary``
gives the run's mean, its cases below the gate and the audit's share of the run's time.
``input_check`` scores a case against the input statistics the bundle recorded at build time
(``latup_edge.runtime.input_stats``); ``case_flags`` gathers every reason to look at a case.

>>> plan = AuditPlan(every=10)
>>> [index for index in range(30) if plan.chooses(index)]
[9, 19, 29]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latup_edge.evaluate.metrics import REGIONS, agreement
from latup_edge.runtime.input_stats import case_statistics, ood_score
from latup_edge.runtime.qa import qa_flags

AUDIT_REFERENCE = "fp32"
DEFAULT_MIN_AGREEMENT = 0.99  # the build's default gate, for bundles that do not record theirs


@dataclass(frozen=True)
class AuditPlan:
    """Which cases of a run are audited: every ``every``-th (1-based: the 10th, 20th ...) and/or a
    seeded random ``fraction`` of them. The choice depends only on the case's index in the run."""

    every: int = 0
    fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"--audit must be 0 (off) or a positive number of cases, got {self.every}")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"--audit-fraction must lie in 0-1, got {self.fraction}")

    @property
    def active(self) -> bool:
        return self.every > 0 or self.fraction > 0

    def chooses(self, index: int) -> bool:
        """Whether the case at 0-based ``index`` among the run's cases is audited."""
        if self.every and (index + 1) % self.every == 0:
            return True
        # One draw per index, from a generator seeded by (seed, index): the same cases on every rerun.
        return bool(self.fraction) and np.random.default_rng([self.seed, index]).random() < self.fraction

    def to_dict(self) -> dict[str, Any]:
        return {"every": self.every, "fraction": self.fraction, "seed": self.seed, "reference": AUDIT_REFERENCE}


def bundle_gate(manifest: dict[str, Any] | None) -> float:
    """The lowest agreement with fp32 the bundle's build allowed (its ``min_agreement``)."""
    settings = ((manifest or {}).get("build") or {}).get("settings") or {}
    return float(settings.get("min_agreement", DEFAULT_MIN_AGREEMENT))


def audit_case(classes: np.ndarray, reference_classes: np.ndarray, gate: float, seconds: float) -> dict[str, Any]:
    """One audited case: agreement Dice per region of ``classes`` with the float reference's."""
    scores = {name: round(value, 5) for name, value in agreement(classes, reference_classes).items()}
    below = [name for name in REGIONS if scores[name] < gate]
    return {"reference": AUDIT_REFERENCE, "agreement": scores, "gate": gate, "passed": not below,
            "below_gate": below, "seconds": round(seconds, 3)}  # fmt: skip


def audit_summary(entries: Sequence[dict[str, Any]], plan: AuditPlan, gate: float, run_seconds: float) -> dict:
    """The run's audit: cases audited, mean and lowest agreement per region, cases below the gate, cost."""
    audits = {entry["case_id"]: entry["audit"] for entry in entries if entry.get("audit")}
    summary: dict[str, Any] = {**plan.to_dict(), "gate": gate, "cases": len(audits)}
    seconds = sum(audit["seconds"] for audit in audits.values())
    summary["seconds"] = round(seconds, 2)
    summary["fraction_of_run_time"] = round(seconds / run_seconds, 4) if run_seconds > 0 else None
    if not audits:
        return summary | {"mean_agreement": None, "lowest_agreement": None, "below_gate": {}, "passed": None}
    mean = {name: round(float(np.mean([a["agreement"][name] for a in audits.values()])), 5) for name in REGIONS}
    lowest = {name: round(min(a["agreement"][name] for a in audits.values()), 5) for name in REGIONS}
    below = {case_id: audit["below_gate"] for case_id, audit in sorted(audits.items()) if not audit["passed"]}
    mean_below = [name for name in REGIONS if mean[name] < gate]
    return summary | {
        "mean_agreement": mean, "lowest_agreement": lowest, "below_gate": below, "mean_below_gate": mean_below,
        "passed": not below and not mean_below,
    }  # fmt: skip


def audit_warnings(summary: dict[str, Any]) -> list[str]:
    """One sentence per way the audit fell below the bundle's gate (none when it held or did not run)."""
    gate = summary.get("gate")
    sentences = [
        f"INT8 drift: case {case_id} agrees with fp32 below the bundle's gate of {gate} in {', '.join(regions)}: "
        "review it, or segment it again with --precision fp32"
        for case_id, regions in (summary.get("below_gate") or {}).items()
    ]
    for name in summary.get("mean_below_gate", []) or []:
        sentences.append(
            f"INT8 drift: the running mean agreement with fp32 in {name} is {summary['mean_agreement'][name]:.4f}, "
            f"below the bundle's gate of {gate}: this bundle's INT8 verdict does not hold on these scans; "
            "segment them with --precision fp32"
        )
    return sentences


def input_check(
    images: np.ndarray,
    modalities: Sequence[str],
    spacing: Sequence[float],
    reference: dict[str, Any] | None,
    acquired_spacing: Sequence[float] | None = None,
) -> dict[str, Any] | None:
    """The case's out-of-distribution score against the bundle's recorded inputs; None without a record.

    ``spacing`` is the grid of ``images``; ``acquired_spacing`` (sorted, the coarsest modality's)
    replaces it in the spacing figures, so that a thick-slice scan resampled to 1 mm still shows.
    """
    if not reference:
        return None
    try:
        statistics = case_statistics(images, modalities, spacing)
    except ValueError as error:  # zero everywhere: the loader refuses such images before this
        return {"score": None, "worst": None, "flags": [f"no input statistics: {error}"], "scores": {}}
    if acquired_spacing is not None:
        for axis, step in zip("xyz", sorted(acquired_spacing), strict=True):
            statistics["figures"][f"spacing.{axis}"] = round(float(step), 5)
    return ood_score(statistics, reference)


def case_flags(qa: dict[str, Any] | None, ood: dict[str, Any] | None, audit: dict[str, Any] | None) -> list[str]:
    """Every reason to review a case: QA outliers, input unlike the bundle's data, an audit below the gate."""
    flags = list(qa_flags(qa)) if qa and qa.get("volumes_ml") else []
    flags += [f"input unlike the bundle's data: {flag}" for flag in (ood or {}).get("flags") or []]
    if audit and not audit["passed"]:
        worst = min(audit["agreement"], key=audit["agreement"].get)
        flags.append(f"INT8 agrees with fp32 {audit['agreement'][worst]:.3f} in {worst} (< gate {audit['gate']})")
    return flags
