"""BraTS-like phantom cases: a real brain anatomy, four MRI contrasts and a glioma-like lesion.

The anatomy is the MNI152 2009a symmetric template and its grey/white-matter probability maps that
ship inside the nilearn wheel (read as data files; nilearn itself is never imported). Each case
places the brain into the BraTS grid (240x240x155 at 1 mm, LPS voxel order like BraTS) with a small
random scale, rotation and shift, grows a lesion in white matter (enhancing rim ET around a necrotic
core NCR, edema ED that spreads along white matter), synthesises T1, T1ce, T2 and FLAIR from the
tissue and lesion fractions, and adds a smooth bias field and Rician noise.

>>> case = make_phantom("BraTS2021_00000", seed=0, index=0)
>>> case.images["flair"].shape, case.images["flair"].dtype, sorted(set(case.classes.flat))
((240, 240, 155), dtype('int16'), [0, 1, 2, 3])
>>> folders = write_phantoms(Path("phantoms"), n=4, seed=0)  # phantoms/BraTS2021_00000/... x4
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from latup_edge.data.labels import from_classes
from latup_edge.data.naming import MODALITIES, Naming, case_filename, case_id_for
from latup_edge.data.preview import write_preview
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
_MAX_LESION_DRAWS = 50
_GZIP_LEVEL = 1  # nibabel's default: the int16 noise barely compresses further, and level 1 is fast

T = TypeVar("T")
R = TypeVar("R")


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
    lesion_centres: np.ndarray


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
    return _Template(
        gm=gm,
        wm=wm,
        mask=mask.astype(np.uint8) * 255,
        centre=(low + high) / 2.0,
        half_extent=(high - low) / 2.0,
        lesion_centres=candidates[cerebral],
    )


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """A rotation matrix from angles (degrees) about the three voxel axes."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _place_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Place the template brain into the BraTS grid with a small random scale, rotation and shift."""
    template = _template()
    scale = rng.uniform(0.92, 1.0) * rng.uniform(0.97, 1.03, size=3)
    forward = _FLIP @ _rotation(rng.uniform([-3, -3, -6], [3, 3, 6])) @ np.diag(scale)
    centre = _GRID_BRAIN_CENTRE + rng.uniform([-4, -4, -2], [4, 4, 2])

    # Only the brain's bounding box in the grid is computed; the rest of the grid stays zero.
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    reach = np.abs(signs * template.half_extent @ forward.T).max(0)
    low = np.clip(np.floor(centre - reach) - 2, 0, None).astype(int)
    high = np.minimum(np.ceil(centre + reach) + 3, GRID_SHAPE).astype(int)
    box = (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))

    inverse = np.linalg.inv(forward)
    offset = template.centre - inverse @ (centre - low)

    def resample(volume: np.ndarray) -> np.ndarray:
        placed = ndi.affine_transform(
            volume, inverse, offset=offset, output_shape=tuple(high - low), output=np.float32, order=1
        )
        return placed * np.float32(1 / 255)

    gm, wm, mask_fraction = _parallel_map(resample, [template.gm, template.wm, template.mask])
    mask = mask_fraction >= 0.5
    csf = np.clip(mask_fraction - gm - wm, 0, 1)
    fractions = {name: f * mask for name, f in zip(TISSUES, (csf, gm, wm), strict=True)}

    def to_box(template_voxels: np.ndarray) -> np.ndarray:
        return forward @ (template_voxels - template.centre) + centre - low

    return _Anatomy(box=box, fractions=fractions, mask=mask, to_box=to_box)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float) -> np.ndarray:
    """Gaussian-smoothed noise with unit standard deviation, drawn at half resolution for speed."""
    coarse = rng.standard_normal([s // 2 + 2 for s in shape], dtype=np.float32)
    coarse = ndi.gaussian_filter(coarse, sigma_mm / 2, mode="wrap")
    coarse /= coarse.std() + 1e-6
    fine = ndi.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)
    return fine[tuple(slice(0, s) for s in shape)]


def _draw_lesion(rng: np.random.Generator, anatomy: _Anatomy) -> _Lesion:
    """One glioma-like lesion draw: a deformed ellipsoid (rim ET, core NCR) and WM-seeking edema."""
    template = _template()
    radius = rng.uniform(9.0, 20.0)
    axes = radius * rng.uniform(0.75, 1.25, size=3)
    orientation = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    wobble = rng.uniform(0.12, 0.28)
    rim = rng.uniform(2.0, 5.0)
    edema_reach = rng.uniform(5.0, 18.0)
    centre = anatomy.to_box(template.lesion_centres[rng.integers(len(template.lesion_centres))])

    box_shape = np.array(anatomy.mask.shape)
    half = axes.max() * 1.35 + edema_reach * 1.4 + 3
    low = np.clip(np.floor(centre - half), 0, None).astype(int)
    high = np.minimum(np.ceil(centre + half) + 1, box_shape).astype(int)
    local = (slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2]))
    shape = tuple(int(s) for s in high - low)

    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    offsets = [(g - c).astype(np.float32) for g, c in zip(grid, centre - low, strict=True)]
    # Normalised radius of a rotated ellipsoid: 1 on its surface.
    rotated = [sum(orientation[k, j] * offsets[j] for j in range(3)) for k in range(3)]
    rho = np.sqrt(sum((r / np.float32(a)) ** 2 for r, a in zip(rotated, axes, strict=True)))
    boundary = np.clip(1 + wobble * _smooth_noise(rng, shape, radius / 2.5), 0.7, 1.35)
    rim_fraction = (rim / radius) * np.clip(1 + 0.35 * _smooth_noise(rng, shape, 3.0), 0.4, 1.8)

    brain = anatomy.mask[local]
    # Edema swells tissue but does not fill ventricles or sulci.
    tissue = brain & (anatomy.fractions["csf"][local] < 0.5)
    core = (rho < boundary) & brain
    necrosis = (rho < boundary - rim_fraction) & brain
    # Edema follows white matter: its reach from the core scales with the local WM fraction.
    wm = ndi.gaussian_filter(anatomy.fractions["wm"][local], 1.5)
    reach = edema_reach * np.clip((0.3 + 0.9 * wm) * (1 + 0.25 * _smooth_noise(rng, shape, 4.0)), 0, 1.4)
    edema = (ndi.distance_transform_edt(~core) < reach) & tissue & ~core
    components, _ = ndi.label(edema | core)
    edema &= np.isin(components, np.unique(components[core]))

    classes = np.zeros(shape, dtype=np.uint8)
    classes[edema] = LESION_CLASSES["ed"]
    classes[core] = LESION_CLASSES["et"]
    classes[necrosis] = LESION_CLASSES["ncr"]
    # Partial volume at compartment borders, as a 1 mm acquisition would blur them.
    fractions = {
        name: ndi.gaussian_filter((classes == value).astype(np.float32), 0.6) * brain
        for name, value in LESION_CLASSES.items()
    }
    texture = 1 + 0.08 * _smooth_noise(rng, shape, 1.5)
    return _Lesion(local=local, classes=classes, fractions=fractions, texture=texture)


def _lesion_is_valid(lesion: _Lesion) -> bool:
    """Every sub-region present with a non-trivial volume and a whole tumour of realistic size."""
    counts = np.bincount(lesion.classes.ravel(), minlength=4)
    sizes_ok = all(counts[LESION_CLASSES[name]] >= n for name, n in MIN_VOXELS.items())
    return sizes_ok and WT_RANGE[0] <= counts[1:].sum() <= WT_RANGE[1]


def _grow_lesion(rng: np.random.Generator, anatomy: _Anatomy) -> _Lesion:
    """Draw lesions until one meets the volume requirements (the next draw of the same rng)."""
    for _ in range(_MAX_LESION_DRAWS):
        lesion = _draw_lesion(rng, anatomy)
        if _lesion_is_valid(lesion):
            return lesion
    raise RuntimeError(f"no valid lesion in {_MAX_LESION_DRAWS} draws: the volume limits are too tight")


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


def _contrast(anatomy: _Anatomy, lesion: _Lesion, intensity: dict[str, float]) -> np.ndarray:
    """Noise-free signal: tissue fractions weighted by intensity, the lesion replacing normal tissue."""
    signal = sum(np.float32(intensity[t]) * anatomy.fractions[t] for t in TISSUES)
    lesion_fractions = lesion.fractions
    # Edema is swollen tissue: a share of the underlying WM/GM stays visible through it.
    replaced = lesion_fractions["ncr"] + lesion_fractions["et"] + 0.75 * lesion_fractions["ed"]
    lesion_signal = lesion.texture * (
        np.float32(intensity["ncr"]) * lesion_fractions["ncr"]
        + np.float32(intensity["et"]) * lesion_fractions["et"]
        + np.float32(0.75 * intensity["ed"]) * lesion_fractions["ed"]
    )
    signal[lesion.local] = signal[lesion.local] * np.clip(1 - replaced, 0, 1) + lesion_signal
    return signal


def make_phantom(case_id: str, seed: int, index: int) -> PhantomCase:
    """Generate one BraTS-like case; the same ``(seed, index)`` always gives the same arrays.

    Images are int16 (240, 240, 155), zero outside the brain; ``classes`` holds network classes
    (0 background, 1 NCR, 2 ED, 3 ET) and every class is present.
    """
    rng = np.random.default_rng([seed, index])
    anatomy = _place_anatomy(rng)
    lesion = _grow_lesion(rng, anatomy)
    gains = {m: {k: v * rng.uniform(0.92, 1.08) for k, v in CONTRASTS[m].items()} for m in MODALITIES}
    bias_amplitudes = rng.uniform(0.08, 0.18, size=len(MODALITIES))
    noise_levels = rng.uniform(0.015, 0.035, size=len(MODALITIES))
    scales = rng.uniform(600.0, 1400.0, size=len(MODALITIES))
    modality_rngs = rng.spawn(len(MODALITIES))

    def synthesise(i: int) -> np.ndarray:
        modality = MODALITIES[i]
        signal = _contrast(anatomy, lesion, gains[modality])
        signal *= _bias_field(modality_rngs[i], signal.shape, bias_amplitudes[i])
        reference = max(gains[modality][t] for t in TISSUES)
        # Skull-stripped like BraTS: noise only inside the brain, which stays nonzero (>= 1).
        brain = _rician(modality_rngs[i], signal[anatomy.mask], noise_levels[i] * reference)
        placed = np.zeros(anatomy.mask.shape, dtype=np.int16)
        placed[anatomy.mask] = np.clip(np.rint(brain * np.float32(scales[i])), 1, np.iinfo(np.int16).max)
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
) -> list[Path]:
    """Generate ``n`` cases (indices ``start`` .. ``start + n - 1``) as ``out_dir/<case_id>/`` folders.

    Each folder holds ``case_filename(case_id, key, naming)`` for t1, t1ce, t2, flair and seg, and
    with ``preview`` a ``<case_id>_preview.png``. ``progress`` is called with the number of cases
    done after each one. Returns the case folders in index order.
    """
    folders = []
    for done, index in enumerate(range(start, start + n), start=1):
        case_id = case_id_for(index, naming)
        case = make_phantom(case_id, seed, index)
        folder = write_case(case, Path(out_dir) / case_id, naming)
        if preview:
            write_preview(case, folder / f"{case_id}_preview.png")
        folders.append(folder)
        if progress is not None:
            progress(done)
    return folders
