"""The OpenVINO backend on a narrow LATUP-Net: agreement with ONNX Runtime, precisions, INT8 kernels."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from latup_edge.runtime.openvino_backend import (
    OpenVINOError,
    OpenVINOModel,
    cpu_supports_bf16,
    int8_kernel_report,
    measure_latency,
)

NARROW_SHAPE = (1, 3, 32, 32, 32)
NARROW_METADATA = {
    "config": {"base_filters": 4},
    "modalities": ["flair", "t1ce", "t2"],
    "preprocessing": {"normalization": "min-max"},
    "labels": {"channels": {"0": "background", "1": "NCR", "2": "ED", "3": "ET"}},
    "version": "test",
}


@pytest.fixture(scope="session")
def narrow_onnx(tmp_path_factory) -> Path:
    """A narrow LATUP-Net (base_filters=4) exported to ONNX with latup_edge metadata_props."""
    import onnx
    import torch

    from latup_edge.models.latup_net import LATUPNet, LATUPNetConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("narrow") / "narrow.onnx"
    axes = {0: "n", 2: "d", 3: "h", 4: "w"}
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation and tracer warnings are not this test's subject.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LATUPNet(LATUPNetConfig(base_filters=4)).eval(),
            torch.zeros(NARROW_SHAPE),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
        )
    proto = onnx.load(path)
    for key, value in NARROW_METADATA.items():  # as the exporter writes them: strings plain, the rest JSON
        proto.metadata_props.add(key=f"latup_edge.{key}", value=value if isinstance(value, str) else json.dumps(value))
    onnx.save(proto, path)
    return path


@pytest.fixture(scope="session")
def narrow_int8(narrow_onnx, tmp_path_factory) -> Path:
    """The narrow ONNX quantized by NNCF with two random calibration inputs, saved as OpenVINO IR."""
    import nncf
    import openvino as ov

    rng = np.random.default_rng(0)
    calibration = [rng.random(NARROW_SHAPE, dtype=np.float32) for _ in range(2)]
    quantized = nncf.quantize(ov.Core().read_model(narrow_onnx), nncf.Dataset(calibration), subset_size=2)
    path = tmp_path_factory.mktemp("narrow_int8") / "int8.xml"
    ov.save_model(quantized, path, compress_to_fp16=False)
    return path


def onnxruntime_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.mark.parametrize("shape", [NARROW_SHAPE, (1, 3, 40, 32, 48)])
def test_fp32_matches_onnxruntime_at_any_size(narrow_onnx, shape):
    model = OpenVINOModel(narrow_onnx, "fp32", threads=1)
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    logits = model(x)
    expected = onnxruntime_logits(narrow_onnx, x)
    assert logits.shape == (1, 4, *shape[2:])
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_resolved_reports_what_openvino_chose(narrow_onnx):
    model = OpenVINOModel(narrow_onnx, "fp32", threads=1)
    resolved = model.resolved()
    assert resolved["INFERENCE_PRECISION_HINT"] == "f32"
    assert resolved["INFERENCE_NUM_THREADS"] == 1
    assert resolved["ENABLE_CPU_PINNING"] is False
    assert resolved["PERFORMANCE_HINT"] == "LATENCY"
    assert resolved["NUM_STREAMS"] == 1
    assert resolved["device"]
    assert model.load_ms > 0


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16 units")
def test_bf16_is_close_to_fp32(narrow_onnx):
    x = np.random.default_rng(2).random(NARROW_SHAPE, dtype=np.float32)
    bf16 = OpenVINOModel(narrow_onnx, "bf16", threads=1)
    reference = OpenVINOModel(narrow_onnx, "fp32", threads=1)(x)
    assert bf16.resolved()["INFERENCE_PRECISION_HINT"] == "bf16"
    # bf16 keeps 8 mantissa bits: ~1 % of the logit range.
    np.testing.assert_allclose(bf16(x), reference, atol=0.05 * np.abs(reference).max())


def test_bf16_refused_without_bf16_units(narrow_onnx, monkeypatch):
    monkeypatch.setattr("latup_edge.runtime.openvino_backend.cpu_supports_bf16", lambda core=None: False)
    with pytest.raises(OpenVINOError, match="no bf16 units"):
        OpenVINOModel(narrow_onnx, "bf16")


def test_int8_kernel_report_tells_int8_from_float(narrow_onnx, narrow_int8):
    int8 = int8_kernel_report(OpenVINOModel(narrow_int8, "int8", threads=1).compiled, NARROW_SHAPE)
    fp32 = int8_kernel_report(OpenVINOModel(narrow_onnx, "fp32", threads=1).compiled, NARROW_SHAPE)
    assert int8["convolutions"] == fp32["convolutions"] == 18
    assert int8["int8_convolutions"] > 0
    assert any(kind.lower().endswith(("i8", "u8")) for kind in int8["primitive_types"])
    assert fp32["int8_convolutions"] == 0


def test_measure_latency(narrow_int8):
    latency = measure_latency(OpenVINOModel(narrow_int8, "int8", threads=1), NARROW_SHAPE, repeats=2)
    assert latency["shape"] == list(NARROW_SHAPE)
    assert 0 < latency["median_ms"] <= latency["p90_ms"]
    assert latency["first_ms"] > 0


def test_static_shapes_compile_once_per_shape_and_match_the_dynamic_model(narrow_onnx):
    static = OpenVINOModel(narrow_onnx, "fp32", threads=1)
    dynamic = OpenVINOModel(narrow_onnx, "fp32", threads=1, shapes="dynamic")
    rng = np.random.default_rng(3)
    first, second = (rng.standard_normal((1, 3, *shape)).astype(np.float32) for shape in ((16, 24, 16), (24, 16, 16)))
    for x in (first, first, second, first):
        np.testing.assert_allclose(static(x), dynamic(x), rtol=1e-5, atol=1e-5)
    # One compile per change of shape, none for a repeat: the held shape is reused, not recompiled.
    assert [entry["shape"] for entry in static.compiles] == [[1, 3, 16, 24, 16], [1, 3, 24, 16, 16], [1, 3, 16, 24, 16]]
    assert dynamic.compiles == []
    with pytest.raises(OpenVINOError, match="static or dynamic"):
        OpenVINOModel(narrow_onnx, "fp32", shapes="bounded")


@pytest.mark.parametrize("shapes", ["static", "dynamic"])
def test_a_released_model_gives_the_same_logits_on_its_next_call(narrow_int8, shapes):
    model = OpenVINOModel(narrow_int8, "int8", threads=1, shapes=shapes)
    model.release()  # nothing compiled for a shape yet: nothing to free, no error
    x = np.random.default_rng(5).standard_normal(NARROW_SHAPE).astype(np.float32)
    before = model(x)
    model.release()
    np.testing.assert_array_equal(model(x), before)
