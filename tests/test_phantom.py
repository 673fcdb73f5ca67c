"""BraTS-like phantoms: reproducible bytes, BraTS geometry, naming and labels, plausible contrasts."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from latup_edge.data.labels import to_classes
from latup_edge.data.naming import MODALITIES, Naming, case_filename, case_id_for
from latup_edge.data.phantom import (
    BEFORE_CORE,
    BRATS_AFFINE,
    GRID_SHAPE,
    NARROW,
    WIDE,
    WITH_FAINT_CORE,
    WITH_MIMICS,
    PhantomCase,
    Randomisation,
    make_phantom,
    write_phantoms,
)
from latup_edge.data.preview import write_preview

SEED = 11
KEYS = (*MODALITIES, "seg")


@pytest.fixture(scope="module")
def folder_2021(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("phantoms"), n=1, seed=SEED, naming="2021", randomise=NARROW)[0]


@pytest.fixture(scope="module")
def other_case() -> PhantomCase:
    return make_phantom(case_id_for(0, "2021"), seed=SEED + 1, index=0, randomise=NARROW)


# One case per randomisation family alone, and two with every family on.
FAMILIES = ["contrast", "acquisition", "anatomy", "lesion", "all", "all"]


@pytest.fixture(scope="module")
def family_cases() -> list[PhantomCase]:
    return [
        make_phantom(case_id_for(i, "2021"), seed=SEED + 2, index=i, randomise=Randomisation.parse(family))
        for i, family in enumerate(FAMILIES)
    ]


def load(folder: Path, key: str, naming: Naming = "2021") -> nib.Nifti1Image:
    return nib.load(folder / case_filename(folder.name, key, naming))


def test_same_seed_gives_identical_bytes(folder_2021: Path, tmp_path: Path) -> None:
    again = write_phantoms(tmp_path, n=1, seed=SEED, naming="2021", randomise=NARROW)[0]
    names = sorted(p.name for p in folder_2021.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (folder_2021 / name).read_bytes() == (again / name).read_bytes(), name


def test_worker_processes_write_the_same_bytes_in_index_order(folder_2021: Path, tmp_path: Path) -> None:
    done: list[int] = []
    folders = write_phantoms(tmp_path, n=2, seed=SEED, naming="2021", randomise=NARROW, workers=2, progress=done.append)
    assert [f.name for f in folders] == [case_id_for(0, "2021"), case_id_for(1, "2021")] and done == [1, 2]
    for name in sorted(p.name for p in folder_2021.iterdir()):
        assert (folder_2021 / name).read_bytes() == (folders[0] / name).read_bytes(), name


def test_different_seed_gives_different_case(folder_2021: Path, other_case: PhantomCase) -> None:
    flair = np.asanyarray(load(folder_2021, "flair").dataobj)
    assert not np.array_equal(flair, other_case.images["flair"])
    assert not np.array_equal(flair > 0, other_case.images["flair"] > 0)  # the anatomy moves too


def test_brats_geometry_and_skull_stripping(folder_2021: Path) -> None:
    images = {key: load(folder_2021, key) for key in KEYS}
    for key, image in images.items():
        assert image.shape == GRID_SHAPE
        assert image.get_data_dtype() == (np.uint8 if key == "seg" else np.int16)
        assert image.header.get_zooms() == (1.0, 1.0, 1.0)
        np.testing.assert_array_equal(image.affine, BRATS_AFFINE)
        assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    arrays = {key: np.asanyarray(image.dataobj) for key, image in images.items()}
    brain = arrays["t1"] > 0
    assert 1.2e6 < brain.sum() < 2.2e6  # an adult brain, in mm^3
    for key in MODALITIES:
        assert np.array_equal(arrays[key] > 0, brain), f"{key} is not zero exactly outside the brain"
        inside = arrays[key][brain].astype(np.float32)
        assert inside.max() > 300 and inside.std() > 0.1 * inside.mean(), key
    assert not (arrays["seg"] > 0)[~brain].any()
    # The BraTS paper crop sits on the brain.
    crop = brain[56:184, 56:184, 13:141]
    assert crop.sum() > 0.75 * brain.sum()


@pytest.mark.parametrize("naming", ["2020", "2021", "2023"])
def test_file_names_and_labels(naming: Naming, folder_2021: Path, tmp_path: Path) -> None:
    calls: list[int] = []
    if naming == "2021":
        folder = folder_2021
    else:
        [folder] = write_phantoms(
            tmp_path, n=1, seed=SEED, naming=naming, start=3, progress=calls.append, randomise=NARROW
        )
        assert folder.name == case_id_for(3, naming) and calls == [1]
    expected_names = sorted(case_filename(folder.name, key, naming) for key in KEYS)
    assert sorted(p.name for p in folder.iterdir()) == expected_names
    labels = np.asanyarray(load(folder, "seg", naming).dataobj)
    expected = {0, 1, 2, 3} if naming == "2023" else {0, 1, 2, 4}
    assert set(np.unique(labels).tolist()) == expected
    counts = np.bincount(to_classes(labels, "2023" if naming == "2023" else "2021").ravel())
    assert all(counts[1:] >= 500)
    assert 15_000 <= counts[1:].sum() <= 180_000  # whole tumour, in mm^3


def _class_means(case: PhantomCase) -> dict[str, dict[str, float]]:
    """Mean intensity per modality of every compartment that the case holds (normal tissue off-tumour)."""
    classes, tissues = case.classes, case.tissues
    assert tissues is not None
    where = {
        "csf": (tissues == 1) & (classes == 0),
        "gm": (tissues == 2) & (classes == 0),
        "wm": (tissues == 3) & (classes == 0),
        "ncr": classes == 1,
        "ed": classes == 2,
        "et": classes == 3,
    }
    return {
        key: {
            name: float(case.images[key][mask].astype(np.float64).mean()) for name, mask in where.items() if mask.any()
        }
        for key in MODALITIES
    }


@pytest.mark.parametrize("index", range(len(FAMILIES)))
def test_every_randomisation_keeps_the_pathology_orderings(family_cases: list[PhantomCase], index: int) -> None:
    means = _class_means(family_cases[index])
    flair, t2, t1ce = means["flair"], means["t2"], means["t1ce"]
    assert flair["ed"] > flair["wm"] and flair["ed"] > flair["gm"] and flair["ed"] > flair["csf"]
    assert flair["csf"] < min(flair["wm"], flair["gm"])  # FLAIR suppresses CSF
    assert t2["ed"] > t2["wm"] and t2["csf"] > t2["wm"]
    if "et" in t1ce:  # the wide generator draws non-enhancing tumours too
        assert t1ce["et"] > t1ce["ncr"] and t1ce["et"] > t1ce["wm"] and t1ce["et"] > t1ce["gm"]


def test_wide_randomisation_varies_what_the_narrow_one_holds_fixed() -> None:
    narrow = [_class_means(make_phantom("n", seed=SEED, index=i, randomise=NARROW)) for i in range(2)]
    wide = [_class_means(make_phantom("w", seed=SEED, index=i, randomise=WIDE)) for i in range(3)]

    def wm_over_gm(means: dict[str, dict[str, float]]) -> float:
        return means["flair"]["wm"] / means["flair"]["gm"]

    spread_narrow = np.ptp([wm_over_gm(m) for m in narrow])
    spread_wide = np.ptp([wm_over_gm(m) for m in wide])
    assert spread_wide > 3 * spread_narrow


def test_randomisation_names_parse() -> None:
    assert Randomisation.parse("all") == WIDE and Randomisation.parse("none") == NARROW
    assert Randomisation.parse("contrast,lesion") == Randomisation(True, False, False, True, core=False)
    assert Randomisation.parse("contrast,lesion").describe() == "contrast,lesion"
    assert Randomisation.parse("all,mimics") == WITH_MIMICS and not WIDE.mimics  # opt-in until judged
    assert Randomisation.parse("lesion,mimics") == Randomisation(False, False, False, True, core=False, mimics=True)
    with pytest.raises(ValueError, match="unknown randomisation"):
        Randomisation.parse("colour")


def test_contrasts_are_plausible(other_case: PhantomCase) -> None:
    images = {key: other_case.images[key].astype(np.float32) for key in MODALITIES}
    classes, tissues = other_case.classes, other_case.tissues
    assert tissues is not None
    csf, gm, wm = ((tissues == t) & (classes == 0) for t in (1, 2, 3))
    edema, necrosis, enhancing = (classes == c for c in (2, 1, 3))
    assert images["flair"][edema].mean() > 1.3 * images["flair"][wm].mean()
    assert images["t1ce"][enhancing].mean() > 1.5 * images["t1ce"][necrosis].mean()
    assert images["t2"][csf].mean() > images["t2"][wm].mean()
    assert images["t1"][wm].mean() > images["t1"][gm].mean() > images["t1"][csf].mean()
    assert images["flair"][csf].mean() < images["flair"][wm].mean() < images["flair"][gm].mean()


def test_preview_png(other_case: PhantomCase, tmp_path: Path) -> None:
    path = write_preview(other_case, tmp_path / "preview.png", scale=1)
    with Image.open(path) as image:
        assert image.size == (5 * GRID_SHAPE[0], GRID_SHAPE[1])
        assert image.mode == "RGB"


def test_non_enhancing_share_makes_cases_without_et_and_leaves_the_stream_alone() -> None:
    without = make_phantom("w", seed=SEED, index=0, randomise=WIDE, non_enhancing=1.0)
    counts = np.bincount(without.classes.ravel(), minlength=4)
    assert counts[3] == 0 and counts[1] > 0 and counts[2] > 0  # NCR and oedema, no ET
    default = make_phantom("w", seed=SEED, index=0, randomise=WIDE)
    assert (default.classes == 3).any()
    # The share only moves the threshold of a draw that is always made: an enhancing case is unchanged.
    never = make_phantom("w", seed=SEED, index=0, randomise=WIDE, non_enhancing=0.0)
    assert np.array_equal(never.classes, default.classes)
    assert all(np.array_equal(never.images[m], default.images[m]) for m in MODALITIES)


def test_core_family_redraws_the_core_contrast_and_nothing_else_it_draws() -> None:
    with_core = make_phantom("w", seed=SEED, index=0, randomise=WIDE)
    before = make_phantom("w", seed=SEED, index=0, randomise=BEFORE_CORE)
    assert np.array_equal(with_core.classes, before.classes)  # its own stream: the lesion is the same
    core = ndi.binary_erosion(with_core.classes == 1, iterations=2)
    oedema = ndi.binary_erosion(with_core.classes == 2, iterations=2)
    ratios = {m: with_core.images[m][core].mean() / with_core.images[m][oedema].mean() for m in MODALITIES}
    before_ratios = {m: before.images[m][core].mean() / before.images[m][oedema].mean() for m in MODALITIES}
    assert ratios != before_ratios
    assert ratios["t1"] < 1 and ratios["t1ce"] < 1  # the core never enhances


def test_mimics_enhance_normal_tissue_on_t1ce_and_change_no_label() -> None:
    plain = make_phantom("w", seed=SEED, index=1, randomise=WIDE)
    mimics = make_phantom("w", seed=SEED, index=1, randomise=WITH_MIMICS)
    assert np.array_equal(plain.classes, mimics.classes)  # its own stream: the same anatomy and lesion
    rim = plain.images["t1ce"][plain.classes == 3].astype(np.float32)
    gain = mimics.images["t1ce"].astype(np.float32) - plain.images["t1ce"]
    bright = gain > 0.3 * rim.mean()
    assert 300 < bright.sum() < 20_000  # tufts and vessels: a few mL at most
    assert not (bright & (plain.classes > 0)).any()  # never inside the tumour: background, as BraTS labels them
    assert np.median(mimics.images["t1ce"][bright]) > 0.6 * np.median(rim)  # as bright as enhancement
    oedema = mimics.images["flair"][mimics.classes == 2]
    assert np.median(mimics.images["flair"][bright]) < np.median(oedema)  # no oedema around them on FLAIR


def test_faint_core_brings_a_core_without_et_near_the_oedema_and_leaves_enhancing_tumours_alone() -> None:
    plain = make_phantom("w", seed=SEED, index=0, randomise=WIDE, non_enhancing=1.0)
    faint = make_phantom("w", seed=SEED, index=0, randomise=WITH_FAINT_CORE, non_enhancing=1.0)
    assert np.array_equal(plain.classes, faint.classes)  # its own stream: the same anatomy and lesion
    core = ndi.binary_erosion(faint.classes == 1, iterations=2)
    oedema = ndi.binary_erosion(faint.classes == 2, iterations=2)
    ratios = {m: np.median(faint.images[m][core]) / np.median(faint.images[m][oedema]) for m in MODALITIES}
    plain_ratios = {m: np.median(plain.images[m][core]) / np.median(plain.images[m][oedema]) for m in MODALITIES}
    assert all(0.7 < ratios[m] < 1.3 for m in MODALITIES), ratios  # within about a tenth, noise and bias aside
    assert ratios != plain_ratios
    enhancing = make_phantom("w", seed=SEED, index=0, randomise=WIDE)
    assert (enhancing.classes == 3).any()
    same = make_phantom("w", seed=SEED, index=0, randomise=WITH_FAINT_CORE)
    assert all(np.array_equal(same.images[m], enhancing.images[m]) for m in MODALITIES)
    assert Randomisation.parse("all,faint_core") == WITH_FAINT_CORE and not WIDE.faint_core  # opt-in until judged
