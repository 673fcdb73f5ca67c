"""Label post-processing: small WT components removed, too little ET relabelled as necrosis."""

import numpy as np
import pytest

from latup_edge.runtime.postprocess import Postprocessing, postprocess


def _case() -> np.ndarray:
    classes = np.zeros((40, 40, 40), np.uint8)
    classes[5:25, 5:25, 5:25] = 2  # the lesion: 8000 voxels of ED ...
    classes[10:20, 10:20, 10:20] = 1  # ... around an NCR core
    classes[12:18, 12:18, 12:18] = 3  # with 216 ET voxels
    classes[30:38, 30:38, 30:38] = 2  # a far component: 512 voxels, 6 % of the largest
    return classes


def test_small_components_go_and_too_little_et_becomes_necrosis():
    classes = _case()
    assert (postprocess(classes) == 3).sum() == 216  # the default keeps ET as predicted ...
    assert not postprocess(classes)[30:38, 30:38, 30:38].any()  # ... and removes what is under 0.1 of the largest
    out = postprocess(classes, Postprocessing(min_et_voxels=500, min_component_fraction=0.2))
    assert not out[30:38, 30:38, 30:38].any()  # under 0.2 of the largest: removed
    assert not (out == 3).any() and (out[12:18, 12:18, 12:18] == 1).all()  # 216 < 500 ET voxels: NCR
    assert (out[5:25, 5:25, 5:25] > 0).all()  # the lesion itself is untouched
    assert (classes == _case()).all()  # the input is not modified


def test_rules_keep_what_they_should():
    classes = _case()
    keep_all = postprocess(classes, Postprocessing(min_et_voxels=100, min_component_fraction=0.05, drop_coreless=False))
    assert (keep_all == classes).all()  # 512 >= 0.05 * 8000 and 216 >= 100 ET voxels
    assert (postprocess(classes, Postprocessing.none()) == classes).all()
    empty = np.zeros((8, 8, 8), np.uint8)
    assert (postprocess(empty) == 0).all()


def test_coreless_components_go_even_when_larger_than_the_tumour_but_never_the_only_ones():
    classes = np.zeros((60, 60, 60), np.uint8)
    classes[5:15, 5:15, 5:15] = 2  # a small lesion: ED ...
    classes[8:12, 8:12, 8:12] = 1  # ... around a core
    classes[25:55, 25:55, 25:55] = 2  # false oedema, far larger than the lesion, with no core
    rules = Postprocessing(min_component_fraction=0.1, drop_coreless=True)
    out = postprocess(classes, rules)
    assert not out[25:55, 25:55, 25:55].any()  # the coreless component goes first ...
    assert (out[5:15, 5:15, 5:15] == classes[5:15, 5:15, 5:15]).all()  # ... so the size rule keeps the lesion
    size_only = Postprocessing(min_component_fraction=0.1, drop_coreless=False)
    assert not postprocess(classes, size_only)[5:15, 5:15, 5:15].any()
    oedema_only = np.where(classes == 1, np.uint8(2), classes)  # no core anywhere: nothing to tell apart
    assert (postprocess(oedema_only, Postprocessing(min_component_fraction=0, drop_coreless=True)) == oedema_only).all()
    two_lesions = classes.copy()
    two_lesions[38:42, 38:42, 38:42] = 3  # the big component gets an enhancing core: it stays
    coreless_only = Postprocessing(min_component_fraction=0, drop_coreless=True, min_et_voxels=0)
    assert (postprocess(two_lesions, coreless_only) == two_lesions).all()


def test_by_default_under_200_et_voxels_become_necrosis_and_wt_tc_stay():
    classes = _case()
    classes[12:18, 12:18, 12:18] = 1
    classes[12:17, 12:17, 12:18] = 3  # 150 ET voxels: a non-enhancing core's false ET
    out = postprocess(classes)
    assert not (out == 3).any() and (out[12:17, 12:17, 12:18] == 1).all()
    kept = postprocess(classes, Postprocessing(min_et_voxels=0))
    assert ((out > 0) == (kept > 0)).all()  # WT unchanged
    assert (np.isin(out, (1, 3)) == np.isin(kept, (1, 3))).all()  # TC unchanged
    assert (postprocess(_case()) == 3).sum() == 216  # 216 >= 200: the ET stays


def test_a_component_with_a_speck_of_core_counts_as_coreless_under_min_core_fraction():
    classes = np.zeros((60, 60, 60), np.uint8)
    classes[5:20, 5:20, 5:20] = 2  # the lesion: ED ...
    classes[8:16, 8:16, 8:16] = 1  # ... around a core of 512 voxels
    classes[25:55, 25:55, 25:55] = 2  # false oedema far larger than the lesion ...
    classes[40:43, 40:43, 40:43] = 3  # ... with a speck of core: 27 voxels, 5 % of the lesion's
    specks_count = Postprocessing(min_component_fraction=0, min_et_voxels=0, min_core_fraction=0)
    assert (postprocess(classes, specks_count) == classes).all()  # any core voxel keeps a component
    relative = Postprocessing(min_component_fraction=0, min_et_voxels=0, min_core_fraction=0.1)
    out = postprocess(classes, relative)
    assert not out[25:55, 25:55, 25:55].any()  # 27 < 0.1 x 512: coreless, so it goes
    assert (out[5:20, 5:20, 5:20] == classes[5:20, 5:20, 5:20]).all()  # the lesion with the largest core stays
    satellite = classes.copy()
    satellite[40:46, 40:46, 40:46] = 1  # a second lesion whose core is 216 voxels, 42 % of the first's
    assert (postprocess(satellite, relative) == satellite).all()
    with pytest.raises(ValueError, match="min_core_fraction"):
        Postprocessing(min_core_fraction=1.5)
