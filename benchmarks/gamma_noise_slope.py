"""Can a gamma on the intensities be told from the phantoms' own gamma by how noise scales with signal?

MRI noise is additive: in a scan as acquired, its spread does not grow with the signal, so the
slope of log(noise spread) against log(local signal) is about 0. A gamma ``g`` applied afterwards
turns it into about ``(g - 1) / g`` (-1 at gamma 0.5, +0.5 at gamma 2.0), whatever the tissue
gains. This script measures that slope per modality and takes the median over FLAIR, T1ce, T2:

- noise spread: 1.4826 x the median absolute deviation of the residual ``voxel - mean of its six
  face neighbours``, inside the brain eroded by 2 voxels, in 8 bins of local signal (the 3^3 mean,
  10th to 90th percentile), keeping in each bin the quarter of voxels with the flattest smoothed
  signal (tissue edges would count as noise);
- the slope: a least-squares line through the 8 (log signal, log spread) points.

Sets: the reference (the bundle's build cases), ordinary held-out phantoms, each with gamma 0.5 and
2.0 as ``ood_check.py`` applies them, and the independent generator (no gamma).

    python benchmarks/gamma_noise_slope.py runs/build20 runs/ordinary --independent runs/indep

Prints each set's sorted slopes and writes ``benchmarks/gamma_noise_slope.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from latup_edge.data.cases import discover_cases, load_case_images
from latup_edge.data.naming import MODEL_MODALITIES

sys.path.insert(0, str(Path(__file__).parent))
from ood_check import gamma  # noqa: E402 (the shift as ood_check.py applies it)

HERE = Path(__file__).resolve().parent
BINS = 8
FACE_MEAN = np.zeros((3, 3, 3), dtype=np.float32)
FACE_MEAN[1, 1, 0] = FACE_MEAN[1, 1, 2] = FACE_MEAN[1, 0, 1] = FACE_MEAN[1, 2, 1] = FACE_MEAN[0, 1, 1] = 1 / 6
FACE_MEAN[2, 1, 1] = 1 / 6


def noise_slope(volume: np.ndarray) -> float:
    """The slope of log(noise spread) against log(local signal) inside one modality's brain."""
    values = volume.astype(np.float32)
    inside = ndimage.binary_erosion(values != 0, iterations=2)
    residual = (values - ndimage.convolve(values, FACE_MEAN, mode="nearest"))[inside]
    level = ndimage.uniform_filter(values, 3)[inside]
    smooth = ndimage.gaussian_filter(values, 1.5)
    flatness = np.sqrt(sum(g * g for g in np.gradient(smooth)))[inside] / (smooth[inside] + 1e-6)
    edges = np.percentile(level, np.linspace(10, 90, BINS + 1))
    x, y = [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (level >= low) & (level < high)
        flat = residual[in_bin][flatness[in_bin] <= np.percentile(flatness[in_bin], 25)]
        spread = 1.4826 * np.median(np.abs(flat - np.median(flat)))
        x.append(np.log((low + high) / 2))
        y.append(np.log(spread + 1e-9))
    return float(np.polyfit(x, y, 1)[0])


def slopes(folder: Path, gammas: tuple[float, ...]) -> dict[str, list[float]]:
    """Per gamma (1.0: as stored) the median slope over the modalities of every case in ``folder``."""
    result: dict[str, list[float]] = {str(g): [] for g in gammas}
    for case in discover_cases(folder):
        images = load_case_images(case, MODEL_MODALITIES)[0].astype(np.float32)
        for g in gammas:
            shifted = images if g == 1.0 else gamma(g)(images, (1.0, 1.0, 1.0))[0]
            result[str(g)].append(round(float(np.median([noise_slope(v) for v in shifted])), 3))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("ordinary", type=Path)
    parser.add_argument("--independent", type=Path)
    parser.add_argument("--json", type=Path, default=HERE / "gamma_noise_slope.json")
    args = parser.parse_args()
    sets = {
        "reference": slopes(args.reference, (1.0,))["1.0"],
        **{f"ordinary, gamma {g}": v for g, v in slopes(args.ordinary, (1.0, 0.5, 2.0)).items()},
    }
    if args.independent:
        sets["independent generator"] = slopes(args.independent, (1.0,))["1.0"]
    low, high = min(sets["reference"]), max(sets["reference"])
    rows = {}
    for name, values in sets.items():
        outside = sum(v < low or v > high for v in values)
        rows[name] = {"slopes": sorted(values), "outside_reference_range": outside, "cases": len(values)}
        print(f"{name:<26} outside {low:+.2f}..{high:+.2f}: {outside:>2}/{len(values)}  ", end="")
        print(" ".join(f"{v:+.2f}" for v in sorted(values)))
    folders = {"reference": str(args.reference), "ordinary": str(args.ordinary), "independent": str(args.independent)}
    args.json.write_text(json.dumps({"folders": folders, "sets": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
