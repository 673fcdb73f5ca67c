"""benchmarks/region_composition.py: the whole tumour is one network's, its parts the other's."""

import numpy as np
from conftest import benchmark_script


def test_the_whole_tumour_is_a_and_its_core_and_enhancing_parts_are_b():
    script = benchmark_script("region_composition")
    whole = np.zeros((30, 30, 30), np.uint8)
    whole[5:25, 5:25, 5:25] = 2
    whole[10:14, 10:14, 10:14] = 3  # A's own core: B decides the parts, so it becomes ED where B sees none
    core = np.zeros_like(whole)
    core[15:22, 15:22, 15:22] = 3  # B's ET inside A's tumour: kept
    core[18:20, 18:20, 18:20] = 1
    core[0:4, 0:4, 0:4] = 3  # B's enhancement outside A's tumour: not a tumour
    composed = script.compose_regions(whole, core)
    np.testing.assert_array_equal(composed > 0, whole > 0)
    assert np.all(composed[10:14, 10:14, 10:14] == 2)
    np.testing.assert_array_equal(composed[15:22, 15:22, 15:22], core[15:22, 15:22, 15:22])
    assert np.all(composed[0:4, 0:4, 0:4] == 0)


def test_a_few_enhancing_voxels_become_necrosis_as_segment_writes_them():
    script = benchmark_script("region_composition")
    whole = np.zeros((30, 30, 30), np.uint8)
    whole[5:25, 5:25, 5:25] = 2
    core = np.zeros_like(whole)
    core[10:15, 10:15, 10:15] = 3  # 125 voxels: under the 200-voxel rule
    composed = script.compose_regions(whole, core)
    assert np.all(composed[10:15, 10:15, 10:15] == 1)
