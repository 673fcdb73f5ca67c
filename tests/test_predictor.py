"""The Predictor (a bundle opened and verified once) and the shape policy (brain boxes padded to buckets)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BRAIN, narrow_network
from test_benchmark import make_narrow_bundle
from test_segment import write_case
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.deploy.compile import compile_bundle
from latup_edge.deploy.export import export_onnx
from latup_edge.runtime import bundle as bundle_module
from latup_edge.runtime import predictor as predictor_module
from latup_edge.runtime.openvino_backend import OpenVINOModel
from latup_edge.runtime.predictor import Predictor, PredictorError, resolve_shape_policy
from latup_edge.runtime.volume import (
    DEFAULT_TILING,
    bucket_shape,
    bucketed,
    pad_to_shape,
    predict_volume,
    torch_forward,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def volume_bundle(tmp_path_factory) -> Path:
    """The narrow network with the paper's volume statistics (fp32, int8, fp32.onnx)."""
    return make_narrow_bundle(tmp_path_factory.mktemp("volume"))


@pytest.fixture(scope="module")
def brain_bundle(tmp_path_factory) -> Path:
    """An fp32 bundle of the narrow network with brain statistics and z-scores."""
    root = tmp_path_factory.mktemp("brain")
    onnx = export_onnx(narrow_network(BRAIN), root / "brain.onnx")
    return compile_bundle(onnx, None, root / "bundle", probe_shape=(1, 3, 16, 16, 16), repeats=1)


def raw_images(seed: int = 0) -> np.ndarray:
    """(3, 60, 68, 52) raw intensities: an ellipsoidal brain whose box (40 x 48 x 32) is off the 32-grid."""
    shape = (60, 68, 52)
    axes = np.indices(shape, dtype=np.float32)
    centre, radii = np.array([30, 34, 26])[:, None, None, None], np.array([19, 23, 14])[:, None, None, None]
    brain = (((axes - centre) / radii) ** 2).sum(axis=0) <= 1
    rng = np.random.default_rng(seed)
    images = np.zeros((3, *shape), np.float32)
    images[:, brain] = rng.normal(300, 60, size=(3, int(brain.sum())))
    images[:, 24:36, 28:40, 20:30] += 400 * brain[24:36, 28:40, 20:30]
    return images


@pytest.mark.parametrize(
    ("shape", "multiple", "expected"),
    [((152, 184, 160), 32, (160, 192, 160)), ((8, 32, 33), 32, (32, 32, 64)), ((40, 48, 56), 8, (40, 48, 56))],
)
def test_bucket_shape_rounds_every_side_up(shape, multiple, expected):
    assert bucket_shape(shape, multiple) == expected


def test_padding_goes_at_the_end_and_bucketed_crops_the_logits_back():
    x = np.arange(2 * 8 * 16 * 24, dtype=np.float32).reshape(1, 2, 8, 16, 24)
    padded = pad_to_shape(x, (32, 32, 32))
    assert padded.shape == (1, 2, 32, 32, 32) and not padded[..., 8:, :, :].any()
    np.testing.assert_array_equal(padded[..., :8, :16, :24], x)
    seen = []

    def forward(inputs):
        seen.append(inputs.shape)
        return inputs[:, :1] * 2

    np.testing.assert_array_equal(bucketed(forward, 32)(x), x[:, :1] * 2)
    assert seen == [(1, 2, 32, 32, 32)]


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bucket_padding_gives_the_labels_of_the_exact_box(backend, tmp_path):
    model = narrow_network(BRAIN)
    if backend == "torch":
        forward = torch_forward(model)
    else:
        forward = OpenVINOModel(export_onnx(model, tmp_path / "brain.onnx"), "fp32", threads=1)
    shapes = []

    def recorded(x):
        shapes.append(x.shape[2:])
        return forward(x)

    images = raw_images()
    exact = predict_volume(images, recorded, "whole", normalization="zscore-brain")
    bucket = predict_volume(images, recorded, "whole", normalization="zscore-brain", bucket=32)
    assert shapes == [(40, 48, 32), (64, 64, 32)]
    assert len(np.unique(exact.classes)) > 1
    np.testing.assert_array_equal(bucket.classes, exact.classes)


def test_the_shape_policy_follows_the_networks_statistics():
    assert resolve_shape_policy(None, {"statistics": "brain"}, "x") == "bucket32"
    assert resolve_shape_policy("exact", {"statistics": "brain"}, "x") == "exact"
    assert resolve_shape_policy(None, {"statistics": "volume"}, "x") == "exact"
    assert resolve_shape_policy(None, {"base_filters": 32}, "x") == "exact"  # an old bundle
    with pytest.raises(PredictorError, match="unknown shape policy"):
        resolve_shape_policy("bucket64", {"statistics": "brain"}, "x")


def test_a_volume_statistics_bundle_refuses_an_explicit_bucket(volume_bundle, tmp_path):
    assert Predictor.from_bundle(volume_bundle, "fp32", threads=1).shape_policy == "exact"
    with pytest.raises(PredictorError, match=r"volume statistics.*shape policy exact"):
        Predictor.from_bundle(volume_bundle, "fp32", threads=1, shape_policy="bucket32")
    write_case(tmp_path / "data", "BraTS2021_00001")
    arguments = ["segment", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--bundle", str(volume_bundle)]
    result = runner.invoke(app, [*arguments, "--shape-policy", "bucket32"])
    assert result.exit_code == 1 and "--shape-policy exact" in result.stderr and "Traceback" not in result.output


def test_the_predictor_opens_and_verifies_its_bundle_once(brain_bundle, tmp_path, monkeypatch):
    loads, hashes = [], []
    load_bundle, sha256_file = predictor_module.load_bundle, bundle_module.sha256_file
    monkeypatch.setattr(predictor_module, "load_bundle", lambda *a, **k: loads.append(a) or load_bundle(*a, **k))
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path: hashes.append(path) or sha256_file(path))
    predictor = Predictor.from_bundle(brain_bundle, threads=1)
    files = len(json.loads((brain_bundle / "manifest.json").read_text())["files"])
    assert len(loads) == 1 and len(hashes) == files
    assert predictor.shape_policy == "bucket32" and "shape policy bucket32" in predictor.describe()
    assert predictor.resolved()["threads"] == 1 and predictor.resolved()["statistics"] == "brain"

    images = raw_images()
    first = predictor.predict(images).classes
    np.testing.assert_array_equal(predictor.predict(images, probabilities=True).classes, first)
    write_case(tmp_path / "data", "BraTS2021_00001", seed=3)
    write_case(tmp_path / "data", "BraTS2021_00002", seed=4)
    logs = [predictor.segment([tmp_path / "data"], tmp_path / name) for name in ("a", "b")]
    assert len(loads) == 1 and len(hashes) == files
    for log in logs:
        assert log["summary"]["ok"] == 2 and log["shape_policy"]["resolved"] == "bucket32"
        assert log["shape_policy"]["statistics"] == "brain"
    logged = json.loads((tmp_path / "a" / "segment-log.json").read_text())
    assert logged["shape_policy"] == {"resolved": "bucket32", "requested": None, "statistics": "brain"}


def test_segment_writes_the_same_labels_with_bucket_and_exact_shapes(brain_bundle, tmp_path):
    write_case(tmp_path / "data", "BraTS2021_00001", seed=5)
    maps = {}
    for policy in ("bucket32", "exact"):
        arguments = ["segment", str(tmp_path / "data"), "-o", str(tmp_path / policy), "--bundle", str(brain_bundle)]
        result = runner.invoke(app, [*arguments, "--threads", "1", "--shape-policy", policy, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["shape_policy"]["resolved"] == policy
        maps[policy] = np.asanyarray(nib.load(tmp_path / policy / "BraTS2021_00001.nii.gz").dataobj)
    assert len(np.unique(maps["exact"])) > 1
    np.testing.assert_array_equal(maps["bucket32"], maps["exact"])


def test_drift_reuses_a_loaded_bundle_and_its_open_predictors(volume_bundle, tmp_path, monkeypatch):
    from latup_edge.runtime import drift as drift_module
    from latup_edge.runtime.drift import run_drift

    loaded = bundle_module.load_bundle(volume_bundle)
    fp32 = Predictor.from_bundle(loaded, "fp32", threads=1)
    opened = []
    from_bundle = Predictor.from_bundle.__func__

    def counted(cls, bundle, precision=None, *args, **kwargs):
        opened.append(precision)
        return from_bundle(cls, bundle, precision, *args, **kwargs)

    monkeypatch.setattr(drift_module, "load_bundle", lambda *a, **k: pytest.fail("drift re-read the bundle"))
    monkeypatch.setattr(Predictor, "from_bundle", classmethod(counted))
    write_case(tmp_path / "data", "BraTS2021_00001", seed=6)
    result = run_drift(tmp_path / "data", loaded, ["int8"], threads=1, opened={"fp32": fp32})
    assert opened == ["int8"] and set(result["summary"]) == {"fp32", "int8"}
    assert result["precisions"]["fp32"]["shape_policy"] == "exact"
    assert result["precisions"]["int8"]["tiling"] == result["precisions"]["fp32"]["tiling"] == DEFAULT_TILING
