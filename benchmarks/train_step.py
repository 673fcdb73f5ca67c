"""Seconds a training step takes on this machine, with the network's tensors contiguous or channels-last.

Times ``latup_edge.train.loop._step`` (the loss, the backward pass, clipping and Adam, as ``latup-edge train``
runs them, bf16 autocast where the loop would use it) on real batches drawn from a BraTS-format folder, the
shipped weights as the start. The two memory formats alternate step by step, so that load on the machine
falls on both alike; each format's first step is a warm-up and is not counted.

    python benchmarks/train_step.py runs/train14-core --steps 8 --out benchmarks/train_step.json

Prints a table and writes the JSON (per-step seconds, the machine's facts).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from latup_edge.data.cases import discover_cases
from latup_edge.models.checkpoint import load_model
from latup_edge.train import loop
from latup_edge.train.batches import draw_batch
from latup_edge.train.loop import TrainingSettings, resolve_device, use_bf16
from latup_edge.train.sampling import load_training_case

FORMATS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last_3d}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a BraTS-format folder with label files")
    parser.add_argument("--cases", type=int, default=4, help="cases to draw batches from")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per format")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "train_step.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device()
    settings = TrainingSettings(patch=args.patch, batch=args.batch, lr=5e-5, l2=0.0, grad_clip=1.0, tumour_fraction=0.5)
    bf16 = use_bf16(settings.precision, device)
    cases = [load_training_case(case, settings.normalization) for case in discover_cases(args.data)[: args.cases]]
    runs = {}
    for name, memory_format in FORMATS.items():
        model = load_model().to(device, memory_format=memory_format).train()
        runs[name] = (model, torch.optim.Adam(model.parameters(), lr=settings.lr), [])

    for step in range(args.steps + 1):
        batch = draw_batch(cases, settings, step)
        for name, (model, optimizer, seconds) in runs.items():
            loop.MEMORY_FORMAT = FORMATS[name]  # the step converts its input to this format
            started = time.perf_counter()
            loop._step(model, optimizer, *batch, settings, device, bf16)
            if step:  # the first step of each format warms it up
                seconds.append(time.perf_counter() - started)

    base = statistics.median(runs["contiguous"][2])
    rows = {
        name: {"median_s": statistics.median(seconds), "speedup": base / statistics.median(seconds), "steps_s": seconds}
        for name, (_, _, seconds) in runs.items()
    }
    print(f"| memory format | s a step (median of {args.steps}) | speed-up |")
    print("|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_s']:.2f} | {row['speedup']:.2f}x |")
    result = {
        "data": str(args.data),
        "patch": args.patch,
        "batch": args.batch,
        "threads": args.threads,
        "bf16_autocast": bf16,
        "device": str(device),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "formats": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
