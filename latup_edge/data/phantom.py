"""BraTS-like phantom cases: a real brain anatomy, four MRI contrasts and a glioma-like lesion.

The anatomy is the MNI152 2009a symmetric template and its grey/white-matter probability maps that
ship inside the nilearn wheel (read as data files; nilearn itself is never imported). Each case
places the brain into the BraTS grid (240x240x155 at 1 mm, LPS voxel order like BraTS) with a small
random scale, rotation and shift, grows a lesion in white matter (enhancing rim ET around a necrotic
core NCR, edema ED that spreads along white matter), synthesises T1, T1ce, T2 and FLAIR from the
tissue and lesion fractions, and adds a smooth bias field and Rician noise.

Domain randomisation (the default, in the spirit of SynthSeg/SynthStrip) widens five families of
variation; each can be switched off, and all off gives the narrow generator of the first demo weights:

- ``contrast``: every tissue's intensity drawn per case and modality over a wide range, keeping only
  the orderings that define the pathology (oedema brighter than WM and GM on FLAIR and T2, FLAIR CSF
  darker than oedema, the enhancing rim brighter than necrosis and normal tissue on T1ce);
- ``acquisition``: gamma, bias-field amplitude, noise level, blur, and thick-slice acquisitions
  (2-6 mm along one axis) resampled back to 1 mm;
- ``anatomy``: smooth elastic deformation, scale +-10 %, enlarged ventricles;
- ``lesion``: cortical, deep and infratentorial sites, small lesions, a second focus, cases without
  ET (a non-enhancing core, about one in ten), and mass effect pushing the tissue aside;
- ``core``: the tumour core's (NCR/NET) contrast against oedema, from stark necrosis to subtle
  non-enhancing tumour: x0.35-1.15 of the oedema on FLAIR, x0.7-1.8 on T2, and always darker on T1
  and T1ce (x0.3-0.95: it does not enhance). Drawn from its own stream, so switching it off
  (``--randomise contrast,acquisition,anatomy,lesion``) gives, byte for byte, the phantoms made
  before the family existed (stages 1-4 of the model card).
- ``mimics`` (**off in the default** until weights trained with it are judged; ``--randomise all,mimics``):
  normal structures that enhance on T1ce as real post-contrast scans show them, labelled background:
  choroid plexus tufts in the ventricles and vessels (tubes of 1-3 mm along the brain surface and through
  the deep tissue), as bright on T1ce as the tumour's rim. Without them nothing but the tumour is bright on
  T1ce, and the network calls any enhancing spot ET (docs/GENERALISATION.md section 23). Its own stream,
  so the other families' draws do not move.
- ``faint_core`` (**off in the default**, like ``mimics``): in a tumour without ET, the core as faint as the
  oedema around it, x0.8-1.05 of it on FLAIR, x0.8-1.2 on T2, x0.9-1.05 on T1 and T1ce. The blind generator
  draws its non-enhancing cores so, and the network reads them as oedema (docs/GENERALISATION.md section 24).
  Its own stream; tumours with ET are untouched.

>>> case = make_phantom("BraTS2021_00000", seed=0, index=0)
>>> case.images["flair"].shape, case.images["flair"].dtype, sorted(set(case.classes.flat))
((240, 240, 155), dtype('int16'), [0, 1, 2, 3])
>>> folders = write_phantoms(Path("phantoms"), n=4, seed=0)  # phantoms/BraTS2021_00000/... x4
>>> narrow = make_phantom("BraTS2021_00000", seed=0, index=0, randomise=NARROW)
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import TypeVar

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from latup_edge.data.labels import from_classes
from latup_edge.data.naming import MODALITIES, Naming, case_filename, case_id_for
from latup_edge.fileio import atomic_write

GRID_SHAPE: tuple[int, int, int] = (240, 240, 155)
# BraTS 2020/2021 files carry this affine: 1 mm, LPS voxel order, origin at voxel (0, 239, 0).
BRATS_AFFINE = np.array([[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
# Voxel axes flipped between the template (RAS) and BraTS (LPS) orders.
_FLIP = np.diag([-1.0, -1.0, 1.0])
# Where the brain centre sits in the grid: the centre of the paper crop [56:184, 56:184, 13:141].
_GRID_BRAIN_CENTRE = np.array([119.5, 119.5, 77.0])

# Relative intensity of each compartment per modality: T1 WM > GM > CSF; T1ce like T1 with a bright
# rim; T2 CSF bright and WM below GM; FLAIR with CSF suppressed and edema brightest.
CONTRASTS: dict[str, dict[str, float]] = {
    "t1": {"csf": 0.30, "gm": 0.58, "wm": 0.78, "ncr": 0.25, "ed": 0.45, "et": 0.50},
    "t1ce": {"csf": 0.28, "gm": 0.56, "wm": 0.74, "ncr": 0.22, "ed": 0.45, "et": 1.25},
    "t2": {"csf": 1.00, "gm": 0.58, "wm": 0.42, "ncr": 0.90, "ed": 0.85, "et": 0.62},
    "flair": {"csf": 0.08, "gm": 0.60, "wm": 0.45, "ncr": 0.50, "ed": 1.00, "et": 0.70},
}
TISSUES: tuple[str, ...] = ("csf", "gm", "wm")
LESION_CLASSES: dict[str, int] = {"ncr": 1, "ed": 2, "et": 3}
# Smallest sub-region volumes (voxels = mm^3) and the whole-tumour range a phantom must meet.
MIN_VOXELS: dict[str, int] = {"ncr": 800, "ed": 4000, "et": 1500}
WT_RANGE: tuple[int, int] = (15_000, 180_000)
# The wide generator's limits: small lesions and cases without ET are part of BraTS.
WIDE_MIN_VOXELS: dict[str, int] = {"ncr": 150, "ed": 600, "et": 300}
WIDE_WT_RANGE: tuple[int, int] = (2_500, 200_000)
_MAX_LESION_DRAWS = 50
# Share of wide-generator foci without ET (non-enhancing tumours; BraTS has about one in ten).
NON_ENHANCING_SHARE = 0.1
_GZIP_LEVEL = 1  # nibabel's default: the int16 noise barely compresses further, and level 1 is fast

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Randomisation:
    """Which families of variation a phantom draws widely (DOMAIN docstring above); all off is narrow."""

    contrast: bool = True
    acquisition: bool = True
    anatomy: bool = True
    lesion: bool = True
    core: bool = True
    mimics: bool = False  # not in the default until a stage trained with it is judged
    faint_core: bool = False  # likewise

    @classmethod
    def parse(cls, text: str) -> Randomisation:
        """``"all"`` (the default families), ``"none"`` or a comma list of family names, e.g.
        ``"contrast,lesion"``; ``all`` may lead the list (``"all,mimics"``: the default and the mimics)."""
        names = [f.name for f in fields(cls)]
        if text == "none":
            return NARROW
        chosen = [part.strip() for part in text.split(",") if part.strip()]
        unknown = sorted(set(chosen) - {*names, "all"})
        if unknown or not chosen:
            raise ValueError(
                f"unknown randomisation {text!r}: use all, none or a comma list of {', '.join(names)} (all may lead it)"
            )
        base = cls() if "all" in chosen else cls(**dict.fromkeys(names, False))
        return replace(base, **{name: True for name in chosen if name != "all"})

    def describe(self) -> str:
        on = [f.name for f in fields(self) if getattr(self, f.name)]
        return ",".join(on) if on else "none"


WIDE = Randomisation()
NARROW = Randomisation(contrast=False, acquisition=False, anatomy=False, lesion=False, core=False)
# The default before the core family existed: what stages 1-4 of the shipped weights trained on.
BEFORE_CORE = Randomisation(core=False)
WITH_MIMICS = Randomisation(mimics=True)
WITH_FAINT_CORE = Randomisation(faint_core=True)


@dataclass
class PhantomCase:
    """One generated case: images in int16, network classes 0-3, the BraTS affine.

    ``tissues`` is the dominant normal tissue per voxel (0 outside, 1 CSF, 2 GM, 3 WM), kept so that
    contrast checks need no second source of truth.
    """

    case_id: str
    images: dict[str, np.ndarray]
    classes: np.ndarray
    affine: np.ndarray
    tissues: np.ndarray | None = None


@dataclass(frozen=True)
class _Template:
    """The MNI152 anatomy in template voxels: uint8 fractions (0-255) and lesion-centre candidates."""

    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    centre: np.ndarray
    half_extent: np.ndarray
    lesion_centres: np.ndarray  # deep cerebral white matter, the narrow generator's only site
    cortical_centres: np.ndarray  # grey matter a few mm under the cortical surface
    infratentorial_centres: np.ndarray  # cerebellum and brainstem


@dataclass(frozen=True)
class _Anatomy:
    """A placed brain: tissue fractions (float32) inside ``box``, a region of the BraTS grid."""

    box: tuple[slice, slice, slice]
    fractions: dict[str, np.ndarray]
    mask: np.ndarray
    to_box: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Lesion:
    """Lesion classes and partial-volume fractions inside ``local``, a region of the anatomy box."""

    local: tuple[slice, slice, slice]
    classes: np.ndarray
    fractions: dict[str, np.ndarray]
    texture: np.ndarray


def _parallel_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Map in threads: scipy.ndimage, numpy and zlib release the GIL on large arrays."""
    with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def _template_path(key: str) -> Path:
    """A template file inside the installed nilearn package, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the phantom generator needs the nilearn package (its MNI152 template files): "
            "pip install 'latup-edge[build]'"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "datasets" / "data" / f"mni_icbm152_{key}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"MNI152 template file {path} is missing: reinstall nilearn")
    return path


@lru_cache(maxsize=1)
def _template() -> _Template:
    """Read the template once per process and build a clean brain mask and lesion-centre candidates."""
    t1_image = nib.load(_template_path("t1"))
    t1 = np.asarray(t1_image.dataobj, dtype=np.uint8)
    gm, wm = (np.asarray(nib.load(_template_path(k)).dataobj, dtype=np.uint8) for k in ("gm", "wm"))
    # The template T1 is skull-stripped (exact zeros outside): threshold, fill holes, keep one component.
    mask = ndi.binary_fill_holes(t1 > 0)
    components, count = ndi.label(mask)
    if count > 1:
        mask = components == np.argmax(np.bincount(components.flat)[1:]) + 1
    gm, wm = gm * mask, wm * mask
    corners = np.argwhere(mask)
    low, high = corners.min(0), corners.max(0)

    # Gliomas grow mostly in cerebral white matter: deep WM above the cerebellum, away from the surface.
    step = 2
    depth = ndi.distance_transform_edt(mask[::step, ::step, ::step]) * step
    candidates = np.argwhere((wm[::step, ::step, ::step] > 180) & (depth > 14)) * step
    x, y, z = nib.affines.apply_affine(t1_image.affine, candidates).T
    infratentorial = ((y < -35) & (z < 5)) | ((np.abs(x) < 20) & (z < 0))
    cerebral = (z > -30) & (z < 50) & ~infratentorial
    sub = (slice(None, None, step),) * 3
    shallow = np.argwhere((gm[sub] > 150) & (depth > 4) & (depth < 10)) * step
    sx, sy, sz = nib.affines.apply_affine(t1_image.affine, shallow).T
    cortical = shallow[(sz > -20) & (sz < 60) & ~(((sy < -35) & (sz < 5)) | ((np.abs(sx) < 20) & (sz < 0)))]
    posterior_fossa = np.argwhere((gm[sub] + wm[sub] > 180) & (depth > 8)) * step
    px, py, pz = nib.affines.apply_affine(t1_image.affine, posterior_fossa).T
    infratentorial_sites = posterior_fossa[((py < -45) & (pz < -15)) | ((np.abs(px) < 12) & (pz < -20))]
    return _Template(
        gm=gm,
        wm=wm,
        mask=mask.astype(np.uint8) * 255,
        centre=(low + high) / 2.0,
        half_extent=(high - low) / 2.0,
        lesion_centres=candidates[cerebral],
        cortical_centres=cortical,
        infratentorial_centres=infratentorial_sites,
    )


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """A rotation matrix from angles (degrees) about the three voxel axes."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _place_anatomy(rng: np.random.Generator, wide: bool = False) -> _Anatomy:
    """Place the template brain into the BraTS grid with a random scale, rotation and shift.

    ``wide`` draws a scale of +-10 %, larger rotations, a smooth elastic deformation and enlarged
    ventricles; otherwise the scale is 0.92-1.0 and the rotation a few degrees.
    """
    template = _template()
    if wide:
        scale = rng.uniform(0.86, 1.06) * rng.uniform(0.96, 1.04, size=3)
        angles = rng.uniform([-8, -8, -12], [8, 8, 12])
    else:
        scale = rng.uniform(0.92, 1.0) * rng.uniform(0.97, 1.03, size=3)
        angles = rng.uniform([-3, -3, -6], [3, 3, 6])
    forward = _FLIP @ _rotation(angles) @ np.diag(scale)
    centre = _GRID_BRAIN_CENTRE + rng.uniform([-4, -4, -2], [4, 4, 2])

    # Only the brain's bounding box in the grid is computed; the rest of the grid stays zero.
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    reach = np.abs(signs * template.half_extent @ forward.T).max(0)
    # A brain larger than the grid is shrunk to fit, as BraTS never cuts the brain.
    fit = np.minimum(1.0, (np.array(GRID_SHAPE) / 2 - np.abs(centre - _GRID_BRAIN_CENTRE) - 6) / reach)
    forward, reach = np.diag(fit) @ forward, reach * fit
    margin = 10 if wide else 0  # room for the elastic deformation
    low = np.clip(np.floor(centre - reach) - 2 - margin, 0, None).astype(int)
    high = np.minimum(np.ceil(centre + reach) + 3 + margin, GRID_SHAPE).astype(int)
    box = (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))

    inverse = np.linalg.inv(forward)
    offset = template.centre - inverse @ (centre - low)
    shape = tuple(int(v) for v in high - low)
    coordinates = None
    if wide:
        # Elastic deformation: a smooth displacement (mm) added to the affine map, per axis.
        amplitude = rng.uniform(1.0, 3.0)
        displacement = [amplitude * _smooth_noise(rng, shape, rng.uniform(12.0, 24.0)) for _ in range(3)]
        grid = np.indices(shape, dtype=np.float32)
        coordinates = np.einsum("ij,j...->i...", inverse.astype(np.float32), grid + np.stack(displacement))
        coordinates += offset.astype(np.float32)[:, None, None, None]
        del grid, displacement

    def resample(volume: np.ndarray) -> np.ndarray:
        if coordinates is None:
            placed = ndi.affine_transform(
                volume, inverse, offset=offset, output_shape=shape, output=np.float32, order=1
            )
        else:
            placed = ndi.map_coordinates(volume, coordinates, output=np.float32, order=1)
        return placed * np.float32(1 / 255)

    gm, wm, mask_fraction = _parallel_map(resample, [template.gm, template.wm, template.mask])
    mask = mask_fraction >= 0.5
    csf = np.clip(mask_fraction - gm - wm, 0, 1)
    if wide:
        csf, gm, wm = _enlarge_ventricles(rng, mask, csf, gm, wm)
    fractions = {name: f * mask for name, f in zip(TISSUES, (csf, gm, wm), strict=True)}

    def to_box(template_voxels: np.ndarray) -> np.ndarray:
        return forward @ (template_voxels - template.centre) + centre - low

    return _Anatomy(box=box, fractions=fractions, mask=mask, to_box=to_box)


def _enlarge_ventricles(
    rng: np.random.Generator, mask: np.ndarray, csf: np.ndarray, gm: np.ndarray, wm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grow the deep CSF (the ventricles) by 0-3 mm into the surrounding tissue, as in atrophy or hydrocephalus."""
    grow = int(rng.integers(0, 4))
    if grow == 0:
        return csf, gm, wm
    depth = ndi.distance_transform_edt(mask[::2, ::2, ::2]) * 2
    deep = ndi.zoom(depth, [s / d for s, d in zip(mask.shape, depth.shape, strict=True)], order=0)
    deep = deep[tuple(slice(0, s) for s in mask.shape)] > 18
    ventricles = (csf > 0.5) & deep
    enlarged = ndi.binary_dilation(ventricles, iterations=grow) & deep
    csf, gm, wm = csf.copy(), gm.copy(), wm.copy()
    csf[enlarged], gm[enlarged], wm[enlarged] = 1.0, 0.0, 0.0
    return csf, gm, wm


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float) -> np.ndarray:
    """Gaussian-smoothed noise with unit standard deviation, drawn at half resolution for speed."""
    coarse = rng.standard_normal([s // 2 + 2 for s in shape], dtype=np.float32)
    coarse = ndi.gaussian_filter(coarse, sigma_mm / 2, mode="wrap")
    coarse /= coarse.std() + 1e-6
    fine = ndi.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)
    return fine[tuple(slice(0, s) for s in shape)]


@dataclass(frozen=True)
class _LesionShape:
    """The random draws that shape one lesion focus."""

    centre: np.ndarray  # in anatomy-box voxels
    radius: float
    rim: float
    edema_reach: float
    enhancing: bool


def _lesion_shape(
    rng: np.random.Generator, anatomy: _Anatomy, wide: bool, focus: int = 0, non_enhancing: float = NON_ENHANCING_SHARE
) -> _LesionShape:
    """Draw a focus's site and size: deep WM only (narrow), or deep, cortical or infratentorial (wide)."""
    template = _template()
    if not wide:
        radius, rim, edema_reach = rng.uniform(9.0, 20.0), rng.uniform(2.0, 5.0), rng.uniform(5.0, 18.0)
        sites = template.lesion_centres
        enhancing = True
    else:
        site = rng.choice(3, p=[0.6, 0.25, 0.15])
        sites = (template.lesion_centres, template.cortical_centres, template.infratentorial_centres)[site]
        small = focus > 0 or rng.random() < 0.2
        radius = rng.uniform(4.0, 10.0) if small else rng.uniform(9.0, 22.0)
        rim, edema_reach = rng.uniform(1.5, 6.0), rng.uniform(2.0, 25.0)
        enhancing = rng.random() >= non_enhancing
    centre = anatomy.to_box(sites[rng.integers(len(sites))])
    return _LesionShape(centre, float(radius), float(rim), float(edema_reach), enhancing)


def _push_tissue(rng: np.random.Generator, anatomy: _Anatomy, shape: _LesionShape) -> _Anatomy:
    """Mass effect: the tissue around a focus is pushed outward (sampled from nearer its centre)."""
    reach = 3 * shape.radius
    low = np.clip(np.floor(shape.centre - reach), 0, None).astype(int)
    high = np.minimum(np.ceil(shape.centre + reach) + 1, anatomy.mask.shape).astype(int)
    local = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    offsets = (
        np.indices(tuple(high - low), dtype=np.float32) - (shape.centre - low).astype(np.float32)[:, None, None, None]
    )
    distance = np.sqrt((offsets**2).sum(0))
    squeeze = np.float32(rng.uniform(0.15, 0.4)) * np.exp(-((distance / np.float32(1.5 * shape.radius)) ** 2))
    sources = (shape.centre - low).astype(np.float32)[:, None, None, None] + offsets * (1 - squeeze)
    fractions = {}
    for name, fraction in anatomy.fractions.items():
        pushed = fraction.copy()
        pushed[local] = ndi.map_coordinates(fraction[local], sources, order=1, mode="nearest") * anatomy.mask[local]
        fractions[name] = pushed
    return replace(anatomy, fractions=fractions)


def _draw_focus(
    rng: np.random.Generator, anatomy: _Anatomy, shape: _LesionShape
) -> tuple[tuple[slice, ...], np.ndarray]:
    """One focus: a deformed ellipsoid (rim ET or, non-enhancing, all NCR; core NCR) and WM-seeking edema."""
    radius, centre = shape.radius, shape.centre
    axes = radius * rng.uniform(0.75, 1.25, size=3)
    orientation = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    wobble = rng.uniform(0.12, 0.28)
    edema_reach = shape.edema_reach

    box_shape = np.array(anatomy.mask.shape)
    half = axes.max() * 1.35 + edema_reach * 1.4 + 3
    low = np.clip(np.floor(centre - half), 0, None).astype(int)
    high = np.minimum(np.ceil(centre + half) + 1, box_shape).astype(int)
    local = (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))
    local_shape = tuple(int(s) for s in high - low)

    grid = np.ogrid[tuple(slice(0, s) for s in local_shape)]
    offsets = [(g - c).astype(np.float32) for g, c in zip(grid, centre - low, strict=True)]
    # Normalised radius of a rotated ellipsoid: 1 on its surface.
    rotated = [sum(orientation[k, j] * offsets[j] for j in range(3)) for k in range(3)]
    rho = np.sqrt(sum((r / np.float32(a)) ** 2 for r, a in zip(rotated, axes, strict=True)))
    boundary = np.clip(1 + wobble * _smooth_noise(rng, local_shape, radius / 2.5), 0.7, 1.35)
    rim_fraction = (shape.rim / radius) * np.clip(1 + 0.35 * _smooth_noise(rng, local_shape, 3.0), 0.4, 1.8)

    brain = anatomy.mask[local]
    # Edema swells tissue but does not fill ventricles or sulci.
    tissue = brain & (anatomy.fractions["csf"][local] < 0.5)
    core = (rho < boundary) & brain
    necrosis = (rho < boundary - rim_fraction) & brain
    # Edema follows white matter: its reach from the core scales with the local WM fraction.
    wm = ndi.gaussian_filter(anatomy.fractions["wm"][local], 1.5)
    reach = edema_reach * np.clip((0.3 + 0.9 * wm) * (1 + 0.25 * _smooth_noise(rng, local_shape, 4.0)), 0, 1.4)
    edema = (ndi.distance_transform_edt(~core) < reach) & tissue & ~core
    components, _ = ndi.label(edema | core)
    edema &= np.isin(components, np.unique(components[core]))

    classes = np.zeros(local_shape, dtype=np.uint8)
    classes[edema] = LESION_CLASSES["ed"]
    classes[core] = LESION_CLASSES["et"] if shape.enhancing else LESION_CLASSES["ncr"]
    classes[necrosis] = LESION_CLASSES["ncr"]
    return local, classes


def _draw_lesion(
    rng: np.random.Generator, anatomy: _Anatomy, wide: bool, non_enhancing: float = NON_ENHANCING_SHARE
) -> tuple[_Anatomy, _Lesion]:
    """One lesion draw (one focus, or with ``wide`` sometimes two, with mass effect) on ``anatomy``."""
    shapes = [_lesion_shape(rng, anatomy, wide, non_enhancing=non_enhancing)]
    if wide and rng.random() < 0.15:
        shapes.append(_lesion_shape(rng, anatomy, wide, focus=1, non_enhancing=non_enhancing))
    if wide and rng.random() < 0.6:
        anatomy = _push_tissue(rng, anatomy, shapes[0])
    classes = np.zeros(anatomy.mask.shape, dtype=np.uint8)
    for shape in shapes:
        local, focus = _draw_focus(rng, anatomy, shape)
        # Where foci overlap, the tumour core wins over edema.
        region = classes[local]
        overwrite = (focus > 0) & (region != LESION_CLASSES["ncr"]) & (region != LESION_CLASSES["et"])
        region[overwrite] = focus[overwrite]
    present = np.argwhere(classes > 0)
    if not len(present):
        present = np.array([np.array(anatomy.mask.shape) // 2])
    low = np.clip(present.min(0) - 4, 0, None)
    high = np.minimum(present.max(0) + 5, anatomy.mask.shape)
    local = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    lesion_classes = classes[local]
    brain = anatomy.mask[local]
    local_shape = lesion_classes.shape
    # Partial volume at compartment borders, as a 1 mm acquisition would blur them.
    blur = rng.uniform(0.4, 1.0) if wide else 0.6
    fractions = {
        name: ndi.gaussian_filter((lesion_classes == value).astype(np.float32), blur) * brain
        for name, value in LESION_CLASSES.items()
    }
    amplitude = rng.uniform(0.03, 0.2) if wide else 0.08
    texture = 1 + amplitude * _smooth_noise(rng, local_shape, 1.5)
    return anatomy, _Lesion(local=local, classes=lesion_classes, fractions=fractions, texture=texture)


def _lesion_is_valid(lesion: _Lesion, wide: bool) -> bool:
    """Every sub-region present with a non-trivial volume and a whole tumour of realistic size.

    The wide generator allows small lesions and, for a non-enhancing tumour, no ET.
    """
    counts = np.bincount(lesion.classes.ravel(), minlength=4)
    minimum, (low, high) = (WIDE_MIN_VOXELS, WIDE_WT_RANGE) if wide else (MIN_VOXELS, WT_RANGE)
    needed = [name for name in minimum if not (wide and name == "et" and counts[LESION_CLASSES["et"]] == 0)]
    sizes_ok = all(counts[LESION_CLASSES[name]] >= minimum[name] for name in needed)
    return sizes_ok and low <= counts[1:].sum() <= high


def _grow_lesion(
    rng: np.random.Generator, anatomy: _Anatomy, wide: bool = False, non_enhancing: float = NON_ENHANCING_SHARE
) -> tuple[_Anatomy, _Lesion]:
    """Draw lesions until one meets the volume requirements (the next draw of the same rng)."""
    for _ in range(_MAX_LESION_DRAWS):
        placed, lesion = _draw_lesion(rng, anatomy, wide, non_enhancing)
        if _lesion_is_valid(lesion, wide):
            return placed, lesion
    raise RuntimeError(f"no valid lesion in {_MAX_LESION_DRAWS} draws: the volume limits are too tight")


def _enhancing_mimics(rng: np.random.Generator, anatomy: _Anatomy, lesion: _Lesion) -> np.ndarray:
    """Fraction (float32, the anatomy box) of normal tissue that enhances on T1ce, never inside the lesion.

    Choroid plexus: 1-4 tufts of 6-14 mm in deep CSF (the ventricles, filling only their CSF). Vessels: 4-12
    tubes of 1-3 mm, random smooth walks of 20-80 mm that start near the brain surface or deep in it and stay
    inside the brain.
    """
    shape = anatomy.mask.shape
    depth = ndi.distance_transform_edt(anatomy.mask[::2, ::2, ::2]) * 2  # mm from the brain's edge, at 2 mm
    deep_csf = np.argwhere((anatomy.fractions["csf"][::2, ::2, ::2] > 0.6) & (depth > 15)) * 2
    surface = np.argwhere((depth > 2) & (depth < 8)) * 2
    inside = np.argwhere(depth > 12) * 2
    fraction = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 5)) if len(deep_csf) else 0):  # choroid plexus
        where, tuft = _blurred_points(deep_csf[rng.integers(len(deep_csf))][None], shape, rng.uniform(2.0, 3.5))
        shaped = np.clip(tuft / tuft.max() * 4 - 0.5, 0, 1) * anatomy.fractions["csf"][where]
        fraction[where] = np.maximum(fraction[where], shaped)
    for _ in range(int(rng.integers(4, 13))):  # vessels
        starts = surface if rng.random() < 0.7 or not len(inside) else inside
        position = starts[rng.integers(len(starts))].astype(np.float64)
        direction = rng.standard_normal(3)
        path = []
        for _ in range(int(rng.integers(20, 81))):
            direction = direction / np.linalg.norm(direction) + 0.35 * rng.standard_normal(3)
            step = position + direction / np.linalg.norm(direction)
            voxel = tuple(np.clip(np.rint(step), 0, np.array(shape) - 1).astype(int))
            if not anatomy.mask[voxel]:
                direction = -direction  # turn back at the brain's edge
                continue
            position = step
            path.append(voxel)
        sigma = rng.uniform(0.5, 1.2)
        if path:
            where, tube = _blurred_points(np.array(path), shape, sigma)
            fraction[where] = np.maximum(fraction[where], np.clip(tube / tube.max() * 2.0 - 0.3, 0, 1))
    fraction *= anatomy.mask
    lesion_total = sum(lesion.fractions.values())
    fraction[lesion.local] *= np.clip(1 - 4 * lesion_total, 0, 1)  # outside the tumour and its margin
    return fraction


def _blurred_points(points: np.ndarray, shape: tuple[int, ...], sigma: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Unit points ``(N, 3)`` Gaussian-blurred, on the smallest region of ``shape`` the kernel reaches: the same
    values as blurring the whole volume (the kernel is cut at 4 sigma), at a fraction of its cost."""
    reach = int(4 * sigma + 0.5) + 1  # scipy's kernel radius at truncate=4, and one voxel more
    low = np.maximum(points.min(0) - reach, 0)
    high = np.minimum(points.max(0) + reach + 1, shape)
    where = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    local = np.zeros(tuple(high - low), dtype=np.float32)
    local[tuple((points - low).T)] = 1
    return where, ndi.gaussian_filter(local, sigma)


def _mimic_gains(rng: np.random.Generator, gains: dict[str, dict[str, float]]) -> dict[str, float]:
    """The mimics' intensity per modality: as bright as the enhancing rim on T1ce, tissue-like elsewhere."""
    return {
        "t1ce": gains["t1ce"]["et"] * rng.uniform(0.75, 1.25),
        "t1": gains["t1"]["gm"] * rng.uniform(0.8, 1.15),
        "t2": gains["t2"]["gm"] * rng.uniform(0.5, 1.3),  # flow voids dark, choroid plexus brighter
        "flair": gains["flair"]["gm"] * rng.uniform(0.6, 1.2),
    }


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """A smooth multiplicative field: a random quadratic polynomial scaled to +-amplitude."""
    x, y, z = (np.linspace(-1, 1, s, dtype=np.float32) for s in shape)
    c = rng.standard_normal(9).astype(np.float32)
    poly = (
        (c[0] * x + c[1] * x**2)[:, None, None]
        + (c[2] * y + c[3] * y**2)[None, :, None]
        + (c[4] * z + c[5] * z**2)[None, None, :]
        + c[6] * (x[:, None] * y[None, :])[:, :, None]
        + c[7] * (x[:, None] * z[None, :])[:, None, :]
        + c[8] * (y[:, None] * z[None, :])[None, :, :]
    )
    return 1 + poly * np.float32(amplitude / np.abs(poly).max())


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise, as in a magnitude MR image."""
    real = signal + rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    imaginary = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.hypot(real, imaginary)


# Edema is swollen tissue: it replaces this share of the signal, the underlying WM/GM shows through the rest.
_OEDEMA_SHARE = 0.75


def _contrast(anatomy: _Anatomy, lesion: _Lesion, intensity: dict[str, float]) -> np.ndarray:
    """Noise-free signal: tissue fractions weighted by intensity, the lesion replacing normal tissue."""
    signal = sum(np.float32(intensity[t]) * anatomy.fractions[t] for t in TISSUES)
    lesion_fractions = lesion.fractions
    replaced = lesion_fractions["ncr"] + lesion_fractions["et"] + _OEDEMA_SHARE * lesion_fractions["ed"]
    lesion_signal = lesion.texture * (
        np.float32(intensity["ncr"]) * lesion_fractions["ncr"]
        + np.float32(intensity["et"]) * lesion_fractions["et"]
        + np.float32(_OEDEMA_SHARE * intensity["ed"]) * lesion_fractions["ed"]
    )
    signal[lesion.local] = signal[lesion.local] * np.clip(1 - replaced, 0, 1) + lesion_signal
    return signal


def _narrow_contrasts(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """The first generator's contrasts: every compartment within +-8 % of CONTRASTS."""
    return {m: {k: v * rng.uniform(0.92, 1.08) for k, v in CONTRASTS[m].items()} for m in MODALITIES}


def _wide_contrasts(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-case intensities over a wide range (x0.55-1.8 of CONTRASTS each), keeping the orderings that
    define the pathology and the sequences: FLAIR oedema above WM, GM and CSF with CSF suppressed; T2
    oedema above WM and GM, CSF brightest; T1ce enhancing rim above necrosis, WM and GM."""
    drawn = {m: {k: v * float(np.exp(rng.uniform(-0.6, 0.6))) for k, v in CONTRASTS[m].items()} for m in MODALITIES}
    flair, t2, t1ce = drawn["flair"], drawn["t2"], drawn["t1ce"]
    flair["ed"] = max(flair["ed"], max(flair["wm"], flair["gm"]) * rng.uniform(1.15, 1.6))
    flair["csf"] = min(flair["csf"], 0.5 * min(flair["wm"], flair["gm"]))
    t2["ed"] = max(t2["ed"], max(t2["wm"], t2["gm"]) * rng.uniform(1.1, 1.5))
    t2["csf"] = max(t2["csf"], max(t2.values()) * rng.uniform(1.0, 1.3))
    t1ce["et"] = max(t1ce["et"], max(t1ce["ncr"], t1ce["wm"], t1ce["gm"]) * rng.uniform(1.2, 1.8))
    return drawn


# Core (NCR/NET) over the oedema's visible signal, per modality: from stark necrosis to subtle
# non-enhancing tumour, which BraTS labels NCR/NET alike; never brighter on T1/T1ce (no enhancement).
_CORE_OVER_OEDEMA: dict[str, tuple[float, float]] = {
    "flair": (0.35, 1.15),
    "t2": (0.7, 1.8),
    "t1": (0.3, 0.95),
    "t1ce": (0.3, 0.95),
}


def _core_against_oedema(
    rng: np.random.Generator, gains: dict[str, dict[str, float]], ranges: dict[str, tuple[float, float]]
) -> dict[str, dict[str, float]]:
    """The core's intensity redrawn in ``ranges`` of the oedema as _contrast renders it (over WM)."""
    drawn = {m: dict(g) for m, g in gains.items()}
    for modality in MODALITIES:
        low, high = ranges[modality]
        g = drawn[modality]
        oedema = _OEDEMA_SHARE * g["ed"] + (1 - _OEDEMA_SHARE) * g["wm"]
        g["ncr"] = oedema * float(rng.uniform(low, high))
    return drawn


def _core_contrasts(rng: np.random.Generator, gains: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The ``core`` family's core against the oedema; the enhancing rim stays above the core on T1ce."""
    drawn = _core_against_oedema(rng, gains, _CORE_OVER_OEDEMA)
    t1ce = drawn["t1ce"]
    t1ce["et"] = max(t1ce["et"], 1.2 * t1ce["ncr"])
    return drawn


# A core without enhancement as faint as the oedema around it (``faint_core``), over the oedema's visible
# signal: non-enhancing tumour that BraTS labels NCR/NET but that differs from oedema by a tenth or less.
_FAINT_CORE_OVER_OEDEMA: dict[str, tuple[float, float]] = {
    "flair": (0.8, 1.05),
    "t2": (0.8, 1.2),
    "t1": (0.9, 1.05),
    "t1ce": (0.9, 1.05),
}


def _faint_core_contrasts(rng: np.random.Generator, gains: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The core of a tumour without ET redrawn within about a tenth of the oedema on every modality."""
    return _core_against_oedema(rng, gains, _FAINT_CORE_OVER_OEDEMA)


@dataclass(frozen=True)
class _Acquisition:
    """One modality's acquisition: bias amplitude, noise, blur, slice thickness, gamma and scale."""

    bias: float
    noise: float
    scale: float
    blur: float = 0.0
    thick_axis: int = 2
    thickness: int = 1
    gamma: float = 1.0


def _acquisitions(rng: np.random.Generator, wide: bool) -> list[_Acquisition]:
    if not wide:
        bias, noise, scale = (rng.uniform(lo, hi, size=len(MODALITIES)) for lo, hi in _NARROW_ACQUISITION)
        return [_Acquisition(float(b), float(n), float(s)) for b, n, s in zip(bias, noise, scale, strict=True)]
    drawn = []
    for _ in MODALITIES:
        thick = rng.random() < 0.3
        drawn.append(
            _Acquisition(
                bias=float(rng.uniform(0.0, 0.35)),
                noise=float(rng.uniform(0.005, 0.08)),
                scale=float(np.exp(rng.uniform(np.log(150.0), np.log(4000.0)))),
                blur=float(rng.uniform(0.3, 1.2)) if rng.random() < 0.5 else 0.0,
                thick_axis=int(rng.integers(3)),
                thickness=int(rng.integers(2, 7)) if thick else 1,
                gamma=float(np.exp(rng.uniform(-0.35, 0.35))),
            )
        )
    return drawn


# Narrow acquisition ranges (low, high): bias amplitude, noise level, intensity scale.
_NARROW_ACQUISITION = ((0.08, 0.18), (0.015, 0.035), (600.0, 1400.0))


def _thick_slices(volume: np.ndarray, axis: int, thickness: int) -> np.ndarray:
    """Average ``thickness`` slices along ``axis`` (a thick acquisition), keep every one of them."""
    if thickness <= 1:
        return volume
    averaged = ndi.uniform_filter1d(volume, thickness, axis=axis)
    return np.take(averaged, np.arange(thickness // 2, volume.shape[axis], thickness), axis=axis)


def _back_to_1mm(volume: np.ndarray, axis: int, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling along ``axis`` back onto the 1 mm grid of ``shape``."""
    if volume.shape == shape:
        return volume
    factors = [1.0] * 3
    factors[axis] = shape[axis] / volume.shape[axis]
    resampled = ndi.zoom(volume, factors, order=1, grid_mode=True, mode="nearest")
    pad = [(0, max(0, s - r)) for s, r in zip(shape, resampled.shape, strict=True)]
    return np.pad(resampled, pad, mode="edge")[tuple(slice(0, s) for s in shape)]


def make_phantom(
    case_id: str, seed: int, index: int, randomise: Randomisation = WIDE, non_enhancing: float = NON_ENHANCING_SHARE
) -> PhantomCase:
    """Generate one BraTS-like case; the same ``(seed, index, randomise, non_enhancing)`` gives the same arrays.

    Images are int16 (240, 240, 155), zero outside the brain; ``classes`` holds network classes
    (0 background, 1 NCR, 2 ED, 3 ET). Every class is present, except ET in the wide generator's
    non-enhancing tumours. ``randomise`` says which families vary widely (module docstring);
    ``non_enhancing`` is the share of wide lesion foci without ET (1.0: every case without ET).
    """
    rng = np.random.default_rng([seed, index])
    anatomy = _place_anatomy(rng, wide=randomise.anatomy)
    anatomy, lesion = _grow_lesion(rng, anatomy, wide=randomise.lesion, non_enhancing=non_enhancing)
    gains = _wide_contrasts(rng) if randomise.contrast else _narrow_contrasts(rng)
    if randomise.core:
        gains = _core_contrasts(np.random.default_rng([seed, index, 1]), gains)
    if randomise.faint_core and not (lesion.classes == LESION_CLASSES["et"]).any():
        gains = _faint_core_contrasts(np.random.default_rng([seed, index, 3]), gains)
    acquisitions = _acquisitions(rng, wide=randomise.acquisition)
    modality_rngs = rng.spawn(len(MODALITIES))
    mimics, mimic_gains = None, {}
    if randomise.mimics:
        mimics_rng = np.random.default_rng([seed, index, 2])
        mimics, mimic_gains = _enhancing_mimics(mimics_rng, anatomy, lesion), _mimic_gains(mimics_rng, gains)

    def synthesise(i: int) -> np.ndarray:
        modality, acquisition, modality_rng = MODALITIES[i], acquisitions[i], modality_rngs[i]
        signal = _contrast(anatomy, lesion, gains[modality])
        if mimics is not None:
            signal += mimics * (np.float32(mimic_gains[modality]) - signal)
        signal *= _bias_field(modality_rng, signal.shape, acquisition.bias)
        if acquisition.blur:
            signal = ndi.gaussian_filter(signal, acquisition.blur)
        reference = max(gains[modality][t] for t in TISSUES)
        if acquisition.thickness > 1:
            thick = _thick_slices(signal, acquisition.thick_axis, acquisition.thickness)
            noisy = _rician(modality_rng, thick, acquisition.noise * reference)
            brain = _back_to_1mm(noisy, acquisition.thick_axis, signal.shape)[anatomy.mask]
        else:
            # Skull-stripped like BraTS: noise only inside the brain, which stays nonzero (>= 1).
            brain = _rician(modality_rng, signal[anatomy.mask], acquisition.noise * reference)
        if acquisition.gamma != 1.0:
            top = np.float32(np.percentile(brain, 99.9))
            brain = top * np.clip(brain / top, 0, None) ** np.float32(acquisition.gamma)
        placed = np.zeros(anatomy.mask.shape, dtype=np.int16)
        placed[anatomy.mask] = np.clip(np.rint(brain * np.float32(acquisition.scale)), 1, np.iinfo(np.int16).max)
        image = np.zeros(GRID_SHAPE, dtype=np.int16)
        image[anatomy.box] = placed
        return image

    images = dict(zip(MODALITIES, _parallel_map(synthesise, range(len(MODALITIES))), strict=True))
    classes = np.zeros(GRID_SHAPE, dtype=np.uint8)
    classes[anatomy.box][lesion.local] = lesion.classes
    tissues = np.zeros(GRID_SHAPE, dtype=np.uint8)
    csf, gm, wm = (anatomy.fractions[t] for t in TISSUES)
    dominant = np.where((wm >= gm) & (wm >= csf), 3, np.where(gm >= csf, 2, 1)).astype(np.uint8)
    tissues[anatomy.box] = dominant * anatomy.mask
    return PhantomCase(case_id, images, classes, BRATS_AFFINE.copy(), tissues)


def nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file with 1 mm zooms and qform = sform (code 1), byte-for-byte reproducible."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    # mtime=0 and no file name in the gzip header: the same data always gives the same bytes.
    return gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)


def write_case(case: PhantomCase, case_dir: Path, naming: Naming = "2021") -> Path:
    """Write a case's four modalities and its label map as BraTS-named ``.nii.gz`` files."""
    case_dir.mkdir(parents=True, exist_ok=True)
    volumes = dict(case.images)
    volumes["seg"] = from_classes(case.classes, "2023" if naming == "2023" else "2021")

    def write(key: str) -> None:
        path = case_dir / case_filename(case.case_id, key, naming)
        atomic_write(path, lambda temporary: temporary.write_bytes(nifti_bytes(volumes[key], case.affine)))

    _parallel_map(write, list(volumes))
    return case_dir


def write_phantoms(
    out_dir: Path,
    n: int,
    seed: int,
    naming: Naming = "2021",
    start: int = 0,
    preview: bool = False,
    progress: Callable[[int], None] | None = None,
    randomise: Randomisation = WIDE,
    non_enhancing: float = NON_ENHANCING_SHARE,
    workers: int = 1,
) -> list[Path]:
    """Generate ``n`` cases (indices ``start`` .. ``start + n - 1``) as ``out_dir/<case_id>/`` folders.

    Each folder holds ``case_filename(case_id, key, naming)`` for t1, t1ce, t2, flair and seg, and
    with ``preview`` a ``<case_id>_preview.png``. ``randomise`` says which families of variation are
    drawn widely (default: all); ``non_enhancing`` the share of lesion foci without ET. ``progress``
    is called with the number of cases done after each one. ``workers`` > 1 makes cases in that many
    processes (the same files: each case depends on its seed and index alone). Returns the case
    folders in index order.
    """
    job = partial(
        _write_one,
        out_dir=Path(out_dir),
        seed=seed,
        naming=naming,
        preview=preview,
        randomise=randomise,
        non_enhancing=non_enhancing,
    )
    indices = range(start, start + n)
    if workers <= 1:
        folders = []
        for done, index in enumerate(indices, start=1):
            folders.append(job(index))
            if progress is not None:
                progress(done)
        return folders
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(job, index) for index in indices]
        for done, _ in enumerate(as_completed(futures), start=1):
            if progress is not None:
                progress(done)
        return [future.result() for future in futures]


def _write_one(
    index: int, out_dir: Path, seed: int, naming: Naming, preview: bool, randomise: Randomisation, non_enhancing: float
) -> Path:
    case_id = case_id_for(index, naming)
    case = make_phantom(case_id, seed, index, randomise, non_enhancing)
    folder = write_case(case, out_dir / case_id, naming)
    if preview:
        from latup_edge.data.preview import write_preview  # PIL only when a preview is asked for

        write_preview(case, folder / f"{case_id}_preview.png")
    return folder
