"""benchmarks/postprocess_rules.py: its cache of raw labels never hands one folder's case to another."""

import numpy as np
from conftest import benchmark_script, narrow_network

from latup_edge.data.cases import discover_cases, load_case_images
from latup_edge.data.phantom import NARROW, write_phantoms
from latup_edge.models.checkpoint import save_checkpoint


def fake_network(images, forward, **options) -> np.ndarray:
    """Labels that depend on the images alone: bright voxels of the first modality."""
    first = images[0]
    return (first > np.median(first[first > 0])).astype(np.uint8)


def test_cached_labels_are_kept_apart_by_folder(two_phantoms, tmp_path, monkeypatch):
    script = benchmark_script("postprocess_rules")
    monkeypatch.setattr(script, "predict_classes", fake_network)
    monkeypatch.setattr("latup_edge.deploy.export.export_onnx", lambda model, path: path)
    monkeypatch.setattr("latup_edge.runtime.openvino_backend.OpenVINOModel", lambda path, precision: None)
    weights = save_checkpoint(narrow_network(), tmp_path / "w.safetensors")
    other = tmp_path / "other"
    write_phantoms(other, n=1, seed=12, naming="2021", randomise=NARROW)  # the same first case id
    cache = tmp_path / "cache"

    first = script.raw_labels(two_phantoms, weights, "fp32", cache)
    second = script.raw_labels(other, weights, "fp32", cache)
    (case,) = discover_cases(other)
    assert case.case_id in first  # the id collides ...
    expected = fake_network(load_case_images(case)[0], None)
    assert np.array_equal(second[case.case_id][0], expected)  # ... and the labels are the folder's own
    assert not np.array_equal(first[case.case_id][0], expected)
    again = script.raw_labels(other, weights, "fp32", cache)  # from the cache this time
    assert np.array_equal(again[case.case_id][0], expected)
    assert len(list(cache.rglob("*.npz"))) == 3
