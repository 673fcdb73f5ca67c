"""Which quantized layers damage the segmentation, measured in OpenVINO on real cases.

Each candidate is compiled by the OpenVINO CPU plugin and run on real (cropped) cases; its score is
the agreement Dice (per region) of its labels with the float model's labels. Emulating the
quantizers in float is not enough: one measured setting agreed 0.99 emulated and 0.04 in the CPU
plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov

from latup_edge.data.labels import REGIONS
from latup_edge.deploy.quantize.graph import bypass, quantized_layers
from latup_edge.evaluate.drift import PreparedCase
from latup_edge.evaluate.metrics import agreement
from latup_edge.runtime.openvino_backend import OpenVINOModel


@dataclass
class AgreementJudge:
    """Scores INT8 candidates by their agreement with the float model on a few prepared cases."""

    cases: list[PreparedCase]
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    threads: int | None = None

    @classmethod
    def from_float_model(cls, float_model: Path, cases: list[PreparedCase], threads: int | None = None):
        fp32 = OpenVINOModel(float_model, "fp32", threads=threads)
        return cls(cases, {case.case_id: case.classes(fp32(case.inputs)) for case in cases}, threads)

    def per_case(self, model: ov.Model | Path) -> dict[str, dict[str, float]]:
        """Agreement Dice per case and region (WT, TC, ET)."""
        int8 = OpenVINOModel(model, "int8", threads=self.threads)
        return {c.case_id: agreement(c.classes(int8(c.inputs)), self.reference[c.case_id]) for c in self.cases}

    def regions(self, model: ov.Model | Path) -> dict[str, float]:
        """Mean agreement Dice per region (WT, TC, ET) over the cases."""
        return mean_per_region(self.per_case(model))

    def __call__(self, model: ov.Model | Path) -> float:
        """The worst region's mean agreement: one number to rank and to stop on."""
        return min(self.regions(model).values())

    def case_score(self, case: PreparedCase, scores: np.ndarray) -> float:
        """One case's worst-region agreement, from the network's output on it (for engines' own loops)."""
        return min(agreement(case.classes(scores), self.reference[case.case_id]).values())


def mean_per_region(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over cases of per-case, per-region scores."""
    return {region: float(np.mean([s[region] for s in scores.values()])) for region in REGIONS}


# Below this agreement gain a layer is noise: on the shipped weights every layer but one gained
# < 0.001 while the culprit gained 0.043 (docs/INT8.md).
MIN_GAIN = 0.002


@dataclass
class LayerSensitivity:
    layer: str
    agreement: float  # worst-region agreement with fp32 when only this layer reads float
    gain: float  # over the fully quantized model

    def to_dict(self) -> dict:
        return {"layer": self.layer, "agreement": round(self.agreement, 5), "gain": round(self.gain, 5)}


def block_of(layer: str) -> str:
    """The network block a layer label belongs to: ``/encoder2/norm/InstanceNormalization`` -> ``encoder2``."""
    return layer.split("/")[1] if layer.startswith("/") else layer


def blocks_of(int8: ov.Model) -> dict[str, list[str]]:
    """The quantized layers of a model, grouped by network block, in graph order."""
    blocks: dict[str, list[str]] = {}
    for layer in quantized_layers(int8):
        blocks.setdefault(block_of(layer), []).append(layer)
    return blocks


def rank_blocks(
    int8: ov.Model, judge: AgreementJudge, baseline: float, progress: Callable[[str], None] = lambda block: None
) -> list[LayerSensitivity]:
    """Bypass every quantizer of one block at a time (the screening step); most harmful block first.

    A block's gain bounds what any one of its layers can restore, so blocks below ``MIN_GAIN`` need no
    layer-by-layer look: on the shipped weights that cuts the search from 54 models to 13.
    """
    ranking = []
    for block, layers in blocks_of(int8).items():
        score = judge(bypass(int8, layers))
        ranking.append(LayerSensitivity(block, score, score - baseline))
        progress(block)
    return sorted(ranking, key=lambda entry: -entry.gain)


def rank_layers(
    int8: ov.Model,
    judge: AgreementJudge,
    progress: Callable[[str], None] = lambda layer: None,
    layers: Sequence[str] | None = None,
    baseline: float | None = None,
) -> tuple[float, list[LayerSensitivity]]:
    """Bypass one layer's quantizers at a time; rank layers by the agreement that restores.

    ``layers`` limits the search (default: every quantized layer). Returns the fully quantized
    model's agreement and the ranking, most harmful layer first.
    """
    baseline = judge(int8) if baseline is None else baseline
    ranking = []
    for layer in quantized_layers(int8) if layers is None else layers:
        score = judge(bypass(int8, [layer]))
        ranking.append(LayerSensitivity(layer, score, score - baseline))
        progress(layer)
    return baseline, sorted(ranking, key=lambda entry: -entry.gain)


def layers_to_keep_float(
    int8: ov.Model,
    ranking: Sequence[LayerSensitivity],
    judge: AgreementJudge,
    target: float,
    max_layers: int = 6,
    min_gain: float = MIN_GAIN,
    baseline: float | None = None,
) -> tuple[list[str], float]:
    """The shortest prefix of the ranking that, read in float, brings agreement to ``target``.

    Layers whose bypass gained less than ``min_gain`` are never added: keeping them in float costs
    speed for an accuracy change within the noise. Returns the layers and the agreement reached
    (which may fall short of the target).
    """
    chosen: list[str] = []
    reached = judge(int8) if baseline is None else baseline  # the fully quantized model's agreement
    for entry in ranking[:max_layers]:
        if reached >= target or entry.gain < min_gain:
            break
        chosen.append(entry.layer)
        reached = judge(bypass(int8, chosen))
    return chosen, reached
