"""Quantization-aware distillation: INT8 fine-tuned to agree with its own float network.

Post-training INT8 loses WT at uncertain oedema borders, a one-way shift of a few hundredths in
probability (docs/INT8.md). Here NNCF's PyTorch quantizers are placed where the OpenVINO path places
them (the same float layers and brain statistics), then the quantized network's weights and quantizer
ranges are fine-tuned, through straight-through rounding, to give the float network's class
probabilities (KL divergence over the brain) on windows of training-generator phantoms. No label is
read: the teacher is the float model the INT8 verdict compares against. The result converts to an
OpenVINO model whose FakeQuantize operations the CPU plugin runs as INT8 kernels.

Not used by ``build``: its one judged run (300 CPU steps) agreed less with fp32 than post-training
INT8 on fresh data (docs/INT8.md, last section). The tooling is here for a better-posed attempt.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latup_edge.data.cases import discover_cases
from latup_edge.data.preprocess import apply_crop
from latup_edge.errors import LatupError
from latup_edge.evaluate.drift import prepare_case
from latup_edge.models.latup_net import brain_masks
from latup_edge.runtime.input_stats import brain_mask

# NNCF compiles its PyTorch quantizer kernels on first use and gives up after 60 s; 2 busy cores need longer.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")

# The PyTorch counterparts of ``graph.brain_statistics_ops``: the brain mask at the root scope (/abs,
# /amax, /gt, /max_pool3d), and every masked InstanceNorm and SE statistic (their linear layers stay
# quantizable, as in the OpenVINO path).
STATISTICS_PATTERNS = (r"^/.*", r"^[^/]+/(norm|attention)/(?!.*linear).*", r"^bottleneck/(?!.*linear).*")
# ONNX node name -> NNCF PyTorch node name, for the layers a bundle keeps in float.
_ONNX_CONV = re.compile(r"^/(?P<scope>.+)/(?P<module>[^/]+)/Conv$")


def torch_layer_name(onnx_label: str) -> str:
    """The NNCF PyTorch node of a convolution labelled by its ONNX name (``/parallel/embed/embed.0/Conv``
    -> ``parallel/embed/0/conv3d/0``). The level-1 branches (a ModuleList of Sequentials) are named
    otherwise by NNCF (``parallel/0/conv3d/1``): there the name matches nothing and NNCF refuses it."""
    match = _ONNX_CONV.match(onnx_label)
    if match is None:
        raise LatupError(f"cannot keep {onnx_label!r} in float for distillation: only convolutions (.../Conv) can be")
    # NNCF names a module in a Sequential by its index alone: embed.0 -> 0
    return "/".join([*match["scope"].split("/"), match["module"].split(".")[-1], "conv3d", "0"])


def quantize_torch(model: nn.Module, samples: Sequence[np.ndarray], keep_float: Sequence[str] = ()) -> nn.Module:
    """The deploy-form network with NNCF's INT8 quantizers (asymmetric activations, as ``quantize_nncf``),
    ranges set on ``samples``; ``keep_float`` are ONNX labels of convolutions left in float."""
    import nncf

    from latup_edge.deploy.quantize.nncf_engine import _preset, _quiet

    patterns = [*STATISTICS_PATTERNS, *(f"^{re.escape(torch_layer_name(label))}$" for label in keep_float)]
    with _quiet():
        return nncf.quantize(
            model.eval(),
            nncf.Dataset([torch.from_numpy(np.ascontiguousarray(s)) for s in samples]),
            subset_size=len(samples),
            preset=_preset(),
            ignored_scope=nncf.IgnoredScope(patterns=patterns),
        )


PARAMETER_SETS = ("all", "biases")


@dataclass(frozen=True)
class DistilSettings:
    steps: int = 300
    window: int = 64  # 96^3 windows cost 35 s a step on 2 cores, 64^3 windows 8 s
    lr: float = 1e-5
    tumour_share: float = 0.7  # windows centred on tumour, where the labels are uncertain
    seed: int = 0
    parameters: str = "all"  # or "biases": weights and quantizer ranges stay as post-training INT8 set them

    def __post_init__(self) -> None:
        if self.parameters not in PARAMETER_SETS:
            raise LatupError(f"parameters must be one of {', '.join(PARAMETER_SETS)}, got {self.parameters!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DistilBox:
    """A normalised brain box (1, 3, D, H, W) and where its tumour is (D, H, W; None: unknown)."""

    inputs: np.ndarray
    tumour: np.ndarray | None


def draw_window(box: DistilBox, size: int, rng: np.random.Generator, tumour_share: float) -> np.ndarray:
    """A ``size``^3 window of the box (smaller along an axis where the box is), centred on a random
    tumour voxel with probability ``tumour_share``, else on a random brain voxel."""
    shape = box.inputs.shape[2:]
    region = box.tumour if box.tumour is not None and box.tumour.any() and rng.random() < tumour_share else None
    if region is None:
        region = brain_mask(box.inputs[0])
    voxels = np.argwhere(region)
    centre = voxels[rng.integers(len(voxels))] if len(voxels) else np.array(shape) // 2
    starts = [int(np.clip(c - size // 2, 0, max(0, n - size))) for c, n in zip(centre, shape, strict=True)]
    window = tuple(slice(s, s + min(size, n)) for s, n in zip(starts, shape, strict=True))
    return np.ascontiguousarray(box.inputs[(slice(None), slice(None), *window)])


def distil_boxes(folder: Path, normalization: str, limit: int | None = None) -> list[DistilBox]:
    """The brain boxes of a folder's cases (the first ``limit``), as the bundle's network sees them, with
    their tumour where the case is labelled."""
    boxes = []
    for case in discover_cases(folder)[:limit]:
        prepared = prepare_case(case, normalization=normalization)
        tumour = apply_crop(prepared.truth > 0, prepared.crop) if prepared.truth is not None else None
        boxes.append(DistilBox(prepared.inputs, tumour))
    return boxes


def tumour_windows(boxes: Sequence[DistilBox], size: int, seed: int = 99) -> list[np.ndarray]:
    """One fixed ``size``^3 window per box, centred on a tumour voxel drawn with the box's own seed."""
    return [draw_window(box, size, np.random.default_rng([seed, i]), 1.0) for i, box in enumerate(boxes)]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Mean over brain voxels of KL(teacher || student) of the class probabilities."""
    divergence = F.kl_div(
        F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), log_target=True, reduction="none"
    ).sum(1, keepdim=True)
    return (divergence * brain).sum() / brain.sum().clamp_min(1.0)


def distil(
    student: nn.Module,
    teacher: nn.Module,
    boxes: Sequence[DistilBox],
    settings: DistilSettings,
    optimizer: torch.optim.Optimizer | None = None,
    start: int = 0,
    on_step: Callable[[int, float, torch.optim.Optimizer], None] = lambda step, loss, optimizer: None,
    stop: int | None = None,
) -> torch.optim.Optimizer:
    """Fine-tune ``student`` (a quantized network) towards ``teacher``'s probabilities, steps ``start``
    to ``stop - 1`` (``settings.steps - 1`` by default). Step i draws its window from its own seed, so a
    resumed run draws what an unbroken one would. Dropout stays off: the student must learn the network
    users run."""
    if not boxes:
        raise LatupError("distillation needs at least one brain box")
    student.eval()
    teacher.eval()
    optimizer = optimizer or _optimizer(student, settings)
    for step in range(start, settings.steps if stop is None else stop):
        rng = np.random.default_rng([settings.seed, step])
        box = boxes[int(rng.integers(len(boxes)))]
        x = torch.from_numpy(draw_window(box, settings.window, rng, settings.tumour_share))
        with torch.no_grad():
            target = teacher(x)
        loss = distillation_loss(student(x), target, brain_masks(x, 0)[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        on_step(step, float(loss.detach()), optimizer)
    return optimizer


def trained_parameters(student: nn.Module, parameters: str) -> list[nn.Parameter]:
    """What distillation may change: everything trainable, or (``"biases"``) only the biases, which are
    not quantized, so a step moves the output smoothly instead of flipping weights across rounding steps."""
    if parameters == "biases":
        return [p for name, p in student.named_parameters() if name.endswith(".bias") and p.requires_grad]
    return [p for p in student.parameters() if p.requires_grad]


def _optimizer(student: nn.Module, settings: DistilSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(trained_parameters(student, settings.parameters), lr=settings.lr)


def save_checkpoint(
    path: Path, student: nn.Module, optimizer: torch.optim.Optimizer, step: int, settings: DistilSettings
) -> None:
    """The quantized student (its NNCF quantizer layout too), its optimizer and the next step, atomically."""
    import nncf.torch

    state = {
        "step": step, "settings": settings.to_dict(), "config": nncf.torch.get_config(student),
        "student": student.state_dict(), "optimizer": optimizer.state_dict(),
    }  # fmt: skip
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def load_checkpoint(
    path: Path, model: nn.Module, settings: DistilSettings
) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    """(student, optimizer, next step) from ``save_checkpoint``; ``model`` is the float deploy-form network
    the student was quantized from. A checkpoint of other settings is refused: its steps drew other windows."""
    import nncf.torch

    saved = torch.load(path, weights_only=False)
    if saved["settings"] != settings.to_dict():
        raise LatupError(f"{path} was made with {saved['settings']}, not {settings.to_dict()}: start another one")
    student = nncf.torch.load_from_config(model, saved["config"])
    student.load_state_dict(saved["student"])
    optimizer = _optimizer(student, settings)
    optimizer.load_state_dict(saved["optimizer"])
    return student, optimizer, saved["step"]


def to_openvino(student: nn.Module, example: np.ndarray):
    """The quantized network as an OpenVINO model (dynamic spatial axes), FakeQuantize operations kept."""
    import openvino as ov

    student.eval()
    with torch.no_grad():
        model = ov.convert_model(
            student,
            example_input=torch.from_numpy(np.ascontiguousarray(example)),
            input=[ov.PartialShape([1, example.shape[1], -1, -1, -1])],
        )
    return model
