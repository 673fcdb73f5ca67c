"""INT8 by quantization-aware distillation from a bundle's own float network, resumable.

Places NNCF's PyTorch quantizers as the bundle's build placed its OpenVINO ones (its float layers,
ranges from its calibration cases), then fine-tunes the quantized network to give the float
network's probabilities on windows of a labelled or unlabelled phantom folder
(``latup_edge/deploy/quantize/distil.py``). A checkpoint is written every ``--every`` steps into
``--work``; run the same command again to go on. When every step is done it writes the INT8
OpenVINO IR, which ``int8_variants.py --candidate`` scores against the bundle's own int8.

    latup-edge phantom runs/distil3700 --n 24 --seed 3700
    python benchmarks/int8_distil.py --data runs/distil3700 --work runs/qat/distil --steps 300 \
        --max-minutes 45 --out runs/qat/int8_distilled.xml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from latup_edge.deploy.build import built_from
from latup_edge.deploy.deploy_form import to_deploy_form
from latup_edge.deploy.quantize.distil import (
    PARAMETER_SETS,
    DistilSettings,
    distil,
    distil_boxes,
    distillation_loss,
    load_checkpoint,
    quantize_torch,
    save_checkpoint,
    to_openvino,
    tumour_windows,
)
from latup_edge.errors import LatupError
from latup_edge.models.checkpoint import load_model
from latup_edge.models.latup_net import brain_masks
from latup_edge.runtime.bundle import load_bundle


def held_out_windows(folder: Path, normalization: str, teacher: torch.nn.Module, cases: int = 8) -> list:
    """One fixed 64^3 tumour-centred window per case of ``folder`` (the first ``cases``), with fp32's logits."""
    windows = [torch.from_numpy(x) for x in tumour_windows(distil_boxes(folder, normalization, cases), 64)]
    with torch.no_grad():
        return [(x, teacher(x)) for x in windows]


def monitor_kl(student: torch.nn.Module, windows: list) -> float:
    """Mean over the windows of the distillation loss (KL to fp32 over the brain)."""
    with torch.no_grad():
        losses = [float(distillation_loss(student(x), target, brain_masks(x, 0)[0])) for x, target in windows]
    return float(np.mean(losses))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    parser.add_argument("--weights", type=Path, help="the bundle's float weights (default: the shipped ones)")
    parser.add_argument("--data", type=Path, required=True, help="phantom folder to draw windows from")
    parser.add_argument("--work", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--steps", type=int, default=DistilSettings.steps)
    parser.add_argument("--window", type=int, default=DistilSettings.window)
    parser.add_argument("--lr", type=float, default=DistilSettings.lr)
    parser.add_argument("--seed", type=int, default=DistilSettings.seed)
    parser.add_argument("--parameters", choices=PARAMETER_SETS, default=DistilSettings.parameters)
    parser.add_argument("--every", type=int, default=20, help="steps between checkpoints")
    parser.add_argument("--monitor", type=Path, help="a folder of other cases: KL on 8 fixed windows is logged")
    parser.add_argument("--monitor-every", type=int, default=25, help="steps between monitor scores")
    parser.add_argument("--max-minutes", type=float, default=float("inf"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="the INT8 IR (.xml) to write when done")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = DistilSettings(args.steps, args.window, args.lr, seed=args.seed, parameters=args.parameters)

    bundle = load_bundle(args.bundle)
    build = bundle.manifest["build"]
    teacher = to_deploy_form(load_model(args.weights)).eval()
    checkpoint = args.work / "checkpoint.pt"
    started = time.perf_counter()
    if checkpoint.exists():
        try:
            student, optimizer, start = load_checkpoint(checkpoint, to_deploy_form(load_model(args.weights)), settings)
        except LatupError as error:
            sys.exit(str(error))
        print(f"resuming at step {start}", file=sys.stderr)
    else:
        _, samples = built_from(bundle)
        student = quantize_torch(to_deploy_form(load_model(args.weights)), samples, build["quantization"]["keep_float"])
        optimizer, start = None, 0
        print(f"quantized in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    boxes = distil_boxes(args.data, bundle.normalization)
    log = args.work / "log.jsonl"
    args.work.mkdir(parents=True, exist_ok=True)
    monitor = held_out_windows(args.monitor, bundle.normalization, teacher) if args.monitor else None

    def write(entry: dict) -> None:
        with log.open("a") as f:
            f.write(json.dumps(entry | {"seconds": round(time.perf_counter() - started, 1)}) + "\n")

    if monitor is not None and start == 0:
        write({"step": 0, "monitor_kl": monitor_kl(student, monitor)})

    class OutOfTime(Exception):
        pass

    def on_step(step: int, loss: float, optimizer: torch.optim.Optimizer) -> None:
        write({"step": step, "loss": loss})
        done = step + 1
        if monitor is not None and done % args.monitor_every == 0:
            write({"step": done, "monitor_kl": monitor_kl(student, monitor)})
        if done % args.every == 0 or done == settings.steps:
            save_checkpoint(checkpoint, student, optimizer, done, settings)
        if done % args.every == 0 and (time.perf_counter() - started) / 60 > args.max_minutes and done < settings.steps:
            raise OutOfTime(done)

    try:
        distil(student, teacher, boxes, settings, optimizer, start, on_step)
    except OutOfTime as stop:
        print(f"stopped after step {stop.args[0]} of {settings.steps}: run again to go on", file=sys.stderr)
        return 0
    model = to_openvino(student, boxes[0].inputs[:, :, :64, :64, :64])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(args.out), compress_to_fp16=False)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
