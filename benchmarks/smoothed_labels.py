"""Labels from spatially smoothed class probabilities: do they hold under a change of precision?

INT8 (and bf16) lose Dice at uncertain borders, where a small change of the network's output flips
a voxel's argmax (docs/INT8.md). Precision noise varies from voxel to voxel more than the tumour's
own probabilities do, so a small Gaussian on the probabilities before the argmax should flip fewer
voxels. This script keeps each case's blended window probabilities per precision (``--work``, float16),
then scores every smoothing width on them as ``drift`` scores (the labels segment writes; Dice ratio
to fp32 with its interval, agreement with fp32), so the widths cost no second pass of the network.

    python benchmarks/smoothed_labels.py --bundle models/bundle --eval runs/build32-heldout \
        --work runs/smooth --sigma 0 0.5 1 --out benchmarks/smoothed_labels.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from latup_edge.data.cases import discover_cases
from latup_edge.data.labels import REGIONS
from latup_edge.evaluate.drift import measure_drift, prepare_case, summarise_drift
from latup_edge.runtime.bundle import load_bundle
from latup_edge.runtime.openvino_backend import OpenVINOModel
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, delivered_labels
from latup_edge.runtime.volume import box_forward


def smoothed(probabilities: np.ndarray, sigma: float) -> np.ndarray:
    """``(1, K, X, Y, Z)`` float32 probabilities with each class map smoothed by a Gaussian of ``sigma`` voxels."""
    if sigma <= 0:
        return probabilities
    out = np.empty_like(probabilities)
    for k in range(probabilities.shape[1]):
        ndimage.gaussian_filter(probabilities[0, k], sigma, output=out[0, k], truncate=2.0)
    return out


def cached_probabilities(bundle_dir: Path, folder: Path, work: Path, precisions: list[str], threads: int):
    """Every case of ``folder`` prepared, with its window probabilities per precision from ``work``
    (computed and stored on the first call)."""
    bundle = load_bundle(bundle_dir)
    files = {p: bundle.manifest["precisions"][p]["file"] for p in precisions}
    store = work / bundle_dir.name / folder.name
    store.mkdir(parents=True, exist_ok=True)
    forwards = {}
    for case in discover_cases(folder):
        prepared = prepare_case(case, normalization=bundle.normalization)
        stored = store / f"{case.case_id}.npz"
        if not stored.exists():
            if not forwards:
                forwards = {
                    p: box_forward(OpenVINOModel(bundle_dir / files[p], p, threads=threads)) for p in precisions
                }
            started = time.perf_counter()
            arrays = {p: forward(prepared.inputs).astype(np.float16) for p, forward in forwards.items()}
            np.savez(stored.with_suffix(".tmp.npz"), **arrays)
            stored.with_suffix(".tmp.npz").rename(stored)
            print(f"{bundle_dir.name} {case.case_id}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        with np.load(stored) as arrays:
            yield prepared, {p: arrays[p].astype(np.float32) for p in precisions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--eval", type=Path, action="append", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    labels = delivered_labels(DEFAULT_POSTPROCESSING)
    results = {}
    for bundle_dir in args.bundle:
        for folder in args.eval:
            per_sigma = {sigma: {} for sigma in args.sigma}
            for prepared, probabilities in cached_probabilities(
                bundle_dir, folder, args.work, args.precisions, args.threads
            ):
                for sigma in args.sigma:
                    smooth = {p: smoothed(probabilities[p], sigma) for p in args.precisions}
                    forwards = {p: (lambda box, out=smooth[p]: out) for p in args.precisions}
                    per_sigma[sigma] |= measure_drift([prepared], forwards, labels=labels)["cases"]
            for sigma, per_case in per_sigma.items():
                summary = summarise_drift(per_case, args.precisions)
                results[f"{bundle_dir} | {folder} | sigma {sigma}"] = {"summary": summary, "cases": per_case}
                print(row(bundle_dir, folder, sigma, summary))
    args.out.write_text(json.dumps({"sigma": args.sigma, "results": results}, indent=1))
    return 0


def row(bundle_dir: Path, folder: Path, sigma: float, summary: dict) -> str:
    fp32, int8 = summary["fp32"]["regions"], summary["int8"]["regions"]
    dice = " / ".join(f"{fp32[r]['dice']:.4f}" for r in REGIONS)
    ratio = " / ".join(f"{int8[r]['ratio']:.4f}" for r in REGIONS)
    agreement = " / ".join(f"{int8[r]['agreement_mean']:.4f} ({int8[r]['agreement_min']:.3f})" for r in REGIONS)
    return f"{bundle_dir.name:10} {folder.name:16} sigma {sigma:<4} fp32 {dice}  int8 ratio {ratio}  agr {agreement}"


if __name__ == "__main__":
    raise SystemExit(main())
