"""A bundle with two networks, one per region: ``compose_bundle``.

The whole bundle's network says where the tumour is and what of it enhances; the core bundle's network says
which of the rest is tumour core and which oedema (``latup_edge.runtime.postprocess.compose_regions``).
Each is a complete bundle with its own INT8 gate. The composition gets a gate of its own, because it is what
``segment`` writes: its labels with both networks at their default precisions against both at fp32, on held-out
cases, by the build's bar (Dice ratio within 0.001 of fp32 and mean agreement >= 0.99 in every region). A
composition that fails it is not written unless asked for, and then the manifest says so.

>>> compose_bundle(Path("bundle"), Path("bundle-core"), Path("bundle-two"), Path("BraTS-held-out"))  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latup_edge.data.cases import discover_cases
from latup_edge.deploy.build import verdict
from latup_edge.deploy.compile import _check_destination, _move_into_place, verdict_passes, write_manifest
from latup_edge.evaluate.drift import DEFAULT_MAX_DICE_DROP, DEFAULT_MIN_AGREEMENT, measure_drift, prepare_case
from latup_edge.runtime.bundle import Bundle, BundleError, load_bundle
from latup_edge.runtime.drift import labels_forward
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING
from latup_edge.runtime.predictor import Predictor

CORE_FOLDER = "core"
RULE = (
    "the whole tumour and its ET are this bundle's network's labels as written; every other voxel of the whole "
    "tumour is NCR where the core network's argmax says NCR or ET, and ED elsewhere"
)
# What must agree between the two networks for one preprocessing path to serve both.
SHARED = ("preprocessing", "modalities", "labels")


def composition_gate(
    bundle: Bundle, data: Path, threads: int | None = None, progress: Callable[[str], None] = lambda case_id: None
) -> dict[str, Any]:
    """The composed labels of ``bundle`` (which has a core network) at both networks' default precisions against
    both at fp32, on the cases of ``data`` the core network's build held out (all of them if it names none there)."""
    held_out = set((bundle.core.manifest.get("build") or {}).get("held_out") or [])
    cases = discover_cases(data)
    chosen = [case for case in cases if case.case_id in held_out] or cases
    with warnings.catch_warnings():  # the composition being gated has no verdict yet: that is the point
        warnings.simplefilter("ignore")
        predictors = {
            "fp32": Predictor.from_bundle(bundle, "fp32", threads, allow_failed=True),
            "default": Predictor.from_bundle(bundle, None, threads),
        }
    prepared = (prepare_case(case, normalization=bundle.normalization) for case in chosen)
    forwards = {name: labels_forward(predictor) for name, predictor in predictors.items()}
    measured = measure_drift(prepared, forwards, progress=progress)
    summary = measured["summary"]["default"] | {"labels": "composed, as segment writes them"}
    said = verdict(summary, DEFAULT_MAX_DICE_DROP, DEFAULT_MIN_AGREEMENT)
    return {
        "data": str(data),
        "cases": [case.case_id for case in chosen],
        "precisions": {"whole": predictors["default"].precision, "core": predictors["default"].core.precision},
        "tiling": predictors["default"].tiling,
        "postprocessing": DEFAULT_POSTPROCESSING.to_dict(),  # the label rules the gate judged (segment's default)
        "summary": summary,
        "verdict": said,
        "passed": verdict_passes(said),
    }


def compose_bundle(
    whole: Path,
    core: Path,
    out_dir: Path,
    gate_data: Path,
    allow_failed: bool = False,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Write ``out_dir``: the bundle ``whole`` with the bundle ``core`` as its core network, gated on ``gate_data``.

    Raises BundleError (nothing written) when either bundle does not verify, already has a core network, or
    differs from the other in preprocessing, modalities or labels; and when the composition fails its gate,
    unless ``allow_failed`` (the manifest then records the failed verdict). Returns the composition's gate.
    """
    whole, core, out_dir = Path(whole), Path(core), Path(out_dir)
    bundles = {"whole": load_bundle(whole), "core": load_bundle(core)}
    for role, bundle in bundles.items():
        if bundle.core is not None:
            raise BundleError(
                f"bundle {bundle.path} already has a core network: give a bundle of one network as the {role} one"
            )
    for key in SHARED:
        if bundles["whole"].manifest.get(key) != bundles["core"].manifest.get(key):
            raise BundleError(
                f"bundles {whole} and {core} differ in their {key}: one preprocessing path cannot serve both networks"
            )
    if out_dir.resolve() in (whole.resolve(), core.resolve()):
        raise BundleError(f"{out_dir} is one of the bundles being composed: choose a new folder")
    _check_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        shutil.copytree(whole, work, dirs_exist_ok=True)
        shutil.copytree(core, work / CORE_FOLDER)
        manifest = dict(bundles["whole"].manifest)
        manifest["core"] = {
            "path": CORE_FOLDER,
            "checksum": bundles["core"].manifest["checksum"],
            "rule": RULE,
            "source": str(core),
        }
        write_manifest(work, manifest)
        progress(f"gating the composition on the held-out cases of {gate_data}")
        gate = composition_gate(load_bundle(work), gate_data, threads, lambda case_id: progress(case_id))
        if not gate["passed"] and not allow_failed:
            raise BundleError(
                f"the composition of {whole} and {core} fails its INT8 gate on {gate_data} ({gate['verdict']}): "
                "nothing was written; rebuild the core network, or pass --allow-failed-gate to record the failure"
            )
        manifest["core"]["gate"] = gate
        write_manifest(work, manifest)
        _move_into_place(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return gate
