"""Checkpoints load only when they are whole and match the network their config describes."""

import json

import pytest
import torch
from safetensors.torch import save_file

from latup_edge.models import LATUPNet, LATUPNetConfig
from latup_edge.models.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint

NARROW = LATUPNetConfig(base_filters=4)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(LATUPNet(NARROW), tmp_path / "net", {"steps": 3, "seed": 0})


def test_round_trip_keeps_weights_config_and_provenance(checkpoint):
    torch.manual_seed(0)
    original = LATUPNet(NARROW)
    loaded = load_model(checkpoint)
    assert loaded.config == NARROW and not loaded.training
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    _, _, sidecar = read_checkpoint(checkpoint)
    assert sidecar["steps"] == 3 and sidecar["parameters"] == sum(p.numel() for p in original.parameters())
    assert len(sidecar["sha256"]) == 64


def test_truncated_checkpoint_is_refused(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(checkpoint)


def test_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    junk = tmp_path / "weights.safetensors"
    junk.write_text("not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        load_model(junk)


def test_foreign_safetensors_file_is_refused(tmp_path):
    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a latup-edge checkpoint"):
        load_model(foreign)


def test_mismatched_shapes_are_named(tmp_path, checkpoint):
    # Weights of a wider network under a narrow config: every mismatch is reported with its shape.
    wide = LATUPNet(LATUPNetConfig(base_filters=8)).state_dict()
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        metadata = f.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in wide.items()}, str(bad), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"does not match.*has shape"):
        load_model(bad)


def test_missing_tensor_is_named(tmp_path, checkpoint):
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "head.weight"}  # noqa: SIM118 (not a dict)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(CheckpointError, match="missing head.weight"):
        load_model(bad)


def test_unknown_config_key_is_refused(tmp_path, checkpoint):
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    metadata["config"] = json.dumps({**json.loads(metadata["config"]), "depth": 5})
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(CheckpointError, match="does not know"):
        load_model(bad)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model(tmp_path)
