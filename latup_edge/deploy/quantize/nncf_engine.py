"""INT8 with NNCF, OpenVINO's own quantizer, on the OpenVINO model read from the float ONNX."""

from __future__ import annotations

from collections.abc import Sequence

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


def _ignored(model: ov.Model, keep_float: Sequence[str]):
    import nncf

    if not keep_float:
        return None
    return nncf.IgnoredScope(names=friendly_names(model, keep_float), validate=False)
