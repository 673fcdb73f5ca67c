"""`latup-edge drift`: per-case rows for every precision and region, verdicts, and a self-contained report."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from test_benchmark import cut_small, make_narrow_bundle
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.data.cases import discover_cases
from latup_edge.data.preprocess import Crop
from latup_edge.evaluate.drift import PreparedCase, prepare_case
from latup_edge.evaluate.metrics import region_metrics
from latup_edge.evaluate.report import case_slice, drift_tables
from latup_edge.runtime.bundle import load_bundle
from latup_edge.runtime.drift import run_drift
from latup_edge.runtime.openvino_backend import cpu_supports_bf16
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, delivered_labels
from latup_edge.runtime.volume import box_forward

runner = CliRunner()
REGIONS = ("WT", "TC", "ET")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_narrow_bundle(tmp_path_factory.mktemp("drift"))


@pytest.fixture(scope="module")
def small_cases(two_phantoms, tmp_path_factory):
    return cut_small(two_phantoms, tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def drifted(bundle, small_cases, tmp_path_factory):
    """One CLI run with --json and --report on the two phantoms (cut small): the result and the report folder."""
    folder = tmp_path_factory.mktemp("report") / "drift-report"
    arguments = ["drift", str(small_cases), "--bundle", str(bundle), "--threads", "1", "--json", "--report"]
    result = runner.invoke(app, [*arguments, str(folder)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), folder


def test_every_case_precision_and_region_is_scored(drifted):
    result, _ = drifted
    precisions = {"fp32", "int8"} | ({"bf16"} if cpu_supports_bf16() else set())
    assert set(result["summary"]) == precisions and len(result["cases"]) == 2
    for entry in result["cases"].values():
        assert set(entry["precisions"]) == precisions and set(entry["seconds"]) == precisions
        for name, scores in entry["precisions"].items():
            assert set(scores["metrics"]) == set(REGIONS)
            if name != "fp32":
                for region in REGIONS:
                    expected = (
                        scores["metrics"][region]["dice"] - entry["precisions"]["fp32"]["metrics"][region]["dice"]
                    )
                    assert scores["difference"][region]["dice"] == pytest.approx(expected)
    assert result["summary"]["fp32"]["worst_ratio"] == 1.0 and result["summary"]["fp32"]["verdicts"]["99.9"]
    assert result["summary"]["fp32"]["labels"] == "post-processed"
    assert result["postprocessing"] == DEFAULT_POSTPROCESSING.to_dict()
    for entry in result["cases"].values():  # the network's argmax agreement is kept for the record
        assert all("raw_agreement" in scores for scores in entry["precisions"].values())
    assert result["precisions"]["fp32"]["resolved"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_the_fp32_scores_are_those_of_the_bundles_fp32_model_on_each_case(drifted, bundle, small_cases):
    result, _ = drifted
    loaded = load_bundle(bundle)
    fp32 = box_forward(loaded.model("fp32", threads=1))  # each box run as segment runs it by default
    for case in discover_cases(small_cases):
        prepared = prepare_case(case, normalization=loaded.normalization)
        # ... and scored as segment writes them: post-processed.
        delivered = prepared.classes(fp32(prepared.inputs), delivered_labels(DEFAULT_POSTPROCESSING))
        expected = region_metrics(delivered, prepared.truth, prepared.spacing)
        recorded = result["cases"][case.case_id]["precisions"]["fp32"]["metrics"]
        for region in REGIONS:
            assert recorded[region] == pytest.approx(expected[region])


def test_tables_have_a_row_per_case_precision_and_region(drifted):
    per_case, regions, verdicts = drift_tables(drifted[0])
    reduced = len(drifted[0]["summary"]) - 1
    assert len(per_case.rows) == 2 * reduced * 3 and len(regions.rows) == reduced * 3
    assert len(verdicts.rows) == reduced + 1
    assert all(len(row) == len(table.columns) for table in (per_case, regions, verdicts) for row in table.rows)


def test_the_report_is_self_contained_with_a_png_per_case_and_a_latency_chart(drifted):
    result, folder = drifted
    names = {path.name for path in folder.iterdir()}
    assert names == {"report.md", "report.html", "latency.png"} | {f"{case}.png" for case in result["cases"]}
    page = (folder / "report.html").read_text()
    assert "http" not in page and "<script" not in page and "<link" not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(result["cases"]) + 1
    markdown = (folder / "report.md").read_text()
    assert all(f"({case}.png)" in markdown for case in result["cases"]) and "(latency.png)" in markdown
    for case in result["cases"]:
        with Image.open(folder / f"{case}.png") as image:
            assert image.format == "PNG" and image.width > 4 * image.height / 2  # five panels side by side


def test_a_case_without_labels_gets_agreement_only(bundle, small_cases, tmp_path):
    case = sorted(small_cases.iterdir())[0]
    unlabelled = tmp_path / case.name
    unlabelled.mkdir()
    for file in case.iterdir():
        if "_seg" not in file.name:
            (unlabelled / file.name).symlink_to(file)
    result = run_drift(tmp_path, bundle, ["int8"], threads=1, report=tmp_path / "report")
    scores = result["cases"][case.name]["precisions"]
    assert set(scores) == {"fp32", "int8"} and set(scores["int8"]) == {"agreement", "raw_agreement"}
    assert result["summary"]["int8"]["basis"] == "agreement"
    assert (tmp_path / "report" / f"{case.name}.png").is_file()
    per_case = drift_tables(result)[0]
    assert all(row[3:8] == ("-",) * 5 for row in per_case.rows)


def test_an_unknown_precision_is_refused_in_one_sentence(bundle, small_cases):
    result = runner.invoke(app, ["drift", str(small_cases), "--bundle", str(bundle), "--precisions", "fp8"])
    assert result.exit_code == 1 and "unknown precisions" in result.output and "Traceback" not in result.output


def test_the_overlay_shows_a_zscored_brain_whole():
    inputs = np.zeros((1, 3, 16, 16, 8), np.float32)
    inputs[:, :, 2:14, 3:13, :] = np.random.default_rng(0).normal(size=(1, 3, 12, 10, 8))
    case = PreparedCase("z", inputs, Crop((16, 16, 8), (0, 0, 0), (16, 16, 8)), None, (1.0, 1.0, 1.0))
    scores = np.zeros((1, 4, 16, 16, 8), np.float32)
    flair = case_slice(case, scores, scores, "int8").flair  # rows Y, columns X
    brain = np.zeros((16, 16), bool)
    brain[3:13, 2:14] = True
    # Without the shift the negative half of the z-scores would show as background.
    assert (flair[brain] > 0).mean() > 0.95 and not flair[~brain].any()
