"""The paper's loss: weighted soft Dice over the region compositions, plus an explicit L2 penalty."""

from __future__ import annotations

import torch
from torch.nn import functional as F

# ENet-style region weights 1 / ln(1.02 + p_region) from the paper.
REGION_WEIGHTS = {"WT": 1.64, "TC": 2.55, "ET": 3.40}
SMOOTH = 1e-5
L2_WEIGHT = 0.02


def soft_dice_losses(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-class soft Dice loss 1 - (2 sum(y p) + e) / (sum(y^2) + sum(p^2) + e), over batch and space.

    ``probabilities`` is (N, C, ...) softmax output, ``target`` (N, ...) class indices.
    Returns a (C,) tensor; class 0 (background) is included so callers can index by class.
    """
    one_hot = F.one_hot(target.long(), probabilities.shape[1]).movedim(-1, 1).to(probabilities.dtype)
    dims = (0, *range(2, probabilities.ndim))
    intersection = (one_hot * probabilities).sum(dims)
    denominator = (one_hot * one_hot).sum(dims) + (probabilities * probabilities).sum(dims)
    return 1 - (2 * intersection + SMOOTH) / (denominator + SMOOTH)


def weighted_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """WDL = w_WT (D_NCR + D_ED + D_ET) + w_TC (D_NCR + D_ET) + w_ET D_ET (classes 1 NCR, 2 ED, 3 ET)."""
    ncr, ed, et = soft_dice_losses(torch.softmax(logits.float(), dim=1), target)[1:4]
    return REGION_WEIGHTS["WT"] * (ncr + ed + et) + REGION_WEIGHTS["TC"] * (ncr + et) + REGION_WEIGHTS["ET"] * et


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Voxel-wise cross-entropy (nnU-Net's partner to Dice; not in the paper).

    Soft Dice over a batch with no voxel of a class gives that class almost no gradient (the loss sits
    at 1 whatever is predicted), so false ET on a non-enhancing tumour goes unpunished; cross-entropy
    punishes every wrong voxel.
    """
    return F.cross_entropy(logits.float(), target.long())


def l2_penalty(weights: list[torch.Tensor], scale: float = L2_WEIGHT) -> torch.Tensor:
    """scale * sum(w^2) over the given kernels (an explicit term, not Adam weight decay)."""
    return scale * sum(w.pow(2).sum() for w in weights)
