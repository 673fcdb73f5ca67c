"""Whole-volume prediction: normalise, crop to the brain box, run the network, put the labels back.

Every backend plugs in as a ``Forward``: a function from a (1, C, D, H, W) float32 input to
(1, K, D, H, W) class scores (logits or probabilities: only the argmax is used).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from latup_edge.data.preprocess import apply_crop, brain_box, minmax_normalize, undo_crop

Forward = Callable[[np.ndarray], np.ndarray]


def predict_classes(images: np.ndarray, forward: Forward) -> np.ndarray:
    """Class map (uint8, 0-3) of the full input shape from raw (C, X, Y, Z) modality images.

    One pass over the brain's bounding box padded to a multiple of 8; background outside it.
    """
    normalized = minmax_normalize(images)
    crop = brain_box(normalized)
    scores = forward(apply_crop(normalized, crop)[None])
    classes = np.argmax(scores[0], axis=0).astype(np.uint8)
    return undo_crop(classes, crop)


def torch_forward(model, bf16: bool = False) -> Forward:
    """A Forward over a PyTorch LATUP-Net (eval mode, no grad; bf16 autocast on request)."""
    import torch

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return forward
