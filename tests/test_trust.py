"""runtime.trust: which cases are audited, what an audit and a run's audit say, and the case flags."""

from __future__ import annotations

import numpy as np
import pytest

from latup_edge.runtime.input_stats import case_statistics, reference_statistics
from latup_edge.runtime.trust import (
    AuditPlan,
    audit_case,
    audit_summary,
    audit_warnings,
    bundle_gate,
    case_flags,
    input_check,
)

MODALITIES = ("flair", "t1ce", "t2")


def test_every_kth_case_is_audited():
    assert [i for i in range(25) if AuditPlan(every=10).chooses(i)] == [9, 19]
    assert [i for i in range(5) if AuditPlan(every=2).chooses(i)] == [1, 3]
    assert not AuditPlan().active and not any(AuditPlan().chooses(i) for i in range(50))


def test_a_random_fraction_is_seeded_and_about_its_size():
    chosen = [i for i in range(2000) if AuditPlan(fraction=0.1, seed=3).chooses(i)]
    assert chosen == [i for i in range(2000) if AuditPlan(fraction=0.1, seed=3).chooses(i)]
    assert chosen != [i for i in range(2000) if AuditPlan(fraction=0.1, seed=4).chooses(i)]
    assert 150 < len(chosen) < 250


@pytest.mark.parametrize(("every", "fraction"), [(-1, 0.0), (0, 1.5), (0, -0.1)])
def test_impossible_plans_are_refused(every, fraction):
    with pytest.raises(ValueError, match="--audit"):
        AuditPlan(every=every, fraction=fraction)


def classes_with_tumour(shift: int = 0) -> np.ndarray:
    classes = np.zeros((40, 40, 40), np.uint8)
    classes[10 + shift : 30, 10:30, 10:30] = 2
    classes[15:25, 15:25, 15:25] = 1
    classes[18:22, 18:22, 18:22] = 3
    return classes


def test_an_audit_below_the_gate_is_a_case_flag_and_a_warning():
    same = audit_case(classes_with_tumour(), classes_with_tumour(), gate=0.99, seconds=2.0)
    assert same["passed"] and same["agreement"] == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    drifted = audit_case(classes_with_tumour(3), classes_with_tumour(), gate=0.99, seconds=2.0)
    assert not drifted["passed"] and drifted["below_gate"] == ["WT"] and drifted["agreement"]["WT"] < 0.99
    assert case_flags(None, None, drifted) == [
        f"INT8 agrees with fp32 {drifted['agreement']['WT']:.3f} in WT (< gate 0.99)"
    ]

    entries = [{"case_id": "a", "audit": same}, {"case_id": "b", "audit": None}, {"case_id": "c", "audit": drifted}]
    summary = audit_summary(entries, AuditPlan(every=2), gate=0.99, run_seconds=40.0)
    assert summary["cases"] == 2 and summary["seconds"] == 4.0 and summary["fraction_of_run_time"] == 0.1
    assert summary["below_gate"] == {"c": ["WT"]} and not summary["passed"]
    assert summary["mean_agreement"]["WT"] == pytest.approx((1 + drifted["agreement"]["WT"]) / 2, abs=1e-5)
    warnings = audit_warnings(summary)
    assert warnings[0].startswith("INT8 drift: case c agrees with fp32 below the bundle's gate of 0.99 in WT")
    assert any("running mean agreement with fp32 in WT" in w for w in warnings)


def test_a_run_whose_audits_hold_warns_of_nothing():
    same = audit_case(classes_with_tumour(), classes_with_tumour(), gate=0.99, seconds=1.0)
    summary = audit_summary([{"case_id": "a", "audit": same}], AuditPlan(every=1), 0.99, 10.0)
    assert summary["passed"] and audit_warnings(summary) == []
    assert audit_summary([], AuditPlan(every=1), 0.99, 10.0)["passed"] is None


def test_the_gate_is_the_bundles_own():
    assert bundle_gate({"build": {"settings": {"min_agreement": 0.995}}}) == 0.995
    assert bundle_gate({}) == 0.99 and bundle_gate(None) == 0.99


def brain_images(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = np.zeros((3, 48, 56, 44), np.float32)
    images[:, 6:42, 6:50, 6:38] = rng.gamma(4.0, 50.0, (3, 36, 44, 32))
    images[0, 20:30, 20:30, 15:25] *= 3  # oedema, bright on FLAIR and T2
    images[2, 20:30, 20:30, 15:25] *= 2
    images[2, 10:14, 25:35, 15:25] *= 5  # CSF: brightest on T2, dark on FLAIR
    images[0, 10:14, 25:35, 15:25] *= 0.2
    return images


def test_a_thick_slice_acquisition_is_flagged_though_resampled_to_1mm():
    reference = reference_statistics([case_statistics(brain_images(s), MODALITIES, (1, 1, 1)) for s in range(6)])
    images = brain_images(10)
    assert input_check(images, MODALITIES, (1, 1, 1), None) is None  # a bundle without a record
    ordinary = input_check(images, MODALITIES, (1, 1, 1), reference)
    assert ordinary["flags"] == []
    thick = input_check(images, MODALITIES, (1, 1, 1), reference, acquired_spacing=(5.0, 0.9, 0.9))
    assert any(flag.startswith("spacing.z 5 above") for flag in thick["flags"])
    assert case_flags(None, thick, None)[0].startswith("input unlike the bundle's data: spacing.z 5")
