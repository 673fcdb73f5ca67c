"""nnU-Net folders: their dataset.json decides which channel file is which modality and which label value which
class; without one, nnU-Net's BraTS order; a Decathlon folder and a description of other labels are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cases import CLASSES, SHAPE, write_nifti

from latup_edge.data.cases import (
    CaseError,
    channel_order_warnings,
    discover_cases,
    load_case_images,
    load_case_labels,
)
from latup_edge.data.dataset_json import DatasetJsonError, read_description
from latup_edge.data.labels import CLASS_VALUES, detect_convention, from_classes, to_classes
from latup_edge.runtime.segment import output_convention

# Medical Segmentation Decathlon Task01, as nnU-Net's converter writes it (Dataset001_BrainTumour).
DATASET001 = {
    "channel_names": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
}
# nnU-Net's BraTS 2021 conversion: region-based labels.
DATASET137 = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
}


def nnunet_dataset(root: Path, description: dict | None, case_id: str = "BRATS_001", channels: int = 4) -> Path:
    """imagesTr/<case>_000k (channel k filled with k + 1) and labelsTr/<case> in nnU-Net's BraTS order."""
    for channel in range(channels):
        write_nifti(root / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz", np.full(SHAPE, channel + 1, np.float32))
    write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", from_classes(CLASSES, "nnunet"))
    if description is not None:
        (root / "dataset.json").write_text(json.dumps(description))
    return root


def test_each_convention_round_trips_and_nnunet_swaps_oedema_and_necrosis():
    for convention, values in CLASS_VALUES.items():
        stored = from_classes(CLASSES, convention)
        assert set(np.unique(stored)) == set(values)
        np.testing.assert_array_equal(to_classes(stored, convention), CLASSES)
    nnunet, brats = from_classes(CLASSES, "nnunet"), from_classes(CLASSES, "2023")
    assert (nnunet[CLASSES == 2] == 1).all() and (nnunet[CLASSES == 1] == 2).all()
    assert (brats[CLASSES == 2] == 2).all() and (brats[CLASSES == 1] == 1).all()
    assert detect_convention(nnunet, default="nnunet") == "nnunet"
    assert detect_convention(nnunet, default="2021") == "2023"


def test_the_decathlon_order_is_read_from_dataset_json(tmp_path):
    (case,) = discover_cases(nnunet_dataset(tmp_path / "Dataset001_BrainTumour", DATASET001))
    assert {key: path.name for key, path in case.files.items()} == {
        "flair": "BRATS_001_0000.nii.gz",
        "t1": "BRATS_001_0001.nii.gz",
        "t1ce": "BRATS_001_0002.nii.gz",
        "t2": "BRATS_001_0003.nii.gz",
    }
    images, reference = load_case_images(case)  # FLAIR, T1ce, T2: channels 0, 2 and 3 (filled with 1, 3, 4)
    assert [float(channel.mean()) for channel in images] == [1.0, 3.0, 4.0]
    classes, convention = load_case_labels(case, reference)
    assert convention == "nnunet" and output_convention(case) == "nnunet"
    np.testing.assert_array_equal(classes, CLASSES)


def test_region_based_labels_give_the_same_classes(tmp_path):
    (case,) = discover_cases(nnunet_dataset(tmp_path / "Dataset137_BraTS2021", DATASET137))
    assert case.files["flair"].name.endswith("_0003.nii.gz") and case.files["t1ce"].name.endswith("_0001.nii.gz")
    assert read_description(case.description.path).labels == "nnunet"
    np.testing.assert_array_equal(load_case_labels(case)[0], CLASSES)


def test_without_dataset_json_values_0_to_3_follow_nnunets_brats_order(tmp_path):
    (case,) = discover_cases(nnunet_dataset(tmp_path / "nnunet", None))
    assert case.description is None and case.files["flair"].name.endswith("_0003.nii.gz")  # Dataset137's channels
    classes, convention = load_case_labels(case)
    assert convention == "nnunet" and output_convention(case) == "nnunet"
    np.testing.assert_array_equal(classes, CLASSES)


def test_v1_and_decathlon_style_entries_are_read(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(
        json.dumps(
            {
                "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            }
        )
    )
    description = read_description(path)
    assert description.channels == {"0000": "flair", "0001": "t1", "0002": "t1ce", "0003": "t2"}
    assert description.labels == "nnunet"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"labels": {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3, "RC": 4}}, "'RC'"),  # BraTS 2024's cavity
        ({"labels": {"background": 0, "edema": 1, "enhancing tumor": 2}}, "no label for NCR"),
        ({"channel_names": {"0": "FLAIR", "1": "FLAIR"}}, "two channels flair"),
        ({"channel_names": None, "modality": None}, "names no channels"),
    ],
)
def test_a_description_that_cannot_be_used_is_one_sentence(tmp_path, change, words):
    description = {**DATASET001, **change}
    description = {key: value for key, value in description.items() if value is not None}
    root = nnunet_dataset(tmp_path / "Dataset", description)
    with pytest.raises(CaseError, match=words) as caught:
        discover_cases(root)
    assert "dataset.json" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(DatasetJsonError):
        read_description(root / "dataset.json")


def test_a_channel_the_description_lacks_is_named(tmp_path):
    description = {**DATASET001, "channel_names": {"0": "T1w", "1": "t1gd", "2": "T2w"}}
    (case,) = discover_cases(nnunet_dataset(tmp_path / "Dataset", description, channels=3))
    with pytest.raises(CaseError, match=r"dataset\.json names no FLAIR channel \(it names T1, T1ce, T2\)"):
        load_case_images(case)


def test_labels_that_break_the_description_are_refused(tmp_path):
    root = nnunet_dataset(tmp_path / "Dataset", DATASET001)
    write_nifti(root / "labelsTr" / "BRATS_001.nii.gz", from_classes(CLASSES, "2021"))  # ET as 4
    (case,) = discover_cases(root)
    with pytest.raises(CaseError, match=r"does not follow .*dataset\.json's labels"):
        load_case_labels(case)


def test_a_decathlon_folder_says_how_to_split_it(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    write_nifti(root / "imagesTr" / "BRATS_001.nii.gz", np.ones((*SHAPE, 4), np.float32))
    (root / "dataset.json").write_text(json.dumps({"modality": DATASET001["channel_names"], "labels": {}}))
    with pytest.raises(CaseError, match="Medical Segmentation Decathlon folder .*nnUNetv2_convert_MSD_dataset"):
        discover_cases(root)


def test_segment_gives_the_decathlon_sentence_too(tmp_path):
    from latup_edge.scans.study import discover_scans

    root = tmp_path / "Task01_BrainTumour"
    write_nifti(root / "imagesTr" / "BRATS_001.nii.gz", np.ones((*SHAPE, 4), np.float32))
    (root / "dataset.json").write_text(json.dumps({"modality": DATASET001["channel_names"]}))
    with pytest.raises(CaseError, match="nnUNetv2_convert_MSD_dataset"):
        discover_scans(root / "imagesTr")


def test_a_warning_names_each_folder_whose_channel_order_is_assumed(tmp_path):
    assumed = nnunet_dataset(tmp_path / "copied", None)
    described = nnunet_dataset(tmp_path / "Dataset001", DATASET001)
    (warning,) = channel_order_warnings(discover_cases(assumed, described))
    assert warning.startswith(f"{assumed / 'imagesTr'} holds nnU-Net channel files but no dataset.json")
