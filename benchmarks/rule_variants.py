"""Label-rule variants scored offline from cached raw class maps: no inference, so any number of variants.

Reads the cache ``benchmarks/region_composition.py`` writes (each case's raw argmax of network A, ``A_raw``, and of
the core network B, ``B_raw``) and makes each variant's labels with ``delivered_classes``, the function `segment`
uses, from ``Postprocessing`` fields changed as ``judge_bundles.py --variant`` takes them:

    python benchmarks/rule_variants.py runs/blind3 runs/indep19 --cache runs/composition-cache/KEY \\
        --variant shipped: --variant stage16:rules_see_core=true --json out.json

The score is the mean over sets of the mean Dice over WT, TC and ET (fp32 maps, as cached).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.data.preprocess import normalize
from latup_edge.evaluate.metrics import region_metrics, summarise
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.postprocess import Postprocessing, delivered_classes

REGIONS = ("WT", "TC", "ET")


def score_variants(
    folders: list[Path], cache: Path, variants: dict[str, Postprocessing], normalization: str = "zscore-brain"
) -> dict:
    """Each variant's Dice per case and set. The rules see the images normalised as the networks saw them
    (``normalization``, the bundle's): rules that read intensities must be screened on what ``segment`` gives them."""
    sets: dict[str, dict] = {}
    for folder in folders:
        per_variant: dict[str, dict] = {name: {} for name in variants}
        for case in discover_cases(folder):
            maps = np.load(cache / folder.name / f"{case.case_id}.npz")
            images, reference = load_case_images(case)
            inputs = normalize(images, normalization)  # zeros stay outside the brain, as in the box segment uses
            truth, _ = load_case_labels(case, reference)
            spacing = reference.header.get_zooms()[:3]
            for name, rules in variants.items():
                labels = delivered_classes(maps["A_raw"], rules, inputs, maps["B_raw"])
                per_variant[name][case.case_id] = region_metrics(labels, truth, spacing=spacing)
            cells = [
                f"{n} " + "/".join(f"{per_variant[n][case.case_id][r]['dice']:.3f}" for r in REGIONS) for n in variants
            ]
            print(f"{folder.name} {case.case_id}: " + "  ".join(cells), file=sys.stderr)
        sets[str(folder)] = {}
        for name, cases in per_variant.items():
            summary = summarise(cases)
            means = {region: summary[region]["dice"]["mean"] for region in REGIONS}
            sets[str(folder)][name] = {"cases": cases, "mean_dice": means, "mean": float(np.mean(list(means.values())))}
    scores = {name: round(float(np.mean([one[name]["mean"] for one in sets.values()])), 4) for name in variants}
    return {
        "cache": str(cache),
        "variants": {n: r.to_dict() for n, r in variants.items()},
        "sets": sets,
        "score": scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, required=True, help="one networks pair's folder of the cache")
    parser.add_argument("--variant", action="append", required=True, help="NAME:FIELD=VALUE,... as judge_bundles")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--normalization", default="zscore-brain", help="the cached networks' (the shipped bundle's)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from judge_bundles import parse_variant

    result = score_variants(args.folders, args.cache, dict(map(parse_variant, args.variant)), args.normalization)
    print(f"{'variant':<22} " + "  ".join(f"{Path(name).name:>26}" for name in result["sets"]) + "   score")
    for name in result["variants"]:
        cells = [" / ".join(f"{one[name]['mean_dice'][r]:.4f}" for r in REGIONS) for one in result["sets"].values()]
        print(f"{name:<22} " + "  ".join(f"{cell:>26}" for cell in cells) + f"   {result['score'][name]:.4f}")
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
