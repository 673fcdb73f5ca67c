"""Crop invariance: do a case's labels depend on how much background surrounds its brain?

For every case: the network input is the brain box (the deployed preprocessing); the same box is then
padded with ``--pad`` zero voxels on every side, run again, and cut back. The table gives the label
agreement (Dice per region, both empty = 1) between the tight and the padded run; the target is
>= 0.995 in every region. Runs the checkpoint in PyTorch (``--weights``) or a bundle's OpenVINO model
(``--bundle``, ``--precision``).

    python benchmarks/crop_invariance.py --cases heldout --weights models/latup-demo.safetensors
    python benchmarks/crop_invariance.py --cases independent --bundle bundle --precision int8 --out ci.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from latup_edge.data.cases import discover_cases, load_case_images
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.data.preprocess import apply_crop, brain_box, normalize
from latup_edge.evaluate.metrics import agreement
from latup_edge.fileio import atomic_write_json

FORMAT = "latup-edge-crop-invariance/1"
TARGET = 0.995


def _forward(args: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    """A (1, C, D, H, W) -> logits function, the model's normalisation, and what was run."""
    if args.bundle:
        from latup_edge.runtime.bundle import load_bundle

        bundle = load_bundle(args.bundle)
        model = bundle.model(args.precision, threads=args.threads, allow_failed=True)
        network = bundle.manifest.get("network", {})
        return model, bundle.normalization, {"bundle": str(args.bundle), "precision": args.precision, **network}
    import torch

    from latup_edge.models.checkpoint import load_model
    from latup_edge.runtime.volume import torch_forward

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    ran = {"weights": str(args.weights or "shipped"), "precision": args.precision, **model.config.to_dict()}
    return torch_forward(model, bf16=args.precision == "bf16"), model.config.normalization, ran


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=Path, required=True, help="BraTS-format folder")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the shipped weights)")
    parser.add_argument("--bundle", type=Path, default=None, help="run this bundle's OpenVINO model instead")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 (or int8 for a bundle)")
    parser.add_argument("--pad", type=int, default=32, help="zero voxels added on every side (default 32)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases (0: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args(argv)

    forward, normalization, ran = _forward(args)
    cases = discover_cases(args.cases)[: args.limit or None]
    rows: dict[str, dict[str, float]] = {}
    pad = args.pad
    for case in cases:
        images, _ = load_case_images(case, MODEL_MODALITIES)
        normalized = normalize(images, normalization)
        box = apply_crop(normalized, brain_box(normalized))[None]
        padded = np.pad(box, ((0, 0), (0, 0), *((pad, pad),) * 3))
        tight = np.argmax(forward(box)[0], axis=0).astype(np.uint8)
        loose = np.argmax(forward(padded)[0], axis=0).astype(np.uint8)[pad:-pad, pad:-pad, pad:-pad]
        rows[case.case_id] = agreement(tight, loose)
        print(case.case_id, " ".join(f"{r} {v:.4f}" for r, v in rows[case.case_id].items()), file=sys.stderr)
    regions = ("WT", "TC", "ET")
    summary = {
        region: {
            "mean": float(np.mean([r[region] for r in rows.values()])),
            "min": min(r[region] for r in rows.values()),
        }
        for region in regions
    }
    print(f"{'':24}" + "".join(f"{r:>10}" for r in regions))
    for name in ("mean", "min"):
        print(f"{'agreement ' + name:24}" + "".join(f"{summary[r][name]:>10.4f}" for r in regions))
    passed = all(summary[r]["min"] >= TARGET for r in regions)
    print(f"target: min agreement >= {TARGET} in every region: {'met' if passed else 'missed'} ({len(rows)} cases)")
    if args.out:
        result = {
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": {"machine": platform.machine(), "python": platform.python_version()},
            "cases_dir": str(args.cases),
            "pad": pad,
            "ran": ran,
            "per_case": rows,
            "summary": summary,
            "target_met": passed,
        }
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
