"""The deploy form of LATUP-Net: the same function in float, rearranged so that INT8 keeps it.

Each decoder level concatenates its upsampled features with an encoder skip and convolves the
result. A convolution is linear in its input channels, so ``conv(cat(a, b)) == conv_a(a) + conv_b(b)``
with the kernel split along its input channels. In float the two forms agree to rounding; in INT8
they do not: post-training quantizers give one scale per tensor, so a concatenation forces the
small-ranged skip (the stem's output, about [-0.1, 0.8]) onto the scale of the wide-ranged
upsampled branch (tens), where one quantization step is wider than the skip's whole spread. Split,
each input gets a quantizer with its own range. With ``statistics="brain"`` the level takes the brain
mask on and gates each convolution's input, as ``DecoderLevel`` does.

With nearest upsampling, the decoder's "repeat every voxel twice, then 2x2x2 conv (pad 0 before,
1 after)" is one stride-2 transposed convolution with a 3x3x3 kernel: per axis the fine voxel 2i sees
(w0 + w1) x[i] and 2i + 1 sees w0 x[i] + w1 x[i + 1], which is the kernel (w1, w0 + w1, w0) placed
with stride 2 and cropped by one voxel. It needs 27/64 of the multiply-adds and never builds the
upsampled tensor; in float it is the same function up to rounding (2.6e-7 relative, measured on
the shipped network). It is off by default (``transposed_upsampling``): with OpenVINO 2026.4 the CPU
plugin ran the three ConvTranspose layers in f32 (``brgconv_avx512_f32``) although NNCF had put INT8
quantizers on them, so an INT8 bundle would lose INT8 kernels there and fail its kernel check.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from latup_edge.models.latup_net import DecoderLevel, LATUPNet, SamePadConv2, gate

# Per axis, which taps of the 2x2x2 kernel land on each tap of the 3x3x3 transposed kernel.
_TAPS = ((1,), (0, 1), (0,))


def transposed_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The (in, out, 3, 3, 3) ConvTranspose3d kernel equal to nearest x2 upsampling then a 2x2x2 "same"
    conv of kernel ``weight`` (out, in, 2, 2, 2)."""
    out_ch, in_ch = weight.shape[:2]
    kernel = weight.new_zeros(in_ch, out_ch, 3, 3, 3)
    for a, taps_a in enumerate(_TAPS):
        for b, taps_b in enumerate(_TAPS):
            for c, taps_c in enumerate(_TAPS):
                summed = sum(weight[:, :, i, j, k] for i in taps_a for j in taps_b for k in taps_c)
                kernel[:, :, a, b, c] = summed.transpose(0, 1)
    return kernel


class NearestUpConv(nn.Module):
    """Nearest x2 upsampling and the decoder's 2x2x2 conv + LeakyReLU, as one transposed convolution."""

    def __init__(self, up_conv: SamePadConv2) -> None:
        super().__init__()
        conv = up_conv.conv
        self.conv = nn.ConvTranspose3d(conv.in_channels, conv.out_channels, 3, stride=2, padding=1, output_padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(transposed_kernel(conv.weight))
            self.conv.bias.copy_(conv.bias)
        self.act = up_conv.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class SplitSkipDecoderLevel(nn.Module):
    """A ``DecoderLevel`` whose post-concat convolution is split per input and summed, and whose
    nearest upsampling + 2x2x2 conv is one transposed convolution."""

    def __init__(self, level: DecoderLevel, transposed_upsampling: bool = False) -> None:
        super().__init__()
        conv = level.conv1[0]
        upsampled = level.up_conv.conv.out_channels
        self.norm = level.norm
        if transposed_upsampling and level.upsample.mode == "nearest":
            self.upsample, self.up_conv = nn.Identity(), NearestUpConv(level.up_conv)
        else:
            self.upsample, self.up_conv = level.upsample, level.up_conv
        self.attention, self.dropout, self.conv2 = level.attention, level.dropout, level.conv2
        self.act = level.conv1[1]
        self.conv_upsampled = _conv_part(conv, conv.weight[:, :upsampled], conv.bias)
        self.conv_skip = _conv_part(conv, conv.weight[:, upsampled:], None)

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor,
        mask: torch.Tensor | None = None,
        coarse_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.norm(self.up_conv(self.upsample(gate(x, coarse_mask))), mask)
        x = self.act(self.conv_upsampled(gate(x, mask)) + self.conv_skip(gate(skip, mask)))
        return self.conv2(gate(self.dropout(self.attention(x, mask)), mask))


def _conv_part(conv: nn.Conv3d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv3d:
    part = nn.Conv3d(weight.shape[1], weight.shape[0], conv.kernel_size, padding=conv.padding, bias=bias is not None)
    with torch.no_grad():
        part.weight.copy_(weight)
        if bias is not None:
            part.bias.copy_(bias)
    return part


def to_deploy_form(model: LATUPNet, transposed_upsampling: bool = False) -> LATUPNet:
    """A copy of ``model`` (eval mode) with every decoder level split per concat input, and with
    ``transposed_upsampling`` its nearest upsampling + 2x2x2 conv as one transposed convolution."""
    deployed = copy.deepcopy(model).eval()
    for name in ("decoder3", "decoder2", "decoder1"):
        setattr(deployed, name, SplitSkipDecoderLevel(getattr(deployed, name), transposed_upsampling))
    return deployed
