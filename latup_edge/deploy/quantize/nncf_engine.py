"""INT8 with NNCF, OpenVINO's own quantizer, on the OpenVINO model read from the float ONNX."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import openvino as ov

from latup_edge.deploy.quantize.graph import friendly_names


def quantize_nncf(onnx_path: str, samples: Sequence[np.ndarray], keep_float: Sequence[str] = ()) -> ov.Model:
    """Static INT8 post-training quantization; the layers labelled in ``keep_float`` stay float."""
    import nncf

    model = ov.Core().read_model(onnx_path)
    return nncf.quantize(
        model,
        nncf.Dataset(list(samples)),
        subset_size=len(samples),
        ignored_scope=_ignored(model, keep_float),
    )


def quantize_nncf_accuracy_control(
    onnx_path: str,
    samples: Sequence[np.ndarray],
    validation: Sequence[np.ndarray],
    score: Callable[[ov.CompiledModel, Sequence[np.ndarray]], float],
    max_drop: float,
    keep_float: Sequence[str] = (),
) -> ov.Model:
    """NNCF's accuracy control: quantize, then return layers to float, most harmful first, until
    ``score`` (our Dice agreement on held-out cases) drops by at most ``max_drop``."""
    import nncf

    model = ov.Core().read_model(onnx_path)

    def validate(compiled: ov.CompiledModel, inputs) -> tuple[float, None]:
        return score(compiled, list(inputs)), None

    return nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(list(samples)),
        nncf.Dataset(list(validation)),
        validation_fn=validate,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(samples),
        ignored_scope=_ignored(model, keep_float),
    )


def _ignored(model: ov.Model, keep_float: Sequence[str]):
    import nncf

    if not keep_float:
        return None
    return nncf.IgnoredScope(names=friendly_names(model, keep_float), validate=False)
