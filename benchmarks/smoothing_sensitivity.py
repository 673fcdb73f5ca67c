"""Smoothing sensitivity: does a mildly smoother scan change the labels?

Every resampling smooths: the clinic path's registration and 1 mm grid, a scanner's reconstruction
filter, a series acquired at another resolution. For every BraTS-ready case, each modality is blurred
inside the brain by a Gaussian of ``--sigma`` voxels (normalised by the blurred brain mask, so the
brain's edge does not darken: ``train.augment.blur_inside``, training's own blur), and the case is segmented
as ``segment`` would (shipped bundle, int8, windows, post-processing). The table gives Dice against
the truth as the scan is and blurred, and how many cases lose more than 0.1 of WT. Nothing moves, so
the truth stays where it is. ``--thick flair:z:5 t2:x:3`` adds, per entry, one modality acquired in thick
slices along one axis (``train.augment.thick_slices``, training's own ``--thick-p``): the
clinic studies' 5 mm axial FLAIR and 3 mm sagittal T2 without their registration or their grid.

    latup-edge phantom runs/indep15 --n 10 --seed 9450 --generator independent
    python benchmarks/smoothing_sensitivity.py --cases runs/indep15 --out benchmarks/smoothing_sensitivity.json
    python benchmarks/smoothing_sensitivity.py --cases runs/indep16 --sigma --thick flair:z:5 t2:x:3
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.evaluate.metrics import agreement
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.predictor import Predictor
from latup_edge.train.augment import blur_inside, thick_slices

FORMAT = "latup-edge-smoothing-sensitivity/1"
REGIONS = ("WT", "TC", "ET")
LOST_WT = 0.1  # a case losing more WT Dice than this to a blur is counted as broken by it
AXES = {"x": 0, "y": 1, "z": 2}  # BraTS voxel order: x left-right (sagittal slices), z inferior-superior (axial)


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    """A copy of ``(C, X, Y, Z)`` with each channel blurred inside the brain (nonzero in any channel), as training's
    blur augmentation does it; outside stays 0."""
    brain = (images != 0).any(axis=0)
    out = images.copy()
    for channel in out:
        blur_inside(channel, brain, sigma)
    return out


def thick(images: np.ndarray, modalities: tuple[str, ...], spec: str) -> np.ndarray:
    """A copy of ``(C, X, Y, Z)`` with one modality acquired thick, ``spec`` as ``flair:z:5``."""
    modality, axis, thickness = spec.split(":")
    brain = (images != 0).any(axis=0)
    out = images.copy()
    index = modalities.index(modality)
    out[index] = thick_slices(out[index], brain, AXES[axis], int(thickness))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=Path, required=True, help="BraTS-ready cases with labels")
    parser.add_argument("--sigma", type=float, nargs="*", default=[0.5, 1.0], help="blur sigmas in voxels")
    parser.add_argument("--thick", nargs="*", default=[], help="MODALITY:AXIS:SLICES, e.g. flair:z:5 (axes x, y, z)")
    parser.add_argument("--bundle", type=Path, default=None, help="default: the bundle shipped in the package")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--n", type=int, default=None, help="the first N cases only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args(argv)

    predictor = Predictor.open("openvino", args.precision, args.bundle, threads=args.threads)
    modalities = predictor.modalities or ("flair", "t1ce", "t2")
    conditions = ["as is", *(f"sigma {s:g}" for s in args.sigma), *(f"thick {t}" for t in args.thick)]
    rows = []
    for case in discover_cases(args.cases)[: args.n]:
        images, _ = load_case_images(case, modalities)
        truth = load_case_labels(case)[0]
        inputs = [images, *(blurred(images, s) for s in args.sigma)]
        inputs += [thick(images, modalities, spec) for spec in args.thick]
        predicted = [predictor.predict(x).classes for x in inputs]
        row = {"case_id": case.case_id}
        for name, labels in zip(conditions, predicted, strict=True):
            row[name] = {"dice": agreement(labels, truth), "agreement_with_as_is": agreement(labels, predicted[0])}
        rows.append(row)
        print(case.case_id, " | ".join(f"{n} WT {row[n]['dice']['WT']:.3f}" for n in conditions), file=sys.stderr)

    summary = {}
    for name in conditions:
        summary[name] = {
            "dice": {r: round(float(np.mean([row[name]["dice"][r] for row in rows])), 4) for r in REGIONS},
            "agreement_with_as_is": {
                r: round(float(np.mean([row[name]["agreement_with_as_is"][r] for row in rows])), 4) for r in REGIONS
            },
            "cases_losing_wt": sum(row["as is"]["dice"]["WT"] - row[name]["dice"]["WT"] > LOST_WT for row in rows),
        }
    print(f"| input ({len(rows)} cases) | Dice WT / TC / ET | agreement with as is | cases losing > {LOST_WT} WT |")
    print("|---|---|---|---|")
    for name, s in summary.items():
        d, a = s["dice"], s["agreement_with_as_is"]
        print(f"| {name} | {d['WT']:.4f} / {d['TC']:.4f} / {d['ET']:.4f} | "
              f"{a['WT']:.4f} / {a['TC']:.4f} / {a['ET']:.4f} | {s['cases_losing_wt']} |")  # fmt: skip
    if args.out:
        atomic_write_json(args.out, {
            "format": FORMAT,
            "measured": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
            "cases_dir": str(args.cases),
            "bundle": str(predictor.bundle.path if predictor.bundle else None),
            "precision": predictor.precision,
            "cases": rows,
            "summary": summary,
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
