"""Which modality mix-ups does the input check flag, without running the network?

Every case of each folder is read with its four modalities (FLAIR, T1ce, T2, T1), and each ordered
choice of three of them is put in the model's channels (FLAIR, T1ce, T2): 24 assignments, one of them
correct. Each is scored by ``case_statistics`` and ``ood_score`` against the shipped bundle's input
reference (or ``--bundle``'s), as ``segment`` scores a case. The T1/T1ce swap has its own check with a
second network pass (``benchmarks/t1ce_check.py``); this script measures what the statistics alone see.

    python benchmarks/modality_mixups.py runs/indep3 runs/ordinary

Prints one row per assignment (cases flagged in each folder), correct first, and writes
``benchmarks/modality_mixups.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from latup_edge.data.cases import discover_cases, load_case_images
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.runtime.bundle import load_bundle, resolve_bundle
from latup_edge.runtime.input_stats import case_statistics, ood_score

HERE = Path(__file__).resolve().parent
READ = ("flair", "t1ce", "t2", "t1")


def flagged_assignments(folder: Path, reference: dict) -> dict[str, list[str]]:
    """Assignment ("file in FLAIR's channel/T1ce's/T2's") -> the ids of the cases it flags."""
    flagged: dict[str, list[str]] = {}
    for case in discover_cases(folder):
        images, reference_image = load_case_images(case, READ)
        spacing = reference_image.header.get_zooms()[:3]
        for chosen in itertools.permutations(range(len(READ)), len(MODEL_MODALITIES)):
            name = "/".join(READ[i] for i in chosen)
            result = ood_score(case_statistics(images[list(chosen)], MODEL_MODALITIES, spacing), reference)
            flagged.setdefault(name, [])
            if result["flags"]:
                flagged[name].append(case.case_id)
    return flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--bundle", type=Path, default=None, help="default: the shipped bundle")
    parser.add_argument("--out", type=Path, default=HERE / "modality_mixups.json")
    args = parser.parse_args()
    reference = load_bundle(resolve_bundle(args.bundle)).manifest["build"]["input_reference"]
    results = {str(folder): flagged_assignments(folder, reference) for folder in args.folders}
    cases = {folder: len(discover_cases(Path(folder))) for folder in results}
    correct = "/".join(MODEL_MODALITIES)
    names = sorted(next(iter(results.values())), key=lambda n: (n != correct, sum(len(r[n]) for r in results.values())))
    print(f"{'FLAIR/T1ce/T2 channels hold':<28}" + "".join(f"{folder:>16}" for folder in results))
    for name in names:
        row = "".join(f"{len(r[name]):>10} of {cases[f]:<3}" for f, r in results.items())
        print(f"{name + (' (correct)' if name == correct else ''):<28}{row}")
    payload = {"reference": str(args.bundle or "shipped"), "cases": cases, "flagged": results}
    args.out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
