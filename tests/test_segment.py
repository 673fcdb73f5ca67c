"""`latup-edge segment`: outputs on the input grid, label conventions, bad cases, atomic and resumable
runs, the run log, and the three backends agreeing."""

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BRAIN, narrow_network
from synthetic_head import clinic_images, head_image, motion, write_nifti_case
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.data.cases import discover_cases, load_case_images
from latup_edge.data.naming import case_filename
from latup_edge.deploy.compile import compile_bundle
from latup_edge.deploy.export import export_onnx
from latup_edge.errors import LatupError
from latup_edge.models.checkpoint import save_checkpoint
from latup_edge.runtime import bundle as bundle_module
from latup_edge.runtime import predictor as predictor_module
from latup_edge.runtime.backends import BackendError, open_backend
from latup_edge.runtime.bundle import Bundle, shipped_bundle
from latup_edge.runtime.openvino_backend import OpenVINOModel
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing
from latup_edge.runtime.segment import SegmentError, SegmentSettings, output_convention, segment_cases
from latup_edge.runtime.volume import predict_classes

runner = CliRunner()
SHAPE = (40, 44, 36)
# BraTS's 1 mm LPS grid, offset: segmented as it is (scans of other geometry: tests/test_study.py).
AFFINE = np.array([[-1.0, 0, 0, 30.5], [0, -1.0, 0, 201.0], [0, 0, 1.0, -33.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_checkpoint(narrow_network(), tmp_path_factory.mktemp("weights") / "narrow")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """An fp32 bundle of the narrow network, with its ONNX, and an "int8" that is the float model:
    it runs no INT8 kernels, so the bundle marks it not eligible (a precision that failed its gate)."""
    root = tmp_path_factory.mktemp("bundle")
    onnx = export_onnx(narrow_network(), root / "narrow.onnx")
    return compile_bundle(onnx, onnx, root / "bundle", include_onnx=True, probe_shape=(1, 3, 16, 16, 16), repeats=1)


@pytest.fixture(scope="module")
def brain_weights(tmp_path_factory) -> Path:
    return save_checkpoint(narrow_network(BRAIN), tmp_path_factory.mktemp("weights") / "brain")


@pytest.fixture(scope="module")
def brain_bundle(tmp_path_factory) -> Path:
    """An fp32 bundle (with its ONNX) of the narrow network with brain statistics and z-scores."""
    root = tmp_path_factory.mktemp("brain-bundle")
    onnx = export_onnx(narrow_network(BRAIN), root / "brain.onnx")
    return compile_bundle(onnx, None, root / "bundle", include_onnx=True, probe_shape=(1, 3, 16, 16, 16), repeats=1)


def write_case(root: Path, case_id: str, naming: str = "2021", seed: int = 0, seg: bool = True) -> Path:
    """A small BraTS-ready case (40x44x36, offset grid): a noisy brain with a bright lesion, and a label map."""
    folder = root / case_id
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    brain = np.zeros(SHAPE, bool)
    brain[4:36, 5:40, 3:33] = True
    for key in ("t1", "t1ce", "t2", "flair"):
        data = np.where(brain, rng.normal(300, 60, SHAPE), 0).astype(np.float32)
        data[14:26, 12:26, 10:22] += 500
        image = nib.Nifti1Image(data, AFFINE)
        image.set_qform(AFFINE, code=1)
        nib.save(image, folder / case_filename(case_id, key, naming))
    if seg:
        labels = np.zeros(SHAPE, np.uint8)
        labels[14:26, 12:26, 10:22] = 2
        labels[17:23, 15:23, 13:19] = 4 if naming != "2023" else 3
        nib.save(nib.Nifti1Image(labels, AFFINE), folder / case_filename(case_id, "seg", naming))
    return folder


def hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def squeeze(text: str) -> str:
    """Text without whitespace: rich wraps long lines (and paths) at the terminal width."""
    return "".join(text.split())


def segment(*args: str):
    return runner.invoke(app, ["segment", *map(str, args)])


def test_label_maps_sit_on_the_input_grid_in_each_cases_convention(bundle, tmp_path):
    data = tmp_path / "data"
    write_case(data, "BraTS2021_00001", "2021", seed=1)
    write_case(data, "BraTS-GLI-00002-000", "2023", seed=2)
    before = hashes(data)
    out = tmp_path / "out"
    # The raw argmax, so that labels and probabilities can be compared voxel by voxel.
    result = segment(data, "-o", out, "--bundle", bundle, "--probabilities", "--no-postprocess", "--json")
    assert result.exit_code == 0, result.output
    assert hashes(data) == before  # inputs are only read

    log = json.loads(result.stdout)
    assert log == json.loads((out / "segment-log.json").read_text())
    assert log["summary"] == {"ok": 2, "failed": 0, "skipped": 0} and log["finished"]
    assert log["postprocessing"] == {
        "min_et_voxels": 0,
        "min_component_fraction": 0.0,
        "drop_coreless": False,
        "min_core_fraction": 0.0,
        "clear_outside_brain": False,
        "min_credible_core": 0,
        "max_core_share": 1.0,
        "min_core_density": 0.0,
        "rules_see_core": True,
        "min_et_t1ce_percentile": 0.0,
        "min_et_voxel_t1ce_percentile": 0.0,
    }
    assert log["backend"]["name"] == "openvino" and log["backend"]["precision"] == "fp32"
    assert {"threads", "streams", "precision"} <= log["backend"]["resolved"].keys()
    for entry in log["cases"]:
        assert entry["status"] == "ok" and entry["error"] is None
        seconds = entry["seconds"]
        assert set(seconds) == {"load", "infer", "pre", "network", "post", "write"} and entry["process_peak_rss_mb"] > 0
        assert seconds["pre"] + seconds["network"] + seconds["post"] <= seconds["infer"] + 0.01
    assert {entry["case_id"]: entry["labels"] for entry in log["cases"]} == {
        "BraTS2021_00001": "2021",
        "BraTS-GLI-00002-000": "2023",
    }

    for case in discover_cases(data):
        reference = nib.load(case.files["flair"])
        output = nib.load(out / f"{case.case_id}.nii.gz")
        assert output.shape == reference.shape and output.get_data_dtype() == np.uint8
        np.testing.assert_allclose(output.affine, reference.affine, atol=1e-5)
        np.testing.assert_allclose(output.header.get_zooms(), reference.header.get_zooms())
        assert int(output.header["qform_code"]) == int(reference.header["qform_code"])
        values = set(np.unique(np.asanyarray(output.dataobj)).tolist())
        assert values <= ({0, 1, 2, 4} if case.naming == "2021" else {0, 1, 2, 3}) and len(values) > 1

        probabilities = nib.load(out / f"{case.case_id}_probabilities.nii.gz")
        assert probabilities.shape == (*reference.shape, 4) and probabilities.get_data_dtype() == np.float32
        np.testing.assert_allclose(probabilities.affine, reference.affine, atol=1e-5)
        p = probabilities.get_fdata(dtype=np.float32)
        np.testing.assert_allclose(p.sum(axis=-1), 1, rtol=1e-4)
        classes = np.argmax(p, axis=-1)
        labels = np.asanyarray(output.dataobj)
        # A random network's near-equal logits can tie after the float32 softmax: a few voxels may differ.
        assert (np.where(classes == 3, 4 if case.naming == "2021" else 3, classes) == labels).mean() > 0.999


def test_labels_option_converts_et_between_conventions(bundle, tmp_path):
    data = tmp_path / "data"
    write_case(data, "BraTS2021_00003", "2021", seed=3)
    maps = {}
    for convention in ("2021", "2023", "nnunet"):
        out = tmp_path / convention
        # The network's own labels: the T1ce rule may turn this phantom's ET into necrosis, leaving none to convert.
        result = segment(data, "-o", out, "--bundle", bundle, "--labels", convention, "--no-postprocess")
        assert result.exit_code == 0, result.output
        maps[convention] = np.asanyarray(nib.load(out / "BraTS2021_00003.nii.gz").dataobj)
    assert 4 in maps["2021"] and 3 not in maps["2021"]
    np.testing.assert_array_equal(np.where(maps["2021"] == 4, 3, maps["2021"]), maps["2023"])
    # nnU-Net's BraTS order stores oedema as 1 and necrosis as 2.
    np.testing.assert_array_equal(np.array([0, 2, 1, 0, 3])[maps["2021"]], maps["nnunet"])


def test_a_case_without_labels_follows_its_naming(tmp_path):
    write_case(tmp_path, "BraTS-GLI-00009-000", "2023", seg=False)
    write_case(tmp_path, "BraTS2021_00009", "2021", seg=False)
    write_case(tmp_path, "BraTS2021_00010", "2021", seed=4)
    write_case(tmp_path, "BraTS_00011", "nnunet", seg=False)  # nnU-Net's BraTS order: 1 oedema, 2 necrosis
    conventions = {case.case_id: output_convention(case) for case in discover_cases(tmp_path)}
    assert conventions == {
        "BraTS-GLI-00009-000": "2023",
        "BraTS2021_00009": "2021",
        "BraTS2021_00010": "2021",
        "BraTS_00011": "nnunet",
    }


def test_the_real_phantom_grid_is_kept(bundle, two_phantoms, tmp_path):
    case = discover_cases(two_phantoms)[0]
    result = segment(case.folder, "-o", tmp_path, "--bundle", bundle)
    assert result.exit_code == 0, result.output
    reference, output = nib.load(case.files["flair"]), nib.load(tmp_path / f"{case.case_id}.nii.gz")
    assert output.shape == reference.shape == (240, 240, 155)
    np.testing.assert_array_equal(output.affine, reference.affine)
    assert output.header.get_zooms() == reference.header.get_zooms()


def test_bad_cases_are_reported_in_one_sentence_and_the_batch_goes_on(bundle, tmp_path):
    data = tmp_path / "data"
    write_case(data, "BraTS2021_00001", seed=1)
    (write_case(data, "BraTS2021_00002", seed=2) / "BraTS2021_00002_t2.nii.gz").unlink()  # missing modality
    mismatched = write_case(data, "BraTS2021_00003", seed=3) / "BraTS2021_00003_t1ce.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((40, 44, 30), np.float32), AFFINE), mismatched)
    truncated = write_case(data, "BraTS2021_00004", seed=4) / "BraTS2021_00004_flair.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    write_case(data, "BraTS2021_00005", seed=5)
    out = tmp_path / "out"

    result = segment(data, "-o", out, "--bundle", bundle)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["BraTS2021_00001.nii.gz", "BraTS2021_00005.nii.gz"]
    failures = json.loads((out / "segment-log.json").read_text())["failures"]
    assert set(failures) == {"BraTS2021_00002", "BraTS2021_00003", "BraTS2021_00004"}
    assert "t2 missing" in failures["BraTS2021_00002"]
    # Off BraTS's grid, so checked before resampling: too small to hold a brain.
    assert "BraTS2021_00003" in failures["BraTS2021_00003"] and "covers only" in failures["BraTS2021_00003"]
    assert "BraTS2021_00004_flair.nii.gz" in failures["BraTS2021_00004"]
    for message in failures.values():
        assert "\n" not in message and message.startswith("case BraTS2021_0000")
        assert squeeze(message) in squeeze(result.stderr)  # the end lists each failure


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_an_unwritable_output_folder_fails_before_any_work(bundle, tmp_path, where):
    data = tmp_path / "data"
    write_case(data, "BraTS2021_00001")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "out"
    result = segment(data, "-o", out, "--bundle", bundle)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert squeeze(f"output folder {out}") in squeeze(result.stderr) and "chooseafolder" in squeeze(result.stderr)
    assert blocker.read_text() == "not a folder"


def test_without_bundle_segment_runs_the_shipped_one(tmp_path):
    write_case(tmp_path / "data", "BraTS2021_00001")
    result = segment(tmp_path / "data", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    log = json.loads((tmp_path / "out" / "segment-log.json").read_text())
    assert Path(log["bundle"]["path"]) == shipped_bundle() and log["backend"]["precision"] == "int8"


def test_an_install_without_a_shipped_bundle_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module, "shipped_bundle", lambda: None)
    write_case(tmp_path / "data", "BraTS2021_00001")
    result = segment(tmp_path / "data", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "--bundle" in result.stderr and "latup-edgebuild" in squeeze(result.stderr)


def test_a_precision_that_failed_its_gate_runs_only_when_allowed(bundle, tmp_path):
    write_case(tmp_path / "data", "BraTS2021_00001")
    refused = segment(tmp_path / "data", "-o", tmp_path / "a", "--bundle", bundle, "--precision", "int8")
    assert refused.exit_code == 1 and "notapproved" in squeeze(refused.stderr)
    assert not list((tmp_path / "a").glob("*.nii.gz"))
    allowed = segment(
        tmp_path / "data", "-o", tmp_path / "b", "--bundle", bundle, "--precision", "int8", "--allow-failed-precision"
    )
    assert allowed.exit_code == 0, allowed.output
    assert "Warning:" in allowed.stderr and "int8" in allowed.stderr
    log = json.loads((tmp_path / "b" / "segment-log.json").read_text())
    assert log["backend"]["precision"] == "int8" and log["warnings"]


def test_skip_existing_resumes_a_run(bundle, tmp_path):
    data = tmp_path / "data"
    write_case(data, "BraTS2021_00001", seed=1)
    out = tmp_path / "out"
    assert segment(data, "-o", out, "--bundle", bundle).exit_code == 0
    first = out / "BraTS2021_00001.nii.gz"
    written = first.stat().st_mtime_ns
    write_case(data, "BraTS2021_00002", seed=2)
    log_path = tmp_path / "logs" / "resume.json"
    result = segment(data, "-o", out, "--bundle", bundle, "--skip-existing", "--log", log_path)
    assert result.exit_code == 0, result.output
    assert first.stat().st_mtime_ns == written and (out / "BraTS2021_00002.nii.gz").is_file()
    statuses = {entry["case_id"]: entry["status"] for entry in json.loads(log_path.read_text())["cases"]}
    assert statuses == {"BraTS2021_00001": "skipped", "BraTS2021_00002": "ok"}


def test_a_killed_run_leaves_only_complete_files_and_resumes(bundle, tmp_path):
    data = tmp_path / "data"
    for index in range(6):
        write_case(data, f"BraTS2021_{index:05d}", seed=index)
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from latup_edge.cli import main; main()", "segment", str(data), "-o", str(out)]
    command += ["--bundle", str(bundle), "--probabilities"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # The label map is a case's last file: once the first one exists, kill during the cases after it.
    while not (out / "BraTS2021_00000.nii.gz").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible, "the run was killed before it wrote anything"
    for name in visible:
        if name.endswith(".nii.gz"):
            image = nib.load(out / name)
            assert np.asanyarray(image.dataobj).shape == image.shape  # reads the whole file
        else:
            assert name in ("segment-log.json", "volumes.csv")
            assert name == "volumes.csv" or json.loads((out / name).read_text())
    # What else may be left is a killed write's temporary file, hidden (".<8 hex>.<name>"): discovery skips it.
    temporary = re.compile(r"\.[0-9a-f]{8}\.(BraTS2021_\d{5}(_probabilities)?\.nii\.gz|segment-log\.json|volumes\.csv)")
    assert all(temporary.fullmatch(p.name) for p in out.iterdir() if p.name.startswith("."))

    result = segment(data, "-o", out, "--bundle", bundle, "--probabilities", "--skip-existing")
    assert result.exit_code == 0, result.output
    log = json.loads((out / "segment-log.json").read_text())
    assert log["summary"]["ok"] + log["summary"]["skipped"] == 6 and log["summary"]["skipped"] >= 1
    assert len([p for p in out.glob("BraTS*.nii.gz")]) == 12


def test_duplicate_case_ids_fail_instead_of_overwriting(bundle, tmp_path):
    write_case(tmp_path / "a", "BraTS2021_00001", seed=1)
    write_case(tmp_path / "b", "BraTS2021_00001", seed=2)
    log = segment_cases([tmp_path / "a", tmp_path / "b"], tmp_path / "out", SegmentSettings(bundle=bundle))
    assert [entry["status"] for entry in log["cases"]] == ["ok", "failed"]
    assert "separate output folders" in log["failures"]["BraTS2021_00001"]


@pytest.mark.parametrize("statistics", ["volume", "brain"])
def test_torch_and_onnxruntime_agree_with_openvino_fp32(statistics, request, tmp_path):
    bundle = request.getfixturevalue("bundle" if statistics == "volume" else "brain_bundle")
    weights = request.getfixturevalue("weights" if statistics == "volume" else "brain_weights")
    write_case(tmp_path / "data", "BraTS2021_00001", seed=7)
    maps = {}
    for backend in ("openvino", "onnxruntime", "torch"):
        settings = SegmentSettings(
            backend=backend, precision="fp32", bundle=None if backend == "torch" else bundle,
            weights=weights if backend == "torch" else None, threads=1,
        )  # fmt: skip
        log = segment_cases([tmp_path / "data"], tmp_path / backend, settings)
        assert log["summary"]["ok"] == 1 and log["backend"]["resolved"]["threads"] == 1
        maps[backend] = np.asanyarray(nib.load(tmp_path / backend / "BraTS2021_00001.nii.gz").dataobj)
    assert len(np.unique(maps["openvino"])) > 1
    for backend in ("onnxruntime", "torch"):
        assert (maps[backend] == maps["openvino"]).mean() > 0.999


def test_segment_normalises_as_the_bundles_model_was_trained(brain_bundle, tmp_path):
    case = discover_cases(write_case(tmp_path / "data", "BraTS2021_00001", seed=5))[0]
    log = segment_cases([tmp_path / "data"], tmp_path / "out", SegmentSettings(bundle=brain_bundle, threads=1))
    assert log["summary"]["ok"] == 1 and log["backend"]["normalization"] == "zscore-brain"
    assert [step["step"] for step in log["cases"][0]["geometry"]] == ["none"]  # BraTS-ready: nothing resampled
    written = np.asanyarray(nib.load(tmp_path / "out" / "BraTS2021_00001.nii.gz").dataobj)
    images = load_case_images(case)[0]
    model = OpenVINOModel(brain_bundle / "fp32.xml", "fp32", threads=1)
    expected = predict_classes(images, model, normalization="zscore-brain")
    np.testing.assert_array_equal(written, np.where(expected == 3, 4, expected))
    assert (predict_classes(images, model, normalization="minmax") != expected).any()


def test_onnxruntime_needs_the_bundles_onnx_file(tmp_path):
    bundle = Bundle(tmp_path, {"files": {"fp32.xml": {}}, "precisions": {}, "default_precision": "fp32"})
    with pytest.raises(BackendError, match="no fp32.onnx"):
        open_backend("onnxruntime", None, bundle, None)
    with pytest.raises(BackendError, match="fp32 only"):
        open_backend("onnxruntime", "int8", bundle, None)


def test_torch_backend_without_torch_says_so_in_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what a runtime-only install looks like to import
    with pytest.raises(BackendError, match="needs PyTorch"):
        open_backend("torch", "fp32", None, None)


def test_sliding_windows_run_through_segment(bundle, tmp_path):
    write_case(tmp_path / "data", "BraTS2021_00001", seed=1)
    settings = SegmentSettings(bundle=bundle, tiling="sliding", window=32, overlap=0.5)
    log = segment_cases([tmp_path / "data"], tmp_path / "out", settings)
    assert log["summary"]["ok"] == 1 and log["settings"]["tiling"] == "sliding"
    assert nib.load(tmp_path / "out" / "BraTS2021_00001.nii.gz").shape == SHAPE


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--overlap", "1.0", "overlap"),
        ("--threads", "0", "threads"),
        ("--window", "0", "positive multiple of 8"),
        ("--window", "-8", "positive multiple of 8"),
        ("--window", "100", "positive multiple of 8"),
    ],
)
def test_bad_settings_fail_in_one_sentence(tmp_path, option, value, message):
    write_case(tmp_path / "data", "BraTS2021_00001")
    result = segment(tmp_path / "data", "-o", tmp_path / "out", option, value)
    assert result.exit_code == 1 and squeeze(message) in squeeze(result.stderr) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("window", [0, -8])
def test_the_library_refuses_a_window_that_is_not_positive(window):
    with pytest.raises(SegmentError, match="positive multiple of 8"):
        SegmentSettings(window=window)


def test_a_user_error_in_one_case_is_its_sentence_and_the_batch_goes_on(bundle, tmp_path, monkeypatch):
    write_case(tmp_path / "data", "BraTS2021_00001", seed=1)
    write_case(tmp_path / "data", "BraTS2021_00002", seed=2)
    predict = predictor_module.predict_volume

    def refuse_the_first(images, *args, **kwargs):
        if not calls:
            calls.append(1)
            raise LatupError("this case cannot be predicted: fix it")
        return predict(images, *args, **kwargs)

    calls: list[int] = []
    monkeypatch.setattr(predictor_module, "predict_volume", refuse_the_first)
    log = segment_cases([tmp_path / "data"], tmp_path / "out", SegmentSettings(bundle=bundle))
    assert log["summary"] == {"ok": 1, "failed": 1, "skipped": 0}
    assert log["failures"] == {"BraTS2021_00001": "case BraTS2021_00001: this case cannot be predicted: fix it"}


def test_a_bug_inside_a_case_is_not_a_case_failure_but_an_unexpected_error(bundle, tmp_path, monkeypatch):
    write_case(tmp_path / "data", "BraTS2021_00001")

    def buggy(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(predictor_module, "predict_volume", buggy)
    with pytest.raises(ValueError, match="broadcast"):
        segment_cases([tmp_path / "data"], tmp_path / "out", SegmentSettings(bundle=bundle))
    result = segment(tmp_path / "data", "-o", tmp_path / "cli", "--bundle", bundle)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert squeeze("unexpected ValueError: operands could not be broadcast") in squeeze(result.stderr)
    assert "--verbose" in result.stderr


def test_the_next_case_is_read_and_the_previous_written_while_the_network_runs(bundle, tmp_path, monkeypatch):
    from latup_edge.runtime import segment as segment_module

    for index in (1, 2, 3):
        write_case(tmp_path / "data", f"BraTS2021_0000{index}", seed=index)
    started_reading: dict[str, threading.Event] = {f"BraTS2021_0000{i}": threading.Event() for i in (1, 2, 3)}
    load, predict = segment_module.load_scan, predictor_module.predict_volume
    predicted: list[int] = []

    def recorded_load(case, modalities, rules=None):
        started_reading[case.case_id].set()
        return load(case, modalities, rules)

    def predict_while_the_next_is_read(images, *args, **kwargs):
        predicted.append(1)
        upcoming = f"BraTS2021_0000{len(predicted) + 1}"
        if upcoming in started_reading:  # the pipeline reads it on its own thread, now
            assert started_reading[upcoming].wait(timeout=30), f"{upcoming} was not read during the network"
        return predict(images, *args, **kwargs)

    def refuse_to_write_the_second(classes, reference, path, convention="2021"):
        if "00002" in str(path):
            raise OSError(28, "No space left on device")
        return save(classes, reference, path, convention)

    save = segment_module.save_label_map
    monkeypatch.setattr(segment_module, "load_scan", recorded_load)
    monkeypatch.setattr(predictor_module, "predict_volume", predict_while_the_next_is_read)
    monkeypatch.setattr(segment_module, "save_label_map", refuse_to_write_the_second)
    monkeypatch.setattr(segment_module, "exchange_check", lambda *args: None)  # one network pass a case
    log = segment_cases([tmp_path / "data"], tmp_path / "out", SegmentSettings(bundle=bundle))
    assert [entry["case_id"] for entry in log["cases"]] == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]
    assert log["summary"] == {"ok": 2, "failed": 1, "skipped": 0}
    assert "No space left on device" in log["failures"]["BraTS2021_00002"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "BraTS2021_00001.nii.gz",
        "BraTS2021_00003.nii.gz",
        "segment-log.json",
        "volumes.csv",
    ]  # no partial or temporary file of the failed write


def test_segment_post_processes_its_labels_by_default(bundle, tmp_path, monkeypatch):
    from latup_edge.runtime import segment as segment_module
    from latup_edge.runtime import volume

    write_case(tmp_path / "data", "BraTS2021_00001", seed=1)
    seen = []
    original = volume.delivered_classes
    monkeypatch.setattr(
        volume,
        "delivered_classes",
        lambda raw, rules, inputs, core=None: seen.append(rules) or original(raw, rules, inputs, core),
    )
    monkeypatch.setattr(segment_module, "exchange_check", lambda *args: None)  # its second passes post-process too
    log = segment_cases([tmp_path / "data"], tmp_path / "out", SegmentSettings(bundle=bundle))
    assert log["postprocessing"] == DEFAULT_POSTPROCESSING.to_dict()
    assert seen == [DEFAULT_POSTPROCESSING] and Postprocessing.none() != DEFAULT_POSTPROCESSING


def test_a_nifti_case_of_another_geometry_is_registered_and_labelled_on_its_reference_grid(bundle, tmp_path):
    write_nifti_case(tmp_path / "data", "BraTS2021_00020", clinic_images())
    out = tmp_path / "out"
    result = segment(tmp_path / "data", "-o", out, "--bundle", bundle)
    assert result.exit_code == 0, result.output
    reference = nib.load(tmp_path / "data" / "BraTS2021_00020" / "BraTS2021_00020_t1ce.nii.gz")
    output = nib.load(out / "BraTS2021_00020.nii.gz")
    assert output.shape == reference.shape and output.get_data_dtype() == np.uint8
    np.testing.assert_allclose(output.affine, reference.affine, atol=1e-5)
    entry = json.loads((out / "segment-log.json").read_text())["cases"][0]
    steps = [step["step"] for step in entry["geometry"]]
    assert steps.count("check") == 3 and steps.count("register") == 1 and steps[-1] == "labels to native grid"
    labels = np.asanyarray(output.dataobj)
    voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000
    assert entry["volumes_ml"]["WT"] == pytest.approx((labels > 0).sum() * voxel_ml, abs=0.01)
    with open(out / "volumes.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["case_id"], row["status"]) for row in rows] == [("BraTS2021_00020", "ok")]
    assert float(rows[0]["WT_ml"]) == pytest.approx(entry["volumes_ml"]["WT"], abs=0.01)
    assert rows[0]["flags"] == " | ".join(entry["flags"])  # a flag may hold "; " itself
    assert entry["qa"]["volumes_ml"] == entry["volumes_ml"] and 0 <= entry["qa"]["low_confidence_fraction"] <= 1


def test_a_dicom_study_is_segmented_into_nifti_and_a_dicom_seg_on_its_t1ce_series(bundle, tmp_path):
    from latup_edge.scans.dicom import find_series
    from latup_edge.scans.dicom_seg import read_dicom_seg
    from latup_edge.scans.dicom_write import StudyInfo, write_localizer, write_series

    study = StudyInfo.new(patient_id="P0007", seed=7)
    write_localizer(tmp_path / "scans" / "01_loc", study=study, series_number=1, seed=7)
    descriptions = {"t1ce": "AX T1 MPRAGE POST GD", "flair": "AX T2 FLAIR", "t2": "AX T2 TSE"}
    for number, (key, image) in enumerate(clinic_images().items(), start=2):
        write_series(image, tmp_path / "scans" / f"{number:02d}_{key}", description=descriptions[key],
                     series_number=number, study=study, seed=7)  # fmt: skip
    before = hashes(tmp_path / "scans")
    out = tmp_path / "out"
    result = segment(tmp_path / "scans", "-o", out, "--bundle", bundle, "--dicom-seg")
    assert result.exit_code == 0, result.output
    assert hashes(tmp_path / "scans") == before  # the scanner's files are never touched
    entry = json.loads((out / "segment-log.json").read_text())["cases"][0]
    case_id = entry["case_id"]
    assert case_id.startswith("P0007_")
    steps = entry["geometry"]
    assert [s["step"] for s in steps[:2]] == ["skip", "assign"] and "localizer" in steps[0]["reason"].lower()
    assert "AX T1 MPRAGE POST GD" in steps[1]["series"]["t1ce"]
    t1ce = next(s for s in find_series(tmp_path / "scans") if s.description == "AX T1 MPRAGE POST GD")
    labels = np.asanyarray(nib.load(out / f"{case_id}.nii.gz").dataobj)
    assert labels.shape == (t1ce.columns, t1ce.rows, t1ce.n_slices)
    seg = read_dicom_seg(out / f"{case_id}_seg.dcm", t1ce)
    np.testing.assert_array_equal(seg.transpose(2, 1, 0), np.where(labels == 4, 3, labels))


def test_audit_runs_fp32_on_every_kth_case_and_reports_its_agreement_beside_the_gate(bundle, tmp_path):
    for index in range(3):
        write_case(tmp_path / "data", f"BraTS2021_0003{index}", seed=index)
    out = tmp_path / "out"
    # The fixture's "int8" is the float model (it failed its gate): agreement with fp32 is exact.
    args = ("--bundle", bundle, "--precision", "int8", "--allow-failed-precision", "--audit", "2")
    result = segment(tmp_path / "data", "-o", out, *args)
    assert result.exit_code == 0, result.output
    assert "INT8 audit: 1 case(s) against fp32" in result.stdout and "audit cost" in result.stdout
    log = json.loads((out / "segment-log.json").read_text())
    audited = {entry["case_id"]: entry["audit"] for entry in log["cases"] if entry["audit"]}
    assert list(audited) == ["BraTS2021_00031"]  # the 2nd case of 3
    assert audited["BraTS2021_00031"]["agreement"] == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    assert audited["BraTS2021_00031"]["passed"] and audited["BraTS2021_00031"]["gate"] == 0.99
    summary = log["audit"]
    assert summary["cases"] == 1 and summary["passed"] and 0 < summary["fraction_of_run_time"] < 1
    with open(out / "volumes.csv", newline="") as file:
        rows = {row["case_id"]: row for row in csv.DictReader(file)}
    assert rows["BraTS2021_00031"]["audit_WT"] == "1" and rows["BraTS2021_00030"]["audit_WT"] == ""


def test_an_fp32_run_has_nothing_to_audit_and_says_so(bundle, tmp_path):
    write_case(tmp_path / "data", "BraTS2021_00040")
    log = segment_cases([tmp_path / "data"], tmp_path / "out", SegmentSettings(bundle=bundle, audit_every=1))
    assert log["trust"]["audit_note"].startswith("no audit: the run itself is fp32")
    assert "audit" not in log and log["cases"][0]["audit"] is None


def test_a_negative_audit_is_refused_before_any_work(tmp_path):
    with pytest.raises(SegmentError, match="--audit must be 0"):
        SegmentSettings(audit_every=-1)


def test_review_writes_the_runs_page(bundle, tmp_path):
    write_case(tmp_path / "data", "BraTS2021_00050")
    segment(tmp_path / "data", "-o", tmp_path / "out", "--bundle", bundle)
    result = runner.invoke(app, ["review", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    page = Path(json.loads(result.stdout)["page"])
    assert page == tmp_path / "out" / "review.html" and "BraTS2021_00050" in page.read_text()
    missing = runner.invoke(app, ["review", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1
    assert squeeze("segment-log.json not found: pass the output folder") in squeeze(missing.stderr)


def test_the_t1_t1ce_check_gets_the_cases_t1_and_a_second_pass_and_its_verdict_is_a_flag(bundle, tmp_path, monkeypatch):
    folder = write_case(tmp_path / "data", "BraTS2021_00050")
    t1_file = nib.load(folder / case_filename("BraTS2021_00050", "t1", "2021")).get_fdata(dtype=np.float32)
    seen = {}

    def spy(images, modalities, classes, t1, predict, voxel_ml, why_no_t1):
        seen["t1"], seen["second"] = t1, predict(images)
        return {"et_share": 0.0, "enhancement": -0.5, "et_ml": 0.1, "et_ml_with_t1_as_t1ce": 9.0, "swapped": True}

    monkeypatch.setattr("latup_edge.runtime.segment.t1ce_check", spy)
    result = segment(tmp_path / "data", "-o", tmp_path / "out", "--bundle", bundle, "--json")
    assert result.exit_code == 0, result.output
    log = json.loads(result.stdout)
    assert squeeze("case BraTS2021_00050: its T1 and T1ce files look swapped") in squeeze(result.stderr)
    np.testing.assert_array_equal(seen["t1"], t1_file)  # a BraTS-ready case's T1 file, as it is
    assert seen["second"].shape == t1_file.shape
    (entry,) = log["cases"]
    assert entry["status"] == "ok" and entry["t1ce_check"]["swapped"] and entry["t1ce_check"]["seconds"] >= 0
    assert any(flag.startswith("T1 and T1ce look swapped") for flag in entry["flags"])
    with open(tmp_path / "out" / "volumes.csv", newline="") as file:
        (row,) = csv.DictReader(file)
    assert "T1 and T1ce look swapped" in row["flags"]


def test_a_dicom_t1_is_told_by_its_contrast_agent_and_aligned_for_the_t1_t1ce_check(bundle, tmp_path, monkeypatch):
    from latup_edge.scans.dicom_write import StudyInfo, write_series

    study = StudyInfo.new(patient_id="P0008", seed=8)
    # T1 and T1ce share a name, as often before and after the injection: the scanner's contrast agent tells them apart.
    descriptions = {"t1ce": "t1_mprage_sag", "flair": "AX T2 FLAIR", "t2": "AX T2 TSE", "t1": "t1_mprage_sag"}
    images = clinic_images() | {"t1": head_image((1.0, 1.0, 2.0), moved=motion((-2.0, 3.0, 1.0), (-2.0, 1.0, 3.0)))}
    for number, (key, image) in enumerate(images.items(), start=2):
        write_series(image, tmp_path / "scans" / f"{number:02d}_{key}", description=descriptions[key],
                     series_number=number, study=study, seed=8,
                     contrast_agent="Gadovist" if key == "t1ce" else None)  # fmt: skip
    seen = {}

    def spy(images, modalities, classes, t1, predict, voxel_ml, why_no_t1):
        seen.update(t1=t1, grid=images.shape[1:], why=why_no_t1, t1ce=images[list(modalities).index("t1ce")])
        return {"enhancement": 0.3, "swapped": False}

    monkeypatch.setattr("latup_edge.runtime.segment.t1ce_check", spy)
    result = segment(tmp_path / "scans", "-o", tmp_path / "out", "--bundle", bundle, "--json")
    assert result.exit_code == 0, result.output
    assert seen["why"] is None and seen["t1"].shape == seen["grid"]
    lesion, t1ce_lesion = seen["t1"] > 650, seen["t1ce"] > 650  # aligned: the lesions overlap once motion is undone
    assert (lesion & t1ce_lesion).sum() / ((lesion.sum() + t1ce_lesion.sum()) / 2) > 0.9
    (entry,) = json.loads(result.stdout)["cases"]
    t1_steps = [step for step in entry["geometry"] if step.get("for") == "the swap checks"]
    assert [step["step"] for step in t1_steps] == ["register", "resample"] and "series 5 " in t1_steps[0]["series"]
    (assign,) = [step for step in entry["geometry"] if step["step"] == "assign"]
    assert assign["series"]["t1ce"].startswith("series 3 ") and "ContrastBolusAgent 'Gadovist'" in assign["t1ce_by"]
    assert entry["t1ce_check"] == {"enhancement": 0.3, "swapped": False, "seconds": entry["t1ce_check"]["seconds"]}


def test_a_case_without_a_t1_says_why_its_check_did_not_run(bundle, tmp_path, monkeypatch):
    from latup_edge.runtime import trust

    folder = write_case(tmp_path / "data", "BraTS2021_00060")
    (folder / case_filename("BraTS2021_00060", "t1", "2021")).unlink()
    seen = {}

    def spy(images, modalities, classes, t1, predict, voxel_ml, why_no_t1):
        seen.update(t1=t1, why=why_no_t1)
        return trust.t1ce_check(images, modalities, np.ones_like(classes), t1, predict, voxel_ml, why_no_t1)

    monkeypatch.setattr("latup_edge.runtime.segment.t1ce_check", spy)
    result = segment(tmp_path / "data", "-o", tmp_path / "out", "--bundle", bundle, "--json")
    assert result.exit_code == 0, result.output
    assert seen == {"t1": None, "why": "no T1 file"}
    (entry,) = json.loads(result.stdout)["cases"]
    assert entry["t1ce_check"]["note"] == "no T1 file: not checked"


def test_the_exchange_checks_get_the_cases_volumes_uncertainty_and_a_second_pass_and_warn(
    bundle, tmp_path, monkeypatch
):
    write_case(tmp_path / "data", "BraTS2021_00070")
    seen = {}

    def spy(name, volumes, modalities, classes, low_confidence, predict):
        seen[name] = sorted(volumes)
        if name != "flair_t1ce":
            return None
        seen.update(low=low_confidence, second=predict(np.stack([volumes["t1ce"], volumes["flair"], volumes["t2"]])))
        return {"correlation_gap": 0.4, "low_confidence": 0.02, "low_confidence_exchanged": 0.001, "swapped": True}

    monkeypatch.setattr("latup_edge.runtime.segment.exchange_check", spy)
    result = segment(tmp_path / "data", "-o", tmp_path / "out", "--bundle", bundle, "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["cases"]
    assert seen["low"] == entry["qa"]["low_confidence_fraction"] and seen["second"].classes.ndim == 3
    assert seen["t1_t2"] == seen["flair_t1"] == ["flair", "t1", "t1ce", "t2"]  # the T1 file too, on the grid
    assert list(entry["exchange_checks"]) == ["flair_t1ce"]
    assert entry["exchange_checks"]["flair_t1ce"]["swapped"] and entry["exchange_checks"]["flair_t1ce"]["seconds"] >= 0
    assert any(flag.startswith("FLAIR and T1ce look swapped: 2.00% of the tumour") for flag in entry["flags"])
    assert squeeze("case BraTS2021_00070: its FLAIR and T1ce files look swapped (2.00% of its tumour") in squeeze(
        result.stderr
    )
