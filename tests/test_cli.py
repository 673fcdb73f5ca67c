"""The command line: JSON output, the phantom acceptance check, evaluation, clear errors."""

import json

import numpy as np
import torch
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.data.cases import discover_cases, load_case_labels
from latup_edge.errors import LatupError
from latup_edge.models import LATUPNet, LATUPNetConfig
from latup_edge.models.checkpoint import save_checkpoint

runner = CliRunner()


def test_model_info_json_gives_the_papers_parameters_and_gmac():
    result = runner.invoke(app, ["model-info", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["parameters"] == 3_069_060
    assert abs(info["gmac"] - 789) / 789 < 0.02
    assert info["input_size"] == [3, 128, 128, 128]


def test_model_info_refuses_a_size_not_divisible_by_8():
    result = runner.invoke(app, ["model-info", "--size", "100", "128", "128"])
    assert result.exit_code == 1
    assert "divisible by 8" in result.output and "Traceback" not in result.output


def test_phantom_2023_cases_are_discovered_with_every_label(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["phantom", str(out), "--n", "3", "--seed", "7", "--naming", "2023", "--randomise", "none"]
    )
    assert result.exit_code == 0, result.output
    cases = discover_cases(out)
    assert len(cases) == 3
    for case in cases:
        assert set(case.files) == {"t1", "t1ce", "t2", "flair"} and case.seg is not None
        assert case.naming == "2023"
        classes, convention = load_case_labels(case)
        assert convention == "2023" and set(np.unique(classes)) == {0, 1, 2, 3}


def test_phantom_refuses_a_non_enhancing_share_it_would_ignore(tmp_path):
    for extra in (["--randomise", "none"], ["--generator", "independent"], ["--generator", "blind"]):
        out = tmp_path / extra[-1]
        result = runner.invoke(app, ["phantom", str(out), "--n", "1", "--non-enhancing", "1", *extra])
        assert result.exit_code == 2 and "--non-enhancing" in result.output
        assert not out.exists()


def test_phantom_writes_blind_cases_that_load_as_brats_2021(tmp_path):
    out = tmp_path / "blind"
    arguments = ["phantom", str(out), "--n", "1", "--seed", "3", "--start", "4", "--generator", "blind"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    (case,) = discover_cases(out)
    assert case.case_id == "BraTS2021_00004" and set(case.files) == {"t1", "t1ce", "t2", "flair"}
    classes, convention = load_case_labels(case)
    assert convention == "2021" and classes.any() and set(np.unique(classes)) <= {0, 1, 2, 3}


def test_evaluate_reports_every_case_and_region(two_phantoms, tmp_path):
    torch.manual_seed(0)
    weights = save_checkpoint(LATUPNet(LATUPNetConfig(base_filters=4)), tmp_path / "narrow")
    result = runner.invoke(app, ["evaluate", str(two_phantoms), "--weights", str(weights), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["sets"][str(two_phantoms)]
    assert len(report["cases"]) == 2 and not report["failures"]
    for metrics in report["cases"].values():
        assert set(metrics) == {"WT", "TC", "ET"}
        assert all(0 <= m["dice"] <= 1 and m["hd95"] >= 0 for m in metrics.values())
    assert report["summary"]["WT"]["dice"]["n"] == 2


def test_evaluate_in_openvino_matches_pytorch_on_several_folders(two_phantoms, tmp_path):
    torch.manual_seed(0)
    weights = save_checkpoint(LATUPNet(LATUPNetConfig(base_filters=4, statistics="brain")), tmp_path / "narrow")
    reports = {}
    for backend in ("torch", "openvino"):
        arguments = ["evaluate", str(two_phantoms), str(two_phantoms), "--weights", str(weights), "--json"]
        result = runner.invoke(app, [*arguments, "--backend", backend])
        assert result.exit_code == 0, result.output
        reports[backend] = json.loads(result.stdout)
    assert reports["openvino"]["backend"] == "openvino" and len(reports["openvino"]["sets"]) == 1  # one folder
    torch_wt = reports["torch"]["sets"][str(two_phantoms)]["summary"]["WT"]["dice"]["mean"]
    openvino_wt = reports["openvino"]["sets"][str(two_phantoms)]["summary"]["WT"]["dice"]["mean"]
    assert abs(torch_wt - openvino_wt) < 1e-3


def test_evaluate_runs_the_tiling_asked_for_and_says_which(two_phantoms, tmp_path, monkeypatch):
    from latup_edge.runtime import evaluation

    torch.manual_seed(0)
    weights = save_checkpoint(LATUPNet(LATUPNetConfig(base_filters=4, statistics="brain")), tmp_path / "narrow")
    tilings = []
    real = evaluation.predict_classes
    monkeypatch.setattr(
        evaluation,
        "predict_classes",
        lambda images, forward, tiling, **kw: tilings.append(tiling) or real(images, forward, tiling, **kw),
    )
    for tiling in ("whole", "sliding"):
        result = runner.invoke(
            app, ["evaluate", str(two_phantoms), "--weights", str(weights), "--tiling", tiling, "--json"]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["tiling"] == tiling
    assert tilings == ["whole", "whole", "sliding", "sliding"]
    result = runner.invoke(app, ["evaluate", str(two_phantoms), "--weights", str(weights), "--tiling", "tiles"])
    assert result.exit_code == 2 and "tiles" in result.output


def test_evaluate_refuses_a_broken_checkpoint_in_one_sentence(two_phantoms, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    result = runner.invoke(app, ["evaluate", str(two_phantoms), "--weights", str(broken)])
    assert result.exit_code == 1
    assert "not a readable safetensors checkpoint" in result.output and "Traceback" not in result.output


def test_a_user_error_is_its_own_sentence(monkeypatch):
    import latup_edge.models.cost as cost

    def refuse(*args, **kwargs):
        raise LatupError("model.json is not a LATUP-Net config: export it again")

    monkeypatch.setattr(cost, "model_cost", refuse)
    result = runner.invoke(app, ["model-info", "--base-filters", "4"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: model.json is not a LATUP-Net config: export it again" in result.output
    assert "LatupError" not in result.output and "unexpected" not in result.output


def test_a_bug_is_not_passed_off_as_a_user_error(monkeypatch):
    import latup_edge.models.cost as cost

    def buggy(*args, **kwargs):
        raise ValueError("operands could not be broadcast together\nwith shapes (3,) (4,)")

    monkeypatch.setattr(cost, "model_cost", buggy)
    result = runner.invoke(app, ["model-info", "--base-filters", "4"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: unexpected ValueError: operands could not be broadcast together" in result.output
    assert "with shapes" not in result.output and "--verbose for the traceback" in result.output
    verbose = runner.invoke(app, ["--verbose", "model-info", "--base-filters", "4"])
    assert verbose.exit_code == 1 and "Traceback" in verbose.output
