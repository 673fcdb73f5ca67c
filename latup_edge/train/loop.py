"""The training loop: Adam on the paper's loss, per-region validation Dice each epoch, checkpoints.

A run folder holds ``last.safetensors`` (every epoch, and where a time limit stopped the run),
``best.safetensors`` (best mean validation Dice), ``average.safetensors`` when the run averages its
weights (``average_from``), each with its JSON sidecar, ``optimizer.safetensors`` and ``state.json`` for
``resume``. Every step seeds its own random streams from (seed, step)
(``batches.py``), so a resumed run continues exactly as an uninterrupted one would, from an epoch's end
or from the middle of one, and any number of sampling workers draws the same batches.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel

from latup_edge.data.cases import discover_cases
from latup_edge.data.labels import region_masks
from latup_edge.errors import LatupError
from latup_edge.evaluate.metrics import dice
from latup_edge.fileio import atomic_write, atomic_write_json
from latup_edge.models.checkpoint import load_model, save_checkpoint
from latup_edge.models.latup_net import LATUPNet, LATUPNetConfig
from latup_edge.train.augment import Augmentation
from latup_edge.train.batches import BatchStream
from latup_edge.train.loss import cross_entropy, l2_penalty, weighted_dice_loss
from latup_edge.train.noise import activation_noise
from latup_edge.train.sampling import TrainingCase, load_training_case

# oneDNN's 3-D convolutions train ~1.2x faster channels-last on the CPU (benchmarks/train_step.py).
MEMORY_FORMAT = torch.channels_last_3d
Precision = Literal["auto", "bf16", "fp32"]
Schedule = Literal["poly", "constant"]
Event = dict[str, Any]


@dataclass
class TrainingSettings:
    """Everything that determines a run; stored in every checkpoint's provenance."""

    patch: int = 128
    epochs: int = 20
    steps_per_epoch: int = 100
    batch: int = 1
    lr: float = 1e-4
    lr_schedule: Schedule = "poly"  # nnU-Net's lr * (1 - step / total) ** 0.9 over epochs x steps_per_epoch
    l2: float = 0.02
    grad_clip: float | None = None
    tumour_fraction: float = 0.7
    no_et_fraction: float = 0.0  # share of samples drawn from cases without ET (0: uniform over cases)
    ce_weight: float = 0.0  # cross-entropy added to the paper's weighted Dice loss (0: the paper's loss)
    activation_noise: float = 0.0  # noise on each conv input, in 8-bit steps of its range (noise.py)
    val_cases: int = 4
    seed: int = 0
    precision: Precision = "auto"
    threads: int | None = None
    base_filters: int = 32
    init_from: str | None = None  # a checkpoint to fine-tune from (fresh optimizer)
    # Stochastic weight averaging: the mean of the weights after every step past this one (None: off).
    average_from: int | None = None
    # Brain-only InstanceNorm/SE statistics and z-scores inside the brain: docs/GENERALISATION.md.
    statistics: str = "brain"
    normalization: str = "zscore-brain"
    augmentation: Augmentation = field(default_factory=Augmentation)


@dataclass
class TrainingState:
    epoch: int = 0
    step: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    seconds: float = 0.0
    averaged: int = 0  # weight sets in average.safetensors
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(precision: Precision, device: torch.device) -> bool:
    """bf16 autocast on CUDA, and on CPUs with AMX/AVX-512 bf16 units, where it measured ~1.3-2x faster."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "amx_bf16" in flags or "avx512_bf16" in flags


def learning_rate(settings: TrainingSettings, step: int) -> float:
    """The learning rate of the step after ``step`` steps: constant, or decayed polynomially to 0 at the
    run's last step (a resumed run lands on the same curve; raising --epochs stretches what is left)."""
    if settings.lr_schedule == "constant":
        return settings.lr
    total = settings.epochs * settings.steps_per_epoch
    return settings.lr * (1 - min(step, total - 1) / total) ** 0.9


def split_cases(case_ids: list[str], val_cases: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded train/validation split of case ids (validation needs at least one training case left)."""
    if len(case_ids) < 2 and val_cases > 0:
        raise LatupError(f"need at least 2 cases to hold some out for validation, found {len(case_ids)}")
    order = np.random.default_rng(seed).permutation(len(case_ids))
    n_val = min(val_cases, len(case_ids) - 1)
    val = sorted(case_ids[i] for i in order[:n_val])
    return [c for c in case_ids if c not in val], val


def validation_dice(model: LATUPNet, cases: list[TrainingCase], bf16: bool) -> dict[str, float]:
    """Mean Dice per region over the validation cases' whole brain boxes (already normalised, so the
    box is the network input as at inference; nothing is predicted outside it)."""
    model.eval()
    device = next(model.parameters()).device
    scores: dict[str, list[float]] = {"WT": [], "TC": [], "ET": []}
    for case in cases:
        x = torch.from_numpy(case.images[None].astype(np.float32)).to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        predicted = region_masks(logits[0].float().argmax(0).cpu().numpy().astype(np.uint8))
        truth = region_masks(case.classes)
        for region in scores:
            scores[region].append(dice(predicted[region], truth[region]))
    return {region: float(np.mean(values)) for region, values in scores.items()}


def train(
    data_dir: Path,
    out_dir: Path,
    settings: TrainingSettings,
    resume: bool = False,
    report: Callable[[Event], None] = lambda event: None,
    workers: int = 0,
    max_minutes: float | None = None,
) -> TrainingState:
    """Train LATUP-Net on a BraTS-format folder; checkpoints go to ``out_dir``. Returns the final state.

    ``report`` receives events: {"event": "loaded"|"step"|"epoch"|"stopped", ...} for progress displays.
    ``workers`` processes draw the batches ahead (0: in this process; the same batches either way).
    ``max_minutes`` stops the run after the first step past that much training time, saving
    ``last.safetensors`` and the state there, so that ``resume`` goes on from that step.
    """
    out_dir = Path(out_dir)
    device = resolve_device()
    bf16 = use_bf16(settings.precision, device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    cases = discover_cases(data_dir)
    train_ids, val_ids = split_cases([c.case_id for c in cases], settings.val_cases, settings.seed)
    by_id = {c.case_id: c for c in cases}

    # Reading and normalising cases in threads (gzip and numpy release the GIL): a GPU run loads hundreds.
    def load(case_id: str) -> TrainingCase:
        return load_training_case(by_id[case_id], settings.normalization)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        train_set, val_set = list(pool.map(load, train_ids)), list(pool.map(load, val_ids))
    report({"event": "loaded", "train": len(train_set), "val": len(val_set), "bf16": bf16, "device": str(device)})

    torch.manual_seed(settings.seed)
    config = LATUPNetConfig(
        base_filters=settings.base_filters, statistics=settings.statistics, normalization=settings.normalization
    )
    model = LATUPNet(config).to(device, memory_format=MEMORY_FORMAT)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999))
    if settings.init_from:
        model.load_state_dict(load_model(settings.init_from).state_dict())
    state = TrainingState()
    if resume:
        state = _restore(out_dir, model, optimizer, settings)
    average = _restore_average(out_dir, model, state) if settings.average_from is not None else None
    provenance = {
        "data": str(Path(data_dir).resolve()),
        "train_cases": train_ids,
        "val_cases": val_ids,
        "settings": asdict(settings),
        "device": str(device),
        "bf16_autocast": bf16,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "host": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "sampling_workers": workers,
        },
    }
    total_steps = settings.epochs * settings.steps_per_epoch
    deadline = time.perf_counter() + 60 * max_minutes if max_minutes else None
    with BatchStream(train_set, settings, range(state.step, total_steps), workers) as stream:
        batches = iter(stream)
        for epoch in range(state.epoch, settings.epochs):
            started = time.perf_counter()
            model.train()
            losses = []
            # A run resumed from a time limit starts inside this epoch.
            for _ in range(state.step - epoch * settings.steps_per_epoch, settings.steps_per_epoch):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(settings, state.step)
                torch.manual_seed(settings.seed * 100_003 + state.step)
                loss = _step(model, optimizer, *next(batches), settings, device, bf16)
                losses.append(loss)
                state.step += 1
                if average is not None and state.step > settings.average_from:
                    average.update_parameters(model)
                    state.averaged += 1
                report({"event": "step", "step": state.step, "total": total_steps, "loss": loss})
                if deadline is not None and time.perf_counter() > deadline and state.step < total_steps:
                    state.seconds += time.perf_counter() - started
                    info = {
                        **provenance,
                        "steps": state.step,
                        "epoch": state.epoch,
                        "train_seconds": round(state.seconds, 1),
                        "stopped": "time limit",
                    }
                    _save_last(out_dir, model, optimizer, state, info, average)
                    report({"event": "stopped", "step": state.step, "total": total_steps, "minutes": max_minutes})
                    return state
            metrics = validation_dice(model, val_set, bf16) if val_set else {}
            score = float(np.mean(list(metrics.values()))) if metrics else -float(np.mean(losses))
            state.seconds += time.perf_counter() - started
            state.epoch = epoch + 1
            state.history.append(
                {
                    "epoch": state.epoch,
                    "step": state.step,
                    "lr": optimizer.param_groups[0]["lr"],
                    "loss": float(np.mean(losses)),
                    "val_dice": metrics,
                }
            )
            improved = score > state.best_score
            if improved:
                state.best_score, state.best_epoch = score, state.epoch
            info = {
                **provenance,
                "steps": state.step,
                "epoch": state.epoch,
                "train_seconds": round(state.seconds, 1),
                "val_dice": metrics,
                "history": state.history,
            }
            _save_last(out_dir, model, optimizer, state, info, average)
            if improved:
                save_checkpoint(model, out_dir / "best.safetensors", info)
            report(
                {
                    "event": "epoch",
                    "epoch": state.epoch,
                    "epochs": settings.epochs,
                    "loss": float(np.mean(losses)),
                    "val_dice": metrics,
                    "best": improved,
                }
            )
    return state


def _step(model, optimizer, images: np.ndarray, classes: np.ndarray, settings, device, bf16: bool) -> float:
    x = torch.from_numpy(images).to(device, memory_format=MEMORY_FORMAT)
    y = torch.from_numpy(classes).to(device)
    optimizer.zero_grad(set_to_none=True)
    with (
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        activation_noise(model, settings.activation_noise),
    ):
        logits = model(x)
    loss = weighted_dice_loss(logits, y) + l2_penalty(model.penalised_weights(), settings.l2)
    if settings.ce_weight:
        loss = loss + settings.ce_weight * cross_entropy(logits, y)
    loss.backward()
    if settings.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    optimizer.step()
    return float(loss.detach())


def _save_last(
    out_dir: Path,
    model: LATUPNet,
    optimizer: torch.optim.Adam,
    state: TrainingState,
    info: dict,
    average: AveragedModel | None = None,
) -> None:
    """What ``resume`` reads: the weights, their average so far, the optimizer and the state, where the run is now."""
    save_checkpoint(model, out_dir / "last.safetensors", info)
    if average is not None and state.averaged:
        steps = [state.step - state.averaged + 1, state.step]
        save_checkpoint(average.module, out_dir / "average.safetensors", {**info, "averaged_steps": steps})
    _save_optimizer(out_dir, optimizer, state)


def _save_optimizer(out_dir: Path, optimizer: torch.optim.Adam, state: TrainingState) -> None:
    tensors = {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            tensors[f"{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    atomic_write(out_dir / "optimizer.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_json(out_dir / "state.json", asdict(state))


def _restore(out_dir: Path, model: LATUPNet, optimizer: torch.optim.Adam, settings: TrainingSettings) -> TrainingState:
    if not (out_dir / "state.json").exists():
        raise LatupError(f"nothing to resume in {out_dir}: no state.json (start without --resume)")
    saved = load_model(out_dir / "last.safetensors")
    if saved.config != model.config:
        raise LatupError(f"{out_dir}/last.safetensors has config {saved.config}, this run asks for {model.config}")
    model.load_state_dict(saved.state_dict())
    tensors = load_file(str(out_dir / "optimizer.safetensors"))
    optimizer_state = optimizer.state_dict()
    optimizer_state["state"] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        optimizer_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(optimizer_state)
    state = TrainingState(**json.loads((out_dir / "state.json").read_text()))
    if state.epoch >= settings.epochs:
        raise LatupError(f"{out_dir} already finished {state.epoch} epochs; raise --epochs to train further")
    return state


def _restore_average(out_dir: Path, model: LATUPNet, state: TrainingState) -> AveragedModel:
    """The running weight average: a fresh one, or the saved one where a resumed run had started averaging."""
    average = AveragedModel(model)
    if state.averaged:
        average.module.load_state_dict(load_model(out_dir / "average.safetensors").state_dict())
        average.n_averaged.fill_(state.averaged)
    return average
