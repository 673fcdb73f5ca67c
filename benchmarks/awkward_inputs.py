"""What does ``segment`` do with awkward copies of one good case?

From one BraTS-named case (four modalities and its label file) the script writes variants a user's
folder may hold: z-scored float64, uint8, RAS voxel order, a NIfTI ``scl_slope``/``scl_inter`` that
puts 10 outside the brain, a whole-volume z-score (a negative constant outside), a noise floor outside
the brain, 4-D with a trailing 1, a missing modality, a NaN, a truncated file, 1.2 mm
voxels, an all-zero T1, FLAIR's file given as T2 too, and four swaps (T1/T1ce, FLAIR/T1ce, T1/T2,
FLAIR/T1). It
segments the folder once with the shipped bundle (or ``--bundle``), checks that no input byte changed,
and prints per variant the status, Dice against the source's labels (moved onto the output's grid by
nearest neighbour), and the error or flags.

    python benchmarks/awkward_inputs.py runs/indep/BraTS-GLI-00001-000 --work /tmp/awkward

Writes ``benchmarks/awkward_inputs.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage

from latup_edge.data.cases import discover_cases, load_case_labels
from latup_edge.data.naming import case_filename
from latup_edge.evaluate.metrics import agreement
from latup_edge.runtime.segment import SegmentSettings, segment_cases

HERE = Path(__file__).resolve().parent
Variant = Callable[[str, nib.Nifti1Image], nib.Nifti1Image | None]


def z_scored(key: str, image: nib.Nifti1Image) -> nib.Nifti1Image:
    data = image.get_fdata()
    brain = data != 0
    data[brain] = (data[brain] - data[brain].mean()) / data[brain].std()
    return nib.Nifti1Image(data, image.affine)


def uint8(key: str, image: nib.Nifti1Image) -> nib.Nifti1Image:
    data = image.get_fdata()
    return nib.Nifti1Image(np.round(data / data.max() * 255).astype(np.uint8), image.affine)


def offset(key: str, image: nib.Nifti1Image) -> nib.Nifti1Image:
    scaled = nib.Nifti1Image(np.asanyarray(image.dataobj).astype(np.int16), image.affine)
    scaled.header.set_slope_inter(0.5, 10.0)  # 10 outside the brain once scaled
    return scaled


def thinner_voxels(key: str, image: nib.Nifti1Image) -> nib.Nifti1Image:
    affine = image.affine.copy()
    affine[:3, :3] *= 1.2
    return nib.Nifti1Image(ndimage.zoom(image.get_fdata(dtype=np.float32), 1 / 1.2, order=1), affine)


def only(keys: tuple[str, ...], change: Variant) -> Variant:
    return lambda key, image: change(key, image) if key in keys else image


VARIANTS: dict[str, Variant] = {
    "as given": lambda key, image: image,
    "z-scored float64": z_scored,
    "uint8": uint8,
    "RAS voxel order": lambda key, image: nib.as_closest_canonical(image),
    "scl_inter 10 (background 10)": offset,
    "4-D, trailing 1": lambda key, image: nib.Nifti1Image(np.asanyarray(image.dataobj)[..., None], image.affine),
    "T2 missing": only(("t2",), lambda key, image: None),
    "one NaN in FLAIR": only(("flair",), lambda key, image: _with_nan(image)),
    "T2 truncated": lambda key, image: image,  # truncated after writing
    "1.2 mm voxels": thinner_voxels,
    "T1 all zeros": only(("t1",), lambda key, image: nib.Nifti1Image(np.zeros(image.shape, np.int16), image.affine)),
    "T1 and T1ce swapped": lambda key, image: image,  # renamed after writing
    "FLAIR and T1ce swapped": lambda key, image: image,  # renamed after writing
    "T2 file is a copy of FLAIR": lambda key, image: image,  # copied after writing
    "T1 and T2 swapped": lambda key, image: image,  # renamed after writing
    "FLAIR and T1 swapped": lambda key, image: image,  # renamed after writing
    "z-scored over the whole volume (background < 0)": lambda key, image: _whole_z(image),
    "a noise floor outside the brain": lambda key, image: _noise_floor(image),
}
SWAPPED = {
    "T1 and T1ce swapped": ("t1", "t1ce"),
    "FLAIR and T1ce swapped": ("flair", "t1ce"),
    "T1 and T2 swapped": ("t1", "t2"),
    "FLAIR and T1 swapped": ("flair", "t1"),
}


def _with_nan(image: nib.Nifti1Image) -> nib.Nifti1Image:
    data = image.get_fdata(dtype=np.float32)
    data[tuple(s // 2 for s in data.shape)] = np.nan
    return nib.Nifti1Image(data, image.affine)


def _whole_z(image: nib.Nifti1Image) -> nib.Nifti1Image:
    data = image.get_fdata(dtype=np.float32)
    return nib.Nifti1Image((data - data.mean()) / data.std(), image.affine)


def _noise_floor(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """A skull-stripped brain whose background holds Rician noise at 3 % of the brain's median, not zeros."""
    data = image.get_fdata(dtype=np.float32)
    sigma = 0.03 * float(np.median(data[data != 0]))
    rng = np.random.default_rng(0)
    floor = np.hypot(rng.normal(0, sigma, data.shape), rng.normal(0, sigma, data.shape)).astype(np.float32)
    return nib.Nifti1Image(np.where(data != 0, data, floor), image.affine)


def write_variants(source: Path, root: Path) -> dict[str, str]:
    """Each variant as its own case folder under ``root``; returns variant -> case id."""
    (case,) = discover_cases(source)
    ids = {}
    for number, (name, change) in enumerate(VARIANTS.items()):
        case_id = f"BraTS2021_{90000 + number:05d}"
        folder = root / case_id
        folder.mkdir(parents=True)
        for key, path in case.files.items():
            changed = change(key, nib.load(path))
            if changed is not None:
                nib.save(changed, folder / case_filename(case_id, key, "2021"))
        ids[name] = case_id
    truncated = root / ids["T2 truncated"] / case_filename(ids["T2 truncated"], "t2", "2021")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    for name, keys in SWAPPED.items():
        swapped = root / ids[name]
        first, second = (swapped / case_filename(swapped.name, key, "2021") for key in keys)
        first.rename(swapped / "tmp.nii.gz")
        second.rename(first)
        (swapped / "tmp.nii.gz").rename(second)
    copied = root / ids["T2 file is a copy of FLAIR"]
    shutil.copyfile(
        copied / case_filename(copied.name, "flair", "2021"), copied / case_filename(copied.name, "t2", "2021")
    )
    return ids


def digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path, help="one BraTS-named case folder with its label file")
    parser.add_argument("--work", type=Path, required=True, help="emptied, then holds the variants and outputs")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "awkward_inputs.json")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    inputs, outputs = args.work / "in", args.work / "out"
    ids = write_variants(args.case.resolve(), inputs)
    before = digest(inputs)
    log = segment_cases([inputs], outputs, SegmentSettings(bundle=args.bundle))
    unchanged = digest(inputs) == before
    (source,) = discover_cases(args.case)
    truth, _ = load_case_labels(source)
    truth_image = nib.Nifti1Image(truth, nib.load(source.seg).affine)
    entries = {entry["case_id"]: entry for entry in log["cases"]}
    rows = []
    for name, case_id in ids.items():
        entry = entries[case_id]
        dice = None
        labels_path = outputs / f"{case_id}.nii.gz"
        if labels_path.exists():  # Dice on the output's own grid; the truth moved there by nearest neighbour
            written = nib.load(labels_path)
            on_grid = np.asarray(resample_from_to(truth_image, written, order=0).dataobj)
            classes = np.asarray(written.dataobj).astype(np.uint8)
            classes[classes == 4] = 3
            dice = {k: round(v, 3) for k, v in agreement(classes, on_grid).items()}
        rows.append({"variant": name, "status": entry["status"], "dice": dice, "error": entry["error"],
                     "flags": entry["flags"]})  # fmt: skip
        shown = "/".join(f"{v:.3f}" for v in dice.values()) if dice else "-"
        print(f"{name:<30} {entry['status']:<7} {shown:<20} {entry['error'] or '; '.join(entry['flags']) or ''}")
    print(f"inputs unchanged: {unchanged}")
    args.out.write_text(json.dumps({"source": str(args.case), "inputs_unchanged": unchanged, "rows": rows},
                                   indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
