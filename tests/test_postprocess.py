"""Label post-processing: small WT components removed, too little ET relabelled as necrosis."""

from dataclasses import replace

import numpy as np
import pytest

from latup_edge.runtime.postprocess import Postprocessing, largest_removed_and_kept, postprocess


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
    coreless_only = Postprocessing(min_component_fraction=0, drop_coreless=True, min_et_voxels=0, min_core_density=0)
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
    specks_count = Postprocessing(min_component_fraction=0, min_et_voxels=0, min_core_fraction=0, min_core_density=0)
    assert (postprocess(classes, specks_count) == classes).all()  # any core voxel keeps a component
    relative = Postprocessing(min_component_fraction=0, min_et_voxels=0, min_core_fraction=0.1, min_core_density=0)
    out = postprocess(classes, relative)
    assert not out[25:55, 25:55, 25:55].any()  # 27 < 0.1 x 512: coreless, so it goes
    assert (out[5:20, 5:20, 5:20] == classes[5:20, 5:20, 5:20]).all()  # the lesion with the largest core stays
    satellite = classes.copy()
    satellite[40:46, 40:46, 40:46] = 1  # a second lesion whose core is 216 voxels, 42 % of the first's
    assert (postprocess(satellite, relative) == satellite).all()
    with pytest.raises(ValueError, match="min_core_fraction"):
        Postprocessing(min_core_fraction=1.5)


def test_a_core_under_min_core_density_of_its_component_does_not_save_it():
    classes = np.zeros((60, 60, 60), np.uint8)
    classes[5:20, 5:20, 5:20] = 2  # the lesion: 3,375 voxels ...
    classes[8:16, 8:16, 8:16] = 1  # ... whose core is 512 of them, 15 %
    classes[25:55, 25:55, 25:55] = 2  # false oedema, 27,000 voxels ...
    classes[40:46, 40:46, 40:46] = 3  # ... with 216 voxels of core: 42 % of the lesion's core, 0.8 % of its own
    rules = Postprocessing(min_component_fraction=0, min_et_voxels=0, min_core_density=0.02)
    out = postprocess(classes, rules)
    assert not out[25:55, 25:55, 25:55].any() and (out[5:20, 5:20, 5:20] == classes[5:20, 5:20, 5:20]).all()
    assert (postprocess(classes, replace(rules, min_core_density=0)) == classes).all()
    sparse = np.where(classes[..., :] == 1, np.uint8(2), classes)
    sparse[8:10, 8:10, 8:10] = 1  # no component reaches the density: the rule does nothing
    assert (postprocess(sparse, rules) == sparse).all()
    with pytest.raises(ValueError, match="min_core_density"):
        Postprocessing(min_core_density=-0.1)


def test_the_credible_core_licence_spares_a_tumour_without_enhancement_from_spots_and_specks():
    classes = np.zeros((60, 60, 60), np.uint8)
    classes[5:35, 5:35, 5:35] = 2  # a tumour without enhancement, read as oedema: 27,000 voxels, no core
    classes[40:50, 40:50, 40:50] = 3  # an enhancing spot with no oedema around it (choroid plexus): 1,000 voxels
    coreless = Postprocessing(min_component_fraction=0, min_et_voxels=0)
    licensed = Postprocessing(min_component_fraction=0, min_et_voxels=0, min_credible_core=200, max_core_share=0.6)
    assert not postprocess(classes, coreless)[5:35, 5:35, 5:35].any()  # today's rule: the spot removes the tumour
    assert (postprocess(classes, licensed) == classes).all()  # core share 1.0 > 0.6: no licence, nothing goes
    speck = classes.copy()
    speck[40:50, 40:50, 40:50] = 0
    speck[52:58, 52:58, 52:58] = 2  # false oedema ...
    speck[54:56, 54:56, 54:56] = 3  # ... with 8 voxels of core: under 200, no licence
    assert not postprocess(speck, coreless)[5:35, 5:35, 5:35].any()
    assert (postprocess(speck, licensed) == speck).all()
    glioma = classes.copy()
    glioma[38:56, 38:56, 38:56] = 2  # the spot now sits in oedema: 5,832 voxels, core share 0.17
    glioma[40:50, 40:50, 40:50] = 3
    out = postprocess(glioma, licensed)  # a credible core: the rule applies as today
    assert not out[5:35, 5:35, 5:35].any() and (out[38:56, 38:56, 38:56] == glioma[38:56, 38:56, 38:56]).all()
    with pytest.raises(ValueError, match="max_core_share"):
        Postprocessing(max_core_share=1.2)
    with pytest.raises(ValueError, match="min_credible_core"):
        Postprocessing(min_credible_core=-1)


def _brain_box() -> np.ndarray:
    """Inputs of a 40^3 box: a brain (nonzero in some channel) in [3:37]^3 with a zero cavity inside."""
    inputs = np.zeros((3, 40, 40, 40), np.float32)
    inputs[0, 3:37, 3:37, 3:37] = 1.0
    inputs[0, 18:22, 18:22, 18:22] = 0.0  # a cavity zero in every channel, enclosed by the brain
    inputs[2, 10:12, 10:12, 10:12] = -0.5  # another channel alone counts as brain too
    return inputs


def test_the_largest_removed_and_kept_components_are_counted_so_qa_can_flag_a_lost_tumour():
    classes = np.zeros((60, 60, 60), np.uint8)
    classes[5:15, 5:15, 5:15] = 2  # a false spot of oedema ...
    classes[8:12, 8:12, 8:12] = 3  # ... with enhancement: 1000 voxels
    classes[25:55, 25:55, 25:55] = 2  # a tumour without enhancement, its core read as oedema: 27000 voxels
    out = postprocess(classes, Postprocessing(min_et_voxels=0))
    assert not out[25:55, 25:55, 25:55].any()  # the coreless rule removed the tumour
    assert largest_removed_and_kept(classes, out) == (27000, 1000)
    assert largest_removed_and_kept(classes, classes) == (0, 27000)  # nothing removed
    assert largest_removed_and_kept(np.zeros_like(classes), np.zeros_like(classes)) == (0, 0)
    brain = np.zeros((3, 60, 60, 60), np.float32)
    brain[0, :20, :20, :20] = 1.0  # the large component lies outside the brain: another rule's business
    assert largest_removed_and_kept(classes, out, brain) == (0, 1000)


def test_the_most_et_a_removed_component_held_is_counted_so_qa_can_flag_a_removed_tumour():
    classes = np.zeros((60, 60, 60), np.uint8)
    classes[5:15, 5:15, 5:15] = 3  # the tumour: 1000 voxels, all enhancing
    classes[20:60, 20:60, 20:60] = 2  # a false blob of oedema, 64 times as large ...
    classes[30:33, 30:33, 30:33] = 1  # ... with a speck of core (27 voxels), so the coreless rule keeps it
    classes[40, 40, 40] = 3  # and one ET voxel
    out = postprocess(classes, Postprocessing(min_et_voxels=0))
    assert not out[5:15, 5:15, 5:15].any()  # the size rule removed the tumour
    assert largest_removed_and_kept(classes, out, counted=classes == 3) == (1000, 1)
    assert largest_removed_and_kept(classes, classes, counted=classes == 3) == (0, 1000)


def test_labels_outside_the_brain_become_background_and_enclosed_cavities_stay():
    classes = _case()
    classes[0:3, :, :] = 2  # painted on the zero background beside the brain
    classes[18:22, 18:22, 18:22] = 3  # the cavity inside the brain keeps its label
    out = postprocess(classes, Postprocessing(min_component_fraction=0, drop_coreless=False), _brain_box())
    assert not out[0:3].any()
    assert (out[18:22, 18:22, 18:22] == 3).all()
    assert (out[3:37, 3:37, 3:37] == classes[3:37, 3:37, 3:37]).all()  # inside the brain: untouched
    assert out[0:3].sum() == 0 and classes[0:3].any()  # the input is not modified
    # Without the box, or with the rule off, the background keeps its labels.
    assert (postprocess(classes, Postprocessing(min_component_fraction=0, drop_coreless=False))[0:3] == 2).all()
    off = Postprocessing(min_component_fraction=0, drop_coreless=False, clear_outside_brain=False)
    assert (postprocess(classes, off, _brain_box())[0:3] == 2).all()
    assert (postprocess(classes, Postprocessing.none(), _brain_box()) == classes).all()


def test_the_outside_is_cleared_before_the_component_rules():
    # A blob of oedema wholly outside the brain is larger than the tumour: cleared first, it cannot make
    # the true lesion "small" and remove it.
    classes = np.zeros((40, 40, 40), np.uint8)
    classes[10:16, 10:16, 10:16] = 2
    classes[12:14, 12:14, 12:14] = 1
    classes[:, :, 37:40] = 2  # 4800 voxels outside the brain, touching no lesion
    inputs = np.zeros((3, 40, 40, 40), np.float32)
    inputs[1, 2:36, 2:36, 2:36] = 3.0
    assert not postprocess(classes, Postprocessing(drop_coreless=False))[10:16, 10:16, 10:16].any()  # the trap
    out = postprocess(classes, Postprocessing(drop_coreless=False), inputs)
    assert not out[:, :, 37:].any()
    assert (out[10:16, 10:16, 10:16] > 0).all()


def test_inputs_of_another_shape_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        postprocess(_case(), Postprocessing(), np.ones((3, 20, 20, 20), np.float32))


def test_a_box_without_zeros_leaves_the_labels_alone():
    classes = _case()
    inputs = np.ones((3, 40, 40, 40), np.float32)  # not skull-stripped, or normalised without zeros
    assert (postprocess(classes, Postprocessing.none(), inputs) == classes).all()
    assert (postprocess(classes, Postprocessing(), inputs) == postprocess(classes, Postprocessing())).all()


def test_drift_scores_the_labels_with_the_outside_cleared():
    from latup_edge.data.preprocess import Crop
    from latup_edge.evaluate.drift import PreparedCase
    from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, delivered_labels

    inputs = _brain_box()[None]
    case = PreparedCase("a", inputs, Crop((40, 40, 40), (0, 0, 0), (40, 40, 40)), None, (1.0, 1.0, 1.0))
    classes = _case()
    classes[0:3] = 2
    placed = case.placed(classes, delivered_labels(DEFAULT_POSTPROCESSING))
    assert not placed[0:3].any() and (placed[12:18, 12:18, 12:18] == 3).all()
    assert (case.placed(classes)[0:3] == 2).all()  # the argmax as it is


def test_et_dim_on_t1ce_becomes_necrosis_and_bright_et_stays():
    classes = _case()
    classes[30:38, 30:38, 30:38] = 3  # a second ET component, where T1ce is no brighter than the brain
    inputs = np.zeros((3, 40, 40, 40), np.float32)
    inputs[:, 2:39, 2:39, 2:39] = np.random.default_rng(0).normal(100, 10, (3, 37, 37, 37))  # the brain
    inputs[1, 12:18, 12:18, 12:18] += 60  # the lesion's ET enhances: bright on T1ce (channel 1)
    rules = Postprocessing(
        min_component_fraction=0,
        min_et_voxels=0,
        drop_coreless=False,
        min_et_t1ce_percentile=95,
        min_et_voxel_t1ce_percentile=0,  # the component rule alone
    )
    out = postprocess(classes, rules, inputs)
    assert (out[12:18, 12:18, 12:18] == 3).all() and (out[30:38, 30:38, 30:38] == 1).all()
    assert ((out > 0) == (classes > 0)).all() and np.isin(out[classes == 1], 1).all()  # WT and TC unchanged
    brain = inputs[1][inputs[1] != 0]
    clipped = inputs.copy()  # the normalisation clips the brain at its 99.5th percentile: ranks below it survive
    clipped[1] = np.where(inputs[1] != 0, np.clip(inputs[1], None, np.percentile(brain, 99.5)), 0)
    np.testing.assert_array_equal(postprocess(classes, rules, clipped), out)
    np.testing.assert_array_equal(postprocess(classes, replace(rules, min_et_t1ce_percentile=0), inputs), classes)
    np.testing.assert_array_equal(postprocess(classes, rules), classes)  # without the inputs, skipped
    for wrong in (-1, 99.5):
        with pytest.raises(ValueError, match="min_et_t1ce_percentile"):
            Postprocessing(min_et_t1ce_percentile=wrong)


def test_et_voxels_dim_on_t1ce_become_necrosis_after_the_component_rule():
    classes = _case()
    inputs = np.zeros((3, 40, 40, 40), np.float32)
    inputs[:, 2:39, 2:39, 2:39] = np.random.default_rng(0).normal(100, 10, (3, 37, 37, 37))  # the brain
    inputs[1, 12:18, 12:18, 12:18] += 60  # the ET enhances on T1ce (channel 1) ...
    inputs[1, 12:18, 12:18, 12] -= 60  # ... but for its dim edge
    rules = Postprocessing(
        min_component_fraction=0, min_et_voxels=0, drop_coreless=False, min_et_voxel_t1ce_percentile=75
    )
    out = postprocess(classes, rules, inputs)
    assert (out[12:18, 12:18, 13:18] == 3).all()
    assert (out[12:18, 12:18, 12] == 1).mean() > 0.5  # most of the dim edge is necrosis now
    assert ((out > 0) == (classes > 0)).all() and np.isin(out[classes == 1], 1).all()  # WT and TC unchanged
    np.testing.assert_array_equal(postprocess(classes, rules), classes)  # without the inputs, skipped
    for wrong in (-1, 99.5):
        with pytest.raises(ValueError, match="min_et_voxel_t1ce_percentile"):
            Postprocessing(min_et_voxel_t1ce_percentile=wrong)
