"""runtime.trust: which cases are audited, what an audit and a run's audit say, and the case flags."""

from __future__ import annotations

import numpy as np
import pytest

from latup_edge.runtime.input_stats import case_statistics, reference_statistics
from latup_edge.runtime.trust import (
    EXCHANGES,
    GAP_FLAG,
    AuditPlan,
    audit_case,
    audit_summary,
    audit_warnings,
    bundle_gate,
    case_flags,
    correlation_gap,
    enhancement_sign,
    exchange_check,
    input_check,
    swap_warnings,
    t1ce_check,
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


def enhancing_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1ce and T1 of a brain whose tumour has a rim bright in T1ce only; the network's classes, ET missed."""
    rng = np.random.default_rng(0)
    brain = np.zeros((40, 40, 40), bool)
    brain[4:36, 4:36, 4:36] = True
    t1 = np.where(brain, rng.normal(400, 30, brain.shape), 0).astype(np.float32)
    t1ce = t1 * np.float32(1.1)
    t1ce[12:28, 12:28, 12:28] += 600  # the enhancing rim ...
    t1ce[16:24, 16:24, 16:24] -= 600  # ... around a core that does not enhance
    classes = np.zeros(brain.shape, np.uint8)
    classes[10:30, 10:30, 10:30] = 2
    classes[12:28, 12:28, 12:28] = 1
    return t1ce, t1, classes


def test_the_enhancement_sign_says_which_file_enhances():
    t1ce, t1, classes = enhancing_case()
    sign = enhancement_sign(t1ce, t1, classes > 0)
    assert sign > 0.3
    assert enhancement_sign(t1, t1ce, classes > 0) == pytest.approx(-sign)
    assert enhancement_sign(t1, t1, classes > 0) == 0.0
    assert enhancement_sign(t1ce, t1, np.zeros_like(classes, bool)) is None  # no tumour voxel to judge


def with_et(classes: np.ndarray) -> np.ndarray:
    found = classes.copy()
    found[12:28, 12:28, 12:28] = 3
    found[16:24, 16:24, 16:24] = 1
    return found


def test_swapped_t1_and_t1ce_are_found_by_the_networks_second_pass():
    t1ce, t1, classes = enhancing_case()
    swapped = np.stack([t1ce, t1, t1ce])  # T1 in T1ce's channel; the T1 file holds the T1ce image
    seen = []

    def predict(images: np.ndarray) -> np.ndarray:
        seen.append(images)
        return with_et(classes)

    check = t1ce_check(swapped, MODALITIES, classes, t1ce, predict)
    assert check["enhancement"] < 0 and check["swapped"] and check["et_ml"] == 0
    np.testing.assert_array_equal(seen[0][1], t1ce)  # the second pass ran with the T1 file as T1ce
    (flag,) = case_flags(None, None, None, check)
    assert flag.startswith(
        "T1 and T1ce look swapped: with the T1 file as T1ce the network finds 3.6 mL of ET"
    )  # 16^3 - 8^3 voxels
    (warning,) = swap_warnings([{"case_id": "BraTS2021_00007", "t1ce_check": check}, {"case_id": "other"}])
    assert warning.startswith("case BraTS2021_00007: its T1 and T1ce files look swapped (ET 0.0 mL as given, 3.6 mL")


def test_correct_files_are_not_flagged_and_cost_no_second_pass():
    t1ce, t1, classes = enhancing_case()
    images = np.stack([t1ce, t1ce, t1ce])

    def no_second_pass(images: np.ndarray) -> np.ndarray:
        raise AssertionError("the network ran again")

    for found in (with_et(classes), classes):  # ET found, or missed: T1ce enhances either way
        check = t1ce_check(images, MODALITIES, found, t1, no_second_pass)
        assert check["enhancement"] > 0 and not check["swapped"] and case_flags(None, None, None, check) == []
    check = t1ce_check(images, MODALITIES, classes, None, no_second_pass, why_no_t1="no T1 file")
    assert check["note"] == "no T1 file: not checked" and not check["swapped"]
    assert t1ce_check(images, MODALITIES, np.zeros_like(classes), t1, no_second_pass) is None  # no tumour


def test_a_second_pass_that_finds_no_more_et_does_not_flag():
    t1ce, t1, classes = enhancing_case()
    check = t1ce_check(np.stack([t1ce, t1, t1ce]), MODALITIES, classes, t1ce, lambda images: classes)
    assert check["enhancement"] < 0 and not check["swapped"] and check["et_ml_with_t1_as_t1ce"] == 0


def tissue_images() -> np.ndarray:
    """FLAIR, T1ce and T2 of a brain of two tissues: T2 dark where T1ce is bright (white matter), FLAIR neither."""
    rng = np.random.default_rng(1)
    white = np.zeros((40, 40, 40), bool)
    white[:, :20] = True
    flair = rng.normal(500, 40, white.shape)
    t1ce = np.where(white, 700, 400) + rng.normal(0, 30, white.shape)
    t2 = np.where(white, 300, 600) + rng.normal(0, 30, white.shape)
    return np.stack([flair, t1ce, t2]).astype(np.float32)


class Exchanged:
    """The second pass of an exchange check: a Prediction-like answer with a fixed uncertainty."""

    def __init__(self, low_confidence_fraction: float) -> None:
        self.low_confidence_fraction, self.seen = low_confidence_fraction, []

    def __call__(self, images: np.ndarray) -> Exchanged:
        self.seen.append(images)
        return self


def volumes_of(images: np.ndarray, t1: np.ndarray | None = None) -> dict[str, np.ndarray]:
    return dict(zip(MODALITIES, images, strict=True)) | ({} if t1 is None else {"t1": t1})


def t1_like(images: np.ndarray) -> np.ndarray:
    """A T1 of ``tissue_images``' brain: white matter bright, like T1ce's, with its own noise."""
    rng = np.random.default_rng(2)
    return (np.where(images[1] > 550, 650, 420) + rng.normal(0, 30, images[1].shape)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(EXCHANGES))
def test_each_correlation_gap_is_negative_as_given_and_changes_sign_when_its_files_change_places(name):
    images = tissue_images()
    volumes = volumes_of(images, t1_like(images))
    first, second, reference = EXCHANGES[name]
    gap = correlation_gap(volumes, first, second, reference)
    assert gap < -0.3
    exchanged = volumes | {first: volumes[second], second: volumes[first]}
    assert correlation_gap(exchanged, first, second, reference) == pytest.approx(-gap)


def test_swapped_flair_and_t1ce_are_found_by_a_second_pass_that_is_surer_with_them_exchanged():
    images, classes = tissue_images(), classes_with_tumour()
    swapped = volumes_of(images[[1, 0, 2]])
    second = Exchanged(0.001)
    check = exchange_check("flair_t1ce", swapped, MODALITIES, classes, 0.012, second)
    assert check["swapped"] and check["correlation_gap"] > 0
    np.testing.assert_array_equal(second.seen[0], images)  # the second pass saw them exchanged back
    (flag,) = case_flags(None, None, None, None, {"flair_t1ce": check})
    assert flag.startswith("FLAIR and T1ce look swapped: 1.20% of the tumour is uncertain as given, 0.10% with")
    (warning,) = swap_warnings([{"case_id": "c1", "exchange_checks": {"flair_t1ce": check}}, {"case_id": "c2"}])
    assert warning.startswith("case c1: its FLAIR and T1ce files look swapped (1.20% of its tumour is uncertain")
    # As sure either way, or too sure as given to judge: no flag.
    assert not exchange_check("flair_t1ce", swapped, MODALITIES, classes, 0.012, Exchanged(0.008))["swapped"]
    assert not exchange_check("flair_t1ce", swapped, MODALITIES, classes, 0.0015, Exchanged(0.0))["swapped"]


def test_a_t1_given_as_t2_is_found_with_the_t1_file_put_in_t2s_channel(monkeypatch):
    images, classes = tissue_images(), classes_with_tumour()
    t1 = t1_like(images)
    given = volumes_of(np.stack([images[0], images[1], t1]), t1=images[2])  # the T1 and T2 files swapped
    second = Exchanged(0.001)
    check = exchange_check("t1_t2", given, MODALITIES, classes, 0.03, second)
    assert check["swapped"] and check["correlation_gap"] > 0.3
    np.testing.assert_array_equal(second.seen[0], images)  # T2's channel got the file named T1
    (flag,) = case_flags(None, None, None, None, {"t1_t2": check})
    assert flag.startswith("T1 and T2 look swapped: 3.00% of the tumour is uncertain as given")
    # As uncertain either way, but a gap no correctly named MRI has: flagged on the gap alone.
    check = exchange_check("t1_t2", given, MODALITIES, classes, 0.003, Exchanged(0.003))
    assert check["correlation_gap"] >= GAP_FLAG["t1_t2"] and check["swapped"] and check["by"] == "correlation gap"
    (warning,) = swap_warnings([{"case_id": "c3", "exchange_checks": {"t1_t2": check}}])
    assert warning.startswith("case c3: its T1 and T2 files look swapped (the file named T2 matches T1ce better than")
    # Under GAP_FLAG, the second pass alone decides.
    monkeypatch.setitem(GAP_FLAG, "t1_t2", 9.0)
    assert not exchange_check("t1_t2", given, MODALITIES, classes, 0.003, Exchanged(0.003))["swapped"]


def test_correct_files_cost_no_second_pass_and_a_missing_file_no_check():
    def no_second_pass(images: np.ndarray) -> None:
        raise AssertionError("the network ran again")

    images = tissue_images()
    volumes = volumes_of(images, t1_like(images))
    for name in EXCHANGES:
        check = exchange_check(name, volumes, MODALITIES, classes_with_tumour(), 0.05, no_second_pass)
        assert check["correlation_gap"] < -0.3 and not check["swapped"] and "low_confidence" not in check
    no_tumour = np.zeros((40, 40, 40), np.uint8)
    assert exchange_check("flair_t1ce", volumes, MODALITIES, no_tumour, 0.05, no_second_pass) is None
    assert exchange_check("t1_t2", volumes_of(images), MODALITIES, classes_with_tumour(), 0.05, no_second_pass) is None
