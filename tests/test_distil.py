"""Quantization-aware distillation: quantizers placed as the OpenVINO path places them, a window sampler,
a loss over the brain, a resumable fine-tune, and an OpenVINO model that keeps its quantizers."""

import re

import numpy as np
import openvino as ov
import pytest
import torch
from conftest import BRAIN, narrow_network

from latup_edge.deploy.deploy_form import to_deploy_form
from latup_edge.deploy.quantize.distil import (
    DistilBox,
    DistilSettings,
    distil,
    distillation_loss,
    draw_window,
    load_checkpoint,
    quantize_torch,
    save_checkpoint,
    to_openvino,
    torch_layer_name,
    trained_parameters,
)
from latup_edge.errors import LatupError

SIZE = 32


def brain_box(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A normalised box: a ball of brain (noise) in zeros, with a bright blob as tumour."""
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3) - size / 2
    brain = (grid**2).sum(0) < (0.4 * size) ** 2
    box = rng.normal(0, 1, (1, 3, *(size,) * 3)).astype(np.float32) * brain
    box[:, :, 10:18, 10:18, 10:18] += 3.0
    return box


@pytest.fixture(scope="module")
def quantized():
    """The narrow brain-statistics network, quantized on two boxes: (teacher, student)."""
    teacher = to_deploy_form(narrow_network(BRAIN))
    student = quantize_torch(to_deploy_form(narrow_network(BRAIN)), [brain_box(1), brain_box(2)])
    return teacher, student


def quantizer_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters() if "__nncf_hooks" in name]


def test_onnx_labels_of_kept_convolutions_map_to_nncf_torch_names():
    assert torch_layer_name("/parallel/embed/embed.0/Conv") == "parallel/embed/0/conv3d/0"
    assert torch_layer_name("/decoder1/conv_skip/Conv") == "decoder1/conv_skip/conv3d/0"
    assert torch_layer_name("/encoder2/conv1/conv1.0/Conv") == "encoder2/conv1/0/conv3d/0"
    with pytest.raises(LatupError, match="only convolutions"):
        torch_layer_name("/encoder2/norm/InstanceNormalization")


def test_the_brain_mask_and_statistics_stay_float_and_convolutions_are_quantized(quantized):
    _, student = quantized
    names = quantizer_names(student)
    assert any("conv3d" in name for name in names)
    # The brain mask (root scope) is never quantized, and no masked statistic reads a quantized input
    # (a norm's output is quantized where a convolution reads it, as in the OpenVINO path).
    assert not any(re.search(r"hooks\./(abs|amax|gt|to|max_pool3d)/", name) for name in names)
    assert not any(re.search(r"pre_hooks\./|pre_hooks\.[^/]+/(norm|attention)/(?!.*linear)", name) for name in names)
    assert any("pre_hooks.encoder2/attention/squeeze/linear" in name for name in names)


def test_a_kept_float_convolution_gets_no_quantizer():
    student = quantize_torch(
        to_deploy_form(narrow_network(BRAIN)), [brain_box(1)], keep_float=["/parallel/embed/embed.0/Conv"]
    )
    assert not any("parallel/embed/0/conv3d/0" in name for name in quantizer_names(student))
    assert any("parallel/0/conv3d/0" in name for name in quantizer_names(student))


def test_windows_have_the_size_asked_for_or_the_box_where_it_is_smaller():
    box = DistilBox(brain_box(size=40)[:, :, :, :, :20], None)
    window = draw_window(box, 24, np.random.default_rng(0), 0.7)
    assert window.shape == (1, 3, 24, 24, 20)


def test_tumour_windows_hold_tumour_and_the_draw_repeats_with_its_seed():
    tumour = np.zeros((SIZE,) * 3, bool)
    tumour[2:4, 2:4, 2:4] = True  # in a corner of the box, outside the ball of brain
    box = DistilBox(brain_box(), tumour)
    corner = box.inputs[:, :, :8, :8, :8]
    for seed in range(5):
        # Centred on a tumour voxel (2 or 3), the window is clipped to start at 0 on every axis.
        assert np.array_equal(draw_window(box, 8, np.random.default_rng(seed), 1.0), corner)
    anywhere = [draw_window(box, 8, np.random.default_rng(seed), 0.0) for seed in range(5)]
    assert not any(np.array_equal(window, corner) for window in anywhere)  # centred in the brain instead
    rng = np.random.default_rng
    assert np.array_equal(draw_window(box, 8, rng(7), 0.5), draw_window(box, 8, rng(7), 0.5))


def test_the_loss_is_zero_for_the_teachers_own_logits_and_ignores_voxels_outside_the_brain():
    teacher = torch.randn(1, 4, 6, 6, 6)
    brain = torch.zeros(1, 1, 6, 6, 6)
    brain[..., :3] = 1
    assert float(distillation_loss(teacher, teacher, brain)) == pytest.approx(0.0, abs=1e-6)
    outside = teacher.clone()
    outside[..., 3:] += torch.randn(1, 4, 6, 6, 3) * 5  # differs only where there is no brain
    assert float(distillation_loss(outside, teacher, brain)) == pytest.approx(0.0, abs=1e-6)
    inside = teacher.clone()
    inside[..., :3] += torch.randn(1, 4, 6, 6, 3)
    assert float(distillation_loss(inside, teacher, brain)) > 0.01


def test_distillation_brings_the_student_towards_the_teacher_and_resumes_exactly(tmp_path):
    teacher = to_deploy_form(narrow_network(BRAIN))
    boxes = [DistilBox(brain_box(3), None), DistilBox(brain_box(4), None)]
    settings = DistilSettings(steps=6, window=24, lr=3e-3, seed=5)

    def fresh_student():
        return quantize_torch(to_deploy_form(narrow_network(BRAIN, seed=2)), [brain_box(1)])

    def loss(model):
        x = torch.from_numpy(brain_box(9))
        with torch.no_grad():
            return float(distillation_loss(model(x), teacher(x), (x.abs().amax(1, keepdim=True) > 0).float()))

    unbroken = fresh_student()
    before = loss(unbroken)
    distil(unbroken, teacher, boxes, settings)
    assert loss(unbroken) < 0.8 * before

    # Stopped after 3 steps, saved, and taken up again from the file alone.
    stopped = fresh_student()
    checkpoint = tmp_path / "checkpoint.pt"
    distil(
        stopped, teacher, boxes, settings,
        on_step=lambda step, _, optimizer: save_checkpoint(checkpoint, stopped, optimizer, step + 1, settings),
        stop=3,
    )  # fmt: skip
    resumed, optimizer, start = load_checkpoint(checkpoint, to_deploy_form(narrow_network(BRAIN, seed=2)), settings)
    assert start == 3
    distil(resumed, teacher, boxes, settings, optimizer, start)
    for (name, a), b in zip(unbroken.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(LatupError, match="start another one"):
        load_checkpoint(checkpoint, to_deploy_form(narrow_network(BRAIN, seed=2)), DistilSettings(steps=7))


def test_biases_only_leaves_every_weight_and_quantizer_range_as_post_training_set_them():
    teacher = to_deploy_form(narrow_network(BRAIN))
    student = quantize_torch(to_deploy_form(narrow_network(BRAIN, seed=2)), [brain_box(1)])
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    trained = {id(p) for p in trained_parameters(student, "biases")}
    assert trained and all(name.endswith(".bias") for name, p in student.named_parameters() if id(p) in trained)
    distil(
        student,
        teacher,
        [DistilBox(brain_box(3), None)],
        DistilSettings(steps=2, window=24, lr=3e-3, parameters="biases"),
    )
    moved = {name for name, p in student.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(name.endswith(".bias") for name in moved)
    with pytest.raises(LatupError, match="parameters must be one of"):
        DistilSettings(parameters="weights")


def test_no_boxes_is_a_clear_error(quantized):
    teacher, student = quantized
    with pytest.raises(LatupError, match="at least one brain box"):
        distil(student, teacher, [], DistilSettings(steps=1))


def test_the_openvino_model_keeps_the_quantizers_and_computes_what_the_student_does(quantized):
    teacher, student = quantized  # the student is the teacher's weights, quantized: not distilled yet
    box = brain_box(7)
    model = to_openvino(student, box)
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()) >= 10
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    bigger = brain_box(8, size=40)  # another shape: the spatial axes are dynamic
    for x in (box, bigger):
        with torch.no_grad():
            expected, unquantized = (m(torch.from_numpy(x)).numpy() for m in (student, teacher))
        got = compiled(x)[0]
        # Closer to the quantized student than to the float network: the quantizers survived.
        # (Not equal: FakeQuantize may round a value on a step's edge either way.)
        assert np.abs(got - expected).mean() < 0.8 * np.abs(got - unquantized).mean()
        assert np.mean(got.argmax(1) == expected.argmax(1)) > 0.97
