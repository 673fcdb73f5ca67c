"""LATUP-Net to ONNX: export with self-describing metadata, and check the file against PyTorch.

The ONNX file carries what a runtime-only user needs to feed it (modalities, preprocessing, label
convention) in its ``metadata_props``, so a bundle never depends on torch to know how to run it.

>>> model = load_model("runs/demo/best.safetensors")               # doctest: +SKIP
>>> export_onnx(model, Path("model.onnx"))                          # doctest: +SKIP
>>> read_model_metadata("model.onnx")["modalities"]                 # doctest: +SKIP
['flair', 't1ce', 't2']
>>> report = export_for_deploy(None, Path("model.onnx"), None)      # doctest: +SKIP
>>> report["check"]["passed"], report["check"]["max_abs_diff"]      # doctest: +SKIP
(True, 3.1e-05)
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from latup_edge import __version__
from latup_edge.data.cases import discover_cases, load_case_images
from latup_edge.data.labels import CLASS_NAMES, ET_LABEL
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.data.preprocess import SIZE_MULTIPLE, apply_crop, normalize, paper_crop
from latup_edge.deploy.deploy_form import to_deploy_form
from latup_edge.deploy.metadata import JSON_METADATA, METADATA_PREFIX, read_model_metadata
from latup_edge.errors import LatupError
from latup_edge.fileio import atomic_write, sha256_file
from latup_edge.models.checkpoint import load_model, shipped_weights
from latup_edge.models.latup_net import LATUPNet
from latup_edge.runtime.normalization import describe_normalization

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# Measured ORT vs PyTorch FP32, full net, 128^3 phantom crop: 4.3e-6 at max|logit| 0.17, 2.6e-4 at 10 (head
# scaled like a trained net): <= 3e-5 x max|logit|, so 1e-3 + 1e-3 x max|logit| leaves a >= 30x margin.
ABS_TOLERANCE = 1e-3
REL_TOLERANCE = 1e-3

LABELS: dict[str, Any] = {
    "channels": dict(enumerate(CLASS_NAMES)),
    "brats_label": {
        convention: {name: (ET_LABEL[convention] if index == 3 else index) for index, name in enumerate(CLASS_NAMES)}
        for convention in ET_LABEL
    },
    "output": "logits; the class is the argmax over the channel axis (softmax is monotone: not needed)",
}


class ExportCheckError(LatupError):
    """The ONNX model does not reproduce the PyTorch network within tolerance."""


def preprocessing(normalization: str) -> dict[str, Any]:
    """How a model trained with ``normalization`` wants its input: the metadata's ``preprocessing``.

    ``normalization`` is the method's name (what ``latup_edge.data.preprocess.normalize`` takes).
    """
    return {
        "modalities": list(MODEL_MODALITIES),
        "layout": "input (N, 3, D, H, W) float32; D, H, W are the NIfTI voxel axes X, Y, Z",
        "normalization": normalization,
        "normalization_description": describe_normalization(normalization),
        "crop": "the bounding box of voxels non-zero in any modality, each side grown to a multiple of "
        f"{SIZE_MULTIPLE} (centred; zero-padded where it leaves the image)",
        "size_multiple": SIZE_MULTIPLE,
    }


def onnx_metadata(model: LATUPNet, weights_sha256: str | None = None) -> dict[str, str]:
    """The ``metadata_props`` an exported LATUP-Net carries (keys prefixed ``latup_edge.``)."""
    values: dict[str, Any] = {
        "config": model.config.to_dict(),
        "modalities": list(MODEL_MODALITIES),
        "preprocessing": preprocessing(model.config.normalization),
        "labels": LABELS,
        "version": __version__,
        "weights_sha256": weights_sha256 or "unknown",
    }
    return {
        METADATA_PREFIX + key: json.dumps(value, sort_keys=True) if key in JSON_METADATA else value
        for key, value in values.items()
    }


def _onnx_model(model: LATUPNet, weights_sha256: str | None) -> onnx.ModelProto:
    example = torch.zeros(1, model.config.in_channels, SIZE_MULTIPLE, SIZE_MULTIPLE, SIZE_MULTIPLE)
    spatial = {0: "N", 2: "D", 3: "H", 4: "W"}
    buffer = io.BytesIO()
    model.eval()
    with warnings.catch_warnings():
        # Expected while tracing: the forward's shape check, InstanceNorm's per-instance statistics.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is chosen on purpose
        # The TorchScript exporter (dynamo=False) takes ~1 s and keeps InstanceNormalization native.
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: spatial, OUTPUT_NAME: spatial},
        )
    proto = _without_initializer_identities(onnx.load_from_string(buffer.getvalue()))
    for key, value in onnx_metadata(model, weights_sha256).items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def _without_initializer_identities(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Read shared initializers directly instead of through the Identity nodes the exporter adds.

    The exporter deduplicates equal weights (an untrained network's InstanceNorm scales are all ones) and
    reads the copies through Identity nodes; ONNX Runtime's graph optimizer (1.32) drops such an Identity
    in front of the brain-statistics Mul and then refuses the graph as invalid.
    """
    graph = proto.graph
    initializers = {initializer.name for initializer in graph.initializer}
    outputs = {output.name for output in graph.output}
    source = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs
    }
    kept = [node for node in graph.node if not (node.op_type == "Identity" and node.output[0] in source)]
    for node in kept:
        for index, name in enumerate(node.input):
            node.input[index] = source.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)
    return proto


def export_onnx(model: LATUPNet, path: Path, weights_sha256: str | None = None) -> Path:
    """Write ``model`` (in eval mode) as opset-17 ONNX with dynamic batch and spatial axes, atomically.

    Input ``image`` (N, 3, D, H, W), output ``logits`` (N, 4, D, H, W); ``weights_sha256`` (the
    checkpoint file's hash) is recorded in the metadata, ``unknown`` when not given.

    >>> export_onnx(LATUPNet(LATUPNetConfig(base_filters=4)), Path("narrow.onnx"))  # doctest: +SKIP
    """
    proto = _onnx_model(model, weights_sha256)
    return atomic_write(Path(path), lambda tmp: onnx.save(proto, tmp))


def check_onnx(model: LATUPNet, onnx_path: Path, x: np.ndarray) -> dict[str, Any]:
    """Run ONNX Runtime (CPU) and PyTorch FP32 on ``x`` (N, 3, D, H, W) and compare their logits.

    Returns ``max_abs_diff``, ``max_abs_logit``, ``tolerance`` (ABS_TOLERANCE + REL_TOLERANCE x
    the largest logit), ``agreement`` (share of voxels with the same argmax class) and ``passed``.

    >>> check_onnx(model, Path("model.onnx"), np.zeros((1, 3, 32, 32, 32), np.float32))  # doctest: +SKIP
    {'max_abs_diff': 2.4e-06, ..., 'agreement': 1.0, 'passed': True}
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    with torch.inference_mode():
        torch_logits = model.eval()(torch.from_numpy(x)).numpy()
    max_abs_logit = float(np.abs(torch_logits).max())
    max_abs_diff = float(np.abs(onnx_logits - torch_logits).max())
    tolerance = ABS_TOLERANCE + REL_TOLERANCE * max_abs_logit
    agreement = float(np.mean(onnx_logits.argmax(axis=1) == torch_logits.argmax(axis=1)))
    return {
        "input_shape": list(x.shape),
        "max_abs_diff": max_abs_diff,
        "max_abs_logit": max_abs_logit,
        "tolerance": tolerance,
        "agreement": agreement,
        "passed": max_abs_diff <= tolerance,
    }


def check_failure(onnx_path: Path, check: dict[str, Any]) -> str:
    """The one-sentence message for a failed ``check_onnx`` report."""
    return (
        f"{onnx_path} does not reproduce the PyTorch network: max logit difference "
        f"{check['max_abs_diff']:.3g} > tolerance {check['tolerance']:.3g} (argmax agreement "
        f"{check['agreement']:.4f}): re-export it from the same weights"
    )


def check_input(case_dir: Path, size: int = 128, *, normalization: str) -> np.ndarray:
    """The first case under ``case_dir``, normalised with the model's ``normalization``, centred ``size``^3 crop.

    Returns a (1, 3, size, size, size) float32 array.
    """
    if size % SIZE_MULTIPLE or size <= 0:
        raise LatupError(f"the check crop size must be a positive multiple of {SIZE_MULTIPLE}, got {size}")
    images, _ = load_case_images(discover_cases(case_dir)[0])
    normalized = normalize(images, normalization)
    return apply_crop(normalized, paper_crop(normalized.shape[1:], size))[None]


def _phantom_check_input(size: int, normalization: str) -> np.ndarray:
    from latup_edge.data.phantom import write_phantoms

    with tempfile.TemporaryDirectory(prefix="latup-export-check-") as folder:
        write_phantoms(Path(folder), n=1, seed=0)
        return check_input(Path(folder), size, normalization=normalization)


def export_for_deploy(
    weights: Path | None,
    out: Path,
    check_case_dir: Path | None,
    check_size: int = 128,
    deploy_form: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint (None: the shipped weights), export it to ``out`` and check it against PyTorch.

    With ``deploy_form`` the exported graph is ``to_deploy_form(model)`` (decoder convolutions split
    per concat input: the same function, INT8-friendly); the check compares it with the paper form.

    The check runs on the first case of ``check_case_dir`` (None: one generated phantom), normalised
    as the model was trained (its config's ``normalization``), with a ``check_size``^3 centre crop.
    The file appears at ``out`` only if the check passes; otherwise ExportCheckError says by how
    much it failed. Returns a report with the output path, its sha256, the metadata and the check.

    >>> export_for_deploy(Path("runs/demo/best.safetensors"), Path("model.onnx"), None)  # doctest: +SKIP
    """
    weights = Path(weights) if weights is not None else shipped_weights()
    model = load_model(weights)
    method = model.config.normalization
    if check_case_dir:
        x = check_input(check_case_dir, check_size, normalization=method)
    else:
        x = _phantom_check_input(check_size, method)
    proto = _onnx_model(to_deploy_form(model) if deploy_form else model, sha256_file(weights))
    report: dict[str, Any] = {"deploy_form": deploy_form}

    def write_checked(tmp: Path) -> None:
        onnx.save(proto, tmp)
        report["check"] = check_onnx(model, tmp, x)
        if not report["check"]["passed"]:
            raise ExportCheckError(check_failure(Path(out), report["check"]))

    atomic_write(Path(out), write_checked)
    report.update(
        onnx=str(out),
        sha256=sha256_file(Path(out)),
        weights=str(weights),
        check_data=str(check_case_dir) if check_case_dir else "generated phantom (seed 0)",
        opset=OPSET,
        metadata=read_model_metadata(out),
    )
    return report
