"""The blind BraTS-like generator (latup_edge/data/blind.py): files, determinism, masks, labels and contrast."""

from __future__ import annotations

import ast
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from latup_edge.data import blind
from latup_edge.data.naming import case_filename, case_id_for

SEED = 11
KEYS = ("flair", "t1", "t1ce", "t2", "seg")


def _first(grade: str) -> int:
    return next(i for i in range(100) if blind.blind_case_plan(SEED, i)["grade"] == grade)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("blind")
    return out, blind.write_blind_cases(out, n=2, seed=SEED, start=0)


@pytest.fixture(scope="module")
def gbm() -> dict:
    return blind.make_blind_case(SEED, _first("gbm"))


@pytest.fixture(scope="module")
def lgg() -> dict:
    return blind.make_blind_case(SEED, _first("lgg"))


def _means(case: dict, mod: str) -> dict[str, float]:
    img = case[mod].astype(np.float64)
    tissue, seg = case["tissue"], case["seg"]
    normal = (seg == 0) & ~ndi.binary_dilation(seg > 0, iterations=3)
    regions = {
        "wm": normal & (tissue["wm"] > 0.95),
        "gm": normal & (tissue["gm"] > 0.9),
        "csf": normal & (tissue["csf"] > 0.95),
        "oed": seg == 2,
        "enh": seg == 4,
        "nec": tissue["necrosis"],
        "net": tissue["net"],
    }
    return {k: float(img[m].mean()) for k, m in regions.items() if m.sum() > 50}


def test_files_names_shapes_and_affines(written):
    out, folders = written
    assert [f.name for f in folders] == [case_id_for(i, "2021") for i in range(2)]
    for folder in folders:
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(case_filename(folder.name, k, "2021") for k in KEYS)
        imgs = {k: nib.load(folder / case_filename(folder.name, k, "2021")) for k in KEYS}
        for k, img in imgs.items():
            assert img.shape == blind.SHAPE, k
            np.testing.assert_allclose(img.affine, blind.AFFINE)
            assert np.allclose(img.header.get_zooms(), 1.0)
        for k in ("flair", "t1", "t1ce", "t2"):
            assert imgs[k].get_data_dtype() == np.int16
        seg = np.asarray(imgs["seg"].dataobj)
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        assert (seg > 0).any()


def test_start_does_not_change_a_case_and_files_match_arrays(written, tmp_path):
    out, _ = written
    again = blind.write_blind_cases(tmp_path, n=1, seed=SEED, start=1)
    assert [f.name for f in again] == [case_id_for(1, "2021")]
    for k in KEYS:
        name = case_filename(again[0].name, k, "2021")
        assert (again[0] / name).read_bytes() == (out / again[0].name / name).read_bytes(), k


def test_same_seed_and_index_give_identical_arrays(written, gbm):
    out, _ = written
    index = _first("gbm")
    assert index < 2, "the written cases should include the first glioblastoma-like case"
    case_id = case_id_for(index, "2021")
    for k in KEYS:
        on_disk = np.asarray(nib.load(out / case_id / case_filename(case_id, k, "2021")).dataobj)
        np.testing.assert_array_equal(on_disk, gbm[k])


def test_masks_labels_and_signs(gbm, lgg):
    for case in (gbm, lgg):
        brain = case["brain"]
        assert 900_000 < brain.sum() < 2_500_000  # a brain's volume in mm^3
        for mod in blind.MODALITIES:
            img = case[mod]
            assert img.dtype == np.int16 and img.shape == blind.SHAPE
            assert img.min() >= 0
            assert not img[~brain].any()  # skull-stripped: exactly 0 outside the shared brain mask
            assert (img[brain] > 0).all()
        seg = case["seg"]
        assert set(np.unique(seg)) <= set(blind.LABELS)
        assert not seg[~brain].any()
        assert not (seg[case["tissue"]["vent"]] == 2).any()  # oedema stays out of the ventricles


def test_glioblastoma_contrast_orderings(gbm):
    assert (gbm["seg"] == 4).sum() > 100 and (gbm["seg"] == 2).sum() > 1000
    t1, t1ce, t2, flair = (_means(gbm, m) for m in ("t1", "t1ce", "t2", "flair"))
    assert t1["wm"] > t1["gm"] > t1["csf"]
    assert t1["oed"] < t1["wm"] and t1["enh"] < t1["wm"]
    if "nec" in t1:
        assert t1["nec"] < min(t1["oed"], t1["enh"], t1["wm"])
        assert t1ce["nec"] < t1ce["wm"]
    assert t1ce["enh"] > 1.1 * t1ce["wm"]
    assert t1ce["enh"] > t1ce["gm"] and t1ce["oed"] < t1ce["wm"]
    assert t2["csf"] > t2["gm"] > t2["wm"]
    assert t2["oed"] > t2["gm"] and t2["oed"] > t2["wm"]
    if "nec" in t2:
        assert t2["nec"] > t2["gm"]
    assert flair["csf"] < flair["wm"] < flair["gm"] < flair["oed"]
    assert flair["oed"] > flair["enh"]
    if "nec" in flair:
        assert flair["oed"] > flair["nec"]


def test_low_grade_case_does_not_enhance(lgg):
    seg = lgg["seg"]
    assert not (seg == 4).any() and (seg == 1).sum() > 1000
    t1ce, flair, t2 = (_means(lgg, m) for m in ("t1ce", "flair", "t2"))
    core = lgg["tissue"]["net"]
    assert lgg["t1ce"][core].mean() < t1ce["wm"]
    assert lgg["flair"][core].mean() > flair["gm"]
    assert t2["oed"] > t2["gm"] and flair["oed"] > flair["gm"]


def test_cases_differ():
    a, b = blind.blind_case_plan(SEED, 0), blind.blind_case_plan(SEED, 1)
    c = blind.blind_case_plan(SEED + 1, 0)
    assert a != b and a != c


def test_imports_only_naming_and_fileio_from_the_project():
    tree = ast.parse(Path(blind.__file__).read_text())
    project = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            project |= {a.name for a in node.names if a.name.split(".")[0] == "latup_edge"}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            if node.module and node.module.split(".")[0] == "latup_edge":
                project.add(node.module)
    assert project <= {"latup_edge.data.naming", "latup_edge.fileio"}
    assert project  # it does use them
