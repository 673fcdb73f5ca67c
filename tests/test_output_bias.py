"""The output bias correction: per-class offsets on the INT8 head's bias, fitted to agree with fp32."""

import numpy as np
import openvino as ov
import pytest
from test_quantize import tiny_case

from latup_edge.deploy.quantize import quantize
from latup_edge.deploy.quantize.output_bias import (
    MAX_OFFSET,
    agreement,
    border_logits,
    correct_output_bias,
    fit_offsets,
    with_output_offsets,
)
from latup_edge.errors import LatupError
from latup_edge.runtime.openvino_backend import OpenVINOModel


def shifted_logits(shift, voxels=20000, noise=0.05, seed=0):
    """fp32 logits near class borders, and 'int8' logits that carry ``shift`` plus rounding-like noise."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(0.0, 1.0, (voxels, 4))
    quantized = reference + np.asarray(shift) + rng.normal(0.0, noise, reference.shape)
    return reference, quantized


def test_the_fit_takes_back_a_systematic_shift_of_one_class():
    # INT8 lowering the oedema logit by 0.3 paints less oedema; the fit gives it back.
    reference, quantized = shifted_logits([0.0, 0.0, -0.3, 0.0])
    offsets = fit_offsets(reference, quantized)
    assert offsets[0] == 0.0
    assert offsets[2] == pytest.approx(0.3, abs=0.03)
    assert np.all(np.abs(offsets[[1, 3]]) < 0.03)
    assert agreement(reference, quantized, offsets) > agreement(reference, quantized, np.zeros(4)) + 0.02


def test_the_fit_leaves_an_unbiased_model_alone():
    reference, quantized = shifted_logits([0.0, 0.0, 0.0, 0.0], seed=1)
    offsets = fit_offsets(reference, quantized)
    assert np.all(np.abs(offsets) < 0.03)
    assert agreement(reference, quantized, offsets) >= agreement(reference, quantized, np.zeros(4))


def test_the_offsets_are_bounded():
    reference, quantized = shifted_logits([0.0, -5.0, 0.0, 0.0], seed=2)
    assert np.all(np.abs(fit_offsets(reference, quantized)) <= MAX_OFFSET)


def tiny_model(bias):
    """A 1x1x1 convolution plus bias as the output: the shape of LATUP-Net's head."""
    data = ov.opset13.parameter([1, 2, 4, 4, 4], np.float32, name="input")
    weights = ov.op.Constant(np.arange(8, dtype=np.float32).reshape(4, 2, 1, 1, 1) / 8)
    conv = ov.opset13.convolution(data, weights, [1, 1, 1], [0, 0, 0], [0, 0, 0], [1, 1, 1])
    out = ov.opset13.add(conv, ov.op.Constant(np.asarray(bias, dtype=np.float32).reshape(1, 4, 1, 1, 1)))
    return ov.Model([out], [data], "head")


def test_the_offsets_land_on_the_heads_bias_exactly():
    x = np.random.default_rng(0).random((1, 2, 4, 4, 4), dtype=np.float32)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}  # a bf16 CPU would otherwise round the outputs
    before = ov.compile_model(tiny_model([0.1, 0.2, 0.3, 0.4]), "CPU", f32)(x)[0]
    offsets = [0.0, -0.5, 0.25, 1.0]
    after = ov.compile_model(with_output_offsets(tiny_model([0.1, 0.2, 0.3, 0.4]), offsets), "CPU", f32)(x)[0]
    np.testing.assert_allclose(
        after - before, np.broadcast_to(np.reshape(offsets, (1, 4, 1, 1, 1)), before.shape), atol=1e-6
    )


def test_a_model_whose_output_is_not_a_biased_convolution_is_refused():
    data = ov.opset13.parameter([1, 4, 4, 4, 4], np.float32)
    model = ov.Model([ov.opset13.relu(data)], [data], "no head")
    with pytest.raises(LatupError, match="not a convolution's bias Add"):
        with_output_offsets(model, [0.0, 0.1, 0.2, 0.3])


def test_only_voxels_near_a_class_border_are_fitted_and_identical_ones_are_counted_once():
    logits = np.zeros((1, 4, 4, 4, 4), dtype=np.float32)
    logits[:, 1] = 10.0  # clear class 1 everywhere ...
    logits[0, 2, 0] = 9.5 + np.arange(16, dtype=np.float32).reshape(4, 4) / 100  # ... but 16 close calls
    logits[0, 0, 3] = 9.9  # and one slice of 16 identical close calls
    reference, quantized, count = border_logits(lambda x: logits, lambda x: logits - 0.1, [np.zeros((1, 3, 4, 4, 4))])
    assert reference.shape == quantized.shape == (17, 4)
    assert sorted(count) == [1] * 16 + [16]
    np.testing.assert_allclose(reference - quantized, 0.1, atol=1e-6)


def test_the_fit_never_flips_a_crowd_of_identical_voxels_for_a_few_borders():
    # LATUP-Net's background outside the brain is one logit vector that wins by ~0.12: an offset past that
    # would paint every such voxel tumour, however much it helped the brain's borders.
    reference, quantized = shifted_logits([0.0, -0.3, 0.0, 0.0], voxels=2000, seed=3)
    outside = np.array([[0.2, 0.06, 0.085, -0.06]])
    offsets = fit_offsets(
        np.concatenate([reference, outside]), np.concatenate([quantized, outside]), np.r_[np.ones(2000, int), 10**6]
    )
    assert np.argmax(outside[0] + offsets) == 0
    assert 0.0 < offsets[1] < 0.14


def test_quantize_corrects_the_output_bias_and_records_it(float_onnx, tmp_path):
    samples = [tiny_case(f"s{i}", i).inputs for i in range(2)]
    result = quantize("nncf", float_onnx, samples, tmp_path / "q", output_bias=True)
    record = result.to_dict()["output_bias"]
    assert result.path.name == "int8_nncf_output_bias.xml" and result.path.exists()
    assert record["border_voxels"] > 0 and record["offsets"][0] == 0.0
    assert record["border_agreement_after"] >= record["border_agreement_before"]
    # The saved model is the corrected one: refitting on it finds nothing left to correct.
    again = correct_output_bias(OpenVINOModel(float_onnx, "fp32"), OpenVINOModel(result.path, "int8"), samples)
    assert again.agreement_before == pytest.approx(record["border_agreement_after"], abs=1e-5)
    assert quantize("nncf", float_onnx, samples, tmp_path / "plain").to_dict()["output_bias"] is None


def test_the_correction_is_refused_for_the_onnx_engine(float_onnx, tmp_path):
    samples = [tiny_case("s0", 0).inputs]
    with pytest.raises(LatupError, match="use --engine nncf"):
        quantize("inc", float_onnx, samples, tmp_path / "q", output_bias=True)


def test_build_and_the_cli_leave_the_correction_off_by_default():
    # Judged on two fresh sets and not adopted (docs/PREREGISTERED.md, 2026-12-05d).
    import inspect

    from latup_edge.cli.quantize import build, quantize_command
    from latup_edge.deploy.build import BuildSettings

    assert BuildSettings().output_bias is False
    for command in (build, quantize_command):
        assert inspect.signature(command).parameters["output_bias"].default is False
