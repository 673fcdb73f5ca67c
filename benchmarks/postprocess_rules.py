"""Post-processing rules, compared on the network's raw labels: which rule should `segment` apply?

The network runs once per case (OpenVINO, the checkpoint exported to ONNX; raw argmax kept in
``--cache`` so a second run only re-scores); every rule in ``RULES`` is then applied offline and
scored (Dice per region, over the full volume, BraTS conventions). Choose a rule on folders the
network never trained on, and never on the independent generator's cases: they only measure.

    python benchmarks/postprocess_rules.py runs/select --weights models/latup-demo.safetensors \\
        --cache runs/raw-select --out benchmarks/postprocess_rules.json
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.evaluate.metrics import agreement
from latup_edge.fileio import atomic_write, atomic_write_json
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, ET, Postprocessing, postprocess
from latup_edge.runtime.volume import predict_classes

FORMAT = "latup-edge-postprocess-rules/1"
REGIONS = ("WT", "TC", "ET")
RULES: dict[str, Postprocessing] = {  # every field explicit: the defaults are what is being chosen
    "none (raw argmax)": Postprocessing.none(),
    "components < 0.1 of the largest go": Postprocessing(
        min_component_fraction=0.1, drop_coreless=False, min_et_voxels=0, min_core_fraction=0
    ),
    "coreless components go": Postprocessing(
        min_component_fraction=0.0, drop_coreless=True, min_et_voxels=0, min_core_fraction=0
    ),
    "coreless, then < 0.1 of the largest go": Postprocessing(
        min_component_fraction=0.1, drop_coreless=True, min_et_voxels=0, min_core_fraction=0
    ),
    "coreless, then < 0.05 of the largest go": Postprocessing(
        min_component_fraction=0.05, drop_coreless=True, min_et_voxels=0, min_core_fraction=0
    ),
    **{  # the BraTS ET rule on top of the component rules
        f"coreless, < 0.1, then under {n} ET voxels is NCR": Postprocessing(
            min_component_fraction=0.1, min_et_voxels=n, drop_coreless=True, min_core_fraction=0
        )
        for n in (50, 100, 200, 300, 500)
    },
    **{  # a core under this share of the largest core counts as none (a speck on a blob of false oedema)
        f"coreless (core < {f} of the largest), < 0.1, under 200 ET is NCR": Postprocessing(
            min_component_fraction=0.1, min_et_voxels=200, drop_coreless=True, min_core_fraction=f
        )
        for f in (0.02, 0.05, 0.1, 0.2, 0.3)
    },
}
DEFAULT_RULE = next(name for name, rules in RULES.items() if rules == DEFAULT_POSTPROCESSING)  # what segment applies


def raw_labels(folder: Path, weights: Path | None, precision: str, cache: Path) -> dict[str, tuple[Any, Any]]:
    """Case id -> (raw predicted classes, truth classes) for every case of ``folder``; cached by weights."""
    from latup_edge.models.checkpoint import load_model, shipped_weights

    weights = Path(weights or shipped_weights())
    model = load_model(weights)
    tag = f"{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}-{precision}"
    # Case ids repeat across folders (every phantom folder starts at 00000): the folder is part of the key.
    folder_key = f"{folder.name}-{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]}"
    forward = None
    labels = {}
    with tempfile.TemporaryDirectory(prefix="latup-rules-") as work:
        for case in discover_cases(folder):
            images, reference = load_case_images(case)
            truth, _ = load_case_labels(case, reference)
            stored = cache / tag / folder_key / f"{case.case_id}.npz"
            if stored.exists():
                raw = np.load(stored)["classes"]
            else:
                if forward is None:
                    from latup_edge.deploy.export import export_onnx
                    from latup_edge.runtime.openvino_backend import OpenVINOModel

                    forward = OpenVINOModel(export_onnx(model, Path(work) / "model.onnx"), precision)
                raw = predict_classes(
                    images, forward, normalization=model.config.normalization, postprocessing=Postprocessing.none()
                )
                stored.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(stored, lambda tmp, raw=raw: _save(tmp, raw))
            labels[case.case_id] = (raw, truth)
            print(f"{folder.name}/{case.case_id}", file=sys.stderr)
    return labels


def _save(path: Path, classes: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.savez would append ".npz" to the temporary name
        np.savez_compressed(handle, classes=classes)


def score(labels: dict[str, tuple[Any, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Rule -> case id -> Dice per region."""
    return {
        name: {case_id: agreement(postprocess(raw, rules), truth) for case_id, (raw, truth) in labels.items()}
        for name, rules in RULES.items()
    }


def mean_per_region(per_case: list[dict[str, float]]) -> dict[str, float]:
    return {r: round(float(np.mean([d[r] for d in per_case])), 4) for r in REGIONS} if per_case else {}


def by_et(labels: dict[str, tuple[Any, Any]], scores: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict]:
    """The default rule's scores apart on cases whose truth has ET and on those without (non-enhancing)."""
    groups: dict[str, list[dict[str, float]]] = {"with ET": [], "without ET": []}
    for case_id, (_, truth) in labels.items():
        groups["with ET" if (truth == ET).any() else "without ET"].append(scores[DEFAULT_RULE][case_id])
    return {name: {"cases": len(group), **mean_per_region(group)} for name, group in groups.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="Labelled BraTS-format folders.")
    parser.add_argument("--weights", type=Path, default=None, help="Checkpoint (default: the shipped weights).")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--cache", type=Path, required=True, help="Folder for the raw labels (reused).")
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON result here.")
    args = parser.parse_args(argv)

    sets = {}
    for folder in args.folders:
        labels = raw_labels(folder, args.weights, args.precision, args.cache)
        scores = score(labels)
        sets[str(folder)] = {
            "cases": len(labels),
            "rules": {name: mean_per_region(list(per_case.values())) for name, per_case in scores.items()},
            "default_rule_by_et": by_et(labels, scores),
        }
    print(f"{'rule':50s} " + " ".join(f"{str(f)[-22:]:>24s}" for f in sets))
    for name in RULES:
        cells = [" / ".join(f"{one['rules'][name][r]:.4f}" for r in REGIONS) for one in sets.values()]
        print(f"{name:50s} " + " ".join(f"{c:>24s}" for c in cells))
    for group in ("with ET", "without ET"):
        cells = [
            f"({one['default_rule_by_et'][group]['cases']}) "
            + " / ".join(f"{one['default_rule_by_et'][group].get(r, float('nan')):.4f}" for r in REGIONS)
            for one in sets.values()
        ]
        print(f"{'default rule, cases ' + group:50s} " + " ".join(f"{c:>24s}" for c in cells))
    result = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights": str(args.weights or "shipped demo weights"),
        "precision": args.precision,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "rules": {name: rules.to_dict() for name, rules in RULES.items()},
        "sets": sets,
    }
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
