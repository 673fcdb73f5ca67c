"""How close INT8 models are to the bundle's fp32 on single windows, in KL and voxel agreement.

The distillation of ``int8_distil.py`` trained on 64^3 windows of its own phantoms; this asks whether a
student came closer to fp32 there and on windows of cases it never saw, at 64^3 and at segment's 96^3.
One window per case, centred on a tumour voxel drawn with a fixed seed; brain voxels only.

    python benchmarks/int8_distil_windows.py --candidate distilled=runs/qat/int8_distilled.xml \
        --candidate torch-ptq=runs/qat/ptq_torch_int8.xml --data runs/distil3700 --data runs/fresh3600 \
        --out benchmarks/int8_distil_windows.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from latup_edge.deploy.quantize.distil import distil_boxes, tumour_windows
from latup_edge.runtime.bundle import load_bundle
from latup_edge.runtime.input_stats import brain_mask
from latup_edge.runtime.openvino_backend import OpenVINOModel


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    parser.add_argument("--candidate", action="append", default=[], help="NAME=PATH of an INT8 IR")
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--cases", type=int, default=8, help="the first N cases of each folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    reference = OpenVINOModel(args.bundle / "fp32.xml", "fp32", threads=2)
    models = {"bundle": OpenVINOModel(args.bundle / bundle.manifest["precisions"]["int8"]["file"], "int8", threads=2)}
    for spec in args.candidate:
        name, _, path = spec.partition("=")
        models[name] = OpenVINOModel(Path(path), "int8", threads=2)
    results = []
    print(f"{'data':16s} {'window':>6s} {'int8':12s} {'KL to fp32':>11s} {'agreement':>10s}")
    for folder in args.data:
        boxes = distil_boxes(folder, bundle.normalization, args.cases)
        for size in args.sizes:
            windows = tumour_windows(boxes, size)
            references = [log_softmax(reference(x)) for x in windows]
            for name, model in models.items():
                kl, agreement = [], []
                for x, ref in zip(windows, references, strict=True):
                    brain = brain_mask(x[0])[None]
                    q = log_softmax(model(x))
                    kl.append(float((np.exp(ref) * (ref - q)).sum(1)[brain].mean()))
                    agreement.append(float((ref.argmax(1) == q.argmax(1))[brain].mean()))
                row = {"data": str(folder), "window": size, "int8": name, "kl": float(np.mean(kl))}
                row["agreement"] = float(np.mean(agreement))
                results.append(row)
                print(f"{folder.name:16s} {size:6d} {name:12s} {row['kl']:11.5f} {row['agreement']:10.5f}", flush=True)
    args.out.write_text(json.dumps({"cases_per_folder": args.cases, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
