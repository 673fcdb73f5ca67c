"""Trust in a deployed bundle, case by case: the INT8 drift audit, input checks and QA flags.

The drift gate judges a bundle's INT8 once, at build time, on its own held-out split; a clinic's
unlabelled scans may differ. ``AuditPlan`` picks the cases of a run on which the float reference
(fp32, from the same bundle) also runs; ``audit_case`` records their agreement Dice per region with
the default precision, against the bundle's own gate (its ``min_agreement``); ``audit_summary``
gives the run's mean, its cases below the gate and the audit's share of the run's time.
``input_check`` scores a case against the input statistics the bundle recorded at build time
(``latup_edge.runtime.input_stats``); ``t1ce_check`` asks whether the T1 and T1ce files were swapped,
``exchange_check`` whether FLAIR and T1ce, T1 and T2, or FLAIR and T1 were;
``case_flags`` gathers every reason to look at a case.

>>> plan = AuditPlan(every=10)
>>> [index for index in range(30) if plan.chooses(index)]
[9, 19, 29]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latup_edge.data.naming import MODALITY_NAMES
from latup_edge.evaluate.metrics import REGIONS, agreement
from latup_edge.runtime.input_stats import RANK_SAMPLE, case_statistics, ood_score, scaled_ranks
from latup_edge.runtime.qa import ET_CLASS, qa_flags

AUDIT_REFERENCE = "fp32"
# The tumour's voxels in the brain's brightest tenth of either T1 or T1ce: where enhancement shows.
BRIGHT_RANK = 0.9
MIN_BRIGHT_VOXELS = 50
# A second pass flags a swap only where the other file's ET is at least this share of its WT.
MIN_ET_SHARE = 0.05
DEFAULT_MIN_AGREEMENT = 0.99  # the build's default gate, for bundles that do not record theirs
# Swaps found by a second pass, (first, second, reference): in MRI ``first`` correlates with the
# reference more than ``second`` does, so the correlation gap changes sign when the two change places.
EXCHANGES: dict[str, tuple[str, str, str]] = {
    "flair_t1ce": ("flair", "t1ce", "t2"),  # T1ce's white matter is bright where T2's is dark
    "t1_t2": ("t1", "t2", "t1ce"),  # T1 and T1ce share one T1 contrast
    "flair_t1": ("flair", "t1", "t2"),  # FLAIR and T2 share bright grey matter and oedema; T1 runs against T2
}
# The second pass runs where the gap reaches GAP_TRIGGER; it flags a swap where the exchanged files
# leave at most 1/LOW_CONFIDENCE_RATIO of the uncertain tumour, and the case as given has at least
# MIN_LOW_CONFIDENCE. Chosen for FLAIR/T1ce on 29 training-generator phantoms (seed 8100) and used
# unchanged for the others, docs/CLINIC_INPUT.md.
GAP_TRIGGER = -0.1
LOW_CONFIDENCE_RATIO = 2.0
MIN_LOW_CONFIDENCE = 0.002
# A gap this large flags the swap on its own, whatever the second pass says: the largest gap of 48
# correctly named training-generator phantoms (seed 8100; their random tissue gains break orderings
# real MRI keeps) plus 0.3, rounded up to a tenth. Correct independent phantoms stay below -0.1.
GAP_FLAG = {"flair_t1ce": 1.4, "t1_t2": 0.9, "flair_t1": 1.3}


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


def enhancement_sign(t1ce: np.ndarray, t1: np.ndarray, tumour: np.ndarray) -> float | None:
    """The mean of (rank in T1ce - rank in T1) over the ``tumour``'s voxels that are in the brain's brightest
    tenth of either image (ranks 0-1 over the brain): positive where the tumour enhances, negative where the
    "T1" file is the one that enhances; None with fewer than 50 such voxels (nothing bright: no enhancement).
    Ranks are taken on every k-th brain voxel, at most ``RANK_SAMPLE`` of them (as the input statistics are)."""
    brain = (t1ce != 0) | (t1 != 0)
    stride = max(1, int(np.count_nonzero(brain)) // RANK_SAMPLE)
    in_tumour = tumour[brain][::stride]
    ranks_t1ce, ranks_t1 = scaled_ranks(t1ce[brain][::stride]), scaled_ranks(t1[brain][::stride])
    bright = in_tumour & (np.maximum(ranks_t1ce, ranks_t1) >= BRIGHT_RANK)
    if np.count_nonzero(bright) < MIN_BRIGHT_VOXELS:
        return None
    return float(np.mean(ranks_t1ce[bright] - ranks_t1[bright]))


def t1ce_check(
    images: np.ndarray,
    modalities: Sequence[str],
    classes: np.ndarray,
    t1: np.ndarray | None,
    predict: Callable[[np.ndarray], np.ndarray],
    voxel_ml: float = 0.001,
    why_no_t1: str | None = None,
) -> dict[str, Any] | None:
    """Were the T1 and T1ce files swapped? None where nothing was found to check (no tumour, no T1ce channel).

    ``t1`` is the case's T1 on the same grid as ``images`` (None: not available, noted with ``why_no_t1``). When the
    tumour's brightest voxels are brighter in T1 than in T1ce (``enhancement_sign`` < 0) the network
    runs again (``predict``: images -> classes) with T1 in T1ce's place; ``swapped`` is true when that
    finds at least twice the ET, and ET at least ``MIN_ET_SHARE`` of its WT: the other file is the
    post-contrast one. Correct files cost one rank comparison; the second pass runs only on a negative sign.
    """
    wt, et = int(np.count_nonzero(classes)), int(np.count_nonzero(classes == ET_CLASS))
    if "t1ce" not in modalities or not wt:
        return None
    if t1 is None:
        return {"enhancement": None, "swapped": False, "note": f"{why_no_t1 or 'no T1'}: not checked"}
    channel = list(modalities).index("t1ce")
    sign = enhancement_sign(images[channel], t1, classes > 0)
    check: dict[str, Any] = {"enhancement": None if sign is None else round(sign, 4), "swapped": False}
    if sign is None or sign >= 0:
        return check
    swapped_images = images.copy()
    swapped_images[channel] = t1
    other = predict(swapped_images)
    other_et = int(np.count_nonzero(other == ET_CLASS))
    swapped = other_et >= max(2 * et, 1) and other_et >= MIN_ET_SHARE * max(int(np.count_nonzero(other)), 1)
    return check | {"et_ml": round(et * voxel_ml, 3), "et_ml_with_t1_as_t1ce": round(other_et * voxel_ml, 3),
                    "swapped": bool(swapped)}  # fmt: skip


def correlation_gap(volumes: Mapping[str, np.ndarray], first: str, second: str, reference: str) -> float:
    """corr(second, reference) - corr(first, reference): rank correlations over the brain (voxels nonzero
    in all three). Negative in MRI for each of ``EXCHANGES``; positive when ``first`` and ``second``
    change places, exactly. Ranks on every k-th voxel, at most ``RANK_SAMPLE`` of them."""
    brain = np.all([volumes[key] != 0 for key in (first, second, reference)], axis=0)
    stride = max(1, int(np.count_nonzero(brain)) // RANK_SAMPLE)
    ranked = {key: scaled_ranks(volumes[key][brain][::stride]) for key in (first, second, reference)}
    return float(
        np.corrcoef(ranked[second], ranked[reference])[0, 1] - np.corrcoef(ranked[first], ranked[reference])[0, 1]
    )


def exchange_check(
    name: str,
    volumes: Mapping[str, np.ndarray],
    modalities: Sequence[str],
    classes: np.ndarray,
    low_confidence: float | None,
    predict: Callable[[np.ndarray], Any],
) -> dict[str, Any] | None:
    """Were the two files of ``EXCHANGES[name]`` swapped? None where there is nothing to check (no tumour,
    a volume missing, neither file a model input).

    ``volumes``: the case's modalities on the model grid by name (the model's ``modalities`` and, where
    read, T1). ``correlation_gap`` costs rank correlations; where it reaches ``GAP_TRIGGER`` the network
    runs again (``predict``: images -> a Prediction) with the two exchanged, and ``swapped`` is true when
    the case as given (``low_confidence``: its fraction of tumour with top softmax under 0.5) is at least
    ``LOW_CONFIDENCE_RATIO`` times as uncertain as the exchanged one, and at least ``MIN_LOW_CONFIDENCE``,
    or when the gap reaches ``GAP_FLAG`` whatever the second pass found.
    """
    first, second, reference = EXCHANGES[name]
    if not all(key in volumes for key in EXCHANGES[name]) or not {first, second} & set(modalities):
        return None
    if not np.any(classes) or low_confidence is None:
        return None
    gap = correlation_gap(volumes, first, second, reference)
    check: dict[str, Any] = {"correlation_gap": round(gap, 4), "swapped": False}
    if gap < GAP_TRIGGER:
        return check
    exchanged_key = {first: second, second: first}
    exchanged_images = np.stack([volumes[exchanged_key.get(key, key)] for key in modalities])
    exchanged = predict(exchanged_images).low_confidence_fraction or 0.0
    surer = low_confidence >= max(LOW_CONFIDENCE_RATIO * exchanged, MIN_LOW_CONFIDENCE)
    by = "uncertainty" if surer else "correlation gap" if gap >= GAP_FLAG[name] else None
    return check | {"low_confidence": round(low_confidence, 5), "low_confidence_exchanged": round(exchanged, 5),
                    "swapped": by is not None, "by": by}  # fmt: skip


def _pair(name: str) -> str:
    first, second, _ = EXCHANGES[name]
    return f"{MODALITY_NAMES[first]} and {MODALITY_NAMES[second]}"


def _evidence(name: str, check: dict[str, Any], whose: str) -> str:
    """Why an exchange check flagged: the second pass's uncertainty, or a correlation gap MRI never has."""
    if check.get("by") == "correlation gap":
        first, second, reference = (MODALITY_NAMES[key] for key in EXCHANGES[name])
        return (
            f"the file named {second} matches {reference} better than the file named {first} by "
            f"{check['correlation_gap']:+.2f} in rank correlation, which MRI has the other way round"
        )
    return (
        f"{check['low_confidence']:.2%} of {whose} tumour is uncertain as given, "
        f"{check['low_confidence_exchanged']:.2%} with the two exchanged"
    )


def swap_warnings(entries: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per case and pair of files that look swapped (T1/T1ce, or one of ``EXCHANGES``):
    its labels are likely wrong."""
    sentences = []
    for entry in entries:
        if (check := entry.get("t1ce_check")) and check.get("swapped"):
            sentences.append(
                f"case {entry['case_id']}: its T1 and T1ce files look swapped (ET {check['et_ml']:.1f} mL as given, "
                f"{check['et_ml_with_t1_as_t1ce']:.1f} mL with T1 as T1ce), so its TC and ET are likely wrong: "
                "check the files and segment it again"
            )
        for name, check in (entry.get("exchange_checks") or {}).items():
            if check.get("swapped"):
                sentences.append(
                    f"case {entry['case_id']}: its {_pair(name)} files look swapped ({_evidence(name, check, 'its')}), "
                    "so its labels are likely wrong: check the files and segment it again"
                )
    return sentences


def case_flags(
    qa: dict[str, Any] | None,
    ood: dict[str, Any] | None,
    audit: dict[str, Any] | None,
    t1ce: dict[str, Any] | None = None,
    exchanges: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Every reason to review a case: QA outliers, input unlike the bundle's data, an audit below the gate,
    files that look swapped (``t1ce_check``, ``exchange_check`` by name)."""
    flags = list(qa_flags(qa)) if qa and qa.get("volumes_ml") else []
    for name, check in (exchanges or {}).items():
        if check.get("swapped"):
            flags.append(
                f"{_pair(name)} look swapped: {_evidence(name, check, 'the')}; "
                "check the files and segment the case again"
            )
    if t1ce and t1ce.get("swapped"):
        flags.append(
            f"T1 and T1ce look swapped: with the T1 file as T1ce the network finds "
            f"{t1ce['et_ml_with_t1_as_t1ce']:.1f} mL of ET, against {t1ce['et_ml']:.1f} mL with the T1ce file; "
            "check the files and segment the case again"
        )
    flags += [f"input unlike the bundle's data: {flag}" for flag in (ood or {}).get("flags") or []]
    if audit and not audit["passed"]:
        worst = min(audit["agreement"], key=audit["agreement"].get)
        flags.append(f"INT8 agrees with fp32 {audit['agreement'][worst]:.3f} in {worst} (< gate {audit['gate']})")
    return flags
