"""BraTS file-naming conventions: one table that both case discovery and the phantom writer use.

Canonical modality keys are ``t1``, ``t1ce``, ``t2`` and ``flair``; ``seg`` is the label map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

Naming = Literal["2020", "2021", "2023", "nnunet"]
NAMINGS: tuple[str, ...] = ("2020", "2021", "2023", "nnunet")

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
# LATUP-Net reads FLAIR, T1ce and T2, in this order (the paper's input); T1 is not used.
MODEL_MODALITIES: tuple[str, ...] = ("flair", "t1ce", "t2")
MODALITY_NAMES: dict[str, str] = {"flair": "FLAIR", "t1ce": "T1ce", "t2": "T2", "t1": "T1"}  # in sentences

# BraTS 2023+ suffixes to canonical keys.
SUFFIXES_2023: dict[str, str] = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
# nnU-Net's BraTS conversion (Dataset137_BraTS2021) numbers channels t1, t1ce, t2, flair.
CHANNELS_NNUNET: dict[str, str] = {"0000": "t1", "0001": "t1ce", "0002": "t2", "0003": "flair"}

NIFTI_SUFFIX = r"\.nii(?:\.gz)?"
# Other names of the post-contrast T1 in the ``_<modality>`` style (UCSF-PDGM's ``_T1c``, MSD's ``T1Gd``).
T1CE_ALIASES: tuple[str, ...] = ("t1c", "t1gd")
# Case-insensitive: ``_FLAIR`` and ``-T2F`` are the same files as ``_flair`` and ``-t2f``.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("2023", re.compile(rf"^(?P<case>.+)-(?P<key>t1n|t1c|t2w|t2f|seg){NIFTI_SUFFIX}$", re.IGNORECASE)),
    ("brats", re.compile(rf"^(?P<case>.+)_(?P<key>t1ce|t1gd|t1c|t1|t2|flair|seg){NIFTI_SUFFIX}$", re.IGNORECASE)),
    ("nnunet", re.compile(rf"^(?P<case>.+)_(?P<key>\d{{4}}){NIFTI_SUFFIX}$")),
    # A case folder of bare names (flair.nii.gz, t1ce.nii.gz ...): the case is the folder, ``case`` empty.
    ("bare", re.compile(rf"^(?P<case>)(?P<key>t1ce|t1gd|t1c|t1n|t1|t2w|t2f|t2|flair|seg){NIFTI_SUFFIX}$", re.I)),
)
# Bare names that only BraTS 2023 uses: such a case follows 2023's naming and labels.
_BARE_2023 = ("t1n", "t2w", "t2f")


def parse_filename(name: str, channels: Mapping[str, str] = CHANNELS_NNUNET) -> tuple[str, str, Naming] | None:
    """Split a NIfTI file name into ``(case_id, key, naming)``, or None if it follows no convention.

    ``key`` is a canonical modality key, ``seg``, or for nnU-Net an unknown channel number as-is; nnU-Net's
    channel numbers are read through ``channels`` (the folder's dataset.json, or Dataset137's order).
    A bare name (``flair.nii.gz``) gives an empty ``case_id``: its case is its folder's.

    >>> parse_filename("BraTS-GLI-00001-000-t2f.nii.gz")
    ('BraTS-GLI-00001-000', 'flair', '2023')
    >>> parse_filename("UCSF-PDGM-0004_T1c.nii.gz")
    ('UCSF-PDGM-0004', 't1ce', '2021')
    >>> parse_filename("FLAIR.nii.gz")
    ('', 'flair', '2021')
    """
    for scheme, pattern in _PATTERNS:
        match = pattern.match(name)
        if match is None:
            continue
        case_id, key = match["case"], match["key"].lower()
        if scheme == "2023":
            return case_id, SUFFIXES_2023[key], "2023"
        if scheme == "nnunet":
            return case_id, channels.get(key, key), "nnunet"
        if scheme == "bare" and key in _BARE_2023:
            return "", SUFFIXES_2023[key], "2023"
        return case_id, "t1ce" if key in T1CE_ALIASES else key, "2020" if case_id.startswith("BraTS20_") else "2021"
    return None


def case_filename(
    case_id: str,
    key: str,
    naming: Naming,
    compressed: bool = True,
    channels: Mapping[str, str] = CHANNELS_NNUNET,
    bare: bool = False,
) -> str:
    """The file name of one modality (or ``seg``) of a case under a naming convention (``bare``: without the
    case id, as in a folder of ``flair.nii.gz``, ``t1ce.nii.gz`` ...)."""
    ext = ".nii.gz" if compressed else ".nii"
    if naming == "2023":
        suffix = {v: k for k, v in SUFFIXES_2023.items()}[key]
        return f"{suffix}{ext}" if bare else f"{case_id}-{suffix}{ext}"
    if bare:
        return f"{key}{ext}"
    if naming == "nnunet":
        if key == "seg":
            return f"{case_id}{ext}"
        channel = {v: k for k, v in channels.items()}.get(key)
        if channel is None:
            raise ValueError(f"no nnU-Net channel holds {key}")
        return f"{case_id}_{channel}{ext}"
    return f"{case_id}_{key}{ext}"


def case_id_for(index: int, naming: Naming) -> str:
    """A case id in the style of a BraTS release, e.g. ``BraTS2021_00007``."""
    if naming == "2020":
        return f"BraTS20_Training_{index:03d}"
    if naming == "2023":
        return f"BraTS-GLI-{index:05d}-000"
    if naming == "nnunet":
        return f"BraTS_{index:05d}"
    return f"BraTS2021_{index:05d}"
