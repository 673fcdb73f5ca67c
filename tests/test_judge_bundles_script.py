"""benchmarks/judge_bundles.py: each bundle scored on the labels segment writes, its poor cases listed."""

import shutil

import nibabel as nib
import numpy as np
from conftest import BRAIN, benchmark_script, narrow_network

from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.deploy.compile import compile_bundle
from latup_edge.deploy.export import export_onnx
from latup_edge.evaluate.metrics import region_metrics
from latup_edge.runtime.predictor import Predictor


def test_the_judge_scores_what_the_predictor_writes(two_phantoms, tmp_path):
    script = benchmark_script("judge_bundles")
    onnx = export_onnx(narrow_network(BRAIN), tmp_path / "brain.onnx")
    bundle = compile_bundle(onnx, None, tmp_path / "bundle", probe_shape=(1, 3, 16, 16, 16), repeats=1)
    result = script.judge([two_phantoms], [bundle])
    one = result["bundles"][str(bundle)]["sets"][str(two_phantoms)]
    case = discover_cases(two_phantoms)[0]
    images, reference = load_case_images(case)
    expected = region_metrics(Predictor.from_bundle(bundle).predict(images).classes, load_case_labels(case)[0])
    assert one["cases"][case.case_id]["ET"]["dice"] == expected["ET"]["dice"]
    assert one["cases_wt_below_0.7"] == sorted(c for c, m in one["cases"].items() if m["WT"]["dice"] < 0.7)
    assert len(one["cases"]) == 2


def test_a_case_segment_refuses_scores_as_the_empty_labels_it_gets(two_phantoms, tmp_path):
    script = benchmark_script("judge_bundles")
    folder = tmp_path / "cases"
    shutil.copytree(two_phantoms, folder)
    case = discover_cases(folder)[0]
    flair = nib.load(case.files["flair"])
    head = np.asarray(flair.dataobj, np.float32)
    head[head == 0] = np.random.default_rng(0).rayleigh(5.0, int((head == 0).sum()))  # a noise floor: no zeros
    nib.save(nib.Nifti1Image(head, flair.affine, flair.header), case.files["flair"])
    onnx = export_onnx(narrow_network(BRAIN), tmp_path / "brain.onnx")
    bundle = compile_bundle(onnx, None, tmp_path / "bundle", probe_shape=(1, 3, 16, 16, 16), repeats=1)
    one = script.judge([folder], [bundle])["bundles"][str(bundle)]["sets"][str(folder)]
    assert list(one["refused"]) == [case.case_id] and "not skull-stripped" in one["refused"][case.case_id]
    truth = load_case_labels(case)[0]
    assert one["cases"][case.case_id] == region_metrics(np.zeros_like(truth), truth)
    assert len(one["cases"]) == 2
