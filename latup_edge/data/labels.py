"""Label conventions: which value a label file stores each class as.

Network classes: 0 background, 1 NCR/NET, 2 ED, 3 ET. Regions: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
BraTS files store ET as 4 (2020/2021) or 3 (2023+); nnU-Net's BraTS datasets (Dataset001 from the Medical
Segmentation Decathlon's Task01, Dataset043, Dataset137) store oedema as 1, necrosis as 2 and ET as 3.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

LabelConvention = Literal["2021", "2023", "nnunet"]
CLASS_NAMES: tuple[str, ...] = ("background", "NCR/NET", "ED", "ET")
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
# The value a label file stores each network class as (background, NCR/NET, ED, ET), per convention.
CLASS_VALUES: dict[str, tuple[int, int, int, int]] = {
    "2021": (0, 1, 2, 4),
    "2023": (0, 1, 2, 3),
    "nnunet": (0, 2, 1, 3),
}
# ET per BraTS convention, as the bundle's metadata records it.
ET_LABEL: dict[str, int] = {convention: CLASS_VALUES[convention][3] for convention in ("2021", "2023")}


def to_classes(labels: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """Map a label map to network classes (uint8); raise ValueError on values outside its convention."""
    values = CLASS_VALUES[convention]
    found = {int(v) for v in np.unique(labels)}
    if not found <= set(values):
        raise ValueError(
            f"label values {sorted(found - set(values))} are not in the {_named(convention)} {sorted(values)}"
        )
    lookup = np.zeros(max(values) + 1, dtype=np.uint8)
    lookup[list(values)] = np.arange(len(values), dtype=np.uint8)
    return lookup[labels.astype(np.intp)]


def from_classes(classes: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """Map network classes 0-3 back to a label map (uint8) in the given convention."""
    return np.asarray(CLASS_VALUES[convention], dtype=np.uint8)[classes]


def _named(convention: str) -> str:
    return "nnU-Net BraTS convention" if convention == "nnunet" else f"BraTS {convention} convention"


def detect_convention(labels: np.ndarray, default: LabelConvention = "2021") -> LabelConvention:
    """The convention a label map's ET value shows: 4 means 2021; 3 means 2023, or ``default`` where that
    stores ET as 3 too (``nnunet``: the values alone cannot tell it from 2023); no ET: ``default``.

    Raises ValueError for a map holding both 3 and 4.

    >>> detect_convention(np.array([0, 2, 3])), detect_convention(np.array([0, 2]), default="2023")
    ('2023', '2023')
    >>> detect_convention(np.array([0, 1, 3]), default="nnunet"), detect_convention(np.array([4]), default="nnunet")
    ('nnunet', '2021')
    """
    has_3, has_4 = bool((labels == 3).any()), bool((labels == 4).any())
    if has_3 and has_4:
        raise ValueError(
            "label map holds both 3 and 4: it follows neither BraTS convention "
            "(BraTS 2024 stores a resection cavity as 4)"
        )
    if has_4:
        return "2021"
    if has_3:
        return default if CLASS_VALUES[default][3] == 3 else "2023"
    return default


def region_masks(classes: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean WT, TC and ET masks from a class map."""
    return {name: np.isin(classes, members) for name, members in REGIONS.items()}
