"""Checkpoints load only when they are whole and match the network their config describes."""

import json

import pytest
import torch
from safetensors.torch import save_file

from latup_edge.models import LATUPNet, LATUPNetConfig
from latup_edge.models.checkpoint import (
    CheckpointError,
    blend_checkpoints,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

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


def test_the_same_weights_always_give_the_same_bytes(tmp_path):
    # safetensors itself writes its metadata in a random order; eight saves all agreeing by chance is 1 in 128
    torch.manual_seed(0)
    model = LATUPNet(NARROW)
    (data, *others) = {save_checkpoint(model, tmp_path / f"net{i}").read_bytes() for i in range(8)}
    assert not others
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    assert list(header["__metadata__"]) == ["config", "format"] and size % 8 == 0
    loaded = load_model(tmp_path / "net0.safetensors").state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in model.state_dict().items())


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


def _saved(tmp_path, name, seed, config=NARROW):
    torch.manual_seed(seed)
    return save_checkpoint(LATUPNet(config), tmp_path / name)


def test_blend_is_the_weighted_sum_of_the_checkpoints(tmp_path):
    a, b = _saved(tmp_path, "a", 0), _saved(tmp_path, "b", 1)
    wa, wb = load_model(a).state_dict(), load_model(b).state_dict()
    blended, provenance = blend_checkpoints([a, b], [0.25, 0.75])
    for name, value in blended.state_dict().items():
        torch.testing.assert_close(value, 0.25 * wa[name] + 0.75 * wb[name], rtol=1e-6, atol=1e-7)
    assert [s["coefficient"] for s in provenance["blend"]] == [0.25, 0.75]
    assert provenance["blend"][0]["sha256"] == read_checkpoint(a)[2]["sha256"]
    # (1, 0) gives the first checkpoint back exactly; no coefficients means equal ones
    first, _ = blend_checkpoints([a, b], [1.0, 0.0])
    assert all(torch.equal(v, wa[k]) for k, v in first.state_dict().items())
    mean, provenance = blend_checkpoints([a, b])
    assert [s["coefficient"] for s in provenance["blend"]] == [0.5, 0.5]
    torch.testing.assert_close(mean.state_dict()["head.weight"], (wa["head.weight"] + wb["head.weight"]) / 2)


@pytest.mark.parametrize(
    ("coefficients", "message"),
    [([0.5], "1 coefficients for 2 checkpoints"), ([0.7, 0.7], "sum to 1"), ([1.5, -0.5], ">= 0")],
)
def test_blend_refuses_bad_coefficients(tmp_path, coefficients, message):
    a, b = _saved(tmp_path, "a", 0), _saved(tmp_path, "b", 1)
    with pytest.raises(CheckpointError, match=message):
        blend_checkpoints([a, b], coefficients)


def test_blend_refuses_one_checkpoint_and_two_networks(tmp_path):
    a, wide = _saved(tmp_path, "a", 0), _saved(tmp_path, "wide", 0, LATUPNetConfig(base_filters=8))
    with pytest.raises(CheckpointError, match="at least two"):
        blend_checkpoints([a])
    with pytest.raises(CheckpointError, match="another network"):
        blend_checkpoints([a, wide])


def test_blend_command_writes_a_loadable_checkpoint_with_its_sources(tmp_path):
    from typer.testing import CliRunner

    from latup_edge.cli import app

    a, b = _saved(tmp_path, "a", 0), _saved(tmp_path, "b", 1)
    out = tmp_path / "blend"
    result = CliRunner().invoke(app, ["blend", str(a), str(b), "-o", str(out), "--coefficients", "0.75,0.25", "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["output"] == str(out / "blend.safetensors")
    assert [s["coefficient"] for s in written["blend"]] == [0.75, 0.25]
    assert read_checkpoint(out / "blend.safetensors")[2]["blend"] == written["blend"]
    load_model(out / "blend.safetensors")
    refused = CliRunner().invoke(app, ["blend", str(a), str(b), "-o", str(out), "--coefficients", "1,x"])
    assert refused.exit_code != 0 and "separated by commas" in refused.output
