"""Calibration sets: sampling, determinism, exclusion, streaming reads, integrity, rebuilds, the CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from latup_edge.calibration.calibration_set import (
    CalibrationError,
    build_calibration_set,
    crop_around,
    read_calibration_set,
    read_recipe,
    rebuild_calibration_set,
)
from latup_edge.cli import app
from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.data.preprocess import Crop, apply_crop, normalize

REPOSITORY = Path(__file__).resolve().parents[1]
MINMAX = "minmax"


def coordinates(manifest: dict) -> list[tuple]:
    return [(s["case_id"], s["start"], s["stop"], s["sha256"]) for s in manifest["samples"]]


@pytest.fixture(scope="module")
def crop_set(two_phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib") / "crop"
    return build_calibration_set(two_phantoms, out, per_case=2, crop_size=32, seed=3, normalization=MINMAX)


@pytest.mark.parametrize(("kind", "per_case", "expected"), [("crop", 2, 4), ("brainbox", 2, 2), ("mixed", 1, 4)])
def test_each_kind_gives_normalised_samples_of_multiples_of_8(two_phantoms, tmp_path, kind, per_case, expected):
    calibration = build_calibration_set(
        two_phantoms, tmp_path / kind, kind=kind, per_case=per_case, crop_size=32, normalization=MINMAX
    )
    assert len(calibration) == expected
    for sample, entry in zip(calibration, calibration.manifest["samples"], strict=True):
        assert sample.dtype == np.float32 and sample.shape[:2] == (1, 3)
        assert all(side % 8 == 0 for side in sample.shape[2:]) and list(sample.shape) == entry["shape"]
        assert sample.min() >= 0 and sample.max() <= 1
    if kind != "crop":
        assert any(s["shape"][2:] != [32, 32, 32] for s in calibration.manifest["samples"])


def test_tumour_centred_crops_hold_tumour(two_phantoms, tmp_path):
    calibration = build_calibration_set(
        two_phantoms, tmp_path / "c", per_case=2, crop_size=16, tumour_share=1.0, normalization=MINMAX
    )
    cases = {case.case_id: case for case in discover_cases(two_phantoms)}
    assert calibration.manifest["tumour_centred_samples"] == 4
    for entry in calibration.manifest["samples"]:
        classes = load_case_labels(cases[entry["case_id"]])[0]
        crop = Crop(entry["original_shape"], entry["start"], entry["stop"])
        assert entry["tumour_centred"] and apply_crop(classes, crop).any()
        assert set(entry["sources"]) == {"flair", "t1ce", "t2", "seg"}


def test_stated_tumour_share_is_the_real_one(crop_set):
    assert crop_set.manifest["tumour_share"] == 0.5
    assert crop_set.manifest["tumour_centred_samples"] == 2


def test_same_seed_same_set(two_phantoms, crop_set, tmp_path):
    again = build_calibration_set(
        two_phantoms, tmp_path / "again", per_case=2, crop_size=32, seed=3, normalization=MINMAX
    )
    other = build_calibration_set(
        two_phantoms, tmp_path / "other", per_case=2, crop_size=32, seed=4, normalization=MINMAX
    )
    assert coordinates(again.manifest) == coordinates(crop_set.manifest)
    assert coordinates(other.manifest) != coordinates(crop_set.manifest)


def test_exclude_is_honoured(two_phantoms, tmp_path):
    first, second = (case.case_id for case in discover_cases(two_phantoms))
    calibration = build_calibration_set(
        two_phantoms, tmp_path / "c", crop_size=16, exclude=[first], normalization=MINMAX
    )
    assert {s["case_id"] for s in calibration.manifest["samples"]} == {second}
    assert calibration.manifest["exclude"] == [first]


def test_crop_size_must_be_a_multiple_of_8(two_phantoms, tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        build_calibration_set(two_phantoms, tmp_path / "c", crop_size=30, normalization=MINMAX)


def test_crop_stays_inside_the_brain_box_and_holds_its_centre():
    box = Crop((240, 240, 155), (40, 24, 0), (200, 216, 152))
    crop = crop_around((50, 120, 150), box, 128)
    assert crop.start == (40, 56, 24) and crop.stop == (168, 184, 152)
    assert crop_around((100, 100, 70), Crop((240, 240, 155), (0, 0, 0), (64, 240, 155)), 128).start[0] == -32


def test_read_streams_memory_mapped_samples_in_manifest_order(crop_set):
    opened = read_calibration_set(crop_set.path)
    samples = list(opened)
    assert all(isinstance(sample, np.memmap) for sample in samples)
    for sample, entry in zip(samples, opened.manifest["samples"], strict=True):
        np.testing.assert_array_equal(sample, np.load(crop_set.path / entry["file"]))
    assert opened.summary()["samples"] == 4 and len(opened.summary()["cases"]) == 2


def test_a_changed_sample_is_refused(crop_set, tmp_path):
    copy = Path(shutil.copytree(crop_set.path, tmp_path / "copy"))
    damaged = copy / crop_set.manifest["samples"][1]["file"]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CalibrationError, match=f"{damaged.name}.*rebuild the calibration set"):
        read_calibration_set(copy)


def test_rebuild_reproduces_every_sample(crop_set, two_phantoms, tmp_path):
    rebuilt = rebuild_calibration_set(crop_set.path / "manifest.json", two_phantoms, tmp_path / "rebuilt")
    assert coordinates(rebuilt.manifest) == coordinates(crop_set.manifest)
    assert len(read_calibration_set(rebuilt.path)) == len(crop_set)


def test_rebuild_detects_a_changed_source(crop_set, two_phantoms, tmp_path):
    data = Path(shutil.copytree(two_phantoms, tmp_path / "data"))
    source = data / crop_set.manifest["samples"][0]["sources"]["t2"]["path"]
    source.write_bytes(source.read_bytes() + b"\0")
    with pytest.raises(CalibrationError, match=f"{source.name} has changed"):
        rebuild_calibration_set(crop_set.path / "manifest.json", data, tmp_path / "rebuilt")


def test_shipped_recipes_are_valid():
    for name in ("demo.json", "brats-template.json"):
        recipe = read_recipe(REPOSITORY / "calibration" / name)
        assert recipe["description"] and recipe["calibration"]["crop_size"] % 8 == 0


def test_cli_calibrate_json(two_phantoms, tmp_path):
    out = tmp_path / "calib"
    args = ["calibrate", str(two_phantoms), "-o", str(out), "--kind", "mixed", "--crop-size", "16"]
    result = CliRunner().invoke(app, [*args, "--seed", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "mixed" and summary["samples"] == 4 and summary["seed"] == 2
    assert len(read_calibration_set(out)) == 4


def test_cli_calibrate_refuses_a_bad_crop_size(two_phantoms, tmp_path):
    result = CliRunner().invoke(app, ["calibrate", str(two_phantoms), "-o", str(tmp_path / "c"), "--crop-size", "20"])
    assert result.exit_code == 1 and "multiple of 8" in result.output


@pytest.fixture(scope="module")
def zscore_set(two_phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib") / "zscore"
    return build_calibration_set(two_phantoms, out, per_case=1, crop_size=32, seed=3, normalization="zscore-brain")


def test_samples_are_normalised_like_the_model(zscore_set, two_phantoms):
    assert zscore_set.manifest["normalization"] == zscore_set.normalization == "zscore-brain"
    assert zscore_set.manifest["preprocessing"].startswith("zscore-brain")
    assert zscore_set.summary()["normalization"] == "zscore-brain"
    cases = {case.case_id: case for case in discover_cases(two_phantoms)}
    for sample, entry in zip(zscore_set, zscore_set.manifest["samples"], strict=True):
        images = normalize(load_case_images(cases[entry["case_id"]])[0], "zscore-brain")
        crop = Crop(entry["original_shape"], entry["start"], entry["stop"])
        np.testing.assert_array_equal(sample, apply_crop(images, crop)[None])
        assert sample.min() < 0


def test_a_set_of_another_normalisation_is_refused_in_one_sentence(zscore_set, crop_set):
    assert len(read_calibration_set(zscore_set.path, normalization="zscore-brain")) == len(zscore_set)
    with pytest.raises(CalibrationError, match="normalised with zscore-brain but the model expects minmax") as caught:
        read_calibration_set(zscore_set.path, normalization="minmax")
    assert "latup-edge calibrate --normalization minmax" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(CalibrationError, match="normalised with minmax but the model expects zscore-brain"):
        read_calibration_set(crop_set.path, normalization="zscore-brain")


def test_a_set_from_before_the_field_is_a_minmax_set(crop_set, tmp_path):
    copy = Path(shutil.copytree(crop_set.path, tmp_path / "old"))
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["normalization"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert read_calibration_set(copy, normalization="minmax").normalization == "minmax"
    with pytest.raises(CalibrationError, match="normalised with minmax"):
        read_calibration_set(copy, normalization="zscore-brain")


def test_rebuild_keeps_the_normalisation(zscore_set, two_phantoms, tmp_path):
    rebuilt = rebuild_calibration_set(zscore_set.path / "manifest.json", two_phantoms, tmp_path / "rebuilt")
    assert coordinates(rebuilt.manifest) == coordinates(zscore_set.manifest)
    assert rebuilt.normalization == "zscore-brain"


def test_cli_calibrate_takes_the_models_normalisation(two_phantoms, tmp_path):
    out = tmp_path / "calib"
    args = ["calibrate", str(two_phantoms), "-o", str(out), "--crop-size", "16", "--cases", "1"]
    result = CliRunner().invoke(app, [*args, "--normalization", "zscore-brain", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["normalization"] == "zscore-brain"
    result = CliRunner().invoke(app, [*args[:3], str(tmp_path / "other"), "--normalization", "percentile"])
    assert result.exit_code != 0 and "minmax" in result.output


def test_cli_quantize_refuses_a_set_of_another_normalisation(zscore_set, tmp_path):
    import torch

    from latup_edge.deploy.export import export_onnx
    from latup_edge.models.latup_net import LATUPNet, LATUPNetConfig

    torch.manual_seed(0)
    model = export_onnx(LATUPNet(LATUPNetConfig(base_filters=4)).eval(), tmp_path / "minmax.onnx")
    args = ["quantize", str(model), "--calib", str(zscore_set.path), "-o", str(tmp_path / "int8")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "normalised with zscore-brain but the model expects minmax" in " ".join(result.output.split())
