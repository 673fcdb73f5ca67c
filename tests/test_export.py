"""ONNX export: file layout, metadata, dynamic axes, the check against PyTorch, and the CLI."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import BRAIN, NARROW, narrow_network
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.data.preprocess import NORMALIZATIONS
from latup_edge.deploy import export as export_module
from latup_edge.deploy.compile import model_normalization
from latup_edge.deploy.deploy_form import to_deploy_form
from latup_edge.deploy.export import ExportCheckError, check_onnx, export_for_deploy, export_onnx
from latup_edge.deploy.metadata import read_model_metadata
from latup_edge.fileio import sha256_file
from latup_edge.models.checkpoint import save_checkpoint
from latup_edge.models.latup_net import LATUPNet
from latup_edge.runtime.openvino_backend import OpenVINOModel


def skull_stripped(seed: int, shape: tuple[int, ...] = (1, 3, 32, 32, 32)) -> np.ndarray:
    """Noise inside an off-centre brain, exact zeros around it: brain statistics differ from volume ones."""
    x = np.zeros(shape, np.float32)
    x[:, :, 3:27, 5:30, 2:22] = np.random.default_rng(seed).normal(size=(shape[0], shape[1], 24, 25, 20))
    return x


@pytest.fixture(scope="module")
def narrow_onnx(tmp_path_factory) -> tuple[LATUPNet, Path]:
    model = narrow_network(seed=0)
    return model, export_onnx(model, tmp_path_factory.mktemp("export") / "narrow.onnx", weights_sha256="ab12")


@pytest.fixture(scope="module")
def narrow_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(narrow_network(seed=0), tmp_path_factory.mktemp("weights") / "narrow.safetensors")


def test_onnx_has_opset_17_names_and_native_instance_norm(narrow_onnx):
    proto = onnx.load(str(narrow_onnx[1]))
    assert {entry.domain: entry.version for entry in proto.opset_import}[""] == 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert "InstanceNormalization" in {node.op_type for node in proto.graph.node}


@pytest.mark.parametrize("shape", [(2, 3, 32, 32, 32), (1, 3, 48, 40, 32)])
def test_batch_and_spatial_axes_are_dynamic(narrow_onnx, shape):
    session = ort.InferenceSession(str(narrow_onnx[1]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    (logits,) = session.run(["logits"], {"image": x})
    assert logits.shape == (shape[0], 4, *shape[2:])


def test_metadata_round_trip(narrow_onnx):
    model, path = narrow_onnx
    metadata = read_model_metadata(path)
    assert metadata["config"] == model.config.to_dict()
    assert metadata["modalities"] == ["flair", "t1ce", "t2"]
    assert metadata["preprocessing"]["size_multiple"] == 8
    assert metadata["labels"]["channels"] == {"0": "background", "1": "NCR/NET", "2": "ED", "3": "ET"}
    assert metadata["labels"]["brats_label"]["2021"]["ET"] == 4
    assert metadata["labels"]["brats_label"]["2023"]["ET"] == 3
    assert metadata["weights_sha256"] == "ab12"
    assert metadata["version"]


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_metadata_names_the_models_normalisation(normalization, tmp_path):
    path = export_onnx(narrow_network(replace(NARROW, normalization=normalization), seed=0), tmp_path / "model.onnx")
    metadata = read_model_metadata(path)
    assert metadata["config"]["normalization"] == normalization
    assert metadata["preprocessing"]["normalization"] == normalization
    assert metadata["preprocessing"]["normalization_description"].startswith(normalization)
    assert model_normalization(path) == normalization


def test_an_onnx_model_from_before_the_field_means_minmax(narrow_onnx, tmp_path):
    proto = onnx.load(str(narrow_onnx[1]))
    for prop in proto.metadata_props:
        if prop.key == "latup_edge.config":
            config = json.loads(prop.value)
            del config["normalization"], config["statistics"]
            prop.value = json.dumps(config)
    onnx.save(proto, tmp_path / "old.onnx")
    assert model_normalization(tmp_path / "old.onnx") == "minmax"


@pytest.mark.parametrize("deploy_form", [False, True])
def test_a_brain_statistics_network_exports_and_matches_pytorch_and_openvino(deploy_form, tmp_path):
    # Untrained: equal InstanceNorm scales, which the exporter shares through Identity nodes.
    model = narrow_network(replace(NARROW, statistics="brain"), seed=0)
    path = export_onnx(to_deploy_form(model) if deploy_form else model, tmp_path / "brain.onnx")
    x = skull_stripped(2)
    check = check_onnx(model, path, x)
    assert check["passed"] and check["max_abs_diff"] < 1e-5 and check["agreement"] == 1.0
    with torch.inference_mode():
        reference = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(OpenVINOModel(path, "fp32")(x), reference, atol=1e-5)
    # The statistics are the brain's: the same network with volume statistics computes something else.
    volume = narrow_network(seed=0)
    with torch.inference_mode():
        assert np.abs(volume(torch.from_numpy(x)).numpy() - reference).max() > 1e-3


def test_check_matches_pytorch(narrow_onnx):
    model, path = narrow_onnx
    x = np.random.default_rng(1).random((1, 3, 32, 32, 32), dtype=np.float32)
    check = check_onnx(model, path, x)
    assert check["passed"]
    assert check["max_abs_diff"] < 1e-5
    assert check["agreement"] == 1.0


def test_check_fails_for_other_weights(narrow_onnx):
    x = np.random.default_rng(1).random((1, 3, 32, 32, 32), dtype=np.float32)
    check = check_onnx(narrow_network(seed=1), narrow_onnx[1], x)
    assert not check["passed"]
    assert check["max_abs_diff"] > check["tolerance"]


def test_export_for_deploy_checks_on_a_case(narrow_checkpoint, two_phantoms, tmp_path):
    report = export_for_deploy(narrow_checkpoint, tmp_path / "model.onnx", two_phantoms, check_size=32)
    assert report["check"]["passed"] and report["check"]["input_shape"] == [1, 3, 32, 32, 32]
    assert report["metadata"]["weights_sha256"] == sha256_file(narrow_checkpoint)
    assert report["sha256"] == sha256_file(tmp_path / "model.onnx")


def test_export_for_deploy_keeps_no_file_when_the_check_fails(narrow_checkpoint, two_phantoms, tmp_path, monkeypatch):
    build = export_module._onnx_model
    monkeypatch.setattr(export_module, "_onnx_model", lambda model, sha: build(narrow_network(seed=1), sha))
    with pytest.raises(ExportCheckError, match="does not reproduce the PyTorch network.*re-export"):
        export_for_deploy(narrow_checkpoint, tmp_path / "model.onnx", two_phantoms, check_size=32)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_json(narrow_checkpoint, two_phantoms, tmp_path):
    out = tmp_path / "model.onnx"
    args = ["export", "--weights", str(narrow_checkpoint), "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--check-data", str(two_phantoms), "--check-size", "32", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["check"]["passed"] and report["onnx"] == str(out) and out.is_file()


def test_cli_export_refuses_a_bad_check_size(narrow_checkpoint, two_phantoms, tmp_path):
    args = ["export", "--weights", str(narrow_checkpoint), "-o", str(tmp_path / "m.onnx")]
    result = CliRunner().invoke(app, [*args, "--check-data", str(two_phantoms), "--check-size", "30"])
    assert result.exit_code == 1
    assert "multiple of 8" in result.output and "Traceback" not in result.output


def test_export_for_deploy_checks_on_a_generated_phantom(narrow_checkpoint, tmp_path):
    report = export_for_deploy(narrow_checkpoint, tmp_path / "model.onnx", None, check_size=32)
    assert report["check"]["passed"] and report["check_data"].startswith("generated phantom")


def test_export_for_deploy_checks_a_zscore_model_on_zscored_input(two_phantoms, tmp_path, monkeypatch):
    weights = save_checkpoint(narrow_network(BRAIN, seed=0), tmp_path / "brain.safetensors")
    inputs = []
    check = export_module.check_onnx
    monkeypatch.setattr(export_module, "check_onnx", lambda *args: inputs.append(args[2]) or check(*args))
    report = export_for_deploy(weights, tmp_path / "model.onnx", two_phantoms, check_size=32)
    assert report["check"]["passed"]
    assert report["metadata"]["preprocessing"]["normalization"] == "zscore-brain"
    expected = export_module.check_input(two_phantoms, 32, normalization="zscore-brain")
    np.testing.assert_array_equal(inputs[0], expected)
    assert inputs[0].min() < 0  # z-scores, not min-max's [0, 1]
