"""Rounding noise on every convolution's input while training: a stand-in for INT8's own.

Post-training INT8 rounds each convolution's input to 256 levels over its range, where OpenVINO puts its
quantizers, and labels flip where the network's margin is thinner than that step (docs/INT8.md). The
step is set by the range, not the spread: a few outliers make it 1-4 % of a layer's standard deviation,
and at the head's input it moves labels. Here each input gets uniform noise of ``steps`` such steps
(the step taken over that input's own range), so training asks for margins that survive INT8.
The noise is drawn from torch's generator, so a step's noise repeats with the step's seed;
validation and inference never see it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def activation_noise(model: nn.Module, steps: float) -> Iterator[None]:
    """Within the block, every Conv3d input x gets uniform noise of width ``steps`` x (max(x) - min(x)) / 255."""
    if steps <= 0:
        yield
        return

    def add_noise(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        low, high = torch.aminmax(x.detach())
        step = (high - low) / 255
        return (x + steps * step * (torch.rand_like(x) - 0.5), *inputs[1:])

    handles = [m.register_forward_pre_hook(add_noise) for m in model.modules() if isinstance(m, nn.Conv3d)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
