"""Static INT8 post-training quantization with two engines behind one interface.

``quantize`` runs an engine (NNCF or neural-compressor) on the float ONNX model with a calibration
set; optionally ranks the quantized layers by the damage each does (``sensitivity``) and keeps in
float exactly the layers that ranking says must be (``mixed``). Every engine's result is read by
OpenVINO as FakeQuantize operations, so one sensitivity analysis serves both.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import openvino as ov

from latup_edge.deploy.quantize.graph import quantized_layers
from latup_edge.deploy.quantize.nncf_engine import DEFAULT_ACTIVATION_RANGES, ActivationRanges
from latup_edge.deploy.quantize.sensitivity import (
    MIN_GAIN,
    AgreementJudge,
    LayerSensitivity,
    block_of,
    layers_to_keep_float,
    rank_blocks,
    rank_layers,
)
from latup_edge.errors import LatupError

Engine = Literal["nncf", "inc"]
ENGINES: tuple[str, ...] = ("nncf", "inc")
# Agreement with fp32 (worst region) that the mixed-precision search stops at.
DEFAULT_AGREEMENT_TARGET = 0.995


@dataclass
class QuantizationResult:
    """An INT8 model file and how it was made."""

    engine: str
    path: Path
    keep_float: list[str]
    seconds: float
    activation_ranges: str = DEFAULT_ACTIVATION_RANGES
    baseline_agreement: float | None = None
    agreement: float | None = None
    ranking: list[LayerSensitivity] = field(default_factory=list)
    blocks: list[LayerSensitivity] = field(default_factory=list)  # the screening step, when it ran
    output_bias: dict[str, Any] | None = None  # the head's per-class offsets, when corrected (output_bias.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "path": str(self.path),
            "keep_float": self.keep_float,
            "activation_ranges": self.activation_ranges if self.engine == "nncf" else "extreme",
            "seconds": round(self.seconds, 1),
            "agreement_fully_int8": self.baseline_agreement,
            "agreement": self.agreement,
            "sensitivity": [entry.to_dict() for entry in self.ranking],
            "sensitivity_blocks": [entry.to_dict() for entry in self.blocks],
            "output_bias": self.output_bias,
        }


@contextlib.contextmanager
def _progress_to_stderr() -> Iterator[None]:
    """Send the engines' progress bars and logs to stderr: stdout carries only results (``--json``)."""
    handlers = [h for name in ("nncf", "neural_compressor") for h in logging.getLogger(name).handlers]
    streams = [getattr(h, "stream", None) for h in handlers]
    for handler, stream in zip(handlers, streams, strict=True):
        if stream is sys.stdout or stream is sys.__stdout__:
            handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            if stream is not None:
                handler.setStream(stream)


def run_engine(
    engine: Engine,
    onnx_path: Path,
    samples: Sequence[np.ndarray],
    out_dir: Path,
    keep_float: Sequence[str] = (),
    judge: AgreementJudge | None = None,
    max_drop: float = 0.0,
    activation_ranges: ActivationRanges = DEFAULT_ACTIVATION_RANGES,
) -> Path:
    """Quantize with one engine; returns the INT8 model file (IR .xml for NNCF, QDQ .onnx for INC).

    With a ``judge``, the engine's own accuracy-aware search (NNCF accuracy control, INC tuning),
    scored by that judge, returns layers to float until the score is within ``max_drop`` of fp32's.
    ``activation_ranges`` is NNCF's rule (``nncf_engine.ACTIVATION_RANGES``); neural-compressor always
    takes the extremes over the samples.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with _progress_to_stderr():
        if engine == "nncf":
            from latup_edge.deploy.quantize.nncf_engine import quantize_nncf, quantize_nncf_with_accuracy_control

            if judge is None:
                model = quantize_nncf(str(onnx_path), samples, keep_float, activation_ranges)
            else:
                model = quantize_nncf_with_accuracy_control(
                    str(onnx_path), samples, judge, max_drop, keep_float, activation_ranges=activation_ranges
                )
            path = out_dir / "int8_nncf.xml"
            ov.save_model(model, str(path), compress_to_fp16=False)
            return path
        if engine == "inc":
            from latup_edge.deploy.quantize.inc_engine import quantize_inc

            path = out_dir / "int8_inc.onnx"
            return quantize_inc(str(onnx_path), samples, path, keep_float, score=judge, max_drop=max_drop)
    raise LatupError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")


def quantize(
    engine: Engine,
    onnx_path: Path,
    samples: Sequence[np.ndarray],
    out_dir: Path,
    keep_float: Sequence[str] = (),
    judge: AgreementJudge | None = None,
    mixed: bool = True,
    target: float = DEFAULT_AGREEMENT_TARGET,
    progress: Callable[[str], None] = lambda message: None,
    screen: bool = True,
    accuracy_control: bool = False,
    activation_ranges: ActivationRanges = DEFAULT_ACTIVATION_RANGES,
    output_bias: bool = False,
) -> QuantizationResult:
    """Quantize; with a ``judge``, rank the layers and (``mixed``) keep the harmful ones in float.

    The search bypasses quantizers in the INT8 model to find the layers (``screen``: first whole
    blocks, then the layers of the blocks that matter; else every layer), then quantizes again with
    those layers excluded, so the final model is what the engine itself makes of that choice.
    ``accuracy_control`` hands that search to the engine's own loop instead, scored by the same judge.
    ``output_bias`` then fits per-class offsets on the head's bias to the samples (``output_bias.py``).
    """
    if output_bias and engine != "nncf":
        raise LatupError("the output bias correction edits an OpenVINO model: use --engine nncf, or --no-output-bias")
    started = time.perf_counter()
    progress(f"{engine}: quantizing")
    path = run_engine(engine, onnx_path, samples, out_dir, keep_float, activation_ranges=activation_ranges)
    result = QuantizationResult(engine, path, list(keep_float), 0.0, activation_ranges=activation_ranges)
    if judge is not None and accuracy_control:
        result.baseline_agreement = judge(path)
        plain_layers = quantized_layers(ov.Core().read_model(str(path)))
        progress(f"{engine}: accuracy-aware search (target agreement {target})")
        result.path = run_engine(
            engine, onnx_path, samples, out_dir, keep_float, judge, 1 - target, activation_ranges=activation_ranges
        )
        kept = set(quantized_layers(ov.Core().read_model(str(result.path))))
        result.keep_float = [*keep_float, *(layer for layer in plain_layers if layer not in kept)]
        result.agreement = judge(result.path)
    elif judge is not None:
        int8 = ov.Core().read_model(str(path))
        baseline = judge(int8)
        layers = None
        if screen:
            progress(f"{engine}: screening blocks")
            result.blocks = rank_blocks(int8, judge, baseline, progress=progress)
            harmful = {entry.layer for entry in result.blocks if entry.gain >= MIN_GAIN}
            layers = [layer for layer in quantized_layers(int8) if block_of(layer) in harmful]
        progress(f"{engine}: ranking layers")
        result.baseline_agreement, result.ranking = rank_layers(int8, judge, progress, layers, baseline)
        result.agreement = result.baseline_agreement
        if mixed:
            extra, _ = layers_to_keep_float(int8, result.ranking, judge, target, baseline=baseline)
            if extra:
                progress(f"{engine}: quantizing again with {len(extra)} layer(s) in float")
                result.keep_float = [*keep_float, *extra]
                result.path = run_engine(
                    engine, onnx_path, samples, out_dir, result.keep_float, activation_ranges=activation_ranges
                )
                result.agreement = judge(result.path)
    if output_bias:
        progress(f"{engine}: output bias correction")
        result.path, result.output_bias = _correct_output_bias(onnx_path, result.path, samples, out_dir)
    result.seconds = time.perf_counter() - started
    return result


def _correct_output_bias(
    onnx_path: Path, path: Path, samples: Sequence[np.ndarray], out_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """The INT8 model with its head's bias corrected (a new file), and the correction's record."""
    from latup_edge.deploy.quantize.output_bias import correct_output_bias, with_output_offsets
    from latup_edge.runtime.openvino_backend import OpenVINOModel

    correction = correct_output_bias(OpenVINOModel(onnx_path, "fp32"), OpenVINOModel(path, "int8"), samples)
    corrected = out_dir / "int8_nncf_output_bias.xml"
    model = with_output_offsets(ov.Core().read_model(str(path)), correction.offsets)
    ov.save_model(model, str(corrected), compress_to_fp16=False)
    return corrected, correction.to_dict()
