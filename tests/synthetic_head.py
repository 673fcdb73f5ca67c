"""A synthetic skull-stripped head on any grid, with a known head motion: clinic-geometry test inputs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from latup_edge.data.naming import case_filename
from latup_edge.scans.geometry import sitk_to_nifti

MODALITIES = ("flair", "t1ce", "t2")
CENTRE = np.array([0.0, -20.0, 10.0])  # LPS mm: where the synthetic head sits
LESION = CENTRE + np.array([25.0, 10.0, 12.0])
LESION_RADIUS = 14.0
ANGLE = np.deg2rad(10)
OBLIQUE = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0], [np.sin(ANGLE), np.cos(ANGLE), 0], [0, 0, 1]])
AXIAL = np.eye(3)


def motion(translation=(3.0, -2.0, 2.5), degrees=(2.0, -3.0, 1.5)) -> sitk.Euler3DTransform:
    """A head motion (reference points -> where the moved series sees them), about the head's centre."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(CENTRE))
    transform.SetRotation(*np.deg2rad(degrees))
    transform.SetTranslation(translation)
    return transform


def grid_points(size, spacing, direction, extent_mm) -> tuple[np.ndarray, np.ndarray]:
    """Physical points (LPS, N x 3) of a grid centred on the head, and its origin."""
    size = np.asarray(size)
    matrix = direction * np.asarray(spacing)
    origin = CENTRE - matrix @ ((size - 1) / 2)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    return index @ matrix.T + origin, origin


def head_image(spacing, direction=AXIAL, extent_mm=(150, 170, 130), moved=None, stripped=True, seed=0):
    """A synthetic skull-stripped brain on its own grid: an ellipsoid with ventricles, texture and a lesion.

    ``moved``: the head motion this series was acquired after. ``stripped=False`` adds scalp and a noise floor.
    ``seed``: this acquisition's own noise (two series of one head differ by it, as two acquisitions do).
    """
    size = [int(round(e / s)) for e, s in zip(extent_mm, spacing, strict=True)]
    points, origin = grid_points(size, spacing, direction, extent_mm)
    if moved is not None:  # the tissue seen at q sat at motion^-1(q) in the reference's frame
        inverse = moved.GetInverse()
        matrix = np.asarray(inverse.GetMatrix()).reshape(3, 3)
        offset = np.asarray(inverse.TransformPoint((0.0, 0.0, 0.0)))
        points = points @ matrix.T + offset
    local = points - CENTRE
    radius = np.sqrt(((local / [62.0, 75.0, 55.0]) ** 2).sum(-1))
    brain = radius < 1
    value = 400 + 60 * np.sin(local[:, 0] / 9) * np.cos(local[:, 1] / 11) + 40 * np.sin(local[:, 2] / 7)
    ventricle = np.sqrt((((local - [0, 5, 5]) / [9.0, 25.0, 12.0]) ** 2).sum(-1)) < 1
    value = np.where(ventricle, 150, value)
    lesion = np.linalg.norm(points - LESION, axis=-1) < LESION_RADIUS
    value = np.where(lesion, 900, value)
    rng = np.random.default_rng(seed)
    data = np.where(brain, value + rng.normal(0, 10, value.shape), 0.0)
    if not stripped:
        scalp = (radius >= 1.05) & (radius < 1.18)
        data = np.where(scalp, 1100, data) + rng.normal(25, 8, data.shape).clip(1)
    image = sitk.GetImageFromArray(data.reshape(size).transpose(2, 1, 0).astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in direction.ravel()))
    image.SetOrigin(tuple(float(o) for o in origin))
    return image


def write_nifti_case(root: Path, case_id: str, images: dict[str, sitk.Image]) -> Path:
    folder = root / case_id
    folder.mkdir(parents=True)
    for key, image in images.items():
        nib.save(sitk_to_nifti(image), folder / case_filename(case_id, key, "2021"))
    return folder


def clinic_images(**flair) -> dict[str, sitk.Image]:
    """T1ce oblique at 1.2 x 1 x 1.5 mm; FLAIR axial 1 x 1 x 4 mm after a head motion; T2 on T1ce's grid."""
    t1ce = head_image((1.2, 1.0, 1.5), OBLIQUE, seed=2)
    return {
        "flair": head_image((1.0, 1.0, 4.0), moved=flair.pop("moved", motion()), **({"seed": 1} | flair)),
        "t1ce": t1ce,
        "t2": head_image((1.2, 1.0, 1.5), OBLIQUE, seed=3),
    }
