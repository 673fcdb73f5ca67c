"""`latup-edge benchmark`: one row per backend x precision, the same columns, resolved settings, JSON."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import narrow_network
from test_quantize import tiny_case
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.deploy.compile import compile_bundle
from latup_edge.deploy.deploy_form import to_deploy_form
from latup_edge.deploy.export import export_onnx
from latup_edge.deploy.quantize import run_engine
from latup_edge.models.checkpoint import save_checkpoint
from latup_edge.runtime.benchmark import BenchmarkError, add_speedups, check_same_network, percentiles, plan_rows
from latup_edge.runtime.bundle import load_bundle
from latup_edge.runtime.openvino_backend import cpu_supports_bf16

runner = CliRunner()
ROW_KEYS = {
    "backend", "precision", "size_mb", "load_ms", "first_ms", "tile_ms", "tile_shapes", "case_ms", "cases_per_minute",
    "peak_rss_mb", "threads", "streams", "resolved_precision", "resolved", "notes", "speedup",
}  # fmt: skip


def make_narrow_bundle(folder: Path) -> Path:
    """A bundle of a narrow LATUP-Net (fp32, bf16 where the CPU has it, int8, fp32.onnx) and its checkpoint.

    compile_bundle directly, on tiny inputs: a full ``build`` would also run its drift gate on phantoms.
    """
    weights = save_checkpoint(narrow_network(), folder / "narrow")
    onnx_path = export_onnx(to_deploy_form(narrow_network()), folder / "narrow.onnx")
    int8 = run_engine("nncf", onnx_path, [tiny_case("c", 0).inputs], folder / "int8")
    extra = {"settings": {"weights": str(weights)}, "verdicts": {"int8": "pass", "bf16": "pass"}}
    shape = (1, 3, 32, 32, 32)
    return compile_bundle(
        onnx_path, int8, folder / "bundle", extra=extra, include_onnx=True, probe_shape=shape, repeats=1
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_narrow_bundle(tmp_path_factory.mktemp("benchmark"))


def cut_small(phantoms: Path, root: Path) -> Path:
    """The phantoms cut to 48x48x40 around their tumours: every code path, a fraction of the time."""
    for case in sorted(phantoms.iterdir()):
        seg = next(case.glob("*_seg.nii.gz"))
        centre = np.argwhere(np.asanyarray(nib.load(seg).dataobj) > 0).mean(axis=0).astype(int)
        box = tuple(slice(c - size // 2, c + size // 2) for c, size in zip(centre, (48, 48, 40), strict=True))
        (root / case.name).mkdir()
        for file in case.iterdir():
            image = nib.load(file)
            nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[box], image.affine), root / case.name / file.name)
    return root


@pytest.fixture(scope="module")
def small_cases(two_phantoms, tmp_path_factory) -> Path:
    return cut_small(two_phantoms, tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def benchmarked(bundle, small_cases, tmp_path_factory):
    """One CLI run over every backend: its stdout JSON and its --out file."""
    out = tmp_path_factory.mktemp("result") / "benchmark.json"
    arguments = ["benchmark", "--bundle", str(bundle), "--cases", str(small_cases), "--repeats", "2", "--warmup", "1"]
    result = runner.invoke(app, [*arguments, "--threads", "1", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), json.loads(out.read_text())


def test_every_backend_and_precision_has_a_row_with_the_same_columns(benchmarked):
    printed, written = benchmarked
    assert printed == written
    expected = {("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "fp32"), ("torch", "fp32")}
    expected |= {("openvino", "bf16")} if cpu_supports_bf16() else set()
    assert {(row["backend"], row["precision"]) for row in printed["rows"]} == expected
    assert not printed["skipped"]
    assert all(set(row) == ROW_KEYS for row in printed["rows"])
    assert (printed["warmup"], printed["repeats"], len(printed["cases"])) == (1, 2, 2)


def test_numbers_are_positive_and_every_timed_pass_is_counted(benchmarked):
    for row in benchmarked[0]["rows"]:
        assert min(row["size_mb"], row["load_ms"], row["first_ms"], row["cases_per_minute"], row["peak_rss_mb"]) > 0
        for times in (row["tile_ms"], row["case_ms"]):
            assert times["p50"] > 0 and times["n"] == 4  # 2 cases x 2 repeats


def test_percentiles_interpolate_linearly_between_the_samples():
    # Sorted 10..50: p50 is the middle sample; p90 and p99 lie 60 % and 96 % of the way from 40 to 50.
    assert percentiles([50, 10, 40, 20, 30]) == pytest.approx({"p50": 30.0, "p90": 46.0, "p99": 49.6, "n": 5})


def test_resolved_settings_and_speedups_are_reported(benchmarked):
    rows = {(row["backend"], row["precision"]): row for row in benchmarked[0]["rows"]}
    for row in rows.values():
        assert row["threads"] == 1 and row["streams"] == 1 and row["resolved_precision"]
    assert rows["openvino", "fp32"]["resolved"]["openvino"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert rows["openvino", "fp32"]["resolved_precision"] == "f32"
    if ("openvino", "bf16") in rows:
        assert rows["openvino", "bf16"]["resolved_precision"] == "bf16"
    assert rows["torch", "fp32"]["speedup"] == {"tile_ms": 1.0, "case_ms": 1.0}
    ort = rows["onnxruntime", "fp32"]
    assert ort["speedup"]["tile_ms"] == pytest.approx(rows["torch", "fp32"]["tile_ms"]["p50"] / ort["tile_ms"]["p50"])


def test_the_table_has_a_row_per_backend_and_states_warmup_and_repeats(benchmarked, capsys, monkeypatch):
    from latup_edge.cli.app import console
    from latup_edge.cli.report import print_benchmark

    monkeypatch.setattr(console, "width", 400)  # one line per row, as in a wide terminal
    print_benchmark(benchmarked[0])
    text = capsys.readouterr().out
    assert "warm-up 1" in text and "2 timed per case" in text
    assert sum(line.startswith("│ ") for line in text.splitlines()) == len(benchmarked[0]["rows"])


def test_rows_that_cannot_run_are_left_out_with_a_reason(bundle):
    manifest = load_bundle(bundle).manifest
    rows, skipped = plan_rows(manifest, ["openvino"], None)
    assert {backend for backend, _, _ in rows} == {"openvino"} and not any(s["backend"] == "torch" for s in skipped)
    no_onnx = manifest | {"files": {k: v for k, v in manifest["files"].items() if k != "fp32.onnx"}}
    no_weights = no_onnx | {"build": {"settings": {"weights": "/nowhere/x.safetensors"}}}
    rows, skipped = plan_rows(no_weights, ["onnxruntime", "torch"], None)
    assert rows == [] and [s["backend"] for s in skipped] == ["onnxruntime", "torch"]
    assert "fp32.onnx" in skipped[0]["reason"] and "--weights" in skipped[1]["reason"]


def test_precisions_limit_the_openvino_rows(bundle):
    rows, _ = plan_rows(load_bundle(bundle).manifest, ["openvino"], None, precisions=("int8",))
    assert rows == [("openvino", "int8", None)]


def test_speedups_need_the_torch_row():
    rows = [{"backend": "openvino", "precision": "int8", "tile_ms": percentiles([1, 2]), "case_ms": percentiles([3])}]
    add_speedups(rows)
    assert rows[0]["speedup"] is None
    rows.append({"backend": "torch", "precision": "fp32", "tile_ms": percentiles([6]), "case_ms": percentiles([6])})
    add_speedups(rows)
    assert rows[0]["speedup"] == {"tile_ms": 4.0, "case_ms": 2.0}


def test_an_unknown_backend_is_refused_in_one_sentence(bundle):
    result = runner.invoke(app, ["benchmark", "--bundle", str(bundle), "--backends", "tensorrt"])
    assert result.exit_code == 1 and "unknown backends" in result.output and "Traceback" not in result.output


def test_the_torch_row_needs_the_bundles_own_network(bundle, tmp_path):
    manifest = load_bundle(bundle).manifest
    weights = Path(manifest["build"]["settings"]["weights"])
    check_same_network(weights, manifest)
    # A manifest from before the statistics and normalization fields: its network had their defaults.
    old = {key: value for key, value in manifest["network"].items() if key not in ("statistics", "normalization")}
    check_same_network(weights, manifest | {"network": old})
    with pytest.raises(BenchmarkError, match="different network"):
        check_same_network(weights, manifest | {"network": old | {"normalization": "zscore-brain"}})
