"""Two networks, one per region: does stage 4's whole tumour with stage 14's core and enhancing parts beat either?

Stage 14 learnt cores that stage 4 cannot see and lost WT to false lesions on the blind generator; stage 4 keeps
its WT there (docs/GENERALISATION.md section 26). The composition (pre-registered, docs/PREREGISTERED.md "Stage 15"):
network A's labels as ``segment`` writes them give the whole tumour; inside it each voxel takes network B's raw class
when that is NCR or ET, and ED otherwise; then the ET-voxel rule runs again.

Scores, fp32 OpenVINO with the default sliding tiling, per set: A alone and B alone (labels as ``segment`` writes
them), the composition, and the classical ensemble (A's and B's softmax averaged, then post-processed):

    python benchmarks/region_composition.py screen runs/blind3 runs/indep19 \\
        --core-weights runs/ft14/average.safetensors --cache runs/composition-cache \\
        --json benchmarks/stage15_screen.json

Each case's four class maps are cached (``--cache``), so a second look at the same networks costs no inference.

The INT8 gate of the composition (``gate``): both networks' bundles at their default precisions against both at
fp32, composed labels scored as ``drift`` scores a bundle's, on the build's held-out cases:

    python benchmarks/region_composition.py gate runs/build20 --whole-bundle models/bundle \\
        --core-bundle runs/bundle14 --json benchmarks/stage15_gate.json
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.evaluate.metrics import region_metrics, summarise
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, ET, NCR, Postprocessing, postprocess

ED = 2
ET_RULE_ONLY = Postprocessing(
    min_et_voxels=DEFAULT_POSTPROCESSING.min_et_voxels,
    min_component_fraction=0.0,
    drop_coreless=False,
    min_core_fraction=0.0,
    clear_outside_brain=False,
)
VARIANTS = ("A", "B", "composition", "ensemble")


def compose_regions(whole: np.ndarray, core: np.ndarray) -> np.ndarray:
    """``whole``'s tumour, its voxels labelled by ``core`` where that says NCR or ET and ED elsewhere (uint8 0-3)."""
    tumour = whole > 0
    composed = np.where(tumour, np.uint8(ED), np.uint8(0))
    inner = tumour & ((core == NCR) | (core == ET))
    composed[inner] = core[inner]
    return postprocess(composed, ET_RULE_ONLY)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _forward(weights: Path | None, work: Path, name: str):
    from latup_edge.deploy.export import export_onnx
    from latup_edge.models.checkpoint import load_model
    from latup_edge.runtime.openvino_backend import OpenVINOModel

    model = load_model(weights)
    return OpenVINOModel(export_onnx(model, work / f"{name}.onnx"), "fp32"), model.config.normalization


def class_maps(images: np.ndarray, networks: dict) -> dict[str, np.ndarray]:
    """A's and B's labels as written, B's raw argmax, and the post-processed softmax average."""
    from latup_edge.runtime.volume import predict_volume

    out, softmax = {}, {}
    for name, (forward, normalization) in networks.items():
        prediction = predict_volume(images, forward, probabilities=True, normalization=normalization)
        out[name] = prediction.classes
        softmax[name] = prediction.probabilities
    out["B_raw"] = np.argmax(softmax["B"], axis=0).astype(np.uint8)
    average = np.argmax(softmax["A"] + softmax["B"], axis=0).astype(np.uint8)
    out["ensemble"] = postprocess(average, DEFAULT_POSTPROCESSING, images)
    return out


def run(folders: list[Path], core_weights: Path, cache: Path) -> dict:
    key = f"{_sha(Path('models/latup-demo.safetensors'))[:12]}-{_sha(core_weights)[:12]}"
    sets: dict[str, dict] = {}
    networks = None
    with tempfile.TemporaryDirectory(prefix="latup-composition-") as work:
        for folder in folders:
            per_variant: dict[str, dict] = {variant: {} for variant in VARIANTS}
            for case in discover_cases(folder):
                stored = cache / key / folder.name / f"{case.case_id}.npz"
                images, reference = load_case_images(case)
                if stored.exists():
                    maps = dict(np.load(stored))
                else:
                    if networks is None:
                        networks = {"A": _forward(None, Path(work), "A"), "B": _forward(core_weights, Path(work), "B")}
                    maps = class_maps(images, networks)
                    stored.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(stored, **maps)
                maps["composition"] = compose_regions(maps["A"], maps["B_raw"])
                truth, _ = load_case_labels(case, reference)
                spacing = reference.header.get_zooms()[:3]
                for variant in VARIANTS:
                    per_variant[variant][case.case_id] = region_metrics(maps[variant], truth, spacing=spacing)
                print(
                    f"{folder.name} {case.case_id}: "
                    + "  ".join(
                        f"{v} " + "/".join(f"{per_variant[v][case.case_id][r]['dice']:.3f}" for r in ("WT", "TC", "ET"))
                        for v in VARIANTS
                    ),
                    file=sys.stderr,
                )
            sets[str(folder)] = {
                variant: {"cases": cases, "summary": summarise(cases)} for variant, cases in per_variant.items()
            }
    return {
        "A": "models/latup-demo.safetensors",
        "B": str(core_weights),
        "B_sha256": _sha(core_weights),
        "backend": "openvino fp32, sliding tiling",
        "sets": sets,
        "score": {variant: score(sets, variant) for variant in VARIANTS},
    }


def score(sets: dict, variant: str) -> float:
    """Mean over sets of the mean Dice over WT, TC and ET."""
    means = [
        np.mean([one[variant]["summary"][region]["dice"]["mean"] for region in ("WT", "TC", "ET")])
        for one in sets.values()
    ]
    return round(float(np.mean(means)), 4)


def composed_forward(whole, core):
    """A box Forward whose one-hot scores are the composition of two predictors' box forwards (``drift``'s form)."""

    def forward(box: np.ndarray) -> np.ndarray:
        whole_classes = np.argmax(whole.forward(box)[0], axis=0).astype(np.uint8)
        whole_classes = postprocess(whole_classes, whole.postprocessing, box[0])
        core_classes = np.argmax(core.forward(box)[0], axis=0).astype(np.uint8)
        composed = compose_regions(whole_classes, core_classes)
        return (composed[None] == np.arange(4, dtype=np.uint8)[:, None, None, None]).astype(np.float32)[None]

    return forward


def gate(data: Path, whole_bundle: Path, core_bundle: Path) -> dict:
    """The composition at both bundles' default precisions against both at fp32, on ``whole_bundle``'s held-out
    cases of ``data`` (the build's split)."""
    from latup_edge.data.cases import discover_cases
    from latup_edge.evaluate.drift import measure_drift, prepare_case
    from latup_edge.runtime.bundle import load_bundle
    from latup_edge.runtime.predictor import Predictor

    bundles = {"whole": load_bundle(whole_bundle), "core": load_bundle(core_bundle)}
    held_out = set(bundles["core"].manifest["build"]["held_out"])
    opened = {
        (role, precision): Predictor.from_bundle(bundle, precision, allow_failed=True)
        for role, bundle in bundles.items()
        for precision in ("fp32", None)
    }
    forwards = {
        "fp32": composed_forward(opened["whole", "fp32"], opened["core", "fp32"]),
        "default": composed_forward(opened["whole", None], opened["core", None]),
    }
    cases = [case for case in discover_cases(data) if case.case_id in held_out]
    prepared = (prepare_case(case, normalization=bundles["whole"].normalization) for case in cases)
    result = measure_drift(prepared, forwards, progress=lambda case_id: print(case_id, file=sys.stderr))
    return {
        "data": str(data),
        "held_out": sorted(held_out),
        "whole_bundle": str(whole_bundle),
        "core_bundle": str(core_bundle),
        "precisions": {role: opened[role, None].precision for role in bundles},
        "tiling": opened["whole", None].tiling,
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    screen = commands.add_parser("screen", help="score A, B, the composition and the ensemble at fp32")
    screen.add_argument("folders", nargs="+", type=Path)
    screen.add_argument("--core-weights", type=Path, required=True, help="network B: core and enhancing parts")
    screen.add_argument("--cache", type=Path, required=True)
    screen.add_argument("--json", type=Path, help="write the result here")
    drift = commands.add_parser("gate", help="the composition's default precisions against fp32")
    drift.add_argument("data", type=Path)
    drift.add_argument("--whole-bundle", type=Path, required=True)
    drift.add_argument("--core-bundle", type=Path, required=True)
    drift.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    if args.command == "gate":
        result = gate(args.data, args.whole_bundle, args.core_bundle)
        print(f"precisions {result['precisions']}, {result['tiling']} tiling, {len(result['cases'])} cases")
        for region, row in result["summary"]["default"]["regions"].items():
            print(
                f"{region}: fp32 Dice {row['dice_fp32']:.4f}, default {row['dice']:.4f}, ratio {row['ratio']:.4f}, "
                f"agreement mean {row['agreement_mean']:.4f} (min {row['agreement_min']:.4f})"
            )
        if args.json:
            atomic_write_json(args.json, result)
        return
    result = run(args.folders, args.core_weights, args.cache)
    print(f"{'variant':<12} " + "  ".join(f"{Path(name).name:>26}" for name in result["sets"]) + "   score")
    for variant in VARIANTS:
        cells = []
        for one in result["sets"].values():
            summary = one[variant]["summary"]
            cells.append(" / ".join(f"{summary[r]['dice']['mean']:.4f}" for r in ("WT", "TC", "ET")))
        print(f"{variant:<12} " + "  ".join(f"{cell:>26}" for cell in cells) + f"   {result['score'][variant]:.4f}")
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
