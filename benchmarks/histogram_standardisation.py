"""Does mapping each scan's brain histogram onto the training data's (Nyul-Udupa) help on other generators?

The network z-scores each modality over the brain, so it sees a scan's contrast only through the
*shape* of the brain's intensity histogram. Nyul and Udupa's standardisation (1999; Shah et al.
2011 for brain MRI) maps a scan's in-brain percentile landmarks piecewise linearly onto standard
landmarks learned from reference scans. Here the reference is the training generator's phantoms, so
a scan from any other source is bent towards the contrast the network learned, before the z-score.

The experiment writes standardised copies of case folders (labels copied unchanged, inputs never
touched) that ``latup-edge evaluate`` then scores like any folder:

    python benchmarks/histogram_standardisation.py fit runs/ref-train --out runs/nyul.json
    python benchmarks/histogram_standardisation.py apply runs/nyul.json runs/blind3 runs/blind3-nyul
    latup-edge evaluate runs/blind3-nyul --backend openvino --json
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from latup_edge.data.cases import discover_cases
from latup_edge.fileio import atomic_write, atomic_write_json

# Deciles plus the 1st and 99th percentile, as Shah et al. use; the ends set the scale, not single voxels.
LANDMARKS = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
# Standardised brain intensities span [FLOOR, FLOOR + SCALE]: positive, so "non-zero" still marks the brain.
FLOOR, SCALE = 100.0, 1000.0


def brain_landmarks(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per modality: the in-brain percentile landmarks, rescaled so that the 1st is 0 and the 99th is 1."""
    brain = np.any(np.stack([image != 0 for image in images.values()]), axis=0)
    out = {}
    for key, image in images.items():
        marks = np.percentile(image[brain].astype(np.float64), LANDMARKS)
        out[key] = (marks - marks[0]) / max(marks[-1] - marks[0], 1e-12)
    return out


def standardise(image: np.ndarray, brain: np.ndarray, standard: np.ndarray) -> np.ndarray:
    """Map ``image``'s in-brain landmarks onto ``standard`` (piecewise linear, the end segments extended)."""
    values = image[brain].astype(np.float64)
    marks = np.percentile(values, LANDMARKS)
    if marks[-1] <= marks[0]:
        raise ValueError("the modality is constant over the brain")
    marks = np.maximum.accumulate(marks + np.arange(len(marks)) * 1e-9)  # tied landmarks stay ordered
    mapped = np.interp(values, marks, standard)
    low, high = values < marks[0], values > marks[-1]
    mapped[low] = standard[0] + (values[low] - marks[0]) * (standard[1] - standard[0]) / (marks[1] - marks[0])
    mapped[high] = standard[-1] + (values[high] - marks[-1]) * (standard[-1] - standard[-2]) / (marks[-1] - marks[-2])
    out = np.zeros(image.shape, np.float32)
    out[brain] = FLOOR + SCALE * np.clip(mapped, -0.09, None)  # the darkest tail stays inside the brain
    return out


def read(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image


def fit(reference: list[Path]) -> dict:
    per_modality: dict[str, list[np.ndarray]] = {}
    cases = discover_cases(*reference)
    for case in cases:
        images = {key: read(path)[0] for key, path in case.files.items()}
        for key, marks in brain_landmarks(images).items():
            per_modality.setdefault(key, []).append(marks)
    return {
        "landmarks_percent": list(LANDMARKS),
        "cases": len(cases),
        "reference": [str(path) for path in reference],
        "standard": {key: np.mean(marks, axis=0).round(6).tolist() for key, marks in per_modality.items()},
        "spread": {key: np.std(marks, axis=0).round(6).tolist() for key, marks in per_modality.items()},
    }


def apply(model: dict, source: Path, target: Path) -> int:
    cases = discover_cases(source)
    for case in cases:
        folder = target / case.folder.relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)
        loaded = {key: read(path) for key, path in case.files.items()}
        brain = np.any(np.stack([data != 0 for data, _ in loaded.values()]), axis=0)
        for key, (data, image) in loaded.items():
            mapped = standardise(data, brain, np.asarray(model["standard"][key]))
            header = image.header.copy()
            header.set_data_dtype(np.float32)
            out = nib.Nifti1Image(mapped, image.affine, header)
            atomic_write(folder / case.files[key].name, lambda path, out=out: nib.save(out, path))
        if case.seg is not None:
            shutil.copyfile(case.seg, folder / case.seg.name)
    return len(cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fitting = commands.add_parser("fit", help="standard landmarks from reference case folders")
    fitting.add_argument("reference", type=Path, nargs="+")
    fitting.add_argument("--out", type=Path, required=True)
    applying = commands.add_parser("apply", help="write standardised copies of a folder's cases")
    applying.add_argument("model", type=Path)
    applying.add_argument("source", type=Path)
    applying.add_argument("target", type=Path)
    args = parser.parse_args()
    if args.command == "fit":
        model = fit(args.reference)
        atomic_write_json(args.out, model)
        for key, marks in model["standard"].items():
            print(f"{key:<5} " + " ".join(f"{mark:.3f}" for mark in marks))
    else:
        count = apply(json.loads(args.model.read_text()), args.source, args.target)
        print(f"wrote {count} standardised cases to {args.target}")


if __name__ == "__main__":
    main()
