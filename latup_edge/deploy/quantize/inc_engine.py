"""INT8 with Intel Neural Compressor on the ONNX model, QDQ format, placed for OpenVINO.

INC's default placement quantizes almost every operator and their outputs; in OpenVINO that runs
about 2x slower than quantizing the convolutions' inputs only (measured). So: Conv only, no
quantizer on convolution outputs, every other operator type kept in float.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from latup_edge.errors import LatupError

# Operator types that stay float: activations, pooling, attention and normalisation, and the brain mask
# (statistics="brain": Abs and ReduceMax of the input; INC would otherwise requantize them with the
# input's scale, and brain voxels within half a step of zero would leave the mask).
FLOAT_OP_TYPES = (
    "LeakyRelu", "Relu", "Sigmoid", "MaxPool", "Concat", "GlobalAveragePool", "ReduceMean", "Mul",
    "Add", "MatMul", "Gemm", "Resize", "InstanceNormalization", "Pad", "Softmax", "Abs", "ReduceMax",
)  # fmt: skip
_FP32 = {"weight": {"dtype": ["fp32"]}, "activation": {"dtype": ["fp32"]}}


class _Samples:
    """The dataloader INC expects: ``batch_size`` and (input, label) pairs."""

    batch_size = 1

    def __init__(self, samples: Sequence[np.ndarray]) -> None:
        self.samples = samples

    def __iter__(self):
        for sample in self.samples:
            yield sample, 0


def _config(n_samples: int, keep_float: Sequence[str], tuning: dict | None = None):
    from neural_compressor import PostTrainingQuantConfig

    return PostTrainingQuantConfig(
        approach="static",
        quant_format="QDQ",
        calibration_sampling_size=[n_samples],
        recipes={"optypes_to_exclude_output_quant": ["Conv"], "dedicated_qdq_pair": True},
        op_type_dict={op: _FP32 for op in FLOAT_OP_TYPES},
        op_name_dict={name: _FP32 for name in keep_float},
        **(tuning or {}),
    )


def quantize_inc(
    onnx_path: str,
    samples: Sequence[np.ndarray],
    out_path: Path,
    keep_float: Sequence[str] = (),
    score: Callable[[str], float] | None = None,
    max_drop: float = 0.01,
    max_trials: int = 8,
) -> Path:
    """Quantize to a QDQ ONNX file at ``out_path``; the labelled ``keep_float`` nodes stay float.

    With ``score`` (our Dice agreement of a model file on held-out cases), INC's accuracy-aware
    tuning returns layers to float until the score drops by at most ``max_drop``.
    """
    import onnx
    from neural_compressor import quantization, set_workspace
    from neural_compressor.config import AccuracyCriterion, TuningCriterion

    tuning = None
    eval_func = None
    if score is not None:
        tuning = {
            "accuracy_criterion": AccuracyCriterion(criterion="absolute", tolerable_loss=max_drop),
            "tuning_criterion": TuningCriterion(max_trials=max_trials),
        }
        eval_func = _file_scorer(score)
    with tempfile.TemporaryDirectory(prefix="latup-inc-") as workspace:
        set_workspace(workspace)  # INC writes its tuning history into the working folder otherwise
        quantized = quantization.fit(
            onnx.load(onnx_path),
            _config(len(samples), keep_float, tuning),
            calib_dataloader=_Samples(samples),
            eval_func=eval_func,
        )
    if quantized is None:
        raise LatupError(
            f"neural-compressor found no INT8 model within {max_drop} of float Dice: "
            "allow a larger drop, or quantize without accuracy control"
        )
    quantized.save(str(out_path))
    return out_path


def _file_scorer(score: Callable[[str], float]) -> Callable:
    """INC hands its eval_func an ``onnx.ModelProto``; score it from a temporary file."""

    def evaluate(model) -> float:
        import onnx

        with tempfile.TemporaryDirectory(prefix="latup-inc-eval-") as folder:
            path = str(Path(folder) / "candidate.onnx")
            onnx.save(model, path)
            return score(path)

    return evaluate
