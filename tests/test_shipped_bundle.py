"""The bundle shipped in the package is built from the shipped weights, verifies, and is the runtime's default."""

from __future__ import annotations

import hashlib

from latup_edge.models.checkpoint import shipped_weights
from latup_edge.runtime.bundle import load_bundle, resolve_bundle, shipped_bundle


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
