"""One inference interface over OpenVINO, ONNX Runtime and PyTorch.

A ``Backend`` is a ``Forward`` (logits for a (1, C, D, H, W) float32 input) that also says what it
is and what it resolved: ``name``, ``precision``, ``load_ms`` and ``resolved()`` (threads, streams,
precision actually used), and which intensity normalisation its model was trained with
(``normalization``: the bundle's for openvino and onnxruntime, the checkpoint's for torch). Pre- and
post-processing are not here: ``latup_edge.runtime.volume`` does them once for every backend, so all
backends see identical inputs.

- ``openvino``: a bundle's IR at fp32, bf16 or int8 (default: the bundle's default precision).
- ``onnxruntime``: the bundle's ``fp32.onnx`` at fp32 (ONNX Runtime INT8 gives no speed-up on these
  3-D convolutions, so bundles carry no ONNX Runtime INT8 path).
- ``torch``: a checkpoint (default: the shipped weights) at fp32 or bf16 autocast; torch is imported
  only here, so a runtime-only install runs the other two.

>>> backend = open_backend("openvino", None, load_bundle(Path("bundle")), None, threads=2)  # doctest: +SKIP
>>> backend.precision, backend.resolved()["threads"]                                      # doctest: +SKIP
('int8', 2)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np

from latup_edge.errors import LatupError
from latup_edge.runtime.bundle import MAKE_BUNDLE, Bundle
from latup_edge.runtime.openvino_backend import OpenVINOModel, PerformanceHint, Precision

BackendName = Literal["openvino", "onnxruntime", "torch"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
ONNX_FILE = "fp32.onnx"


class BackendError(LatupError):
    """A backend that cannot run as asked; the message is one sentence saying what to do."""


class Backend(Protocol):
    """A ``Forward`` that knows its backend, precision, load time and resolved settings."""

    name: str
    precision: str
    load_ms: float
    normalization: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def resolved(self) -> dict[str, Any]: ...

    def release(self) -> None:
        """Free memory held between calls (activations), for a second network to use; the next call is exact."""


class OpenVINOBackend:
    """A bundle's OpenVINO model at one precision."""

    name = "openvino"

    def __init__(self, model: OpenVINOModel, normalization: str) -> None:
        self.model = model
        self.precision = model.precision
        self.load_ms = model.load_ms
        self.normalization = normalization

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model(x)

    def release(self) -> None:
        self.model.release()

    def resolved(self) -> dict[str, Any]:
        openvino = self.model.resolved()
        return {
            "backend": self.name,
            "precision": self.precision,
            "threads": openvino["INFERENCE_NUM_THREADS"],
            "streams": openvino["NUM_STREAMS"],
            "inference_precision": openvino["INFERENCE_PRECISION_HINT"],
            "model": str(self.model.path),
            "openvino": openvino,
        }


class OnnxRuntimeBackend:
    """An ONNX model in ONNX Runtime's CPU execution provider, fp32."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: Path, threads: int | None, normalization: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        start = time.perf_counter()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.load_ms = (time.perf_counter() - start) * 1000
        self.path = path
        self.normalization = normalization
        self._input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def release(self) -> None:
        """ONNX Runtime keeps its arena; nothing to free between calls."""

    def resolved(self) -> dict[str, Any]:
        threads = self.session.get_session_options().intra_op_num_threads
        return {
            "backend": self.name,
            "precision": self.precision,
            # 0 is ONNX Runtime's "one thread per physical core".
            "threads": threads or None,
            "streams": 1,
            "providers": self.session.get_providers(),
            "model": str(self.path),
        }


class TorchBackend:
    """A PyTorch LATUP-Net checkpoint, fp32 or bf16 autocast, eval mode."""

    name = "torch"

    def __init__(self, weights: Path | None, precision: Precision, threads: int | None) -> None:
        try:
            import torch
        except ImportError:
            raise BackendError(
                "the torch backend needs PyTorch, which this install does not have: "
                "install torch or use --backend openvino"
            ) from None
        from latup_edge.models.checkpoint import load_model, shipped_weights
        from latup_edge.runtime.volume import torch_forward

        if threads is not None:
            torch.set_num_threads(int(threads))  # torch's thread pool is per process
        self.weights = Path(weights) if weights is not None else shipped_weights()
        self.precision = precision
        start = time.perf_counter()
        model = load_model(self.weights)
        self._forward = torch_forward(model, bf16=precision == "bf16")
        self.load_ms = (time.perf_counter() - start) * 1000
        self.normalization = model.config.normalization
        self.network = model.config.to_dict()
        self._torch = torch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x)

    def release(self) -> None:
        """Torch frees activations after each call; nothing to free."""

    def resolved(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "precision": self.precision,
            "threads": self._torch.get_num_threads(),
            "streams": 1,
            "autocast": "bf16" if self.precision == "bf16" else None,
            "torch": self._torch.__version__,
            "weights": str(self.weights),
        }


def open_backend(
    backend: BackendName,
    precision: Precision | None,
    bundle: Bundle | None,
    weights: Path | None,
    threads: int | None = None,
    hint: PerformanceHint = "LATENCY",
    cache_dir: Path | None = None,
    allow_failed: bool = False,
) -> Backend:
    """Load a backend at a precision (None: the bundle's default for openvino, else fp32).

    openvino and onnxruntime run ``bundle``; torch runs ``weights`` (None: the shipped weights).
    ``allow_failed`` lets openvino run a precision that failed the bundle's drift gate (with a
    warning). Raises BackendError (or BundleError) with one sentence when the combination cannot run.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        if precision not in (None, "fp32", "bf16"):
            raise BackendError(f"the torch backend runs fp32 or bf16, not {precision}: use --backend openvino for int8")
        return TorchBackend(weights, precision or "fp32", threads)
    if weights is not None:
        raise BackendError(f"--weights is for the torch backend; the {backend} backend runs the bundle's model")
    if bundle is None:
        raise BackendError(f"the {backend} backend runs a bundle: pass --bundle DIR ({MAKE_BUNDLE})")
    if backend == "openvino":
        return OpenVINOBackend(bundle.model(precision, threads, hint, cache_dir, allow_failed), bundle.normalization)
    if precision not in (None, "fp32"):
        raise BackendError(f"the onnxruntime backend runs fp32 only, not {precision}: use --backend openvino")
    if ONNX_FILE not in bundle.manifest.get("files", {}):
        raise BackendError(
            f"bundle {bundle.path} has no {ONNX_FILE}: rebuild it with the ONNX files included "
            f"(`latup-edge build` includes them) or use --backend openvino"
        )
    return OnnxRuntimeBackend(bundle.path / ONNX_FILE, threads, bundle.normalization)
