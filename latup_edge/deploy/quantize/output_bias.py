"""Output bias correction: a per-class offset on the INT8 head's bias, fitted on the calibration samples
so that INT8's labels agree with fp32's.

INT8 rounding shifts the head's class logits one way: at uncertain oedema borders the shipped int8
model painted 2-6 % less oedema than fp32 (docs/INT8.md). NNCF's own bias correction leaves this
network unchanged (fast or full, the model comes out byte-identical), so it is done here, on the only
voxels an offset can flip: those fp32 decides by a small margin, anywhere in the box. Outside the brain
LATUP-Net's logits are one constant vector whose background wins by only ~0.12, so those voxels (weighted
by their count) keep any offset from painting tumour there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import openvino as ov

from latup_edge.errors import LatupError

# Logits: a voxel that fp32 decides by more than this cannot flip under an offset of MAX_OFFSET.
BORDER_MARGIN = 4.0
MAX_OFFSET = 2.0
# Coordinate sweeps over the classes: each one is exact for its class given the others.
SWEEPS = 3

Forward = Callable[[np.ndarray], np.ndarray]


@dataclass
class OutputCorrection:
    """The offsets added to the head's bias and what they did on the calibration samples' border voxels."""

    offsets: list[float]
    voxels: int
    agreement_before: float
    agreement_after: float

    def to_dict(self) -> dict[str, object]:
        return {
            "offsets": [round(offset, 4) for offset in self.offsets],
            "border_voxels": self.voxels,
            "border_agreement_before": round(self.agreement_before, 5),
            "border_agreement_after": round(self.agreement_after, 5),
        }


def border_logits(
    reference: Forward, quantized: Forward, samples: Iterable[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fp32 and INT8 logits, (rows, classes), of the voxels whose fp32 class wins by < BORDER_MARGIN, and each
    row's count: identical voxels (all of the background outside the brain) are one row."""
    rows, counts = [], []
    for sample in samples:
        logits = reference(sample)[0]
        top_two = np.partition(logits, -2, axis=0)[-2:]
        border = top_two[1] - top_two[0] < BORDER_MARGIN
        pairs = np.concatenate([logits[:, border], quantized(sample)[0][:, border]]).T
        unique, count = np.unique(pairs, axis=0, return_counts=True)
        rows.append(unique)
        counts.append(count)
    pairs, count = np.concatenate(rows), np.concatenate(counts)
    classes = pairs.shape[1] // 2
    return pairs[:, :classes], pairs[:, classes:], count


def agreement(
    reference: np.ndarray, quantized: np.ndarray, offsets: Sequence[float], weights: np.ndarray | None = None
) -> float:
    """Share of voxels (rows weighted by ``weights``) where INT8's class, after the offsets, is fp32's."""
    same = np.argmax(quantized + np.asarray(offsets), axis=1) == np.argmax(reference, axis=1)
    return float(np.average(same, weights=weights))


def _best_offset(truth: np.ndarray, shifted: np.ndarray, c: int, weights: np.ndarray) -> float:
    """The offset of class ``c`` (the others fixed) that makes the most voxels agree; nearest 0 on a tie."""
    others = np.delete(shifted, c, axis=1)
    other_class = np.delete(np.arange(shifted.shape[1]), c)[np.argmax(others, axis=1)]
    threshold = others.max(axis=1) - shifted[:, c]  # the voxel becomes class c once the offset passes this
    gain = weights * ((truth == c).astype(np.int64) - (other_class == truth))
    order = np.argsort(threshold)
    edges = np.concatenate([[-np.inf], threshold[order], [np.inf]])
    score = np.concatenate([[0], np.cumsum(gain[order])])  # agreement (less a constant) for an offset in each gap
    low, high = np.maximum(edges[:-1], -MAX_OFFSET), np.minimum(edges[1:], MAX_OFFSET)
    inside = low < high
    best = score[inside].max()
    candidates = np.flatnonzero(inside & (score == best))
    middles = np.clip((low[candidates] + high[candidates]) / 2, -MAX_OFFSET, MAX_OFFSET)
    middles = np.where((low[candidates] <= 0) & (high[candidates] >= 0), 0.0, middles)
    return float(middles[np.argmin(np.abs(middles))])


def fit_offsets(reference: np.ndarray, quantized: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-class offsets (background's fixed at 0) for INT8's logits that maximise agreement with fp32."""
    truth = np.argmax(reference, axis=1)
    weights = np.ones(len(truth), dtype=np.int64) if weights is None else weights
    offsets = np.zeros(quantized.shape[1])
    for _ in range(SWEEPS):
        for c in range(1, quantized.shape[1]):
            others = np.where(np.arange(len(offsets)) == c, 0.0, offsets)  # class c's own offset is what is fitted
            offsets[c] = _best_offset(truth, quantized + others, c, weights)
    return offsets


def _output_bias(model: ov.Model) -> ov.Node:
    """The Add that puts the head's bias on the model's one output."""
    if len(model.outputs) != 1:
        raise LatupError(f"output bias correction needs a model with one output, this one has {len(model.outputs)}")
    node = model.outputs[0].get_node().input_value(0).get_node()
    if node.get_type_name() != "Add" or node.input_value(0).get_node().get_type_name() != "Convolution":
        raise LatupError(
            f"the model's output is not a convolution's bias Add ({node.get_type_name()}): cannot correct it"
        )
    return node


def with_output_offsets(model: ov.Model, offsets: Sequence[float]) -> ov.Model:
    """``model`` with ``offsets`` added to its head's bias (in place; returned for chaining)."""
    add = _output_bias(model)
    bias = add.input_value(1)
    shape = [1, len(offsets)] + [1] * (len(bias.get_partial_shape()) - 2)
    shift = ov.op.Constant(np.asarray(offsets, dtype=np.float32).reshape(shape))
    corrected = ov.opset13.add(bias, shift)
    add.input(1).replace_source_output(corrected.output(0))
    model.validate_nodes_and_infer_types()
    return model


def correct_output_bias(reference: Forward, quantized: Forward, samples: Iterable[np.ndarray]) -> OutputCorrection:
    """Fit the offsets on ``samples`` (normalised calibration inputs) from fp32's and INT8's logits."""
    fp32, int8, count = border_logits(reference, quantized, samples)
    if not len(fp32):
        raise LatupError("no calibration voxel lies near a class border: cannot fit the output bias correction")
    offsets = fit_offsets(fp32, int8, count)
    return OutputCorrection(
        offsets=[float(o) for o in offsets],
        voxels=int(count.sum()),
        agreement_before=agreement(fp32, int8, np.zeros_like(offsets), count),
        agreement_after=agreement(fp32, int8, offsets, count),
    )
