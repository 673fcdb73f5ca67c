"""benchmarks/nnunet_layouts.py: each layout it writes holds the same images and the same truth as its source."""

import numpy as np
from conftest import benchmark_script
from test_cases import write_case

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels


def test_every_layout_reads_back_as_its_source(tmp_path):
    script = benchmark_script("nnunet_layouts")
    write_case(tmp_path / "brats" / "BraTS2021_00001", "BraTS2021_00001", "2021")
    (source,) = discover_cases(tmp_path / "brats")
    images, _ = load_case_images(source)
    truth, _ = load_case_labels(source)
    for name, (order, description) in script.LAYOUTS.items():
        (case,) = discover_cases(script.write_layout([source], tmp_path / name.replace(" ", "_"), order, description))
        assert case.naming == "nnunet" and load_case_labels(case)[1] == "nnunet"
        np.testing.assert_array_equal(load_case_labels(case)[0], truth)
        read, _ = load_case_images(case)
        same = np.array_equal(read, images)
        assert same == (description is not None or order == script.DATASET137_ORDER), name
