"""The independent test-case generator: geometry, contrasts, lesion labels, determinism, files, independence."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from latup_edge.data import independent
from latup_edge.data.independent import (
    BRATS_AFFINE,
    GRID_SHAPE,
    draw_gadolinium,
    draw_protocol,
    draw_relaxation,
    make_independent_case,
    tissue_signals,
    write_independent_cases,
)

SEED, INDEX = 0, 1  # a case with all three lesion classes
needs_template = pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None, reason="the MNI152 template ships with nilearn"
)


@pytest.fixture(scope="module")
def case():
    return make_independent_case(SEED, INDEX)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    return write_independent_cases(tmp_path_factory.mktemp("independent"), n=1, seed=SEED, start=INDEX)[0]


def _means(case, modality: str) -> dict[str, float]:
    image, labels, tissues = case.images[modality], case.labels, case.tissues
    regions = {
        "csf": (tissues == 1) & (labels == 0),
        "gm": (tissues == 2) & (labels == 0),
        "wm": (tissues == 3) & (labels == 0),
        "ncr": labels == 1,
        "ed": labels == 2,
        "et": labels == 3,
    }
    return {name: float(image[region].mean()) for name, region in regions.items()}


@needs_template
def test_geometry_dtypes_and_brain(case):
    assert case.case_id == f"BraTS-GLI-{INDEX:05d}-000"
    assert set(case.images) == {"t1", "t1ce", "t2", "flair"}
    np.testing.assert_array_equal(case.affine, BRATS_AFFINE)
    brain = case.tissues > 0
    for image in case.images.values():
        assert image.shape == GRID_SHAPE and image.dtype == np.int16
        assert (image[~brain] == 0).all() and (image[brain] >= 1).all()
    assert case.labels.shape == GRID_SHAPE and case.labels.dtype == np.uint8
    assert set(np.unique(case.labels)) == {0, 1, 2, 3}
    assert not (case.labels[~brain]).any()
    assert not ((case.labels == 2) & (case.tissues == 1)).any()  # oedema never in CSF
    assert 5_000 <= (case.labels > 0).sum() <= 200_000


@needs_template
def test_pathology_looks_like_mri(case):
    flair, t2, t1ce, t1 = (_means(case, m) for m in ("flair", "t2", "t1ce", "t1"))
    assert flair["ed"] > flair["wm"]
    assert flair["csf"] == min(flair.values())
    assert t2["csf"] > t2["gm"] > t2["wm"] and t2["ed"] > t2["wm"]
    assert t1ce["et"] > t1ce["ncr"] and t1ce["et"] > t1ce["wm"]
    assert t1["wm"] > t1["gm"] > t1["csf"]


def test_tissue_orderings_hold_for_every_protocol():
    for draw in range(200):
        rng = np.random.default_rng(draw)
        signals = tissue_signals(draw_relaxation(rng), draw_gadolinium(rng), draw_protocol(rng))
        t1, t1ce, t2, flair = (signals[m] for m in ("t1", "t1ce", "t2", "flair"))
        assert t1["wm"] > t1["gm"] > t1["csf"], draw
        assert t1ce["et"] > t1ce["wm"] and t1ce["et"] > t1ce["ncr"], draw
        assert t2["csf"] > t2["gm"] > t2["wm"] and t2["ed"] > t2["wm"], draw
        assert flair["csf"] == min(flair.values()) and flair["ed"] > flair["wm"], draw


@needs_template
def test_files_are_brats_2023_and_deterministic(case, written):
    prefix = case.case_id
    assert written.name == prefix
    assert sorted(p.name for p in written.iterdir()) == sorted(
        f"{prefix}-{suffix}.nii.gz" for suffix in ("t1n", "t1c", "t2w", "t2f", "seg")
    )
    seg = nib.load(written / f"{prefix}-seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8
    assert int(seg.header["qform_code"]) == 1 and int(seg.header["sform_code"]) == 1
    assert seg.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(seg.affine, BRATS_AFFINE)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), case.labels)
    # Written from a second, independent generation of the same (seed, index): the same arrays.
    t1c = nib.load(written / f"{prefix}-t1c.nii.gz")
    assert t1c.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(t1c.dataobj), case.images["t1ce"])


@needs_template
def test_another_index_differs(case):
    other = make_independent_case(SEED, INDEX + 1)
    assert other.case_id == f"BraTS-GLI-{INDEX + 1:05d}-000"
    assert not np.array_equal(other.labels, case.labels)
    assert not np.array_equal(other.images["flair"], case.images["flair"])


def _imports(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            modules += [f"{base}.{alias.name}" if node.level or base == "latup_edge" else base for alias in node.names]
    return modules


def test_shares_no_code_with_the_training_generator():
    source = Path(independent.__file__)
    project = [m for m in _imports(source) if m.startswith(("latup_edge", "."))]
    assert set(project) == {"latup_edge.fileio"}
    assert not any("independent" in m for m in _imports(source.with_name("phantom.py")))
