"""Two networks, one per region: does stage 4's whole tumour with stage 14's core and enhancing parts beat either?

Stage 14 learnt cores that stage 4 cannot see and lost WT to false lesions on the blind generator; stage 4 keeps
its WT there (docs/GENERALISATION.md section 26). The composition (pre-registered, docs/PREREGISTERED.md "Stage 15"):
network A's labels as ``segment`` writes them give the whole tumour; inside it each voxel takes network B's raw class
when that is NCR or ET, and ED otherwise; then the ET-voxel rule runs again.

Scores, fp32 OpenVINO with the default sliding tiling, per set: A alone and B alone (labels as ``segment`` writes
them), the composition, and the classical ensemble (A's and B's softmax averaged, then post-processed):

    python benchmarks/region_composition.py runs/blind3 runs/indep19 \\
        --core-weights runs/ft14/average.safetensors --cache runs/composition-cache \\
        --json benchmarks/stage15_screen.json

Each case's class maps (each network's labels as written and raw argmax, the ensemble's labels) are cached
(``--cache``), so a second look at the same networks costs no inference; ``benchmarks/rule_variants.py`` scores any
label rules from that cache. Two more variants: ``core-aware`` composes the raw maps first and then applies the rules
(stage 16, shipped), ``both-see`` also drops A's components that B calls tumour in under a tenth of (reported only).

The composition is the product's (``latup_edge.runtime.postprocess.compose_regions``, stage 15b's rule: WT and ET
from A, the rest NCR where B sees a core); ``latup-edge compose`` makes a bundle of the two networks and measures its
INT8 gate. ``benchmarks/stage15_screen.json`` was written under stage 15's rule (B's NCR and ET both taken, then the
ET-voxel rule again), ``benchmarks/stage15b_screen.json`` under 15b's, from the same cache.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.evaluate.metrics import region_metrics, summarise
from latup_edge.fileio import atomic_write_json
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, compose_regions, delivered_classes, postprocess

VARIANTS = ("A", "B", "composition", "ensemble", "core-aware", "both-see")


def core_aware(a_raw: np.ndarray, b_raw: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Compose the raw class maps first, then post-process: the coreless rule sees B's core (stage 16's screen)."""
    return delivered_classes(a_raw, replace(DEFAULT_POSTPROCESSING, rules_see_core=True), images, b_raw)


def both_see(a_raw: np.ndarray, b_raw: np.ndarray, images: np.ndarray, share: float = 0.1) -> np.ndarray:
    """As ``core_aware``, after dropping each of A's tumour components that B calls tumour in under ``share`` of it."""
    components, count = ndimage.label(a_raw > 0)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    seen = np.bincount(components[b_raw > 0], minlength=count + 1)
    keep = seen >= share * sizes
    keep[0] = True
    return core_aware(np.where(keep[components], a_raw, np.uint8(0)), b_raw, images)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _forward(weights: Path | None, work: Path, name: str):
    from latup_edge.deploy.export import export_onnx
    from latup_edge.models.checkpoint import load_model
    from latup_edge.runtime.openvino_backend import OpenVINOModel

    model = load_model(weights)
    return OpenVINOModel(export_onnx(model, work / f"{name}.onnx"), "fp32"), model.config.normalization


def class_maps(images: np.ndarray, networks: dict, ensemble: bool = True) -> dict[str, np.ndarray]:
    """Each network's labels as written and raw argmax, and the post-processed softmax average."""
    from latup_edge.runtime.volume import predict_volume

    out, softmax = {}, {}
    for name, (forward, normalization) in networks.items():
        prediction = predict_volume(images, forward, probabilities=True, normalization=normalization)
        out[name] = prediction.classes
        softmax[name] = prediction.probabilities
    for name in softmax:
        out[f"{name}_raw"] = np.argmax(softmax[name], axis=0).astype(np.uint8)
    if ensemble:
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
                maps = dict(np.load(stored)) if stored.exists() else {}
                if maps and "A_raw" not in maps:  # a cache from before A's raw argmax was kept: run A alone
                    if networks is None:
                        networks = {"A": _forward(None, Path(work), "A"), "B": _forward(core_weights, Path(work), "B")}
                    maps.update(class_maps(images, {"A": networks["A"]}, ensemble=False))
                    np.savez_compressed(stored, **maps)
                if not maps:
                    if networks is None:
                        networks = {"A": _forward(None, Path(work), "A"), "B": _forward(core_weights, Path(work), "B")}
                    maps = class_maps(images, networks)
                    stored.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(stored, **maps)
                if not np.array_equal(postprocess(maps["A_raw"], DEFAULT_POSTPROCESSING, images), maps["A"]):
                    raise RuntimeError(f"{case.case_id}: A's cached labels are not its raw argmax post-processed")
                maps["composition"] = compose_regions(maps["A"], maps["B_raw"])
                maps["core-aware"] = core_aware(maps["A_raw"], maps["B_raw"], images)
                maps["both-see"] = both_see(maps["A_raw"], maps["B_raw"], images)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--core-weights", type=Path, required=True, help="network B: core and enhancing parts")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
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
