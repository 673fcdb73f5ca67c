"""A third, independently written generator of BraTS-like glioma cases ("blind" to the project's other generators).

Each case is a different head made from the MNI152 2009a template that nilearn ships (T1, grey- and white-matter
probability maps): a random global affine, a smooth random non-linear warp, a random change of ventricle size and
the mass effect of the tumour are composed into one resampling of the tissue maps onto the BraTS grid (240 x 240 x
155, 1 mm, ``diag(-1, -1, 1)`` affine, skull-stripped). Gliomas are grown in that space: an irregular lobulated core
(enhancing rim around necrosis for glioblastoma-like cases, a non-enhancing core for ~18 % low-grade-like cases),
1-3 foci, in the lobes, deep grey matter or the posterior fossa, with oedema that spreads faster along white matter,
slowly into cortex and never into CSF or the ventricles. The four images are partial-volume mixtures of per-class
intensities drawn per case from plausible ranges that keep each sequence's tissue ordering, then blurred, scaled by a
smooth bias field, given Rician noise and stored as int16 with a random per-case, per-modality scale.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from latup_edge.data.naming import case_filename, case_id_for
from latup_edge.fileio import atomic_write, gzip_bytes

SHAPE: tuple[int, int, int] = (240, 240, 155)
# BraTS 2021 files: x = -i, y = 239 - j, z = k in nibabel's RAS+ world (ITK reports this origin as (0, -239, 0)).
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
LABELS: tuple[int, ...] = (0, 1, 2, 4)

# Template voxel of MNI (0, 0, 0) in nilearn's 197 x 233 x 189 grid (affine diag(1, 1, 1), origin (-98, -134, -72)).
_MNI_ORIGIN = np.array([98.0, 134.0, 72.0])
# Tumour sites (MNI mm, right hemisphere as x > 0 is mirrored at random) and how often each is drawn.
_SITES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "frontal": ((30, 35, 25), (40, 20, 35), (25, 50, 5), (35, 10, 50)),
    "temporal": ((45, -15, -15), (40, 5, -25), (50, -35, 0)),
    "parietal": ((35, -50, 45), (40, -35, 35), (25, -60, 55)),
    "occipital": ((25, -80, 15), (30, -75, 0)),
    "deep": ((12, -18, 8), (22, 5, 2), (28, -5, 10)),
    "infratentorial": ((25, -60, -35), (5, -25, -30), (15, -50, -30)),
}
_SITE_WEIGHTS: dict[str, float] = {
    "frontal": 0.32,
    "temporal": 0.22,
    "parietal": 0.17,
    "occipital": 0.08,
    "deep": 0.13,
    "infratentorial": 0.08,
}
# Internal tissue classes; seg labels follow (necrosis and non-enhancing tumour are both label 1).
_NEC, _NET, _ENH, _OED = 1, 3, 4, 2


def _template_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")  # locate, do not import: nilearn's import is slow and unneeded
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed: the blind generator needs its shipped MNI152 template")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def _template() -> dict[str, np.ndarray]:
    """MNI152 2009a tissue maps (float32 in [0, 1]) on nilearn's 1 mm grid, plus brain and ventricle masks."""
    folder = _template_dir()

    def load(kind: str) -> np.ndarray:
        img = nib.load(folder / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")
        return (np.asarray(img.dataobj, dtype=np.float32) / 255.0).astype(np.float32)

    t1, gm, wm = load("t1"), load("gm"), load("wm")
    tissue = ndi.binary_dilation((gm + wm) > 0.3, iterations=3)
    brain = ndi.binary_fill_holes(tissue & (t1 > 0.02))
    csf = np.clip(brain - gm - wm, 0.0, 1.0).astype(np.float32)
    lab, n = ndi.label(csf > 0.6)
    vent = np.zeros(brain.shape, bool)
    for i, sl in enumerate(ndi.find_objects(lab)):
        if sl is None:
            continue
        comp = lab[sl] == i + 1
        if comp.sum() < 3000:
            continue
        centre = np.array([s.start + c for s, c in zip(sl, ndi.center_of_mass(comp), strict=True)]) - _MNI_ORIGIN
        if abs(centre[0]) < 35 and -40 < centre[1] < 10 and 0 < centre[2] < 30:  # the lateral ventricles
            vent[sl] |= comp
    vent = ndi.binary_dilation(vent, iterations=1) & (csf > 0.4)
    return {"gm": gm, "wm": wm, "csf": csf, "brain": brain.astype(np.float32), "vent": vent.astype(np.float32)}


def _interp_matrix(n_out: int, n_coarse: int, spacing: float) -> np.ndarray:
    """Rows of Gaussian weights that spread ``n_coarse`` control values smoothly over ``n_out`` samples."""
    pos = (np.arange(n_out, dtype=np.float32) + 0.5) / spacing
    nodes = np.arange(n_coarse, dtype=np.float32) - 0.5
    w = np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) / 0.75) ** 2)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """A smooth random field with unit standard deviation and features about ``spacing`` voxels apart."""
    coarse = tuple(int(np.ceil(s / spacing)) + 2 for s in shape)
    field = rng.standard_normal(coarse).astype(np.float32)
    # Separable upsampling (three small matrix products): much faster than ndimage.zoom on a full volume.
    for axis, (n_out, n_c) in enumerate(zip(shape, coarse, strict=True)):
        field = np.moveaxis(np.tensordot(_interp_matrix(n_out, n_c, spacing), field, axes=(1, axis)), 0, axis)
    return ((field - field.mean()) / (field.std() + 1e-6)).astype(np.float32)


def _fine_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (field / (field.std() + 1e-6)).astype(np.float32)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def blind_case_plan(seed: int, index: int) -> dict:
    """The random choices of case ``index`` that do not need the images (grade, sites, sizes); cheap."""
    rng = np.random.default_rng([int(seed), int(index), 0x5EED])
    tpl = _template()
    grade = "lgg" if rng.random() < 0.18 else "gbm"
    n_lesions = 1
    if rng.random() < 0.14:
        n_lesions = 2 if rng.random() < 0.7 else 3
    names = list(_SITE_WEIGHTS)
    weights = np.array([_SITE_WEIGHTS[k] for k in names])
    region = names[rng.choice(len(names), p=weights / weights.sum())]
    side = 1.0 if rng.random() < 0.5 else -1.0
    hi = 60.0 if region == "infratentorial" else 200.0
    lo_v, hi_v = (5.0, hi) if grade == "gbm" else (12.0, min(hi, 150.0))
    # Log-volume skewed towards the large end: BraTS whole tumours are mostly tens of millilitres or more.
    volume = float(np.exp(np.log(lo_v) + np.log(hi_v / lo_v) * rng.beta(1.8, 1.2)))
    sites = []
    base = np.array(_SITES[region][rng.integers(len(_SITES[region]))], float) * np.array([side, 1, 1])
    for k in range(n_lesions):
        for _ in range(100):
            if k == 0:
                mni = base + rng.normal(0, 5, 3)
            else:  # satellites 18-45 mm from the first focus
                d = rng.normal(size=3)
                mni = sites[0] + d / np.linalg.norm(d) * rng.uniform(18, 45)
            v = np.round(mni + _MNI_ORIGIN).astype(int)
            if np.any(v < 0) or np.any(v >= tpl["brain"].shape):
                continue
            if tpl["brain"][tuple(v)] > 0.5 and tpl["csf"][tuple(v)] < 0.3 and tpl["vent"][tuple(v)] < 0.5:
                break
        sites.append(mni)
    shares = rng.dirichlet(np.full(n_lesions, 2.0)) if n_lesions > 1 else np.ones(1)
    core_fraction = rng.uniform(0.25, 0.6) if grade == "gbm" else rng.uniform(0.35, 0.8)
    return {
        "grade": grade,
        "region": region,
        "hemisphere": "left" if side > 0 else "right",
        "n_lesions": n_lesions,
        "sites_mni": [tuple(float(x) for x in s) for s in sites],
        "target_volume_ml": volume,
        "lesion_shares": [float(s) for s in shares],
        "core_fraction": float(core_fraction),
    }


def _contrast(rng: np.random.Generator) -> dict[str, dict[int, float]]:
    """Per-class mean intensities relative to white matter, drawn per case; classes 10/11/12 are WM/GM/CSF."""
    u = rng.uniform
    t1 = {10: 1.0, 11: u(0.68, 0.82), 12: u(0.18, 0.35), _OED: u(0.62, 0.8), _NET: u(0.55, 0.72)}
    t1 |= {_ENH: u(0.62, 0.82), _NEC: u(0.25, 0.45), 13: t1[12]}
    t1ce = {k: v for k, v in t1.items()}
    t1ce |= {11: t1[11] * u(1.0, 1.05), _OED: t1[_OED] * u(1.0, 1.05), _NET: t1[_NET] * u(1.0, 1.06)}
    t1ce |= {_ENH: u(1.5, 2.2), _NEC: t1[_NEC] * u(1.0, 1.1), 13: u(1.1, 1.4)}  # 13: choroid plexus
    t2 = {10: 1.0, 11: u(1.25, 1.55), 12: u(2.6, 3.6), _OED: u(1.9, 2.6), _NET: u(1.8, 2.5)}
    t2 |= {_ENH: u(1.5, 2.0), _NEC: u(2.1, 3.2)}
    t2[13] = t2[12]
    oed = u(1.75, 2.5)
    flair = {10: 1.0, 11: u(1.12, 1.35), 12: u(0.2, 0.5), _OED: oed, _NET: oed * u(0.8, 0.98)}
    flair |= {_ENH: oed * u(0.6, 0.85), _NEC: oed * u(0.35, 0.95)}
    flair[13] = flair[12] * u(1.0, 1.5)
    return {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair}


def _lesion_core(
    rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular, lobulated core mask on ``shape`` and its level-set function (< 1 inside)."""
    grid = np.indices(shape, dtype=np.float32)
    axes = rng.uniform(0.75, 1.3, 3)
    rot = _rotation(rng, 90.0).astype(np.float32)
    rel = np.tensordot(rot, grid - centre.reshape(3, 1, 1, 1).astype(np.float32), axes=1)
    phi = np.sqrt(sum((rel[i] / axes[i]) ** 2 for i in range(3))) / radius
    for _ in range(rng.integers(1, 4)):  # lobules: smaller blobs set into the border
        d = rng.normal(size=3)
        c2 = centre + d / np.linalg.norm(d) * radius * rng.uniform(0.5, 0.9)
        r2 = radius * rng.uniform(0.35, 0.65)
        phi = np.minimum(phi, np.sqrt(((grid - c2.reshape(3, 1, 1, 1).astype(np.float32)) ** 2).sum(0)) / r2)
    phi = phi - rng.uniform(0.18, 0.35) * _smooth_noise(rng, shape, max(4.0, radius / 2.5))
    phi = phi - 0.08 * _smooth_noise(rng, shape, 3.0)
    return phi < 1.0, phi


def make_blind_case(seed: int, index: int) -> dict:
    """One case, determined by ``(seed, index)`` alone.

    Returns a dict with:
      ``flair``, ``t1``, ``t1ce``, ``t2``: int16 arrays of shape ``SHAPE`` (0 outside the brain, >= 1 inside);
      ``seg``: uint8 labels {0, 1, 2, 4}; ``affine``: 4 x 4 float64 (``AFFINE``); ``brain``: bool brain mask;
      ``tissue``: float32 partial-volume maps ``wm``, ``gm``, ``csf`` of the normal tissue left (0 in the tumour),
      ``vent`` (ventricles), and ``necrosis``, ``net`` (non-enhancing tumour) bool masks that split label 1;
      ``plan``: the ``blind_case_plan`` dict with the measured volumes added.
    """
    plan = blind_case_plan(seed, index)
    rng = np.random.default_rng([int(seed), int(index), 0xB1D])
    tpl = _template()

    # ---- head geometry: output voxel p -> template voxel x = c_t + M (warp(p) - c_o - t)
    scale = rng.uniform(0.9, 1.1) * rng.uniform(0.97, 1.03, 3)
    rot = _rotation(rng, 8.0)
    flip = np.diag([-1.0, -1.0, 1.0])  # template axes are RAS, BraTS voxel axes run to the right and posterior
    m = flip @ rot @ np.diag(1.0 / scale)
    m_inv = np.linalg.inv(m)
    c_t = np.array([98.0, 117.0, 78.0])  # centre of the template's brain box
    # Put the vertex ~4-10 mm below the top slice, as BraTS crops do: the lowest brainstem may fall off the grid.
    c_o = np.array([119.5, 119.5, SHAPE[2] - 1 - rng.uniform(4, 10) - 78.0 * scale[2]])
    shift = np.array([rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-3, 0)])
    brain_idx = np.argwhere(tpl["brain"] > 0.5)
    lo_t, hi_t = brain_idx.min(0), brain_idx.max(0)
    corners = np.array([[a, b, c] for a in (lo_t[0], hi_t[0]) for b in (lo_t[1], hi_t[1]) for c in (lo_t[2], hi_t[2])])
    out_corners = (m_inv @ (corners - c_t).T).T + c_o + shift
    lo = np.clip(np.floor(out_corners.min(0)) - 10, 0, None).astype(int)
    hi = np.minimum(np.ceil(out_corners.max(0)) + 11, SHAPE).astype(int)
    crop = tuple(int(h - low) for low, h in zip(lo, hi, strict=True))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))

    warp_amp = rng.uniform(1.5, 4.0)
    disp = np.stack([_smooth_noise(rng, crop, 28.0) for _ in range(3)]) * np.float32(warp_amp)

    # Tumour centres in crop coordinates: invert the affine, then the warp by fixed-point iteration.
    centres = []
    for mni in plan["sites_mni"]:
        x = np.asarray(mni) + _MNI_ORIGIN
        q = m_inv @ (x - c_t) + c_o + shift - lo
        p = q.copy()
        for _ in range(4):
            d = np.array([ndi.map_coordinates(disp[i], p.reshape(3, 1), order=1, mode="nearest")[0] for i in range(3)])
            p = q - d
        centres.append(np.clip(p, 2, np.array(crop) - 3))

    total = plan["target_volume_ml"] * 1000.0
    radii = [
        # Below the nominal radius: lobules and the noisy border make the core bigger than its sphere.
        float(np.cbrt(3 * total * plan["core_fraction"] * s / (4 * np.pi))) * rng.uniform(0.72, 0.9)
        for s in plan["lesion_shares"]
    ]

    # ---- sample the tissue maps through mass effect, warp, affine and ventricle scaling
    pts = np.indices(crop, dtype=np.float32).reshape(3, -1)
    src = pts.copy()
    for c, r in zip(centres, radii, strict=True):
        k = rng.uniform(0.3, 0.6) * min(1.0, r / 15.0)  # < 1 keeps the push one-to-one (no folding)
        sigma2 = (1.6 * r + 5.0) ** 2
        rel = src - c.reshape(3, 1).astype(np.float32)
        src = c.reshape(3, 1).astype(np.float32) + rel * (1.0 - k * np.exp(-(rel**2).sum(0) / sigma2))
    src += disp.reshape(3, -1)
    src += (lo - c_o - shift).reshape(3, 1).astype(np.float32)
    src = (m.astype(np.float32) @ src) + c_t.reshape(3, 1).astype(np.float32)
    cv = _MNI_ORIGIN + np.array([0.0, -15.0, 14.0])  # centre of the lateral ventricles
    kv = rng.uniform(-0.25, 0.45)  # > 0 enlarges the ventricles
    rel = src - cv.reshape(3, 1).astype(np.float32)
    g = np.exp(-((rel / np.array([[24.0], [38.0], [18.0]], np.float32)) ** 2).sum(0))
    src = cv.reshape(3, 1).astype(np.float32) + rel * (1.0 - kv * g)
    del rel, g, pts
    warped = {
        key: ndi.map_coordinates(tpl[key], src, order=1, mode="constant", cval=0.0).reshape(crop)
        for key in ("gm", "wm", "csf", "vent")
    }
    del src
    brain = ndi.binary_fill_holes((warped["gm"] + warped["wm"] + warped["csf"]) > 0.5)
    lab, n = ndi.label(brain)
    if n > 1:
        brain = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    wm, gm, csf, vent = warped["wm"], warped["gm"], warped["csf"], warped["vent"] > 0.5

    # ---- tumour: cores, necrosis / rim, oedema, all inside the brain and outside the ventricles
    cls = np.zeros(crop, np.uint8)
    inside = ndi.binary_erosion(brain, iterations=2) & ~vent & (csf < 0.7)
    core = np.zeros(crop, bool)
    grade = plan["grade"]
    for c, r in zip(centres, radii, strict=True):
        half = int(np.ceil(1.8 * r + 4))
        lb = np.maximum(np.floor(c).astype(int) - half, 0)
        ub = np.minimum(np.floor(c).astype(int) + half + 1, crop)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lb, ub, strict=True))
        mask, phi = _lesion_core(rng, tuple(int(x) for x in ub - lb), c - lb, r)
        mask &= inside[sl]
        lab, n = ndi.label(mask)
        if n > 1:
            mask = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        core[sl] |= mask
        if grade == "gbm":
            rim = rng.uniform(2.0, 5.0) if r > 8 else rng.uniform(1.2, 2.5)
            deep = ndi.distance_transform_edt(mask) > rim * (1.0 + 0.5 * _smooth_noise(rng, mask.shape, 5.0))
            nec_level = rng.uniform(0.45, 0.85) if r > 8 else rng.uniform(0.0, 0.5)
            nec = deep & (phi < nec_level + 0.15 * _smooth_noise(rng, mask.shape, 4.0))
            sub = cls[sl]
            sub[mask] = _ENH
            sub[nec] = _NEC
            if rng.random() < 0.4:  # part of the solid rim that does not enhance (BraTS label 1 as well)
                patch = mask & ~nec & (_smooth_noise(rng, mask.shape, 6.0) > rng.uniform(0.8, 1.5))
                sub[patch] = _NET
        else:
            cls[sl][mask] = _NET
            if r > 10 and rng.random() < 0.3:  # a cystic / necrotic-looking part without enhancement
                cyst = (ndi.distance_transform_edt(mask) > 3) & (_smooth_noise(rng, mask.shape, 5.0) > 1.0)
                cls[sl][cyst] = _NEC

    # Oedema grows from the core as a discrete front: one step per iteration into white matter, several into cortex.
    target = max(total, core.sum() * 1.15)
    grow_to = int(np.ceil(3.0 * np.cbrt(3 * total / (4 * np.pi)))) + 6
    idx = np.argwhere(core)
    if len(idx):
        lb = np.maximum(idx.min(0) - grow_to, 0)
        ub = np.minimum(idx.max(0) + grow_to + 1, crop)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lb, ub, strict=True))
        rough = 0.35 * _smooth_noise(rng, wm[sl].shape, 6.0) + 0.25 * _smooth_noise(rng, wm[sl].shape, 12.0)
        wm_eff = np.clip(wm[sl] + rough, 0.0, 1.0)
        # Random extra delays break up the polyhedral fronts that uniform dilation draws in plain white matter.
        delay = (1 + np.floor(3.5 * (1.0 - wm_eff) + np.clip(rough, 0, None) * -2 + 0.8)).clip(1, 6).astype(np.uint8)
        allowed = brain[sl] & ~vent[sl] & (csf[sl] < 0.5)
        wt = core[sl].copy()
        count = np.zeros(wt.shape, np.uint8)
        six = ndi.generate_binary_structure(3, 1)
        core_idx = np.argwhere(wt)
        c_lo, c_hi = core_idx.min(0), core_idx.max(0) + 1
        volume = int(wt.sum())
        for it in range(200):
            if volume >= target:
                break
            # The front moves at most one voxel per step: work in the core's box grown by the steps taken.
            bb = tuple(slice(max(0, int(a) - it - 1), int(b) + it + 1) for a, b in zip(c_lo, c_hi, strict=True))
            w = wt[bb]
            front = ndi.binary_dilation(w, six if it % 2 else None) & ~w & allowed[bb]
            if not front.any():
                break
            cnt = count[bb]
            cnt[front] += 1
            new = front & (cnt >= delay[bb])
            w |= new
            volume += int(new.sum())
        wt = (ndi.gaussian_filter(wt.astype(np.float32), 1.2) > 0.5) & allowed | core[sl]
        sub = cls[sl]
        sub[wt & (sub == 0)] = _OED

    seg = np.zeros(crop, np.uint8)
    seg[(cls == _NEC) | (cls == _NET)] = 1
    seg[cls == _OED] = 2
    seg[cls == _ENH] = 4
    brain |= seg > 0

    # ---- images: partial-volume mixture of class means (tumour terms only in the tumour's box)
    idx = np.argwhere(cls > 0)
    t_lo = np.maximum(idx.min(0) - 4, 0) if len(idx) else np.zeros(3, int)
    t_hi = np.minimum(idx.max(0) + 5, crop) if len(idx) else np.ones(3, int)
    tb = tuple(slice(int(a), int(b)) for a, b in zip(t_lo, t_hi, strict=True))
    frac = {c: ndi.gaussian_filter((cls[tb] == c).astype(np.float32), 0.6) for c in (_NEC, _NET, _ENH, _OED)}
    tumour = np.zeros(crop, np.float32)
    tumour[tb] = np.clip(sum(frac.values()), 0.0, 1.0)
    normal = gm + wm + csf
    norm = np.where(normal > 1e-3, (1.0 - tumour) / np.maximum(normal, 1e-3), 0.0).astype(np.float32)
    gm_f, wm_f, csf_f = gm * norm, wm * norm, csf * norm
    gm_f = np.where(normal > 1e-3, gm_f, 1.0 - tumour)  # tissue maps can be empty at the brain edge
    del norm, normal, tumour
    # Choroid plexus: a few small enhancing tufts in the posterior part of the ventricles.
    chor = np.zeros(crop, np.float32)
    vidx = np.argwhere(vent)
    if len(vidx):
        post = vidx[vidx[:, 1] > np.percentile(vidx[:, 1], 60)]
        for j in rng.choice(len(post), size=min(4, len(post)), replace=False):
            chor[tuple(post[j])] = 1.0
        chor = np.clip(ndi.gaussian_filter(ndi.binary_dilation(chor > 0, iterations=2).astype(np.float32), 0.7), 0, 1)
        chor *= csf_f
    contrast = _contrast(rng)
    het = _fine_noise(rng, frac[_OED].shape, 1.5)  # tumour texture
    het2 = _fine_noise(rng, frac[_OED].shape, 3.0)
    images = {}
    out_mask = np.zeros(SHAPE, bool)
    out_mask[box] = brain
    for mod in MODALITIES:
        mu = contrast[mod]
        img = wm_f * mu[10] + gm_f * mu[11] + (csf_f - chor) * mu[12] + chor * mu[13]
        tex_amp = rng.uniform(0.05, 0.14)
        w1, w2 = rng.normal(size=2)
        tex = 1.0 + tex_amp * (w1 * het + w2 * het2) / np.hypot(w1, w2)
        sub = img[tb]
        for c in (_NEC, _NET, _ENH, _OED):
            sub += frac[c] * mu[c] * (tex if c != _OED else 1.0 + 0.4 * (tex - 1.0))
        sig = rng.uniform(0.3, 0.8)
        sig_z = sig if mod in ("t1", "t1ce") else rng.uniform(sig, 1.4)  # 2-D T2/FLAIR: thicker slices
        img = ndi.gaussian_filter(img, (sig, sig, sig_z))
        img *= np.exp(rng.uniform(0.04, 0.15) * _smooth_noise(rng, crop, 60.0))  # receive-coil bias
        noise = rng.uniform(0.01, 0.045)
        vals = img[brain]  # Rician noise: magnitude of a complex signal with Gaussian noise in both channels
        n = vals.size
        vals = np.hypot(vals + noise * rng.standard_normal(n, np.float32), noise * rng.standard_normal(n, np.float32))
        level = _loguniform(rng, 100.0, 1500.0)  # white-matter value in scanner units
        img = np.zeros(crop, np.float32)
        img[brain] = np.clip(np.rint(vals * level), 1, 32767)
        full = np.zeros(SHAPE, np.int16)
        full[box] = img
        images[mod] = full

    def place(a: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(SHAPE, dtype)
        out[box] = a
        out[~out_mask] = 0
        return out

    seg_full = place(seg, np.uint8)
    tissue = {
        "wm": place(wm_f, np.float32),
        "gm": place(gm_f, np.float32),
        "csf": place(csf_f, np.float32),
        "vent": place(vent, bool),
        "necrosis": place(cls == _NEC, bool),
        "net": place(cls == _NET, bool),
    }
    plan = dict(plan)
    plan["volumes_ml"] = {
        "whole": float((seg_full > 0).sum() / 1000.0),
        "core": float(np.isin(seg_full, (1, 4)).sum() / 1000.0),
        "enhancing": float((seg_full == 4).sum() / 1000.0),
    }
    return {**images, "seg": seg_full, "affine": AFFINE.copy(), "brain": out_mask, "tissue": tissue, "plan": plan}


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return gzip_bytes(img.to_bytes())  # fixed gzip header: the same case always gives the same bytes


def write_blind_cases(out_dir: Path, n: int, seed: int, start: int = 0) -> list[Path]:
    """Write cases ``start .. start + n - 1`` as BraTS 2021 folders under ``out_dir``; returns the case folders."""
    out_dir = Path(out_dir)
    folders = []
    for index in range(start, start + n):
        case = make_blind_case(seed, index)
        case_id = case_id_for(index, "2021")
        folder = out_dir / case_id
        folder.mkdir(parents=True, exist_ok=True)
        for key in (*MODALITIES, "seg"):
            data = _nifti_bytes(case[key], case["affine"])
            atomic_write(folder / case_filename(case_id, key, "2021"), lambda tmp, data=data: tmp.write_bytes(data))
        folders.append(folder)
    return folders
