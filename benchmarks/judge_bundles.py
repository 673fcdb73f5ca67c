"""Bundles side by side on labelled folders, each at its default precision, scored on the labels `segment` writes.

For each bundle and folder: mean Dice per region (WT, TC, ET), their mean, the cases with WT under 0.7, the cases
`segment` refuses (its checks, ``load_scan``; scored as the empty labels a user gets), and the seconds a case took to
predict (network and post-processing; on a shared CPU, a rough figure). A bundle with a core network runs both
networks, as `segment` does. The folders must be BraTS-ready (scored on their own grid).

Each network's raw argmax is computed once and the labels are made from it by ``delivered_classes``, the function
`segment` uses: so ``--variant NAME:FIELD=VALUE,...`` judges one bundle under several label rules
(``Postprocessing`` fields changed from the default) from one inference, each row named ``BUNDLE [NAME]``:

    python benchmarks/judge_bundles.py runs/blind7 --bundles models/bundle --variant shipped: \\
        --variant stage16:rules_see_core=true --json out.json

    python benchmarks/judge_bundles.py runs/blind5 runs/indep21 --bundles models/bundle runs/bundle15 \\
        --json benchmarks/stage15_judge.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from latup_edge.data.cases import discover_cases, load_case_labels
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.errors import LatupError, first_line
from latup_edge.evaluate.metrics import region_metrics, summarise
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing, delivered_classes
from latup_edge.runtime.predictor import Predictor
from latup_edge.scans.study import load_scan

REGIONS = ("WT", "TC", "ET")
POOR_WT = 0.7


def judge(folders: list[Path], bundles: list[Path], variants: dict[str, Postprocessing] | None = None) -> dict:
    named = {f" [{name}]": rules for name, rules in variants.items()} if variants else {"": DEFAULT_POSTPROCESSING}
    result: dict = {"bundles": {}}
    for bundle in bundles:
        # Each network alone and unprocessed: the labels are made below, as segment makes them.
        whole = Predictor.from_bundle(bundle, postprocessing=Postprocessing.none(), use_core=False)
        core = (
            Predictor.from_bundle(bundle / "core", postprocessing=Postprocessing.none()) if whole.bundle.core else None
        )
        scored: dict[str, dict] = {name: {} for name in named}
        for folder in folders:
            cases: dict[str, dict] = {name: {} for name in named}
            seconds, refused = [], {}
            for case in discover_cases(folder):
                try:
                    loaded = load_scan(case, whole.modalities or MODEL_MODALITIES)
                except LatupError as error:  # segment refuses it: the user gets no labels
                    refused[case.case_id] = first_line(error)
                    print(f"{bundle} {folder.name} {case.case_id}: refused: {refused[case.case_id]}", file=sys.stderr)
                    truth, _ = load_case_labels(case)
                    for name in named:
                        cases[name][case.case_id] = region_metrics(np.zeros_like(truth), truth)
                    continue
                if loaded.native is not None:
                    raise SystemExit(f"{case.case_id} is not BraTS-ready: judge scores labels on the case's own grid")
                images, reference = loaded.images, loaded.reference
                started = time.perf_counter()
                raw = whole.predict(images).classes
                core_raw = core.predict(images).classes if core is not None else None
                labels = {name: delivered_classes(raw, one, images, core_raw) for name, one in named.items()}
                seconds.append(time.perf_counter() - started)
                truth, _ = load_case_labels(case, reference)
                for name, classes in labels.items():
                    metrics = region_metrics(classes, truth, spacing=reference.header.get_zooms()[:3])
                    cases[name][case.case_id] = metrics
                    dice = "/".join(f"{metrics[r]['dice']:.3f}" for r in REGIONS)
                    print(f"{bundle}{name} {folder.name} {case.case_id}: {dice}", file=sys.stderr)
            for name in named:
                scored[name][str(folder)] = _summary(cases[name], seconds, refused)
        for name in named:
            described = whole.describe() + (f"; core network {core.describe()}" if core is not None else "")
            result["bundles"][f"{bundle}{name}"] = {"described": described, "sets": scored[name]}
    return result


def parse_variant(text: str) -> tuple[str, Postprocessing]:
    """``NAME:FIELD=VALUE,...`` -> the default ``Postprocessing`` with those fields changed (``NAME:`` for none)."""
    name, _, changes = text.partition(":")
    types = {field.name: type(getattr(DEFAULT_POSTPROCESSING, field.name)) for field in fields(Postprocessing)}
    changed = {}
    for change in filter(None, changes.split(",")):
        field, _, value = change.partition("=")
        if field not in types:
            raise SystemExit(f"--variant {text}: {field!r} is not a Postprocessing field ({', '.join(types)})")
        kind = types[field]
        changed[field] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return name, replace(DEFAULT_POSTPROCESSING, **changed)


def _summary(cases: dict, seconds: list[float], refused: dict[str, str]) -> dict:
    summary = summarise(cases)
    means = [summary[r]["dice"]["mean"] for r in REGIONS]
    return {
        "cases": cases,
        "summary": summary,
        "mean_dice": dict(zip(REGIONS, means, strict=True)),
        "mean_over_regions": float(np.mean(means)),
        "cases_wt_below_0.7": sorted(c for c, m in cases.items() if m["WT"]["dice"] < POOR_WT),
        "refused": refused,
        "seconds_per_case_mean": float(np.mean(seconds)) if seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--bundles", nargs="+", type=Path, required=True)
    parser.add_argument("--variant", action="append", default=[], help="NAME:FIELD=VALUE,... label rules to judge")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    result = judge(args.folders, args.bundles, dict(map(parse_variant, args.variant)))
    print(f"{'bundle':<36} {'set':<14} {'WT / TC / ET':>26} {'mean':>7} {'WT<0.7':>7} {'refused':>7} {'s/case':>7}")
    for bundle, entry in result["bundles"].items():
        for folder, one in entry["sets"].items():
            dice = " / ".join(f"{one['mean_dice'][r]:.4f}" for r in REGIONS)
            print(
                f"{bundle:<36} {Path(folder).name:<14} {dice:>26} {one['mean_over_regions']:>7.4f} "
                f"{len(one['cases_wt_below_0.7']):>7} {len(one['refused']):>7} "
                f"{one['seconds_per_case_mean'] or 0:>7.1f}"
            )
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
