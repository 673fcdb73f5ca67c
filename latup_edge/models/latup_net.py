"""LATUP-Net: a lightweight 3D attention U-Net with parallel convolutions.

Alwadee, Sun, Qin, Langbein, "LATUP-Net: A Lightweight 3D Attention U-Net with Parallel Convolutions
for Brain Tumor Segmentation", Computers in Biology and Medicine 184 (2025) 109353, arXiv 2404.05911.

Ported from the paper's description, not from the authors' AGPL code. At the
defaults the network has exactly 3,069,060 parameters. Where the paper and its code disagree the
port follows the code that produced the published numbers: upsampling repeats voxels (nearest);
``upsample="trilinear"`` gives the variant the text describes.

One deliberate departure, opt-in: ``statistics="brain"`` takes the InstanceNorm and SE averages over
brain voxels only (those non-zero in any input channel, max-pooled to each level) instead of over the
whole input, and zeroes every convolution's input outside the brain. The paper's layers
(``statistics="volume"``) average over the background too, so their labels change with the amount of
zero padding around the brain (measured: up to 0.15 Dice on WT when a brain box is padded by 32
voxels); with brain statistics the network computes the same function on a tight brain box and on the
box padded by a multiple of 8 zero voxels, because background reaches every layer as zeros, as the
convolutions' own zero padding does. It adds no parameter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

# Three max-pools: every spatial size must divide by 2**3 (SIZE_MULTIPLE, kept with the preprocessing).
from latup_edge.data.preprocess import SIZE_MULTIPLE

Upsample = Literal["nearest", "trilinear"]
Statistics = Literal["volume", "brain"]


@dataclass(frozen=True)
class LATUPNetConfig:
    """Every hyper-parameter of the network; the defaults are the paper's."""

    in_channels: int = 3
    num_classes: int = 4
    base_filters: int = 32
    se_ratio: int = 8
    use_se: bool = True
    dropout: float = 0.2
    negative_slope: float = 0.1
    norm_eps: float = 1e-3
    upsample: Upsample = "nearest"
    statistics: Statistics = "volume"
    # The intensity normalisation the weights were trained with (latup_edge.data.preprocess.normalize).
    normalization: str = "minmax"

    def to_dict(self) -> dict:
        return asdict(self)


class ConvAct(nn.Sequential):
    """Convolution ("same" padding, bias) followed by LeakyReLU, as every conv in the paper."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, slope: float) -> None:
        super().__init__(nn.Conv3d(in_ch, out_ch, kernel, padding=kernel // 2), nn.LeakyReLU(slope))


class SamePadConv2(nn.Module):
    """The decoder's 2x2x2 "same" convolution: pads 0 before and 1 after on each axis (as Keras)."""

    def __init__(self, in_ch: int, out_ch: int, slope: float) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, 2)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(F.pad(x, (0, 1, 0, 1, 0, 1))))


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool -> C/r -> ReLU -> C -> sigmoid -> rescale."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)  # narrow test networks would otherwise get 0 units
        self.squeeze = nn.Linear(channels, hidden, bias=False)
        self.excite = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        weights = x.mean(dim=(2, 3, 4)) if mask is None else masked_mean(x, mask)[:, :, 0, 0, 0]
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(weights))))
        return x * weights[:, :, None, None, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-instance, per-channel mean of ``x`` over the voxels where ``mask`` (N, 1, D, H, W) is 1."""
    count = mask.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1.0)
    return (x * mask).sum(dim=(2, 3, 4), keepdim=True) / count


class BrainInstanceNorm(nn.InstanceNorm3d):
    """InstanceNorm3d (affine, biased variance) whose statistics come from the masked voxels only.

    Without a mask it is the plain InstanceNorm3d; with an all-ones mask it computes the same values.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return super().forward(x)
        # Statistics in float32: bf16 sums over ~10^6 voxels lose the mean.
        values = x.float()
        mean = masked_mean(values, mask)
        variance = masked_mean((values - mean) ** 2, mask)
        scale = self.weight[None, :, None, None, None] * torch.rsqrt(variance + self.eps)
        return ((values - mean) * scale + self.bias[None, :, None, None, None]).to(x.dtype)


class _Identity(nn.Module):
    """SE switched off (``use_se=False``): ignores the mask."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


def gate(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero ``x`` outside the brain (no-op without a mask): background then enters a convolution as
    zeros, exactly as the zero padding beyond the input does."""
    return x if mask is None else x * mask


def _attention(channels: int, cfg: LATUPNetConfig) -> nn.Module:
    return SqueezeExcite(channels, cfg.se_ratio) if cfg.use_se else _Identity()


def _norm(channels: int, cfg: LATUPNetConfig) -> BrainInstanceNorm:
    return BrainInstanceNorm(channels, eps=cfg.norm_eps, affine=True)


def brain_masks(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The brain mask (voxels non-zero in any channel) at full resolution and at each pooled level."""
    masks = [(x.abs().amax(dim=1, keepdim=True) > 0).to(x.dtype)]
    for _ in range(levels):
        masks.append(F.max_pool3d(masks[-1], 2))
    return masks


class ParallelConv(nn.Module):
    """Level 1: a 3x3x3 embedding (the level-1 skip), then 1/3/5 branches, each pooled, concatenated."""

    def __init__(self, cfg: LATUPNetConfig) -> None:
        super().__init__()
        f, slope = cfg.base_filters, cfg.negative_slope
        self.embed = ConvAct(cfg.in_channels, f, 3, slope)
        self.branches = nn.ModuleList(ConvAct(f, f, k, slope) for k in (1, 3, 5))
        self.pool = nn.MaxPool3d(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.embed(x)  # the input is already zero outside the brain
        gated = gate(skip, mask)
        return torch.cat([self.pool(branch(gated)) for branch in self.branches], dim=1), skip


class EncoderLevel(nn.Module):
    """SE -> conv3 -> IN -> conv3 (the skip) -> dropout -> maxpool."""

    def __init__(self, in_ch: int, out_ch: int, cfg: LATUPNetConfig) -> None:
        super().__init__()
        slope = cfg.negative_slope
        self.attention = _attention(in_ch, cfg)
        self.conv1 = ConvAct(in_ch, out_ch, 3, slope)
        self.norm = _norm(out_ch, cfg)
        self.conv2 = ConvAct(out_ch, out_ch, 3, slope)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pool = nn.MaxPool3d(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(self.conv1(gate(self.attention(x, mask), mask)), mask)
        skip = self.conv2(gate(x, mask))
        return self.pool(self.dropout(skip)), skip


class DecoderLevel(nn.Module):
    """Upsample x2 -> conv 2x2x2 -> IN -> concat(skip) -> conv3 -> SE -> dropout -> conv3."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, cfg: LATUPNetConfig) -> None:
        super().__init__()
        slope = cfg.negative_slope
        self.upsample = nn.Upsample(scale_factor=2, mode=cfg.upsample)
        self.up_conv = SamePadConv2(in_ch, out_ch, slope)
        self.norm = _norm(out_ch, cfg)
        self.conv1 = ConvAct(out_ch + skip_ch, out_ch, 3, slope)
        self.attention = _attention(out_ch, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = ConvAct(out_ch, out_ch, 3, slope)

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor,
        mask: torch.Tensor | None = None,
        coarse_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Gated before upsampling (at the coarse level): nearest x2 + this conv stay one transposed conv.
        x = self.norm(self.up_conv(self.upsample(gate(x, coarse_mask))), mask)
        x = self.attention(self.conv1(gate(torch.cat([x, skip], dim=1), mask)), mask)
        return self.conv2(gate(self.dropout(x), mask))


class LATUPNet(nn.Module):
    """LATUP-Net for (N, in_channels, D, H, W) inputs with D, H, W divisible by 8.

    ``forward`` returns logits (N, num_classes, D, H, W); ``predict`` applies the paper's softmax.
    The softmax is left out of ``forward`` so the loss and argmax work on logits (numerically safer,
    and argmax is the same).

    >>> net = LATUPNet(LATUPNetConfig(base_filters=4))
    >>> net(torch.zeros(1, 3, 16, 16, 24)).shape
    torch.Size([1, 4, 16, 16, 24])
    """

    def __init__(self, config: LATUPNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or LATUPNetConfig()
        self.config = cfg
        f = cfg.base_filters
        self.parallel = ParallelConv(cfg)
        self.encoder2 = EncoderLevel(3 * f, 2 * f, cfg)
        self.encoder3 = EncoderLevel(2 * f, 4 * f, cfg)
        self.bottleneck = _attention(4 * f, cfg)
        self.decoder3 = DecoderLevel(4 * f, 4 * f, 4 * f, cfg)
        self.decoder2 = DecoderLevel(4 * f, 2 * f, 2 * f, cfg)
        self.decoder1 = DecoderLevel(2 * f, f, f, cfg)
        self.head = nn.Conv3d(f, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_shape(tuple(x.shape), self.config.in_channels)
        masks = brain_masks(x, 3) if self.config.statistics == "brain" else [None] * 4
        x, skip1 = self.parallel(x, masks[0])
        x, skip2 = self.encoder2(x, masks[1])
        x, skip3 = self.encoder3(x, masks[2])
        x = self.bottleneck(x, masks[3])
        x = self.decoder3(x, skip3, masks[2], masks[3])
        x = self.decoder2(x, skip2, masks[1], masks[2])
        x = self.decoder1(x, skip1, masks[0], masks[1])
        return self.head(gate(x, masks[0]))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax over the class axis)."""
        return torch.softmax(self(x), dim=1)

    def penalised_weights(self) -> list[torch.Tensor]:
        """The kernels under the paper's L2 penalty: encoder 2/3 convs, decoder convs 2-3, head."""
        convs = [self.encoder2.conv1, self.encoder2.conv2, self.encoder3.conv1, self.encoder3.conv2]
        for level in (self.decoder3, self.decoder2, self.decoder1):
            convs += [level.conv1, level.conv2]
        return [conv[0].weight for conv in convs] + [self.head.weight]


def check_input_shape(shape: tuple[int, ...], in_channels: int) -> None:
    """Raise ValueError unless ``shape`` is (N, in_channels, D, H, W) with D, H, W divisible by 8."""
    if len(shape) != 5 or shape[1] != in_channels:
        raise ValueError(f"LATUP-Net expects input (N, {in_channels}, D, H, W), got {tuple(shape)}")
    bad = [s for s in shape[2:] if s % SIZE_MULTIPLE or s == 0]
    if bad:
        raise ValueError(
            f"LATUP-Net needs spatial sizes divisible by {SIZE_MULTIPLE} (three 2x poolings), got "
            f"{tuple(shape[2:])}: pad or crop the volume (e.g. the brain box padded to a multiple of 8)"
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
