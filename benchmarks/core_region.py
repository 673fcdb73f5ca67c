"""The core network on the tumour's region instead of the whole box's windows: Dice, agreement, seconds.

A bundle with a core network runs it, after the first network, on the windows of the whole brain box that touch the
first network's raw tumour (``volume.core_scores``, margin None). With a margin it runs on ``volume.tumour_region``
instead: windows fitted to the tumour's bounding box grown by that many voxels (at least one window's side). Each
case runs the first network once and the core network once per margin, at the bundle's default precision, and each
row's labels are made by ``delivered_classes`` from the same raw maps, as `segment` makes them:

    python benchmarks/core_region.py runs/blind3 runs/indep19 --bundle models/bundle --margins none 8 16 32 \\
        --json benchmarks/core_region_screen.json

Per margin and set: mean Dice per region (WT, TC, ET), agreement per region with the box's labels (margin none,
always run), and the core network's seconds a case (a shared CPU makes them rough; ``benchmarks/runtime_speed.py``
measures segment itself).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.data.preprocess import undo_crop
from latup_edge.evaluate.metrics import agreement, region_metrics, summarise
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, delivered_classes
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.volume import core_scores, normalized_box

REGIONS = ("WT", "TC", "ET")
BOX = "none"  # the margin name of today's path: the whole box's windows


def judge_margins(folders: list[Path], bundle: Path, margins: list[int | None]) -> dict:
    predictor = Predictor.from_bundle(bundle)
    if predictor.core is None:
        raise SystemExit(f"bundle {bundle} has no core network")
    names = {BOX: None} | {str(m): m for m in margins if m is not None}
    settings = (predictor.tiling, predictor.window, predictor.overlap, predictor.bucket, predictor.mirror_axes)
    result: dict = {"bundle": str(bundle), "described": predictor.describe(), "margins": list(names), "sets": {}}
    for folder in folders:
        dice: dict[str, dict] = {name: {} for name in names}
        agreed: dict[str, dict] = {name: {} for name in names}
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for case in discover_cases(folder):
            images, reference = load_case_images(case, predictor.modalities or MODEL_MODALITIES)
            truth, _ = load_case_labels(case, reference)
            spacing = reference.header.get_zooms()[:3]
            box, crop = normalized_box(images, predictor.normalization)
            raw = np.argmax(predictor.forward(box)[0], axis=0).astype(np.uint8)
            predictor.backend.release()
            labels = {}
            for name, margin in names.items():
                started = time.perf_counter()
                core = np.argmax(core_scores(box, raw > 0, predictor.core, *settings, margin=margin)[0], axis=0)
                seconds[name].append(time.perf_counter() - started)
                classes = delivered_classes(raw, DEFAULT_POSTPROCESSING, box[0], core.astype(np.uint8))
                labels[name] = undo_crop(classes, crop)
                dice[name][case.case_id] = region_metrics(labels[name], truth, spacing=spacing)
                agreed[name][case.case_id] = agreement(labels[name], labels[BOX])
            cells = "  ".join(
                f"{n} " + "/".join(f"{dice[n][case.case_id][r]['dice']:.3f}" for r in REGIONS) for n in names
            )
            print(f"{folder.name} {case.case_id}: {cells}", file=sys.stderr)
        result["sets"][str(folder)] = {
            name: {
                "cases": dice[name],
                "agreement": agreed[name],
                "mean_dice": _means(dice[name]),
                "mean_agreement": {r: float(np.mean([a[r] for a in agreed[name].values()])) for r in REGIONS},
                "min_agreement": {r: float(np.min([a[r] for a in agreed[name].values()])) for r in REGIONS},
                "core_seconds_per_case": float(np.mean(seconds[name])),
            }
            for name in names
        }
    return result


def _means(cases: dict) -> dict[str, float]:
    summary = summarise(cases)
    return {r: summary[r]["dice"]["mean"] for r in REGIONS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    parser.add_argument("--margins", nargs="+", default=["16"], help="voxels around the tumour; 'none': the box")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    margins = [None if m == BOX else int(m) for m in args.margins]
    result = judge_margins(args.folders, args.bundle, margins)
    print(f"{'set':<16} {'margin':>6} {'Dice WT / TC / ET':>26} {'agreement WT / TC / ET':>26} {'core s':>7}")
    for folder, rows in result["sets"].items():
        for name, row in rows.items():
            dice = " / ".join(f"{row['mean_dice'][r]:.4f}" for r in REGIONS)
            agreed = " / ".join(f"{row['mean_agreement'][r]:.4f}" for r in REGIONS)
            print(f"{Path(folder).name:<16} {name:>6} {dice:>26} {agreed:>26} {row['core_seconds_per_case']:>7.2f}")
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
