"""Brain statistics: the labels inside the brain should not depend on how much zero background surrounds
it, in PyTorch and in OpenVINO fp32; with the paper's volume statistics they do."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from latup_edge.data.preprocess import apply_crop, brain_box
from latup_edge.deploy.export import export_onnx
from latup_edge.models.latup_net import LATUPNet, LATUPNetConfig
from latup_edge.runtime.openvino_backend import OpenVINOModel
from latup_edge.runtime.volume import torch_forward

PAD = 16  # a multiple of 8: the padded box pools onto the same grid


def brain_box_input(seed: int) -> np.ndarray:
    """(1, 3, D, H, W): z-scored noise in an ellipsoidal brain, cut to its brain box (the brain touches its faces)."""
    shape = (44, 52, 40)
    axes = np.indices(shape, dtype=np.float32)
    centre, radii = np.array([21, 27, 19])[:, None, None, None], np.array([18, 22, 15])[:, None, None, None]
    brain = (((axes - centre) / radii) ** 2).sum(axis=0) <= 1
    images = np.zeros((3, *shape), np.float32)
    images[:, brain] = np.random.default_rng(seed).normal(size=(3, int(brain.sum())))
    return apply_crop(images, brain_box(images))[None]


def network(statistics: str) -> LATUPNet:
    torch.manual_seed(0)
    return LATUPNet(LATUPNetConfig(base_filters=4, statistics=statistics, normalization="zscore-brain")).eval()


def forward_of(backend: str, model: LATUPNet, folder) -> Callable[[np.ndarray], np.ndarray]:
    if backend == "torch":
        return torch_forward(model)
    return OpenVINOModel(export_onnx(model, folder / "model.onnx"), "fp32", threads=1)


def padding_change(forward: Callable[[np.ndarray], np.ndarray], box: np.ndarray) -> tuple[float, float]:
    """(argmax agreement, largest logit difference) inside the brain between the box and the padded box."""
    padded = np.pad(box, ((0, 0), (0, 0), *[(PAD, PAD)] * 3))
    tight = forward(box)[0]
    inner = forward(padded)[0][:, PAD:-PAD, PAD:-PAD, PAD:-PAD]
    brain = np.any(box[0] != 0, axis=0)
    agreement = float((tight.argmax(axis=0) == inner.argmax(axis=0))[brain].mean())
    return agreement, float(np.abs(tight - inner)[:, brain].max())


@pytest.mark.parametrize("backend", ["torch", "openvino"])
@pytest.mark.parametrize("statistics", ["brain", "volume"])
def test_padding_the_brain_box_with_zeros(statistics, backend, tmp_path):
    agreement, difference = padding_change(forward_of(backend, network(statistics), tmp_path), brain_box_input(1))
    unchanged = agreement == 1.0 or difference < 1e-4
    assert unchanged == (statistics == "brain"), (agreement, difference)
