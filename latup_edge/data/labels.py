"""Label conventions: BraTS files store ET as 4 (2020/2021) or 3 (2023+); the network uses classes 0-3.

Network classes: 0 background, 1 NCR/NET, 2 ED, 3 ET. Regions: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

LabelConvention = Literal["2021", "2023"]
CLASS_NAMES: tuple[str, ...] = ("background", "NCR/NET", "ED", "ET")
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
ET_LABEL: dict[str, int] = {"2021": 4, "2023": 3}


def to_classes(labels: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """Map a BraTS label map to network classes (uint8); raise ValueError on values outside it."""
    allowed = {0, 1, 2, ET_LABEL[convention]}
    found = {int(v) for v in np.unique(labels)}
    if not found <= allowed:
        raise ValueError(
            f"label values {sorted(found - allowed)} are not in the BraTS {convention} convention {sorted(allowed)}"
        )
    classes = labels.astype(np.uint8)
    classes[labels == ET_LABEL[convention]] = 3
    return classes


def from_classes(classes: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """Map network classes 0-3 back to a BraTS label map (uint8) in the given convention."""
    labels = classes.astype(np.uint8)
    labels[classes == 3] = ET_LABEL[convention]
    return labels


def detect_convention(labels: np.ndarray, default: LabelConvention = "2021") -> LabelConvention:
    """The convention a label map's ET value shows: 4 means 2021, 3 means 2023; no ET: ``default``.

    Raises ValueError for a map holding both 3 and 4.

    >>> detect_convention(np.array([0, 2, 3])), detect_convention(np.array([0, 2]), default="2023")
    ('2023', '2023')
    """
    present = [convention for convention, et in ET_LABEL.items() if (labels == et).any()]
    if len(present) > 1:
        raise ValueError("label map holds both 3 and 4: it follows neither BraTS convention")
    return present[0] if present else default  # type: ignore[return-value]


def region_masks(classes: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean WT, TC and ET masks from a class map."""
    return {name: np.isin(classes, members) for name, members in REGIONS.items()}
