"""Compute and memory cost of a network, counted on its real graph for a given input size.

The forward pass runs on the ``meta`` device (shapes only, no arithmetic, no memory), under a
dispatch mode that sees every ATen operator: convolutions and matrix products are counted as
multiply-accumulates, and every tensor's bytes are tracked while it is alive, which gives the peak
activation memory of an eager float32 inference.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

# The paper's own figures, shown beside the counted ones.
PAPER_PARAMETERS = 3_069_060
PAPER_GFLOPS = 15.79  # from a TensorFlow profiler that skips 3-D convolutions: not comparable


@dataclass
class ModelCost:
    """MACs and activation memory of one forward pass (batch 1)."""

    input_size: tuple[int, ...]
    parameters: int
    macs: int
    peak_activation_bytes: int
    macs_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def gmac(self) -> float:
        return self.macs / 1e9

    def to_dict(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "parameters": self.parameters,
            "gmac": round(self.gmac, 3),
            "tflop": round(2 * self.macs / 1e12, 4),
            "peak_activation_mb": round(self.peak_activation_bytes / 2**20, 1),
            "weights_mb": round(self.parameters * 4 / 2**20, 2),
            "gmac_by_stage": {k: round(v / 1e9, 3) for k, v in self.macs_by_stage.items()},
        }


class _CostMode(TorchDispatchMode):
    """Counts MACs per stage and the live bytes of every tensor produced."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = "input"
        self.macs: dict[str, int] = defaultdict(int)
        self.live = 0
        self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(tensor, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet is torch.ops.aten.convolution:
            weight = args[1]
            self.macs[self.stage] += out.numel() * weight.shape[1] * math.prod(weight.shape[2:])
        elif packet in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            a = args[-2] if packet is torch.ops.aten.addmm else args[0]
            self.macs[self.stage] += out.numel() * a.shape[-1]
        outputs = out if isinstance(out, tuple | list) else (out,)
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
                self.track(tensor)
        return out


def model_cost(model: nn.Module, input_size: tuple[int, ...]) -> ModelCost:
    """Count MACs and peak activation memory of ``model`` on a (C, D, H, W) input, batch 1.

    The model is copied to the meta device; the original is not touched.
    """
    meta_model = _meta_copy(model).eval()
    mode = _CostMode()
    hooks = [
        child.register_forward_pre_hook(lambda _m, _a, name=name: setattr(mode, "stage", name))
        for name, child in meta_model.named_children()
    ]
    try:
        with torch.no_grad(), mode:
            meta_model(torch.empty((1, *input_size), device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return ModelCost(
        input_size=tuple(input_size),
        parameters=sum(p.numel() for p in model.parameters()),
        macs=sum(mode.macs.values()),
        peak_activation_bytes=mode.peak,
        macs_by_stage=dict(mode.macs),
    )


def _meta_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to_empty(device="meta")
