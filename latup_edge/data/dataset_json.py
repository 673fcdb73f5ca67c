"""The ``dataset.json`` of an nnU-Net folder: which channel file is which modality, which label value which class.

nnU-Net names files by channel number (``CASE_0000.nii.gz``) and says in ``dataset.json`` what each number
holds, so the order differs between datasets: Dataset137 (BraTS 2021) stores T1, T1ce, T2, FLAIR; Dataset001
(converted from the Medical Segmentation Decathlon's Task01) stores FLAIR, T1w, T1gd, T2w. Reading the
description, not assuming one order, is what keeps a FLAIR from being read as a T1. nnU-Net v2 writes
``channel_names`` and ``labels`` as name -> value (a list of values for a region); v1 and the Decathlon write
``modality`` and ``labels`` as value -> name. Both are read.

>>> description = read_description(Path("Dataset001_BrainTumour/dataset.json"))  # doctest: +SKIP
>>> description.channels, description.labels                                    # doctest: +SKIP
({'0000': 'flair', '0001': 't1', '0002': 't1ce', '0003': 't2'}, 'nnunet')
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latup_edge.data.labels import CLASS_VALUES, LabelConvention
from latup_edge.errors import LatupError

FILENAME = "dataset.json"

# Channel names as datasets spell them (lower case, letters and digits only) -> canonical modality key.
CHANNEL_ALIASES: dict[str, str] = {
    **dict.fromkeys(("flair", "t2flair", "t2f", "flairt2"), "flair"),
    **dict.fromkeys(("t1ce", "t1gd", "t1c", "t1post", "t1wce", "t1contrast", "t1gad", "t1gadolinium"), "t1ce"),
    **dict.fromkeys(("t2", "t2w"), "t2"),
    **dict.fromkeys(("t1", "t1w", "t1n", "t1pre", "t1native"), "t1"),
}
# Label names (lower case, words of letters and digits) -> network class (0 background, 1 NCR/NET, 2 ED, 3 ET).
CLASS_ALIASES: dict[str, int] = {
    "background": 0,
    **dict.fromkeys(("necrosis", "necrotic", "ncr", "net", "netc", "ncr net", "non enhancing tumor",
                     "non enhancing tumour", "necrotic tumor core", "non enhancing tumor core"), 1),
    **dict.fromkeys(("edema", "oedema", "ed", "snfh", "peritumoral edema", "peritumoral oedema"), 2),
    **dict.fromkeys(("enhancing tumor", "enhancing tumour", "et", "enhancing"), 3),
}  # fmt: skip
# nnU-Net's region-based labels (a list of values each): whole tumour, tumour core, enhancing tumour.
REGION_ALIASES: dict[str, str] = {
    **dict.fromkeys(("whole tumor", "whole tumour", "wt"), "WT"),
    **dict.fromkeys(("tumor core", "tumour core", "tc"), "TC"),
    **dict.fromkeys(("enhancing tumor", "enhancing tumour", "et"), "ET"),
}


class DatasetJsonError(LatupError):
    """A dataset.json that cannot be read or does not describe BraTS data; the message names the file."""


@dataclass(frozen=True)
class DatasetDescription:
    """What a dataset.json says: each channel number's modality, and the label convention (None: no labels)."""

    path: Path
    channels: dict[str, str]  # "0000" -> canonical modality key; channels of other modalities are left out
    labels: LabelConvention | None


def find_description(folder: Path) -> Path | None:
    """The dataset.json that describes the files in ``folder``: beside them, or one level up from
    nnU-Net's imagesTr/imagesTs/labelsTr."""
    candidates = [folder / FILENAME]
    if folder.name.startswith(("images", "labels")):
        candidates.append(folder.parent / FILENAME)
    return next((path for path in candidates if path.is_file()), None)


def is_decathlon(path: Path | None) -> bool:
    """Whether a dataset.json is the Medical Segmentation Decathlon's own (``modality``: its cases are 4-D files)."""
    try:
        return path is not None and "modality" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


def read_description(path: Path) -> DatasetDescription:
    """Read a dataset.json; DatasetJsonError (one sentence) if it is unreadable or not a BraTS description."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetJsonError(f"{path} is not readable JSON ({error}): fix or remove it") from error
    if not isinstance(content, dict):
        raise DatasetJsonError(f"{path} is not a JSON object: fix or remove it")
    names = content.get("channel_names", content.get("modality"))
    if not isinstance(names, dict) or not names:
        raise DatasetJsonError(f"{path} names no channels (no channel_names or modality): add them, or remove it")
    labels = content.get("labels")
    return DatasetDescription(path, _channels(path, names), None if labels is None else _convention(path, labels))


def _words(name: Any) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", str(name).lower()))


def _channels(path: Path, names: dict) -> dict[str, str]:
    channels: dict[str, str] = {}
    for number, name in names.items():
        key = CHANNEL_ALIASES.get(_words(name).replace(" ", ""))
        if not str(number).isdigit():
            raise DatasetJsonError(f"{path} numbers a channel {number!r}: channel numbers are 0, 1, 2 ...")
        if key is None:
            continue  # another modality (ADC, DWI ...): its files are not read
        if key in channels.values():
            raise DatasetJsonError(f"{path} names two channels {key}: keep one, or rename the other")
        channels[f"{int(number):04d}"] = key
    return channels


def _convention(path: Path, labels: Any) -> LabelConvention:
    """The label convention the labels entry declares, by the names of its classes or regions."""
    if not isinstance(labels, dict) or not labels:
        raise DatasetJsonError(f"{path} has a labels entry that is not a name -> value table: fix it")
    if all(str(key).isdigit() for key in labels):  # v1 and the Decathlon: value -> name
        labels = {name: int(value) for value, name in labels.items()}
    values = _class_values(path, labels)
    for convention, known in CLASS_VALUES.items():
        if values == known:
            return convention  # type: ignore[return-value]
    raise DatasetJsonError(
        f"{path} stores background, NCR, ED and ET as {values}: latup-edge reads "
        + ", ".join(f"{v} ({c})" for c, v in CLASS_VALUES.items())
        + "; convert the label files to one of these"
    )


def _class_values(path: Path, labels: dict) -> tuple[int, ...]:
    """The stored value of each class (background, NCR, ED, ET), from class names or nnU-Net's regions."""
    if any(isinstance(value, list | tuple) for value in labels.values()):
        return _from_regions(path, labels)
    found: dict[int, int] = {}
    for name, value in labels.items():
        class_index = CLASS_ALIASES.get(_words(name))
        if class_index is None or not isinstance(value, int):
            raise DatasetJsonError(
                f"{path} declares the label {name!r} ({value!r}), which is none of background, necrosis or "
                "non-enhancing tumour, oedema and enhancing tumour: latup-edge cannot score or write it, so map it to "
                "background (0) in the label files and drop it from the labels entry"
            )
        found[class_index] = value
    if sorted(found) != [0, 1, 2, 3]:
        missing = [name for index, name in enumerate(("background", "NCR", "ED", "ET")) if index not in found]
        raise DatasetJsonError(f"{path} declares no label for {', '.join(missing)}: add it")
    return tuple(found[index] for index in range(4))


def _from_regions(path: Path, labels: dict) -> tuple[int, ...]:
    regions: dict[str, set[int]] = {}
    for name, value in labels.items():
        values = {value} if isinstance(value, int) else set(value)
        region = "background" if _words(name) == "background" else REGION_ALIASES.get(_words(name))
        if region is None:
            raise DatasetJsonError(f"{path} declares the region {name!r}, which is none of WT, TC and ET")
        regions[region] = values
    try:
        (et,) = regions["ET"]
        (ncr,) = regions["TC"] - regions["ET"]
        (ed,) = regions["WT"] - regions["TC"]
        (background,) = regions.get("background", {0})
    except (KeyError, ValueError) as error:
        raise DatasetJsonError(
            f"{path} declares regions {labels} that do not nest as whole tumour > tumour core > enhancing "
            "tumour with one value each: fix the labels entry"
        ) from error
    return background, ncr, ed, et
