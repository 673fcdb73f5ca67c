"""OpenVINO CPU backend: a compiled model that is a ``Forward``, and what OpenVINO really did with it.

Part of the runtime: imports only numpy and openvino (no torch, no onnx package).

Precisions:

- ``fp32``: the float model with ``INFERENCE_PRECISION_HINT=f32``. OpenVINO's default on CPUs with
  AMX is bf16, so an FP32 baseline has to ask for f32 explicitly.
- ``bf16``: the same float model with the hint ``bf16``; refused on a CPU without bf16 units.
- ``int8``: an INT8 model (NNCF IR or QDQ ONNX) whose non-quantized parts also run with the
  hint ``f32``: the INT8 drift then measures the quantizers alone, not quantizers plus bf16 (on the
  full network the default hint changed argmax on ~8 % of voxels and was not reliably faster).

>>> model = OpenVINOModel(Path("bundle/int8.xml"), "int8", threads=2)   # doctest: +SKIP
>>> logits = model(np.zeros((1, 3, 64, 64, 64), np.float32))            # doctest: +SKIP
>>> int8_kernel_report(model.compiled, (1, 3, 64, 64, 64))["int8_convolutions"]  # doctest: +SKIP
18
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import openvino as ov

from latup_edge.errors import LatupError

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
PerformanceHint = Literal["LATENCY", "THROUGHPUT"]
ShapeMode = Literal["static", "dynamic"]
# The INFERENCE_PRECISION_HINT each precision compiles with.
PRECISION_HINTS: dict[str, str] = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
DEVICE = "CPU"
# Runtime-graph layer types that are convolutions (LATUP-Net has only "Convolution").
CONVOLUTION_TYPES = ("Convolution", "GroupConvolution", "Deconvolution")
_INT8_TYPES = ("i8", "u8")
# What benchmark_app reports as resolved, read back from the compiled model.
RESOLVED_PROPERTIES = (
    "INFERENCE_NUM_THREADS",
    "NUM_STREAMS",
    "INFERENCE_PRECISION_HINT",
    "PERFORMANCE_HINT",
    "ENABLE_CPU_PINNING",
)


class OpenVINOError(LatupError):
    """A model OpenVINO cannot run as asked on this CPU; the message says which and what to do."""


def cpu_supports_bf16(core: ov.Core | None = None) -> bool:
    """True when the CPU plugin lists BF16 among its optimization capabilities (AVX512-BF16 or AMX)."""
    core = core or ov.Core()
    return "BF16" in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")


def cpu_name(core: ov.Core | None = None) -> str:
    """The CPU's full name as OpenVINO reports it."""
    core = core or ov.Core()
    return str(core.get_property(DEVICE, "FULL_DEVICE_NAME"))


class OpenVINOModel:
    """A LATUP-Net IR (.xml) or ONNX file compiled for the CPU at one precision; call it on an array.

    Any (1, C, D, H, W) input with D, H, W multiples of 8 runs. ``shapes`` says how:

    - ``static`` (default): the model is reshaped to each new input shape and compiled for it; one
      shape is held at a time. OpenVINO then plans the activations of a known shape and reuses their
      memory: measured on an int8 bundle at 160x192x160, a peak of 1.6 GB against 2.9 GB dynamic, and
      a faster pass (docs/RUNTIME.md). A new shape costs a compile (~1 s; less from ``cache_dir``),
      so callers pad inputs to a few bucket shapes (``latup_edge.runtime.volume.bucket_shape``).
    - ``dynamic``: the spatial axes are made dynamic once; OpenVINO sets up kernels on the first call
      at each new shape and keeps them, at the cost of memory.

    Args:
        model_path: an OpenVINO IR ``.xml`` (``.bin`` beside it), an ``.onnx`` file, or an in-memory
            ``ov.Model`` (as the quantizers and the sensitivity analysis produce).
        precision: ``fp32``, ``bf16`` (the float model) or ``int8`` (a quantized model).
        threads: ``INFERENCE_NUM_THREADS``; None lets OpenVINO use every core.
        hint: ``PERFORMANCE_HINT``, ``LATENCY`` (one stream, one case at a time) or ``THROUGHPUT``.
        cache_dir: OpenVINO's compiled-model cache (``CACHE_DIR``): later loads skip compilation.
        shapes: ``static`` or ``dynamic`` (above).
    """

    def __init__(
        self,
        model_path: Path | ov.Model,
        precision: Precision,
        threads: int | None = None,
        hint: PerformanceHint = "LATENCY",
        cache_dir: Path | None = None,
        shapes: ShapeMode = "static",
    ) -> None:
        if shapes not in get_args(ShapeMode):
            raise OpenVINOError(f"unknown shape mode {shapes!r}: choose static or dynamic")
        if precision not in PRECISIONS:
            raise OpenVINOError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if hint not in get_args(PerformanceHint):
            raise OpenVINOError(f"unknown performance hint {hint!r}: choose LATENCY or THROUGHPUT")
        in_memory = isinstance(model_path, ov.Model)
        self.path = Path(model_path.get_friendly_name() if in_memory else model_path)
        self.precision = precision
        if not in_memory and not self.path.is_file():
            raise OpenVINOError(f"model file {self.path} does not exist: check the path or rebuild the bundle")
        core = ov.Core()
        if precision == "bf16" and not cpu_supports_bf16(core):
            raise OpenVINOError(f"this CPU ({cpu_name(core)}) has no bf16 units: run {self.path.name} as fp32 or int8")
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
            "PERFORMANCE_HINT": hint,
            # With pinned threads, two OpenVINO processes on one machine fight over the same cores.
            "ENABLE_CPU_PINNING": False,
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        self.shapes = shapes
        self._core, self._config = core, config
        start = time.perf_counter()
        model = model_path.clone() if in_memory else core.read_model(str(self.path))
        model.reshape({model.input(0): _dynamic_spatial(model.input(0).get_partial_shape())})
        self._model = model
        # The dynamic model: what runs in dynamic mode, and what properties and kernel reports read.
        self.compiled = core.compile_model(model, DEVICE, config)
        self.load_ms = (time.perf_counter() - start) * 1000
        self._device_name = cpu_name(core)
        self._request = self.compiled.create_infer_request() if shapes == "dynamic" else None
        self._static: tuple[tuple[int, ...], ov.InferRequest] | None = None
        self.compiles: list[dict[str, Any]] = []  # one entry per static shape compiled: shape, ms
        self.int8_check: dict[str, Any] | None = None  # the kernels of an int8 model, checked on this CPU at load

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (1, K, D, H, W) float32 for an input (1, C, D, H, W); a ``Forward``."""
        request = self._request if self.shapes == "dynamic" else self._static_request(tuple(x.shape))
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()

    def release(self) -> None:
        """Free the activation memory until the next call, which plans it again (``CompiledModel.release_memory``).

        For two networks run in turn on each case: each otherwise keeps its own activations while the other runs
        (measured at 88x104x88 windows, int8: a peak of 920 MB held, 597 MB released; docs/RUNTIME.md)."""
        self.compiled.release_memory()  # the dynamic model: a kernel probe (``int8_kernel_report``) leaves memory
        if self._static is not None:
            self._static[1].get_compiled_model().release_memory()

    def _static_request(self, shape: tuple[int, ...]) -> ov.InferRequest:
        """The infer request of the model compiled for ``shape``; the previous shape's is released first."""
        if self._static is not None and self._static[0] == shape:
            return self._static[1]
        self._static = None  # free the old shape's activations before the new ones are planned
        start = time.perf_counter()
        model = self._model.clone()
        model.reshape({model.input(0): ov.PartialShape(list(shape))})
        request = self._core.compile_model(model, DEVICE, self._config).create_infer_request()
        self.compiles.append({"shape": list(shape), "ms": round((time.perf_counter() - start) * 1000, 1)})
        self._static = (shape, request)
        return request

    def resolved(self) -> dict[str, Any]:
        """What OpenVINO resolved for this compiled model (not only what was asked), plus the CPU."""
        values = {key: _plain(self.compiled.get_property(key)) for key in RESOLVED_PROPERTIES}
        return {"device": self._device_name, "precision": self.precision, "shapes": self.shapes, **values}


def _dynamic_spatial(shape: ov.PartialShape) -> ov.PartialShape:
    """Batch 1, the model's channel count, and dynamic D, H, W."""
    channels = shape[1].get_length() if shape.rank.is_static and shape[1].is_static else -1
    return ov.PartialShape([1, channels, -1, -1, -1])


def _plain(value: Any) -> Any:
    """An OpenVINO property value as a JSON-friendly Python value (f32, LATENCY, 2, False)."""
    if isinstance(value, ov.Type):
        return value.get_type_name()
    if isinstance(value, bool | int | float | str):
        return value
    return getattr(value, "name", str(value))


def int8_kernel_report(compiled_model: ov.CompiledModel, probe_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """Which convolution kernels a compiled model really runs: how many are INT8, and their names.

    Reads ``layerType``, ``runtimePrecision`` and ``primitiveType`` from the rt_info of every op of
    ``compiled_model.get_runtime_model()``. With dynamic shapes the CPU plugin picks kernels per
    input shape, so pass ``probe_shape`` (a representative input shape) to run one inference on
    zeros first and report the kernels of that shape.

    Returns ``convolutions``, ``int8_convolutions`` (runtime precision i8/u8 or an i8/u8 primitive),
    ``primitive_types`` (sorted, e.g. ``brgconv_avx512_amx_i8``) and ``probe_shape``.
    """
    if probe_shape is not None:
        compiled_model.create_infer_request().infer({0: np.zeros(tuple(probe_shape), np.float32)})
    convolutions = 0
    int8 = 0
    primitives: set[str] = set()
    for op in compiled_model.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) not in CONVOLUTION_TYPES:
            continue
        convolutions += 1
        precision = info["runtimePrecision"].astype(str).lower()
        # Primitive names mix cases ("brgconv_avx512_amx_I8" for u8 inputs): compare in lower case.
        primitive = info["primitiveType"].astype(str)
        primitives.add(primitive)
        if precision in _INT8_TYPES or any(kind in primitive.lower() for kind in _INT8_TYPES):
            int8 += 1
    return {
        "convolutions": convolutions,
        "int8_convolutions": int8,
        "primitive_types": sorted(primitives),
        "probe_shape": list(probe_shape) if probe_shape is not None else None,
    }


def measure_latency(
    model: OpenVINOModel, shape: Sequence[int], warmup: int = 1, repeats: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Time ``model`` on a random input of ``shape``: the first inference, then the median and p90.

    The first inference at a shape includes OpenVINO's shape-specific kernel setup, so it is
    reported apart; ``warmup`` more untimed runs follow, then ``repeats`` timed ones.
    """
    if repeats < 1:
        raise OpenVINOError(f"repeats must be at least 1, got {repeats}")
    x = np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)
    start = time.perf_counter()
    model(x)
    first_ms = (time.perf_counter() - start) * 1000
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "shape": list(shape),
        "first_ms": first_ms,
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "repeats": repeats,
    }
