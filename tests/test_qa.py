"""Per-case QA figures and flags (latup_edge.runtime.qa) on small synthetic class maps."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from latup_edge.runtime import qa
from latup_edge.runtime.qa import (
    QALimits,
    case_qa,
    component_counts,
    isolated_et_components,
    low_confidence_fraction,
    max_softmax,
    qa_flags,
    region_volumes_ml,
)


def _tumour(shape=(24, 24, 24)) -> np.ndarray:
    classes = np.zeros(shape, np.uint8)
    classes[4:16, 4:16, 4:16] = 2
    classes[7:13, 7:13, 7:13] = 3
    classes[9:11, 9:11, 9:11] = 1
    return classes


def test_the_doctests_pass():
    assert doctest.testmod(qa).failed == 0


def test_volumes_follow_the_project_regions_and_the_spacing():
    classes = _tumour()
    volumes = region_volumes_ml(classes, (1.0, 1.0, 1.0))
    assert volumes == {"WT": 12**3 / 1000, "TC": 6**3 / 1000, "ET": (6**3 - 8) / 1000}
    assert region_volumes_ml(classes, (1.0, 1.0, 3.0))["WT"] == pytest.approx(3 * volumes["WT"])


def test_components_are_26_connected():
    classes = np.zeros((10, 10, 10), np.uint8)
    classes[2, 2, 2] = classes[3, 3, 3] = 2  # corner neighbours: one component with 26-connectivity
    classes[7, 7, 7] = 3
    assert component_counts(classes) == {"WT": 2, "TC": 1, "ET": 1}


def test_an_et_island_away_from_core_and_oedema_is_counted():
    classes = _tumour()
    assert isolated_et_components(classes) == 0
    classes[20:22, 20:22, 20:22] = 3
    assert isolated_et_components(classes) == 1
    assert any("ET island" in flag for flag in qa_flags(case_qa(classes, (1, 1, 1))))


def test_low_confidence_fraction_from_probabilities_and_from_logits_agree():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, size=(4, 24, 24, 24)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    np.testing.assert_allclose(max_softmax(logits, chunk_voxels=100), probabilities.max(axis=0), rtol=1e-5)
    classes = _tumour()
    expected = float((probabilities.max(axis=0)[classes > 0] < 0.5).mean())
    assert low_confidence_fraction(probabilities, classes) == pytest.approx(expected)
    assert low_confidence_fraction(logits, classes, logits=True) == pytest.approx(expected)
    assert low_confidence_fraction(probabilities, np.zeros_like(classes)) == 0.0


def test_flags_name_each_outlier_and_none_for_an_ordinary_case():
    classes = np.zeros((80, 80, 80), np.uint8)
    classes[10:50, 10:50, 10:50] = 2  # 64 mL
    classes[20:40, 20:40, 20:40] = 3
    confident = np.zeros((4, 80, 80, 80), np.float32)
    confident[0] = 1.0
    assert qa_flags(case_qa(classes, (1, 1, 1), confident)) == []
    assert qa_flags(case_qa(np.zeros_like(classes), (1, 1, 1))) == ["no tumour found"]
    assert qa_flags(case_qa(classes, (2, 2, 2)), QALimits(max_wt_ml=400))[0].startswith("very large tumour")
    unsure = np.full((4, 80, 80, 80), 0.25, np.float32)
    assert any(flag.startswith("low confidence") for flag in qa_flags(case_qa(classes, (1, 1, 1), unsure)))
    spots = classes.copy()
    for i in range(4):
        spots[60 + 4 * i, 70, 70] = 2
    assert any("separate tumour components" in flag for flag in qa_flags(case_qa(spots, (1, 1, 1))))
    lost = case_qa(classes, (1, 1, 1)) | {"removed_component_ml": 70.0, "largest_kept_ml": 64.0}
    assert any(flag.startswith("post-processing removed a 70.0 mL") for flag in qa_flags(lost))
    smaller = case_qa(classes, (1, 1, 1)) | {"removed_component_ml": 30.0, "largest_kept_ml": 64.0}
    assert qa_flags(smaller) == []
    enhancing_removed = case_qa(classes, (1, 1, 1)) | {"removed_et_ml": 1.7, "kept_et_ml": 0.03}
    assert any(flag.startswith("post-processing removed a component holding 1.7 mL of ET") for flag in
               qa_flags(enhancing_removed))  # fmt: skip
    assert qa_flags(case_qa(classes, (1, 1, 1)) | {"removed_et_ml": 1.7, "kept_et_ml": 2.0}) == []  # less than kept
    assert qa_flags(case_qa(classes, (1, 1, 1)) | {"removed_et_ml": 0.1, "kept_et_ml": 0.0}) == []  # a speck


def test_a_tumour_with_almost_no_core_is_flagged_unless_the_limit_is_off():
    coreless = np.zeros((80, 80, 80), np.uint8)
    coreless[10:50, 10:50, 10:50] = 2  # 64 mL of "oedema"
    coreless[28:31, 28:31, 28:31] = 1  # 27 core voxels: 0.04 % of it
    cored = coreless.copy()
    cored[20:40, 20:40, 20:40] = 3  # 8 mL: an eighth
    limits = QALimits()  # on by default since it was judged (docs/PREREGISTERED.md)
    assert qa_flags(case_qa(coreless, (1, 1, 1)), QALimits(min_core_share=0)) == []
    flags = qa_flags(case_qa(coreless, (1, 1, 1)), limits)
    assert len(flags) == 1 and flags[0].startswith("almost no tumour core (TC 0.0 mL, 0.0% of WT 64 mL)")
    assert qa_flags(case_qa(cored, (1, 1, 1)), limits) == []
    tiny = np.zeros_like(coreless)
    tiny[10:20, 10:20, 10:20] = 2  # 1 mL: "very small tumour" speaks for it, not this flag
    assert qa_flags(case_qa(tiny, (1, 1, 1)), limits) == ["very small tumour (WT 1.0 mL < 2 mL)"]
