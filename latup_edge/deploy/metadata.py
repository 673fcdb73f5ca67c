"""The ``latup_edge.*`` metadata an exported ONNX model carries, and the one reader of it.

The exporter (``latup_edge.deploy.export``) writes it; the bundle compiler and anything that needs a
model's config, preprocessing or label convention read it here. Needs only the base install: reads
through onnxruntime (no torch, no onnx package).

>>> read_model_metadata("model.onnx")["modalities"]   # doctest: +SKIP
['flair', 't1ce', 't2']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latup_edge.runtime.bundle import BundleError

METADATA_PREFIX = "latup_edge."
# Metadata values stored as JSON text (the others are plain strings).
JSON_METADATA = ("config", "modalities", "preprocessing", "labels")


def read_model_metadata(onnx_path: Path | str) -> dict[str, Any]:
    """The ``latup_edge.*`` metadata of an ONNX file, prefix removed, JSON values parsed; {} when there is none.

    Raises BundleError (one sentence) for a file that is not a readable ONNX model or whose JSON
    metadata is damaged.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Only the metadata is wanted: skip graph optimisation.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable files
        raise BundleError(f"{onnx_path} is not a readable ONNX model ({error}): re-export it") from None
    values: dict[str, Any] = {}
    for key, text in session.get_modelmeta().custom_metadata_map.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        name = key.removeprefix(METADATA_PREFIX)
        try:
            values[name] = json.loads(text) if name in JSON_METADATA else text
        except json.JSONDecodeError:
            raise BundleError(f"{onnx_path}: its metadata {key} is not valid JSON: re-export the model") from None
    return values
