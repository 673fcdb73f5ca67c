"""The bundle shipped in the package is built from the shipped weights, verifies, and is the runtime's default."""

from __future__ import annotations

import hashlib

from latup_edge.models.checkpoint import shipped_core_weights, shipped_weights
from latup_edge.runtime.bundle import load_bundle, resolve_bundle, shipped_bundle
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING


def test_the_shipped_bundle_is_built_from_the_shipped_weights():
    path = shipped_bundle()
    assert path is not None, "models/bundle is missing: rebuild it (docs in models/MODEL_CARD.md) and commit it"
    bundle = load_bundle(path)  # verifies every file's hash against the manifest
    weights = hashlib.sha256(shipped_weights().read_bytes()).hexdigest()
    assert bundle.manifest["source"]["metadata"]["weights_sha256"] == weights, (
        "the shipped weights changed but the shipped bundle did not: rebuild models/bundle from them"
    )


def test_the_shipped_bundle_runs_int8_and_records_its_gate_and_inputs():
    bundle = load_bundle(shipped_bundle())
    assert bundle.default_precision == "int8" and bundle.manifest["precisions"]["int8"]["eligible"]
    build = bundle.manifest["build"]
    assert build["verdicts"]["int8"].startswith("pass") and build["settings"]["min_agreement"] == 0.99
    assert build["input_reference"]["n"] == len(build["input_reference"]["cases"]) >= 10


def test_segment_drift_and_benchmark_default_to_it():
    assert resolve_bundle(None) == shipped_bundle()


def test_a_head_bias_shifted_by_a_tenth_of_a_logit_paints_no_label_outside_the_brain(two_phantoms):
    # Outside the brain the shipped network's background wins by only 0.114 logits (docs/INT8.md): the
    # +0.157 on necrosis that a brain-only output bias fit once chose painted the whole box's background.
    import numpy as np
    import openvino as ov

    from latup_edge.data.cases import discover_cases, load_case_images
    from latup_edge.deploy.quantize.output_bias import with_output_offsets
    from latup_edge.runtime.openvino_backend import OpenVINOModel
    from latup_edge.runtime.postprocess import Postprocessing
    from latup_edge.runtime.volume import predict_classes

    bundle = load_bundle(shipped_bundle())
    model = ov.Core().read_model(str(bundle.path / bundle.manifest["precisions"]["int8"]["file"]))
    shifted = OpenVINOModel(with_output_offsets(model, [0.0, 0.16, 0.0, 0.0]), "int8")
    images, _ = load_case_images(discover_cases(two_phantoms)[0])
    inside = np.any(images != 0, axis=0)
    raw = predict_classes(
        images, shifted, "whole", normalization=bundle.normalization, postprocessing=Postprocessing.none()
    )
    assert np.count_nonzero(raw[~inside]) > 100_000  # the trap is real: the box around the brain turns necrosis
    delivered = predict_classes(images, shifted, "whole", normalization=bundle.normalization)
    assert not delivered[~inside].any()


def test_the_shipped_core_network_is_built_from_the_shipped_core_weights_and_its_composition_is_gated():
    bundle = load_bundle(shipped_bundle())
    assert bundle.core is not None, "the shipped bundle has no core network (docs/GENERALISATION.md section 28)"
    weights = hashlib.sha256(shipped_core_weights().read_bytes()).hexdigest()
    assert bundle.core.manifest["source"]["metadata"]["weights_sha256"] == weights, (
        "the shipped core weights changed but the shipped bundle's core network did not: recompose models/bundle"
    )
    gate = bundle.manifest["core"]["gate"]
    assert gate["passed"] and gate["precisions"] == {"whole": "int8", "core": "int8"}
    assert len(gate["cases"]) == 8 and gate["tiling"] == "sliding"
    assert gate["postprocessing"] == DEFAULT_POSTPROCESSING.to_dict(), (
        "segment's label rules changed since the shipped composition was gated: recompose models/bundle"
    )
