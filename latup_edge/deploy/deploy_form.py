"""The deploy form of LATUP-Net: the same function in float, rearranged so that INT8 keeps it.

Each decoder level concatenates its upsampled features with an encoder skip and convolves the
result. A convolution is linear in its input channels, so ``conv(cat(a, b)) == conv_a(a) + conv_b(b)``
with the kernel split along its input channels. In float the two forms agree to rounding; in INT8
they do not: post-training quantizers give one scale per tensor, so a concatenation forces the
small-ranged skip (the stem's output, about [-0.1, 0.8]) onto the scale of the wide-ranged
upsampled branch (tens), where one quantization step is wider than the skip's whole spread. Split,
each input gets a quantizer with its own range. With ``statistics="brain"`` the level takes the brain
mask on, as ``DecoderLevel`` does.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from latup_edge.models.latup_net import DecoderLevel, LATUPNet


class SplitSkipDecoderLevel(nn.Module):
    """A ``DecoderLevel`` whose post-concat convolution is split per input and summed."""

    def __init__(self, level: DecoderLevel) -> None:
        super().__init__()
        conv = level.conv1[0]
        upsampled = level.up_conv.conv.out_channels
        self.upsample, self.up_conv, self.norm = level.upsample, level.up_conv, level.norm
        self.attention, self.dropout, self.conv2 = level.attention, level.dropout, level.conv2
        self.act = level.conv1[1]
        self.conv_upsampled = _conv_part(conv, conv.weight[:, :upsampled], conv.bias)
        self.conv_skip = _conv_part(conv, conv.weight[:, upsampled:], None)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(self.up_conv(self.upsample(x)), mask)
        x = self.act(self.conv_upsampled(x) + self.conv_skip(skip))
        return self.conv2(self.dropout(self.attention(x, mask)))


def _conv_part(conv: nn.Conv3d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv3d:
    part = nn.Conv3d(weight.shape[1], weight.shape[0], conv.kernel_size, padding=conv.padding, bias=bias is not None)
    with torch.no_grad():
        part.weight.copy_(weight)
        if bias is not None:
            part.bias.copy_(bias)
    return part


def to_deploy_form(model: LATUPNet) -> LATUPNet:
    """A copy of ``model`` (eval mode) with every decoder level split per concat input."""
    deployed = copy.deepcopy(model).eval()
    for name in ("decoder3", "decoder2", "decoder1"):
        setattr(deployed, name, SplitSkipDecoderLevel(getattr(deployed, name)))
    return deployed
