"""INT8 with NNCF, OpenVINO's own quantizer, on the OpenVINO model read from the float ONNX.

For a brain-statistics network the brain mask and the masked statistics stay float
(``brain_statistics_ops``): the mask is computed from the unquantized input.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import openvino as ov

from latup_edge.deploy.quantize.graph import brain_statistics_ops, friendly_names
from latup_edge.errors import LatupError

if TYPE_CHECKING:
    from latup_edge.deploy.quantize.sensitivity import AgreementJudge


def _preset():
    import nncf

    # Asymmetric activations: after InstanceNorm and LeakyReLU they are far from zero-centred, and the
    # symmetric default lost WT agreement 0.992 -> 0.909 on brain boxes (docs/INT8.md).
    return nncf.QuantizationPreset.MIXED


# How an activation quantizer's range is set from the calibration samples: NNCF's default averages
# each sample's min and max ("mean"); "extreme" takes the min and max over all samples, as
# neural-compressor's QDQ calibration does (docs/INT8.md, "Under a shift of data").
ActivationRanges = Literal["mean", "extreme"]
ACTIVATION_RANGES: tuple[str, ...] = ("mean", "extreme")
DEFAULT_ACTIVATION_RANGES: ActivationRanges = "mean"


def _advanced(activation_ranges: str):
    """NNCF's advanced parameters for a range rule (None: its defaults)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if activation_ranges not in ACTIVATION_RANGES:
        raise LatupError(f"activation ranges must be one of {', '.join(ACTIVATION_RANGES)}, got {activation_ranges!r}")
    if activation_ranges == "mean":
        return None
    return AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)


def quantize_nncf(
    onnx_path: str,
    samples: Sequence[np.ndarray],
    keep_float: Sequence[str] = (),
    activation_ranges: ActivationRanges = DEFAULT_ACTIVATION_RANGES,
) -> ov.Model:
    """Static INT8 post-training quantization; the layers labelled in ``keep_float`` stay float."""
    import nncf

    model = ov.Core().read_model(onnx_path)
    with _quiet():
        return nncf.quantize(
            model,
            nncf.Dataset(list(samples)),
            subset_size=len(samples),
            preset=_preset(),
            ignored_scope=_ignored(model, keep_float),
            advanced_parameters=_advanced(activation_ranges),
        )


def quantize_nncf_with_accuracy_control(
    onnx_path: str,
    samples: Sequence[np.ndarray],
    judge: AgreementJudge,
    max_drop: float,
    keep_float: Sequence[str] = (),
    max_layers: int = 6,
    activation_ranges: ActivationRanges = DEFAULT_ACTIVATION_RANGES,
) -> ov.Model:
    """``nncf.quantize_with_accuracy_control`` driven by our agreement Dice with fp32 on the judge's cases.

    NNCF ranks the quantizer groups itself and returns up to ``max_layers`` of them to float until
    the mean worst-region agreement is within ``max_drop`` of fp32's (which is 1 by definition).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    def validate(compiled: ov.CompiledModel, cases) -> tuple[float, list[float]]:
        scores = [judge.case_score(case, compiled(case.inputs)[0]) for case in cases]
        return float(np.mean(scores)), scores

    model = ov.Core().read_model(onnx_path)
    with _quiet():
        return nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(list(samples)),
            nncf.Dataset(judge.cases, lambda case: case.inputs),
            validate,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(samples),
            preset=_preset(),
            ignored_scope=_ignored(model, keep_float),
            advanced_quantization_parameters=_advanced(activation_ranges),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=max_layers),
        )


def _ignored(model: ov.Model, keep_float: Sequence[str]):
    import nncf

    names = friendly_names(model, keep_float) + brain_statistics_ops(model)
    if not names:
        return None
    return nncf.IgnoredScope(names=names, validate=False)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF logs a line per ignored operation (~170 for a brain-statistics network): keep its warnings only."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
