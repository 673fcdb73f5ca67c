"""benchmarks/core_share_flag.py: a missed core is told from a found one, and the candidate's hits and false
alarms are counted on the labels segment writes."""

import numpy as np
from conftest import benchmark_script


def _script():
    return benchmark_script("core_share_flag")


def _case(predicted_core: bool) -> dict:
    truth = np.zeros((60, 60, 60), np.uint8)
    truth[10:40, 10:40, 10:40] = 2
    truth[18:32, 18:32, 18:32] = 1  # a core without enhancement
    raw = truth.copy()
    if not predicted_core:
        raw[raw == 1] = 2  # the core read as oedema
    brain = np.zeros(truth.shape, bool)
    brain[2:58, 2:58, 2:58] = True
    return {"raw": raw, "truth": truth, "brain": brain}


def test_a_core_read_as_oedema_is_missed_and_flagged_and_a_found_one_is_not():
    script = _script()
    rows = {
        "missed": script.case_row(_case(False), script.CANDIDATE),
        "found": script.case_row(_case(True), script.CANDIDATE),
    }
    assert rows["missed"]["missed_core"] and rows["missed"]["flagged_by_candidate"]
    assert rows["missed"]["tc_ml"] == 0.0 and rows["missed"]["dice"]["WT"] == 1.0
    assert not rows["found"]["missed_core"] and not rows["found"]["flagged_by_candidate"]
    summary = script.summarise(rows)
    assert summary["missed_core"] == ["missed"] and summary["hits"] == ["missed"] and summary["false_alarms"] == []
    assert summary["flagged_by_others"] == []  # no other QA flag names it: why the candidate exists
