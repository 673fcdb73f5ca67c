"""The bundle: compile, manifest, verification, the default-precision rule, the CLI, runtime imports."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_openvino_backend import NARROW_METADATA, NARROW_SHAPE, narrow_int8, narrow_onnx  # noqa: F401
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.deploy.compile import compile_bundle
from latup_edge.runtime.bundle import MANIFEST, Bundle, BundleError, choose_default, load_bundle
from latup_edge.runtime.openvino_backend import OpenVINOModel, cpu_supports_bf16

VERDICTS = {"int8": "pass", "bf16": "pass"}
FAST = {"probe_shape": NARROW_SHAPE, "threads": 1, "repeats": 1}


@pytest.fixture(scope="module")
def bundle_dir(narrow_onnx, narrow_int8, tmp_path_factory) -> Path:  # noqa: F811
    extra = {"verdicts": VERDICTS, "drift": {"int8": {"agreement": 0.99}}, "engine": "nncf"}
    return compile_bundle(narrow_onnx, narrow_int8, tmp_path_factory.mktemp("bundles") / "bundle", extra=extra, **FAST)


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    """A copy of the built bundle that a test may damage."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def test_compile_writes_ir_and_manifest(bundle_dir):
    manifest = manifest_of(bundle_dir)
    assert {"fp32.xml", "fp32.bin", "int8.xml", "int8.bin"} == set(manifest["files"])
    assert not list(bundle_dir.parent.glob(".bundle.*"))
    assert manifest["network"] == NARROW_METADATA["config"]
    assert manifest["modalities"] == NARROW_METADATA["modalities"]
    assert manifest["labels"] == NARROW_METADATA["labels"]
    assert manifest["source"]["metadata"] == {"version": "test"}
    assert {"openvino", "onnxruntime", "numpy", "latup_edge", "torch", "nncf"} <= set(manifest["tools"])
    assert manifest["build"]["engine"] == "nncf"
    expected = {"fp32", "int8"} | ({"bf16"} if cpu_supports_bf16() else set())
    assert set(manifest["precisions"]) == expected
    assert manifest["cpu_bf16"] == cpu_supports_bf16()
    int8 = manifest["precisions"]["int8"]
    assert int8["status"] == "ok" and int8["eligible"] and int8["verdict"] == "pass"
    assert int8["int8_kernels"]["int8_convolutions"] > 0
    assert int8["drift"] == {"agreement": 0.99}
    assert manifest["precisions"]["fp32"]["int8_kernels"]["int8_convolutions"] == 0
    assert manifest["precisions"]["fp32"]["resolved"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert manifest["default_precision"] == choose_default(manifest["precisions"])


def test_load_bundle_verifies_and_runs(bundle_dir, narrow_onnx):  # noqa: F811
    bundle = load_bundle(bundle_dir)
    assert bundle.default_precision == bundle.manifest["default_precision"]
    x = np.random.default_rng(3).random(NARROW_SHAPE, dtype=np.float32)
    fp32 = bundle.model("fp32", threads=1)(x)
    np.testing.assert_allclose(fp32, OpenVINOModel(narrow_onnx, "fp32", threads=1)(x), rtol=1e-5, atol=1e-6)
    assert bundle.model(threads=1)(x).shape == (1, 4, *NARROW_SHAPE[2:])


@pytest.mark.parametrize("name", ["fp32.xml", "fp32.bin", "int8.xml", "int8.bin", MANIFEST])
def test_one_changed_byte_is_refused(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name}.*rebuild or re-copy the bundle"):
        load_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "int8.bin").unlink()
    with pytest.raises(BundleError, match="int8.bin is missing"):
        load_bundle(bundle_copy)


def test_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(BundleError, match="not a latup-edge bundle"):
        load_bundle(tmp_path)


def precision(median_ms: float | None, eligible: bool) -> dict:
    return {"eligible": eligible, "latency_ms": None if median_ms is None else {"median_ms": median_ms}}


def test_choose_default_is_the_fastest_passing_precision():
    assert (
        choose_default({"fp32": precision(900, True), "bf16": precision(400, True), "int8": precision(300, True)})
        == "int8"
    )
    assert (
        choose_default({"fp32": precision(900, True), "bf16": precision(400, True), "int8": precision(300, False)})
        == "bf16"
    )
    assert choose_default({"fp32": precision(900, True), "int8": precision(None, True)}) == "fp32"
    # fp32 is the reference: eligible even without a verdict; nothing else is.
    assert choose_default({"fp32": precision(900, False), "int8": precision(300, False)}) == "fp32"
    assert choose_default({"fp32": precision(100, True), "int8": precision(300, True)}) == "fp32"


def test_failed_precision_is_refused_unless_allowed(bundle_dir):
    manifest = copy.deepcopy(load_bundle(bundle_dir).manifest)
    manifest["precisions"]["int8"].update(verdict="fail: WT Dice drift 0.05", eligible=False)
    bundle = Bundle(path=bundle_dir, manifest=manifest)
    with pytest.raises(BundleError, match="int8 is not approved.*fail: WT Dice drift"):
        bundle.model("int8")
    with pytest.warns(UserWarning, match="fail: WT Dice drift"):
        model = bundle.model("int8", threads=1, allow_failed=True)
    assert model(np.zeros(NARROW_SHAPE, np.float32)).shape == (1, 4, *NARROW_SHAPE[2:])


def test_float_model_given_as_int8_is_recorded_not_int8(narrow_onnx, tmp_path):  # noqa: F811
    out = compile_bundle(
        narrow_onnx,
        narrow_onnx,
        tmp_path / "b",
        extra={"verdicts": {"int8": "pass"}},
        include_onnx=True,
        **FAST,
    )
    bundle = load_bundle(out)
    int8 = bundle.precisions["int8"]
    assert int8["status"] == "not_int8" and not int8["eligible"]
    assert "fp32.onnx" in bundle.manifest["files"] and "int8.onnx" in bundle.manifest["files"]
    assert bundle.default_precision != "int8"
    with pytest.raises(BundleError, match="does not run INT8 kernels"):
        bundle.model("int8")


def test_qdq_onnx_int8_runs_int8_kernels(narrow_onnx, tmp_path):  # noqa: F811
    import nncf
    import onnx

    rng = np.random.default_rng(0)
    calibration = [{"image": rng.random(NARROW_SHAPE, dtype=np.float32)} for _ in range(2)]
    qdq = tmp_path / "qdq.onnx"
    onnx.save(nncf.quantize(onnx.load(narrow_onnx), nncf.Dataset(calibration), subset_size=2), qdq)
    bundle = load_bundle(compile_bundle(narrow_onnx, qdq, tmp_path / "b", **FAST))
    assert bundle.precisions["int8"]["int8_kernels"]["int8_convolutions"] > 0


def test_without_verdicts_the_default_is_fp32(narrow_onnx, tmp_path):  # noqa: F811
    bundle = load_bundle(compile_bundle(narrow_onnx, None, tmp_path / "b", **FAST))
    assert bundle.default_precision == "fp32"
    assert "int8" not in bundle.precisions


def test_failed_compile_leaves_no_bundle(narrow_onnx, tmp_path):  # noqa: F811
    broken = tmp_path / "broken.xml"
    broken.write_text("<net>not an IR")
    with pytest.raises(BundleError, match="broken.xml"):
        compile_bundle(narrow_onnx, broken, tmp_path / "out" / "bundle", **FAST)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_folder_that_is_not_a_bundle_is_not_overwritten(narrow_onnx, tmp_path):  # noqa: F811
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle"):
        compile_bundle(narrow_onnx, None, tmp_path, **FAST)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_runtime_modules_import_without_torch_or_onnx():
    code = (
        "import sys\n"
        "import latup_edge.runtime.segment, latup_edge.runtime.drift, latup_edge.runtime.benchmark\n"
        "import latup_edge.runtime.evaluation, latup_edge.deploy.compile, latup_edge.cli\n"
        # PIL is not banned: nibabel imports pydicom (a base dependency now), which imports Pillow.
        "banned = {'torch', 'onnx', 'nncf', 'neural_compressor', 'nilearn', 'latup_edge.data.preview'}\n"
        "banned &= set(sys.modules)\n"
        "assert not banned, banned\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_compile_and_bundle_info(narrow_onnx, narrow_int8, tmp_path):  # noqa: F811
    runner = CliRunner()
    out = tmp_path / "cli-bundle"
    size = [str(s) for s in NARROW_SHAPE[2:]]
    args = ["compile", str(narrow_onnx), "--int8", str(narrow_int8), "-o", str(out), "--size", *size]
    result = runner.invoke(app, [*args, "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    compiled = json.loads(result.stdout)
    assert compiled["verified"] and compiled["default_precision"] == "fp32"

    result = runner.invoke(app, ["bundle-info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"] == compiled["files"]
    result = runner.invoke(app, ["bundle-info", str(out)])
    assert result.exit_code == 0 and "int8" in result.stdout

    (out / "int8.bin").write_bytes(b"damaged")
    result = runner.invoke(app, ["bundle-info", str(out)])
    assert result.exit_code == 1
    assert "int8.bin" in result.output and "Traceback" not in result.output


def test_the_normalisation_comes_from_the_network_config(bundle_dir):
    manifest = load_bundle(bundle_dir).manifest
    # A manifest from before the field (this one's network is {"base_filters": 4}) means min-max.
    assert "normalization" not in manifest["network"] and load_bundle(bundle_dir).normalization == "minmax"
    zscore = Bundle(bundle_dir, {**manifest, "network": {"normalization": "zscore-brain"}})
    assert zscore.normalization == "zscore-brain"
    with pytest.raises(BundleError, match="normalisation 'percentile'.*upgrade latup-edge"):
        _ = Bundle(bundle_dir, {**manifest, "network": {"normalization": "percentile"}}).normalization


def test_a_brain_statistics_bundle_compiles_and_says_what_it_expects(tmp_path):
    import torch

    from latup_edge.deploy.export import export_onnx
    from latup_edge.models.latup_net import LATUPNet, LATUPNetConfig

    torch.manual_seed(0)
    config = LATUPNetConfig(base_filters=4, statistics="brain", normalization="zscore-brain")
    onnx = export_onnx(LATUPNet(config).eval(), tmp_path / "brain.onnx")
    out = compile_bundle(onnx, None, tmp_path / "bundle", **FAST)
    bundle = load_bundle(out)
    assert bundle.manifest["network"] == config.to_dict() and bundle.normalization == "zscore-brain"
    assert bundle.manifest["preprocessing"]["normalization"] == "zscore-brain"
    x = np.zeros(NARROW_SHAPE, np.float32)
    x[:, :, 4:28, 2:30, 6:26] = np.random.default_rng(0).normal(size=(1, 3, 24, 28, 20))
    torch.manual_seed(0)
    reference = LATUPNet(config).eval()  # the exported network again, from the same seed
    with torch.inference_mode():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(bundle.model("fp32", threads=1)(x), expected, atol=1e-5)

    result = CliRunner().invoke(app, ["bundle-info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    network = json.loads(result.stdout)["network"]
    assert network["statistics"] == "brain" and network["normalization"] == "zscore-brain"
    result = CliRunner().invoke(app, ["bundle-info", str(out)])
    assert "normalisation: zscore-brain" in result.stdout and "statistics: brain" in result.stdout


def test_bundle_info_of_an_old_bundle_shows_the_papers_settings(bundle_dir):
    result = CliRunner().invoke(app, ["bundle-info", str(bundle_dir)])
    assert result.exit_code == 0, result.output
    assert "normalisation: minmax" in result.stdout and "statistics: volume" in result.stdout
