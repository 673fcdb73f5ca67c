"""A one-glance PNG of a case: an axial slice through the tumour in every modality plus the labels.

>>> write_preview(case, Path("BraTS2021_00000_preview.png"))          # a PhantomCase
>>> write_preview((images, classes), Path("preview.png"))             # any loaded BraTS case
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from latup_edge.data.phantom import PhantomCase

PANELS: tuple[tuple[str, str], ...] = (("t1", "T1"), ("t1ce", "T1ce"), ("t2", "T2"), ("flair", "FLAIR"))
# Overlay colours per network class: NCR red, ED green, ET yellow (as in most BraTS figures).
LABEL_COLOURS: dict[int, tuple[int, int, int]] = {1: (230, 40, 40), 2: (40, 200, 60), 3: (250, 220, 30)}
LABEL_NAMES: dict[int, str] = {1: "NCR", 2: "ED", 3: "ET"}
OVERLAY_ALPHA = 0.45


def tumour_slice(classes: np.ndarray) -> int:
    """The axial slice with the most tumour voxels (the middle slice when there is no tumour)."""
    counts = (classes > 0).sum(axis=(0, 1))
    return int(np.argmax(counts)) if counts.any() else classes.shape[2] // 2


def grey_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """One axial slice as uint8, windowed to the volume's 0.5-99.5 % brain range, anterior up."""
    brain = volume[volume > 0]
    high = float(np.percentile(brain, 99.5)) if brain.size else 1.0
    # BraTS voxels run left-to-right and anterior-to-posterior: transposing shows anterior up and the
    # patient's right on the image's left (radiological convention).
    axial = volume[:, :, z].T.astype(np.float32)
    return (np.clip(axial / max(high, 1e-6), 0, 1) * 255).astype(np.uint8)


def label_overlay(grey: np.ndarray, classes_slice: np.ndarray) -> np.ndarray:
    """An RGB slice with each tumour class blended over the grey image in its colour."""
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    labels = classes_slice.T
    for value, colour in LABEL_COLOURS.items():
        where = labels == value
        rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.array(colour, np.float32)
    return rgb.astype(np.uint8)


def write_preview(case: PhantomCase | tuple[Mapping[str, np.ndarray], np.ndarray], path: Path, scale: int = 2) -> Path:
    """Write the preview PNG: T1, T1ce, T2, FLAIR and the labels over FLAIR, side by side.

    ``case`` is a PhantomCase or ``(images, classes)`` with images keyed ``t1``, ``t1ce``, ``t2``,
    ``flair`` and classes in the network convention (0 background, 1 NCR, 2 ED, 3 ET).
    """
    images, classes = case if isinstance(case, tuple) else (case.images, case.classes)
    z = tumour_slice(classes)
    panels = [Image.fromarray(grey_slice(images[key], z)).convert("RGB") for key, _ in PANELS]
    panels.append(Image.fromarray(label_overlay(grey_slice(images["flair"], z), classes[:, :, z])))
    width, height = panels[0].size[0] * scale, panels[0].size[1] * scale

    sheet = Image.new("RGB", (width * len(panels), height), "black")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=8 * scale)
    titles = [title for _, title in PANELS] + ["labels"]
    for i, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        sheet.paste(panel.resize((width, height), Image.Resampling.BILINEAR), (i * width, 0))
        draw.text((i * width + 4 * scale, 2 * scale), title, fill="white", font=font)
    draw.text((4 * scale, height - 12 * scale), f"axial z={z}", fill="white", font=font)
    for j, (value, name) in enumerate(LABEL_NAMES.items()):
        corner = (len(PANELS) * width + (4 + 28 * j) * scale, height - 12 * scale)
        draw.text(corner, name, fill=LABEL_COLOURS[value], font=font)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
