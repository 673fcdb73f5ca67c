"""The same cases as BraTS files and as nnU-Net datasets: does `segment` read them, and score them, the same?

nnU-Net numbers its files by channel and says in dataset.json which channel is which; its BraTS datasets store
oedema as 1 and necrosis as 2 (BraTS stores them the other way round). This script writes the first N cases of
a labelled BraTS folder in three more layouts, segments each with the shipped bundle as `segment` does, and
scores the written labels (read back in the convention the run log names) against each layout's own truth:

- ``Dataset001``: the Decathlon's channel order (FLAIR, T1w, T1gd, T2w) with its dataset.json;
- ``Dataset137``: nnU-Net's BraTS 2021 order (T1, T1ce, T2, FLAIR), region-based labels in dataset.json;
- ``Dataset001, no dataset.json``: the Decathlon's order with its description lost, read in Dataset137's order
  (the one assumption left): what the QA flags say about it.

    python benchmarks/nnunet_layouts.py runs/indep19 --n 4 --work /tmp/layouts --out benchmarks/nnunet_layouts.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np

from latup_edge.data.cases import discover_cases, load_case_labels
from latup_edge.data.labels import REGIONS, from_classes, to_classes
from latup_edge.evaluate.metrics import dice
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.segment import SegmentSettings, segment_cases

FORMAT = "latup-edge-nnunet-layouts/1"
DECATHLON_ORDER = ("flair", "t1", "t1ce", "t2")
DATASET137_ORDER = ("t1", "t1ce", "t2", "flair")
LAYOUTS = {
    "Dataset001": (
        DECATHLON_ORDER,
        {
            "channel_names": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
        },
    ),
    "Dataset137": (
        DATASET137_ORDER,
        {
            "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
            "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        },
    ),
    "Dataset001, no dataset.json": (DECATHLON_ORDER, None),
}


def write_layout(cases, root: Path, order: tuple[str, ...], description: dict | None) -> Path:
    """imagesTr (links to the BraTS files, renamed by channel), labelsTr (nnU-Net's values), dataset.json."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for index, case in enumerate(cases):
        case_id = f"BRATS_{index:03d}"
        for channel, key in enumerate(order):
            (root / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz").symlink_to(case.files[key].resolve())
        classes, _ = load_case_labels(case)
        reference = nib.load(case.seg)
        nib.save(
            nib.Nifti1Image(from_classes(classes, "nnunet"), reference.affine), root / "labelsTr" / f"{case_id}.nii.gz"
        )
    if description is not None:
        (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return root


def score(folder: Path, out: Path) -> dict:
    """Segment ``folder`` into ``out`` with the shipped bundle; Dice of each written label map and its flags."""
    log = segment_cases([folder], out, SegmentSettings(), report=lambda event: print(".", end="", file=sys.stderr))
    truths = {case.case_id: case for case in discover_cases(folder)}
    cases = {}
    for entry in log["cases"]:
        if entry["status"] != "ok":
            cases[entry["case_id"]] = {"error": entry["error"]}
            continue
        truth, _ = load_case_labels(truths[entry["case_id"]])
        written = np.asanyarray(nib.load(entry["outputs"][0]).dataobj)
        predicted = to_classes(written, entry["labels"])
        cases[entry["case_id"]] = {
            "labels": entry["labels"],
            "dice": {r: round(float(dice(np.isin(predicted, c), np.isin(truth, c))), 4) for r, c in REGIONS.items()},
            "flags": entry["flags"],
        }
    scored = [c for c in cases.values() if "dice" in c]
    mean = {r: round(float(np.mean([c["dice"][r] for c in scored])), 4) for r in REGIONS} if scored else None
    return {"mean": mean, "flagged": sum(bool(c.get("flags")) for c in cases.values()), "cases": cases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a labelled BraTS folder")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--work", type=Path, required=True, help="an empty folder for the layouts and outputs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.work.exists() and any(args.work.iterdir()):
        parser.error(f"{args.work} is not empty")
    found = discover_cases(args.source)
    cases = found[: args.n]
    layouts = {"BraTS": args.source if len(cases) == len(found) else None}
    if layouts["BraTS"] is None:  # only the first N: links to their folders
        (args.work / "brats").mkdir(parents=True)
        for case in cases:
            (args.work / "brats" / case.folder.name).symlink_to(case.folder.resolve())
        layouts["BraTS"] = args.work / "brats"
    for name, (order, description) in LAYOUTS.items():
        layouts[name] = write_layout(cases, args.work / name.replace(", ", "-").replace(" ", "_"), order, description)

    results = {}
    print(f"{'layout':32s} {'WT':>7s} {'TC':>7s} {'ET':>7s}  labels written   flagged", file=sys.stderr)
    for name, folder in layouts.items():
        results[name] = score(folder, args.work / "out" / folder.name)
        mean, conventions = results[name]["mean"], {c.get("labels") for c in results[name]["cases"].values()}
        cells = " ".join(f"{mean[r]:7.4f}" for r in REGIONS) if mean else "failed"
        print(f"\r{name:32s} {cells}  {','.join(map(str, conventions)):15s}  {results[name]['flagged']}/{len(cases)}")
    result = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": str(args.source),
        "n": len(cases),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "layouts": results,
    }
    if args.out:
        atomic_write_json(args.out, result)
    shutil.rmtree(args.work / "out", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
