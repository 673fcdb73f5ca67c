"""An independent generator of BraTS-like test cases, to measure how far the network generalises.

The training phantoms (``phantom.py``) teach the network; a score on cases that generator made says
little about data it did not make. This module makes such data, and is never used for training. It is
independent by construction: it shares no code with ``phantom.py`` (it imports nothing from the project
but ``atomic_write``) and has its own model of every part of a case:

- anatomy: the MNI152 2009a symmetric template (T1, GM and WM maps) that ships in the nilearn wheel, read
  as plain NIfTI files and placed in the BraTS 240x240x155 LPS grid under a random affine; CSF is the brain
  mask minus GM and WM;
- contrast: per-tissue T1, T2 and proton density (published 1.5T/3T values, varied per case) through the
  signal equations of clinical sequences (spoiled gradient echo, spin echo or MPRAGE-like inversion
  recovery for T1, the same after gadolinium for T1ce, fast spin echo T2, CSF-nulled FLAIR), summed over
  the partial-volume fractions of each voxel;
- lesion: a metaball tumour core with an enhancing shell and necrosis inside, and oedema spread from it by
  a stochastic growth that is fast in white matter, slow in grey matter and never enters CSF;
- artefacts: a cosine bias field, Rician noise, optional blur, a random global intensity scale.

>>> folders = write_independent_cases(Path("independent"), n=4, seed=0)  # independent/BraTS-GLI-00000-000/
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from latup_edge.fileio import atomic_write

GRID_SHAPE = (240, 240, 155)
# BraTS voxel order (LPS): the template's x and y axes flipped.
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
GRID_CENTRE = np.array([119.5, 119.5, 77.0])
MODALITIES = ("t1", "t1ce", "t2", "flair")
# BraTS 2023 file suffix of each modality.
FILE_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
NORMAL_TISSUES = ("csf", "gm", "wm")  # tissue map values 1, 2, 3
LESION_LABELS = {"ncr": 1, "ed": 2, "et": 3}  # BraTS 2023 label values

TEMPLATE_SHAPE = (197, 233, 189)
TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
SITE_STRIDE = 2  # mm between candidate lesion sites (and of the ventricle map)
VENTRICLE_DEPTH_MM = 12.0  # CSF this deep inside the brain counts as ventricle (or cistern): no tumour there


@dataclass(frozen=True)
class Relaxation:
    """Relaxation times (ms) and proton density of a tissue; scalars, or arrays for a varying tissue."""

    t1: float | np.ndarray
    t2: float | np.ndarray
    pd: float | np.ndarray


@dataclass(frozen=True)
class Sequence:
    """One MR acquisition: ``kind`` is 'gradient echo', 'spin echo' or 'inversion recovery' (times in ms)."""

    kind: str
    tr: float
    te: float
    flip_deg: float = 90.0
    ti: float = 0.0


@dataclass(frozen=True)
class Gadolinium:
    """Contrast agent: relaxivities (/mM/s) and the concentration (mM) each tissue takes up."""

    r1: float
    r2: float
    concentration: dict[str, float]


@dataclass
class IndependentCase:
    """One generated case on the BraTS grid: int16 images, BraTS 2023 labels and the normal-tissue map."""

    case_id: str
    images: dict[str, np.ndarray]  # t1, t1ce, t2, flair
    labels: np.ndarray  # uint8: 0 background, 1 NCR, 2 ED, 3 ET
    affine: np.ndarray
    tissues: np.ndarray  # uint8: 0 outside the brain, 1 CSF, 2 GM, 3 WM (the dominant normal tissue)


def signal(tissue: Relaxation, sequence: Sequence) -> float | np.ndarray:
    """The steady-state signal equation of ``sequence`` for ``tissue`` (magnitude, arbitrary units)."""
    e1 = np.exp(-sequence.tr / tissue.t1)
    if sequence.kind == "gradient echo":
        flip = np.deg2rad(sequence.flip_deg)
        t2_star = 0.6 * tissue.t2  # static field inhomogeneity shortens T2 to T2*
        return tissue.pd * np.sin(flip) * (1 - e1) / (1 - np.cos(flip) * e1) * np.exp(-sequence.te / t2_star)
    if sequence.kind == "spin echo":
        return tissue.pd * (1 - e1) * np.exp(-sequence.te / tissue.t2)
    if sequence.kind == "inversion recovery":
        return tissue.pd * np.abs(1 - 2 * np.exp(-sequence.ti / tissue.t1) + e1) * np.exp(-sequence.te / tissue.t2)
    raise ValueError(
        f"unknown sequence kind {sequence.kind!r}: expected gradient echo, spin echo or inversion recovery"
    )


def with_gadolinium(tissue: Relaxation, concentration: float | np.ndarray, agent: Gadolinium) -> Relaxation:
    """Relaxation after contrast: 1/T1 += r1*C and 1/T2 += r2*C (relaxivities per second, times in ms)."""
    return Relaxation(
        t1=1 / (1 / tissue.t1 + agent.r1 * concentration / 1000),
        t2=1 / (1 / tissue.t2 + agent.r2 * concentration / 1000),
        pd=tissue.pd,
    )


def draw_relaxation(rng: np.random.Generator) -> dict[str, Relaxation]:
    """Native relaxation of every tissue for one case.

    Normal tissue varies by up to about +-13 %: a factor shared by all tissues (field strength, scanner)
    times a small per-tissue one, so that the order of tissues on each contrast stays that of real scans.
    """
    field_t1, field_t2 = rng.uniform(0.92, 1.08), rng.uniform(0.94, 1.06)
    nominal = {"csf": (4000.0, 2000.0, 1.0), "gm": (1350.0, 105.0, 0.80), "wm": (850.0, 75.0, 0.70)}
    tissues = {
        name: Relaxation(
            t1=t1 * field_t1 * rng.uniform(0.95, 1.05),
            t2=t2 * field_t2 * rng.uniform(0.95, 1.05),
            pd=pd * rng.uniform(0.96, 1.04),
        )
        for name, (t1, t2, pd) in nominal.items()
    }
    tissues["ed"] = Relaxation(rng.uniform(1300, 1650) * field_t1, rng.uniform(120, 250), rng.uniform(0.80, 0.88))
    tissues["ncr"] = Relaxation(rng.uniform(1800, 2500) * field_t1, rng.uniform(200, 400), rng.uniform(0.90, 1.0))
    tissues["et"] = Relaxation(1300 * field_t1 * rng.uniform(0.9, 1.1), rng.uniform(110, 140), rng.uniform(0.80, 0.90))
    return tissues


def draw_gadolinium(rng: np.random.Generator) -> Gadolinium:
    """Gadolinium for one case: strong in enhancing tumour, the blood-pool share in normal tissue, none in CSF."""
    concentration = {
        "csf": 0.0,
        "gm": rng.uniform(0.02, 0.05),  # cerebral blood volume ~4 % of a ~1 mM plasma level
        "wm": rng.uniform(0.01, 0.025),
        "ed": rng.uniform(0.0, 0.05),
        "ncr": 0.0,
        "et": rng.uniform(0.3, 1.0),  # broken blood-brain barrier
    }
    return Gadolinium(r1=rng.uniform(3.5, 4.5), r2=rng.uniform(4.5, 5.5), concentration=concentration)


def draw_protocol(rng: np.random.Generator) -> dict[str, Sequence]:
    """Clinical sequence parameters for the four modalities; T1ce repeats the T1 sequence after contrast."""
    t1_kind = rng.integers(4)
    if t1_kind == 0:  # 3-D spoiled gradient echo
        t1 = Sequence("gradient echo", tr=rng.uniform(8, 20), te=rng.uniform(2, 5), flip_deg=rng.uniform(18, 30))
    elif t1_kind == 1:  # 2-D spoiled gradient echo
        t1 = Sequence("gradient echo", tr=rng.uniform(150, 400), te=rng.uniform(2.5, 5), flip_deg=rng.uniform(60, 80))
    elif t1_kind == 2:
        t1 = Sequence("spin echo", tr=rng.uniform(400, 600), te=rng.uniform(10, 20))
    else:  # MPRAGE-like, as ideal inversion recovery of the magnetisation
        t1 = Sequence(
            "inversion recovery", tr=rng.uniform(1800, 2000), te=rng.uniform(2.5, 4), ti=rng.uniform(850, 1000)
        )
    t2 = Sequence("spin echo", tr=rng.uniform(3000, 6000), te=rng.uniform(80, 120))
    flair_tr = rng.uniform(8000, 11000)
    csf_t1 = 4000 * rng.uniform(0.95, 1.05)  # the protocol nulls a nominal CSF, not this case's
    null_ti = csf_t1 * np.log(2 / (1 + np.exp(-flair_tr / csf_t1)))
    flair = Sequence("inversion recovery", tr=flair_tr, te=rng.uniform(80, 140), ti=float(np.clip(null_ti, 2200, 2800)))
    return {"t1": t1, "t1ce": t1, "t2": t2, "flair": flair}


def tissue_signals(
    tissues: dict[str, Relaxation], agent: Gadolinium, protocol: dict[str, Sequence]
) -> dict[str, dict[str, float]]:
    """Noise-free signal of each pure tissue on each modality (T1ce with the agent's concentrations)."""
    signals = {}
    for modality, sequence in protocol.items():
        signals[modality] = {
            name: float(signal(_contrast(modality, name, tissue, agent), sequence)) for name, tissue in tissues.items()
        }
    return signals


def template_dir() -> Path:
    """The folder inside the installed nilearn package that holds the MNI152 2009a template files."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "nilearn is not installed: the independent generator reads its MNI152 template files "
            "(pip install 'latup-edge[build]')."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def make_independent_case(seed: int, index: int) -> IndependentCase:
    """Generate case ``index`` of the stream ``seed``; the same pair always gives the same arrays."""
    rng = np.random.default_rng([seed, index])
    # Contrast first: how many draws the lesion takes depends on its shape, and must not move the protocol.
    tissues, agent, protocol = draw_relaxation(rng), draw_gadolinium(rng), draw_protocol(rng)
    signals = tissue_signals(tissues, agent, protocol)
    snr = rng.uniform(12, 45)
    template = _template()
    forward, translation, box = _draw_placement(rng, template)
    mask, fractions = _place_anatomy(template, forward, translation, box)
    lesion = _draw_lesion(rng, template, forward, translation, box, mask, fractions)

    dominant = np.where(mask, np.argmax(np.stack([fractions[name] for name in NORMAL_TISSUES]), axis=0) + 1, 0)
    case_tissues = np.zeros(GRID_SHAPE, np.uint8)
    case_tissues[box] = dominant
    labels = np.zeros(GRID_SHAPE, np.uint8)
    labels[box] = lesion.labels
    images = {}
    for modality in MODALITIES:
        clean = _synthesise(modality, fractions, lesion, tissues, agent, protocol[modality], signals[modality])
        image = np.zeros(GRID_SHAPE, np.int16)
        image[box] = _acquire(rng, clean, mask, noise_sigma=signals[modality]["wm"] / (snr * rng.uniform(0.8, 1.25)))
        images[modality] = image
    return IndependentCase(
        case_id=f"BraTS-GLI-{index:05d}-000",
        images=images,
        labels=labels,
        affine=BRATS_AFFINE.copy(),
        tissues=case_tissues,
    )


def write_independent_cases(
    out_dir: Path, n: int, seed: int, start: int = 0, progress: Callable[[int], None] | None = None
) -> list[Path]:
    """Write cases ``start .. start+n-1`` in BraTS 2023 naming, one folder each; returns the folders.

    ``progress(done)`` is called after each case with the number of cases written so far.
    """
    out_dir = Path(out_dir)
    folders = []
    for done, index in enumerate(range(start, start + n), start=1):
        case = make_independent_case(seed, index)
        folder = out_dir / case.case_id
        folder.mkdir(parents=True, exist_ok=True)
        volumes = {FILE_SUFFIX[modality]: image for modality, image in case.images.items()}
        volumes["seg"] = case.labels
        for suffix, volume in volumes.items():
            image = nib.Nifti1Image(volume, case.affine)
            image.set_qform(case.affine, code=1)
            image.set_sform(case.affine, code=1)
            image.header.set_xyzt_units("mm")
            atomic_write(folder / f"{case.case_id}-{suffix}.nii.gz", lambda tmp, image=image: nib.save(image, tmp))
        folders.append(folder)
        if progress is not None:
            progress(done)
    return folders


# -- anatomy ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    """The template in BraTS voxel order: brain mask, GM/WM fractions and candidate lesion sites."""

    mask: np.ndarray  # float32 0/1
    gm: np.ndarray  # float32 fractions
    wm: np.ndarray
    ventricles: np.ndarray  # float32 0/1 on the SITE_STRIDE grid
    outline: np.ndarray  # (N, 3) voxels of the brain, to measure its extent under an affine
    sites: np.ndarray  # (M, 3) voxels in cerebral white or deep grey matter
    site_depth: np.ndarray  # (M,) mm to the brain's surface
    site_clearance: np.ndarray  # (M,) mm to the ventricles


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
    folder = template_dir()
    volumes, affine = {}, None
    for name in ("t1", "gm", "wm"):
        path = folder / TEMPLATE_FILE.format(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: reinstall nilearn (>= 0.10), which ships the MNI152 template.")
        image = nib.load(path)
        if image.shape != TEMPLATE_SHAPE or nib.aff2axcodes(image.affine) != ("R", "A", "S"):
            raise ValueError(f"{path} is not the 197x233x189 RAS MNI152 2009a template this generator expects.")
        affine = image.affine
        volumes[name] = np.asarray(image.dataobj, dtype=np.float32)[::-1, ::-1, :] / 255.0

    brain, count = ndi.label(volumes["t1"] > 0)
    largest = np.argmax(np.bincount(brain.ravel())[1:]) + 1 if count > 1 else 1
    mask = ndi.binary_fill_holes(brain == largest)
    gm, wm = volumes["gm"] * mask, volumes["wm"] * mask

    # Candidate sites and the ventricles, on a coarse grid.
    s = SITE_STRIDE
    mask_c, gm_c, wm_c = mask[::s, ::s, ::s], gm[::s, ::s, ::s], wm[::s, ::s, ::s]
    csf_c = np.clip(mask_c - gm_c - wm_c, 0, 1)
    depth = ndi.distance_transform_edt(mask_c, sampling=s)
    ventricles = (csf_c > np.maximum(gm_c, wm_c)) & (depth >= VENTRICLE_DEPTH_MM)
    clearance = ndi.distance_transform_edt(~ventricles, sampling=s)
    voxels = np.argwhere(mask_c) * s
    # Millimetres in MNI space (undo the flip), to keep sites out of the cerebellum and brainstem.
    original = np.column_stack(
        [TEMPLATE_SHAPE[0] - 1 - voxels[:, 0], TEMPLATE_SHAPE[1] - 1 - voxels[:, 1], voxels[:, 2]]
    )
    x, y, z = (original @ affine[:3, :3].T + affine[:3, 3]).T
    cerebrum = (z > 0) | ((z > -30) & (np.abs(x) > 28) & (y > -50)) | ((z > -12) & (y > -40) & (np.abs(x) > 8))
    inside = tuple(np.argwhere(mask_c).T)
    tissue_ok = (wm_c[inside] >= 0.6) | ((gm_c[inside] >= 0.5) & (depth[inside] >= 20))
    keep = cerebrum & tissue_ok & (csf_c[inside] < 0.2)
    return _Template(
        mask=mask.astype(np.float32),
        gm=gm,
        wm=wm,
        ventricles=ventricles.astype(np.float32),
        outline=np.argwhere(mask[::3, ::3, ::3]).astype(np.float64) * 3,
        sites=voxels[keep].astype(np.float64),
        site_depth=depth[inside][keep],
        site_clearance=clearance[inside][keep],
    )


def _rotation(angles: np.ndarray) -> np.ndarray:
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _draw_placement(rng: np.random.Generator, template: _Template) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """A random template-to-grid affine (grid = forward @ voxel + translation) and the brain's box in the grid."""
    forward = _rotation(np.deg2rad(rng.uniform(-5, 5, 3))) @ np.diag(rng.uniform(0.9, 1.08, 3))
    shift = rng.uniform(-3, 3, 3)
    points = template.outline @ forward.T
    extent = points.max(axis=0) - points.min(axis=0) + 1
    # The template brain is 155 slices tall: squeeze the grid's z axis where it would not fit.
    room = np.array(GRID_SHAPE) - 2 * np.abs(shift) - 4
    forward = np.diag(np.minimum(1.0, room / extent)) @ forward
    points = template.outline @ forward.T
    translation = GRID_CENTRE + shift - (points.max(axis=0) + points.min(axis=0)) / 2
    lo = np.maximum(np.floor(points.min(axis=0) + translation) - 3, 0).astype(int)
    hi = np.minimum(np.ceil(points.max(axis=0) + translation) + 4, GRID_SHAPE).astype(int)
    return forward, translation, tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def _warp(
    volume: np.ndarray, forward: np.ndarray, translation: np.ndarray, box: tuple[slice, ...], step: int = 1
) -> np.ndarray:
    """Resample a template volume (sampled every ``step`` voxels) onto the grid voxels of ``box``."""
    inverse = np.linalg.inv(forward) / step
    origin = np.array([b.start for b in box])
    shape = tuple(b.stop - b.start for b in box)
    offset = inverse @ (origin - translation)
    return ndi.affine_transform(volume, inverse, offset=offset, output_shape=shape, order=1, output=np.float32)


def _place_anatomy(
    template: _Template, forward: np.ndarray, translation: np.ndarray, box: tuple[slice, ...]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Brain mask and CSF/GM/WM fractions in the grid box; CSF is the mask minus GM and WM."""
    mask = _warp(template.mask, forward, translation, box) > 0.5
    gm = _warp(template.gm, forward, translation, box) * mask
    wm = _warp(template.wm, forward, translation, box) * mask
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    return mask, {"csf": np.where(mask, 1 - gm - wm, 0).astype(np.float32), "gm": gm, "wm": wm}


# -- lesion -----------------------------------------------------------------------------------------------


@dataclass
class _Lesion:
    labels: np.ndarray  # uint8 over the brain box
    region: tuple[slice, ...]  # the part of the box the lesion's partial volume reaches
    fractions: dict[str, np.ndarray]  # ncr/ed/et fractions over region
    water: np.ndarray  # smooth unit field over region: local water content of the lesion
    uptake: np.ndarray  # smooth unit field over region: local contrast uptake


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale_mm: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with features about ``scale_mm`` wide (linear upsampling of a coarse grid)."""
    coarse = tuple(int(np.ceil(n / scale_mm)) + 2 for n in shape)
    field = rng.standard_normal(coarse).astype(np.float32)
    field = ndi.zoom(
        field, [n / c for n, c in zip(shape, coarse, strict=True)], order=1, grid_mode=True, mode="nearest"
    )
    return (field - field.mean()) / (field.std() + 1e-6)


def _shifted(region: tuple[slice, ...], by: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(r.start + a, r.stop + a) for r, a in zip(region, by, strict=True))


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    points = np.argwhere(mask)
    lo = np.maximum(points.min(axis=0) - pad, 0)
    hi = np.minimum(points.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def _metaballs(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, radius: float) -> np.ndarray:
    """A field of 2-6 Gaussian blobs scattered about ``centre``; thresholded, it gives a lobulated mass."""
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    field = np.zeros(shape, np.float32)
    for _ in range(rng.integers(2, 7)):
        blob = centre + rng.normal(0, 0.4 * radius, 3)
        sigma = radius * rng.uniform(0.35, 0.6)
        weight = rng.uniform(0.5, 1.0)
        gx, gy, gz = (np.exp(-((a - c) ** 2) / (2 * sigma**2)) for a, c in zip(axes, blob, strict=True))
        field += weight * gx[:, None, None] * gy[None, :, None] * gz[None, None, :]
    return field


def _draw_lesion(
    rng: np.random.Generator,
    template: _Template,
    forward: np.ndarray,
    translation: np.ndarray,
    box: tuple[slice, ...],
    mask: np.ndarray,
    fractions: dict[str, np.ndarray],
) -> _Lesion:
    small = rng.random() < 0.15
    whole_volume = np.exp(
        rng.uniform(np.log(5_000), np.log(20_000)) if small else rng.uniform(np.log(20_000), np.log(150_000))
    )
    core_volumes = [whole_volume * rng.uniform(0.15, 0.55)]
    enhancing = rng.random() >= 0.1
    if rng.random() < 0.12:
        core_volumes.append(core_volumes[0] * rng.uniform(0.2, 0.6))
    radii = [(3 * v / (4 * np.pi)) ** (1 / 3) for v in core_volumes]

    # Sites in box coordinates: deep enough in the brain, clear of the ventricles, and foci apart.
    origin = np.array([b.start for b in box])
    sites = template.sites @ forward.T + translation - origin
    centres = []
    for radius in radii:
        score = np.minimum(template.site_depth - 0.5 * radius - 4, template.site_clearance - 0.4 * radius - 2)
        if centres:
            gap = np.linalg.norm(sites - centres[0], axis=1) - radii[0] - radius
            score = np.where((gap > 4) & (gap < 25), score, -np.inf)
        eligible = np.flatnonzero(score >= 0)
        if eligible.size == 0 and not centres:  # a large core: take the roomiest tenth of the sites
            eligible = np.flatnonzero(score >= np.quantile(score, 0.9))
        if eligible.size == 0:
            break
        centres.append(sites[rng.choice(eligible)] + rng.uniform(-1, 1, 3))
    radii, core_volumes = radii[: len(centres)], core_volumes[: len(centres)]

    margin = 1.6 * max(radii) + 28  # core lobes, 25 mm of oedema and the partial-volume blur
    lo = np.maximum(np.floor(np.min(centres, axis=0) - margin), 0).astype(int)
    hi = np.minimum(np.ceil(np.max(centres, axis=0) + margin), mask.shape).astype(int)
    local = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    shape = tuple(hi - lo)
    ventricles = _warp(template.ventricles, forward, translation, _shifted(local, origin), SITE_STRIDE)
    brain = mask[local]
    core_allowed = brain & (ventricles < 0.5)

    # Tumour core: each focus a thresholded metaball field with a rough surface, kept where tumour may grow.
    core = np.zeros(shape, bool)
    for centre, radius, volume in zip(centres, radii, core_volumes, strict=True):
        field = _metaballs(rng, shape, centre - lo, radius) * (1 + 0.12 * _smooth_noise(rng, shape, 4.0))
        values = field[core_allowed]
        count = int(np.clip(volume, 1, values.size))
        core |= core_allowed & (field >= np.partition(values, -count)[-count])
    parts, _ = ndi.label(core)
    sizes = np.bincount(parts.ravel())
    core = np.isin(parts, np.flatnonzero(sizes >= 0.3 * min(core_volumes))) & (parts > 0)

    # Enhancing shell of random (locally varying) thickness on the core's boundary; necrosis inside.
    window = _bbox(core, 2)
    inner = ndi.distance_transform_edt(core[window])
    thickness = rng.uniform(1.5, 5.0) * np.clip(1 + 0.35 * _smooth_noise(rng, inner.shape, 6.0), 0.5, 1.8)
    shell = np.zeros(shape, bool)
    shell[window] = core[window] & (inner <= thickness)
    if rng.random() < 0.3:  # patchy enhancement: stretches of the rim do not enhance
        patches = np.zeros(shape, bool)
        patches[window] = _smooth_noise(rng, inner.shape, 8.0) > rng.uniform(-0.8, 0.0)
        shell &= patches
    enhancing_tumour = shell if enhancing else np.zeros(shape, bool)
    necrosis = core & ~enhancing_tumour

    # Oedema: stochastic growth from the core, fast in WM, slow in GM, never into CSF.
    local_fractions = {name: value[local] for name, value in fractions.items()}
    gm, wm, csf = local_fractions["gm"], local_fractions["wm"], local_fractions["csf"]
    oedema_allowed = brain & (csf < np.maximum(gm, wm)) & ~core
    speed = (0.2 + 0.75 * wm / (gm + wm + 1e-6)) * np.clip(0.8 + 0.3 * _smooth_noise(rng, shape, 5.0), 0.3, 1.0)
    reach = (3 * whole_volume / (4 * np.pi)) ** (1 / 3) - (3 * core.sum() / (4 * np.pi)) ** (1 / 3)
    steps = int(np.clip(round(max(reach, 1) * rng.uniform(1.5, 3.0)), 3, 20))  # 18-connected steps reach ~1.2 mm
    whole = core.copy()
    structure = ndi.generate_binary_structure(3, 2)
    for step in range(steps):
        window = _bbox(whole, 2)
        front = ndi.binary_dilation(whole[window], structure) & oedema_allowed[window] & ~whole[window]
        candidates = np.flatnonzero(front)
        grown = np.zeros(front.size, bool)
        grown[candidates[rng.random(candidates.size) < speed[window].ravel()[candidates]]] = True
        whole[window] |= grown.reshape(front.shape)
        if step >= 2 and whole.sum() >= whole_volume:
            break
    oedema = (ndi.gaussian_filter(whole.astype(np.float32), 1.5) > 0.5) & oedema_allowed

    labels = np.zeros(mask.shape, np.uint8)
    labels[local][oedema] = LESION_LABELS["ed"]
    labels[local][necrosis] = LESION_LABELS["ncr"]
    labels[local][enhancing_tumour] = LESION_LABELS["et"]

    # Partial volume: each class's indicator blurred by about half a voxel.
    region = _bbox(labels[local] > 0, 3)
    masks = {"ncr": necrosis, "ed": oedema, "et": enhancing_tumour}
    lesion_fractions = {name: ndi.gaussian_filter(m[region].astype(np.float32), 0.6) for name, m in masks.items()}
    region_shape = lesion_fractions["ed"].shape
    return _Lesion(
        labels=labels,
        region=_shifted(region, lo),
        fractions=lesion_fractions,
        water=_smooth_noise(rng, region_shape, 4.0),
        uptake=_smooth_noise(rng, region_shape, 3.0),
    )


# -- contrast and acquisition -----------------------------------------------------------------------------


def _contrast(
    modality: str, name: str, tissue: Relaxation, agent: Gadolinium, uptake: float | np.ndarray = 1.0
) -> Relaxation:
    """The tissue as ``modality`` sees it: T1ce after gadolinium, the rest native."""
    if modality != "t1ce":
        return tissue
    return with_gadolinium(tissue, agent.concentration[name] * uptake, agent)


def _synthesise(
    modality: str,
    fractions: dict[str, np.ndarray],
    lesion: _Lesion,
    tissues: dict[str, Relaxation],
    agent: Gadolinium,
    sequence: Sequence,
    signals: dict[str, float],
) -> np.ndarray:
    """Noise-free image over the brain box: each voxel the sum of its tissue fractions' signals."""
    image = sum(fractions[name] * np.float32(signals[name]) for name in NORMAL_TISSUES)
    lesion_total = sum(lesion.fractions.values())
    lesion_signal = np.zeros_like(lesion_total)
    # Lesions vary in water content (T1, T2, PD together) and in how much contrast they take up.
    water, uptake = lesion.water, np.clip(1 + 0.3 * lesion.uptake, 0.3, 2.0)
    for name, fraction in lesion.fractions.items():
        base = tissues[name]
        varied = Relaxation(base.t1 * (1 + 0.08 * water), base.t2 * (1 + 0.12 * water), base.pd * (1 + 0.02 * water))
        seen = _contrast(modality, name, varied, agent, uptake)
        lesion_signal += fraction * signal(seen, sequence).astype(np.float32)
    normal_share = np.clip(1 - lesion_total, 0, 1)
    image[lesion.region] = image[lesion.region] * normal_share + lesion_signal / np.maximum(lesion_total, 1)
    return image


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth multiplicative field 1 +- amplitude from a few low-frequency separable 3-D cosines."""
    field = np.zeros(shape, np.float32)
    for _ in range(rng.integers(2, 5)):
        factors = [
            np.cos(2 * np.pi * rng.uniform(0.1, 1.0) * np.arange(n) / n + rng.uniform(0, 2 * np.pi)).astype(np.float32)
            for n in shape
        ]
        field += (
            rng.uniform(0.3, 1.0) * factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
        )
    return 1 + rng.uniform(0.05, 0.25) * field / np.abs(field).max()


def _acquire(rng: np.random.Generator, clean: np.ndarray, mask: np.ndarray, noise_sigma: float) -> np.ndarray:
    """Bias field, Rician noise, optional blur and a random global scale to int16; 0 outside, >= 1 inside."""
    image = clean * _bias_field(rng, clean.shape)
    real = image + noise_sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = noise_sigma * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.hypot(real, imaginary)
    if rng.random() < 0.35:  # softer scanners, or slices thicker than the 1 mm grid
        image = ndi.gaussian_filter(image, [rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.3, 1.2)])
    reference = np.percentile(image[mask][::5], 99.5)
    scaled = np.clip(np.rint(image * (rng.uniform(300, 3000) / reference)), 1, 32767)
    return np.where(mask, scaled, 0).astype(np.int16)
