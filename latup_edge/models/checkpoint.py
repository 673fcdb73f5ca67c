"""Checkpoints: weights in safetensors (no pickle) with the network config in its header, and a JSON
sidecar with provenance (data, steps, patch size, seed, versions, metrics) for people.

``load_model()`` with no path loads the shipped demo weights (``models/`` in the repository, packaged
as ``latup_edge.shipped``).
"""

from __future__ import annotations

import json
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from latup_edge.errors import LatupError
from latup_edge.fileio import atomic_write, sha256_file
from latup_edge.models.latup_net import LATUPNet, LATUPNetConfig

FORMAT = "latup-edge-checkpoint/1"
SHIPPED_NAME = "latup-demo.safetensors"
SHIPPED_CORE_NAME = "latup-core.safetensors"


class CheckpointError(LatupError):
    """A file that is not a usable LATUP-Net checkpoint; the message says which and why."""


def shipped_weights() -> Path:
    """Path of the demo weights that ship with the package."""
    return Path(str(resources.files("latup_edge.shipped") / SHIPPED_NAME))


def shipped_core_weights() -> Path:
    """Path of the weights of the shipped bundle's core network (they label the non-enhancing tumour core)."""
    return Path(str(resources.files("latup_edge.shipped") / SHIPPED_CORE_NAME))


def save_checkpoint(model: LATUPNet, path: Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (.safetensors) and ``path`` with .json beside it; both atomically."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    config = json.dumps(model.config.to_dict(), sort_keys=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    data = _canonical_safetensors(tensors, {"format": FORMAT, "config": config})
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    sidecar = {
        "format": FORMAT,
        "weights": path.name,
        "sha256": sha256_file(path),
        "parameters": sum(t.numel() for t in tensors.values()),
        "config": model.config.to_dict(),
        **(provenance or {}),
    }
    text = json.dumps(sidecar, indent=2, default=str) + "\n"
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    return path


def _canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the header's metadata keys sorted: the same weights always give the same sha256.

    safetensors (0.8) writes ``__metadata__`` in a random order (safetensors#584), so two saves of one model
    could differ in their hash; tensor offsets count from the end of the header, so reordering it is safe.
    """
    raw = save(tensors, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the header's padding, as safetensors aligns it
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]


def read_checkpoint(path: Path) -> tuple[LATUPNetConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read and check a checkpoint: (config, state dict, sidecar JSON or {})."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file (e.g. {path}/best.safetensors)")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint ({error}); it may be truncated or not a "
            "latup-edge checkpoint: re-copy it or retrain"
        ) from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a latup-edge checkpoint (no {FORMAT} header)")
    config = _config_from_dict(json.loads(metadata["config"]), path)
    sidecar_path = path.with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
    return config, tensors, sidecar


def load_model(path: Path | str | None = None, map_location: str = "cpu") -> LATUPNet:
    """Build LATUP-Net from a checkpoint (default: the shipped demo weights), in eval mode.

    Raises CheckpointError when the file is unreadable, not a checkpoint, or its tensors do not match
    the network its config describes.
    """
    path = Path(path) if path is not None else shipped_weights()
    config, tensors, _ = read_checkpoint(path)
    model = LATUPNet(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = [f"missing {k}" for k in expected.keys() - found.keys()]
    problems += [f"unexpected {k}" for k in found.keys() - expected.keys()]
    problems += [
        f"{k} has shape {found[k]}, expected {expected[k]}"
        for k in expected.keys() & found.keys()
        if expected[k] != found[k]
    ]
    if problems:
        shown = "; ".join(sorted(problems)[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise CheckpointError(f"{path} does not match the network its config describes: {shown}")
    model.load_state_dict({k: v.to(map_location) for k, v in tensors.items()})
    return model.eval()


def _config_from_dict(values: dict[str, Any], path: Path) -> LATUPNetConfig:
    known = {f.name for f in fields(LATUPNetConfig)}
    unknown = sorted(values.keys() - known)
    if unknown:
        raise CheckpointError(f"{path} has network settings this version does not know: {unknown}")
    try:
        return LATUPNetConfig(**values)
    except TypeError as error:
        raise CheckpointError(f"{path} has an invalid network config: {error}") from None


def blend_checkpoints(paths: list[Path], coefficients: list[float] | None = None) -> tuple[LATUPNet, dict[str, Any]]:
    """The weight-space blend sum_i c_i * theta_i of checkpoints of one network, and its provenance.

    Blending a model with its own fine-tunes (WiSE-FT; "model soups", Wortsman et al. 2022) is meant
    for checkpoints that share a starting point; ``coefficients`` (default: equal) are >= 0 and sum to 1.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise CheckpointError("a blend needs at least two checkpoints")
    coefficients = list(coefficients) if coefficients is not None else [1.0 / len(paths)] * len(paths)
    if len(coefficients) != len(paths):
        raise CheckpointError(f"{len(coefficients)} coefficients for {len(paths)} checkpoints: give one each")
    if min(coefficients) < 0 or abs(sum(coefficients) - 1.0) > 1e-6:
        raise CheckpointError(f"coefficients {coefficients} must be >= 0 and sum to 1")
    models = [load_model(path) for path in paths]  # each checked against the network its config describes
    for path, model in zip(paths[1:], models[1:], strict=True):
        if model.config != models[0].config:
            raise CheckpointError(f"{path} describes another network than {paths[0]}: blend only one network's weights")
    states = [model.state_dict() for model in models]
    blended = {
        name: sum(c * state[name].double() for c, state in zip(coefficients, states, strict=True)).float()
        for name in states[0]
    }
    model = LATUPNet(models[0].config)
    model.load_state_dict(blended)
    sources = [
        {"path": str(path), "sha256": sha256_file(path), "coefficient": c}
        for path, c in zip(paths, coefficients, strict=True)
    ]
    return model.eval(), {"blend": sources}
