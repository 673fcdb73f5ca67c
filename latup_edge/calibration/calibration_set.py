"""Calibration sets: the model inputs INT8 quantization calibrates on, with their provenance.

A calibration set is a folder: ``manifest.json`` plus one ``.npy`` per sample, each a float32
(1, 3, D, H, W) model input preprocessed exactly as at inference (normalised with the model's own
method, ``normalization`` in the manifest, then a crop). A set is for models of that normalisation
only: ``read_calibration_set(path, normalization=...)`` refuses it for another. A sample is either
the brain box (what one inference pass sees) or a ``crop_size``^3 crop inside it, centred on a
tumour voxel or on a random brain voxel. The manifest records the seed, every crop's coordinates
and the sha256 of every source NIfTI and of every sample, so a set can be verified on read and
rebuilt bit for bit from the same BraTS folder.

>>> calibration = build_calibration_set(
...     "BraTS2021", "calib", cases=40, kind="mixed", normalization="minmax")  # doctest: +SKIP
>>> for sample in read_calibration_set("calib", normalization="minmax"):     # doctest: +SKIP
...     sample.shape
(1, 3, 144, 176, 144)
(1, 3, 128, 128, 128)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from latup_edge import __version__
from latup_edge.data.cases import BratsCase, discover_cases, load_case_images, load_case_labels
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.data.preprocess import NORMALIZATIONS, SIZE_MULTIPLE, Crop, apply_crop, brain_box, normalize
from latup_edge.errors import LatupError
from latup_edge.fileio import atomic_write, atomic_write_json, sha256_file
from latup_edge.runtime.normalization import LEGACY_NORMALIZATION, describe_normalization

FORMAT = "latup-edge-calibration/1"
MANIFEST = "manifest.json"
Kind = Literal["crop", "brainbox", "mixed"]
KINDS: tuple[str, ...] = ("crop", "brainbox", "mixed")
# The keys a recipe's "calibration" section may hold: build_calibration_set's settings.
RECIPE_SETTINGS = ("cases", "per_case", "kind", "crop_size", "tumour_share", "seed", "exclude", "case_ids")


class CalibrationError(LatupError):
    """A calibration set that cannot be built, read or rebuilt; the message names the file."""


@dataclass(frozen=True)
class CalibrationSet:
    """A calibration set on disk; iterating yields its samples one at a time, memory-mapped.

    >>> calibration = read_calibration_set("calib")   # doctest: +SKIP
    >>> len(calibration), next(iter(calibration)).dtype  # doctest: +SKIP
    (48, dtype('float32'))
    """

    path: Path
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return len(self.manifest["samples"])

    def __iter__(self) -> Iterator[np.ndarray]:
        # Memory-mapped so that only the sample being used is read; the set is never held whole.
        for sample in self.manifest["samples"]:
            yield np.load(self.path / sample["file"], mmap_mode="r")

    @property
    def normalization(self) -> str:
        """The normalisation the samples were made with (a set from before the field: minmax)."""
        return _normalization(self.manifest)

    def summary(self) -> dict[str, Any]:
        """What a bundle manifest records about its calibration: settings, cases, manifest hash."""
        keys = ("kind", "seed", "crop_size", "per_case", "tumour_share", "data_root")
        return {
            **{key: self.manifest[key] for key in keys},
            "normalization": self.normalization,
            "samples": len(self),
            "cases": sorted({sample["case_id"] for sample in self.manifest["samples"]}),
            "manifest_sha256": sha256_file(self.path / MANIFEST),
        }


def _normalization(manifest: dict[str, Any]) -> str:
    return manifest.get("normalization", LEGACY_NORMALIZATION)


def check_crop_size(crop_size: int) -> None:
    """Raise CalibrationError unless ``crop_size`` is a positive multiple of 8 (the network's constraint)."""
    if crop_size <= 0 or crop_size % SIZE_MULTIPLE:
        raise CalibrationError(f"crop size must be a positive multiple of {SIZE_MULTIPLE}, got {crop_size}")


def crop_around(centre: Sequence[int], box: Crop, size: int) -> Crop:
    """A ``size``^3 crop holding ``centre``, moved to lie inside ``box`` (centred on it where too small).

    >>> box = Crop((240, 240, 155), (40, 24, 0), (200, 216, 152))
    >>> crop_around((50, 120, 150), box, 128).start
    (40, 56, 24)
    """
    start = []
    for point, low, high in zip(centre, box.start, box.stop, strict=True):
        if high - low >= size:
            start.append(min(max(point - size // 2, low), high - size))
        else:
            start.append(low - (size - (high - low)) // 2)
    return Crop(box.original_shape, tuple(start), tuple(begin + size for begin in start))


def _random_voxel(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    flat = np.flatnonzero(mask)
    return tuple(int(i) for i in np.unravel_index(flat[rng.integers(len(flat))], mask.shape))


def _save_sample(sample: np.ndarray, path: Path) -> str:
    # np.save appends ".npy" to a path: write through a file object so the temporary name is kept.
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(sample, dtype=np.float32))

    return sha256_file(atomic_write(path, write))


def _sources(case: BratsCase, root: Path, with_seg: bool) -> dict[str, dict[str, str]]:
    files = {key: case.files[key] for key in MODEL_MODALITIES}
    if with_seg and case.seg is not None:
        files["seg"] = case.seg
    return {key: {"path": _relative(path, root), "sha256": sha256_file(path)} for key, path in files.items()}


def _relative(path: Path, root: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def _choose_cases(
    found: list[BratsCase],
    count: int,
    rng: np.random.Generator,
    exclude: Sequence[str],
    case_ids: Sequence[str],
) -> list[BratsCase]:
    by_id = {case.case_id: case for case in found if case.case_id not in set(exclude)}
    if case_ids:
        missing = [case_id for case_id in case_ids if case_id not in by_id]
        if missing:
            raise CalibrationError(f"cases {missing} are not in the data folder (or are excluded)")
        return [by_id[case_id] for case_id in case_ids]
    if not by_id:
        raise CalibrationError("every case in the data folder is excluded: nothing to calibrate on")
    order = rng.permutation(sorted(by_id))
    return [by_id[case_id] for case_id in order[:count]]


def _case_samples(
    case: BratsCase,
    kind: Kind,
    crop_flags: Sequence[bool],
    crop_size: int,
    rng: np.random.Generator,
    normalization: str,
) -> Iterator[tuple[str, Crop, bool, np.ndarray]]:
    """(name, crop, tumour-centred, sample) for one case; ``crop_flags``: which crops aim at tumour."""
    images = normalize(load_case_images(case)[0], normalization)
    box = brain_box(images)
    if kind in ("brainbox", "mixed"):
        yield "brainbox", box, False, apply_crop(images, box)[None]
    brain = np.any(images != 0, axis=0)
    tumour = load_case_labels(case)[0] > 0 if case.seg is not None and any(crop_flags) else None
    for index, wants_tumour in enumerate(crop_flags):
        on_tumour = bool(wants_tumour) and tumour is not None and bool(tumour.any())
        crop = crop_around(_random_voxel(tumour if on_tumour else brain, rng), box, crop_size)
        yield f"crop{index}", crop, on_tumour, apply_crop(images, crop)[None]


def _tumour_flags(crops: int, share: float, rng: np.random.Generator) -> np.ndarray:
    # Exactly round(share * crops) tumour-centred crops, placed at random: the stated mix is the real one.
    flags = np.arange(crops) < round(share * crops)
    rng.shuffle(flags)
    return flags


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CalibrationError(f"{out_dir} already holds files: choose a new folder or delete it first")
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> CalibrationSet:
    atomic_write_json(out_dir / MANIFEST, manifest)
    return CalibrationSet(out_dir, manifest)


def build_calibration_set(
    data_dir: Path | str,
    out_dir: Path | str,
    cases: int = 40,
    per_case: int = 1,
    kind: Kind = "crop",
    crop_size: int = 128,
    tumour_share: float = 0.5,
    seed: int = 0,
    exclude: Sequence[str] = (),
    case_ids: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
    *,
    normalization: str,
) -> CalibrationSet:
    """Build a calibration set from the BraTS folder ``data_dir`` into the new folder ``out_dir``.

    ``normalization`` is that of the model the set calibrates (its config's ``normalization``).

    Up to ``cases`` cases in a seeded random order (or exactly ``case_ids``), never those in
    ``exclude``. Per case: ``brainbox`` one brain box; ``crop`` ``per_case`` crops of
    ``crop_size``^3; ``mixed`` both. ``tumour_share`` of the crops are centred on a tumour voxel
    (cases without a label file fall back to a brain voxel). ``progress(done, total)`` is called
    after each case. The manifest is written last, so an interrupted build leaves no readable set.

    >>> build_calibration_set("BraTS2021", "calib", cases=8, seed=1, normalization="minmax")  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    check_crop_size(crop_size)
    if kind not in KINDS:
        raise CalibrationError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not 0 <= tumour_share <= 1 or per_case < 1 or cases < 1:
        raise CalibrationError("need 0 <= tumour_share <= 1, per_case >= 1 and cases >= 1")
    if normalization not in NORMALIZATIONS:
        raise CalibrationError(f"unknown normalisation {normalization!r}: choose {' or '.join(NORMALIZATIONS)}")
    root = Path(data_dir).resolve()
    rng = np.random.default_rng(seed)
    chosen = _choose_cases(discover_cases(root), cases, rng, exclude, case_ids)
    _prepare_out_dir(out_dir)
    crops_per_case = 0 if kind == "brainbox" else per_case
    flags = _tumour_flags(len(chosen) * crops_per_case, tumour_share, rng).reshape(len(chosen), crops_per_case)
    samples = []
    for done, (case, case_flags) in enumerate(zip(chosen, flags, strict=True), start=1):
        sources = _sources(case, root, with_seg=bool(case_flags.any()))
        for name, crop, on_tumour, sample in _case_samples(case, kind, case_flags, crop_size, rng, normalization):
            file = f"{len(samples):04d}_{case.case_id}_{name}.npy"
            used = sources if on_tumour else {k: v for k, v in sources.items() if k != "seg"}
            samples.append(_sample_entry(file, case.case_id, crop, on_tumour, used, sample, out_dir))
        if progress is not None:
            progress(done, len(chosen))
    manifest = {
        "format": FORMAT,
        "builder": {"latup_edge": __version__, "numpy": np.__version__},
        "seed": seed,
        "kind": kind,
        "crop_size": crop_size,
        "per_case": per_case,
        "tumour_share": tumour_share,
        "tumour_centred_samples": sum(sample["tumour_centred"] for sample in samples),
        "data_root": str(root),
        "cases_requested": list(case_ids) or cases,
        "exclude": list(exclude),
        "modalities": list(MODEL_MODALITIES),
        "normalization": normalization,
        "preprocessing": f"{describe_normalization(normalization)}; then the crop",
        "samples": samples,
    }
    return _write_manifest(out_dir, manifest)


def _sample_entry(
    file: str,
    case_id: str,
    crop: Crop,
    on_tumour: bool,
    sources: dict[str, dict[str, str]],
    sample: np.ndarray,
    out_dir: Path,
) -> dict[str, Any]:
    return {
        "file": file,
        "case_id": case_id,
        "original_shape": list(crop.original_shape),
        "start": list(crop.start),
        "stop": list(crop.stop),
        "shape": list(sample.shape),
        "tumour_centred": on_tumour,
        "sources": sources,
        "sha256": _save_sample(sample, out_dir / file),
    }


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(
            f"{path} not found: this is not a calibration set (build one with `latup-edge calibrate`)"
        ) from None
    except json.JSONDecodeError as error:
        raise CalibrationError(f"{path} is not valid JSON ({error}): rebuild the calibration set") from None
    if manifest.get("format") != FORMAT:
        raise CalibrationError(f"{path} is not a {FORMAT} manifest: rebuild the calibration set")
    return manifest


def read_calibration_set(path: Path | str, normalization: str | None = None) -> CalibrationSet:
    """Open a calibration set folder and verify every sample's sha256 against its manifest.

    With ``normalization`` (the model's), a set made with another normalisation is refused. Raises
    CalibrationError naming that, or the first missing or changed sample file.

    >>> [sample.shape for sample in read_calibration_set("calib", normalization="minmax")]  # doctest: +SKIP
    [(1, 3, 128, 128, 128), ...]
    """
    path = Path(path)
    manifest = _read_manifest(path / MANIFEST)
    made_with = _normalization(manifest)
    if normalization is not None and made_with != normalization:
        raise CalibrationError(
            f"calibration set {path} was normalised with {made_with} but the model expects {normalization}: "
            f"build a new set with `latup-edge calibrate --normalization {normalization}`"
        )
    for sample in manifest["samples"]:
        file = path / sample["file"]
        if not file.is_file():
            raise CalibrationError(f"{file} is missing: rebuild the calibration set")
        if sha256_file(file) != sample["sha256"]:
            raise CalibrationError(
                f"{file} does not match its sha256 in {path / MANIFEST} (changed or damaged): "
                "rebuild the calibration set"
            )
    return CalibrationSet(path, manifest)


def _check_sources(case: BratsCase, sources: dict[str, dict[str, str]]) -> None:
    for key, recorded in sources.items():
        file = case.seg if key == "seg" else case.files.get(key)
        if file is None:
            raise CalibrationError(f"case {case.case_id} has no {key} file any more ({recorded['path']})")
        if sha256_file(file) != recorded["sha256"]:
            raise CalibrationError(
                f"{file} has changed since the calibration set was built (its sha256 differs from "
                "the manifest's): restore the original file or build a new calibration set"
            )


def rebuild_calibration_set(manifest_path: Path | str, data_dir: Path | str, out_dir: Path | str) -> CalibrationSet:
    """Rebuild a calibration set from its manifest and the same BraTS folder (which may have moved).

    Every source file must still have the sha256 the manifest records, and every rebuilt sample
    must hash as before; either failure is a CalibrationError naming the file.

    >>> rebuild_calibration_set("calib/manifest.json", "/data/BraTS2021", "calib-copy")  # doctest: +SKIP
    """
    manifest = _read_manifest(Path(manifest_path))
    normalization = _normalization(manifest)
    out_dir = Path(out_dir)
    root = Path(data_dir).resolve()
    by_id = {case.case_id: case for case in discover_cases(root)}
    _prepare_out_dir(out_dir)
    loaded: tuple[str, np.ndarray] | None = None
    for sample in manifest["samples"]:
        case = by_id.get(sample["case_id"])
        if case is None:
            raise CalibrationError(f"case {sample['case_id']} from {manifest_path} is not under {root}")
        _check_sources(case, sample["sources"])
        if loaded is None or loaded[0] != case.case_id:  # samples of one case are consecutive
            loaded = case.case_id, normalize(load_case_images(case)[0], normalization)
        crop = Crop(sample["original_shape"], sample["start"], sample["stop"])
        if _save_sample(apply_crop(loaded[1], crop)[None], out_dir / sample["file"]) != sample["sha256"]:
            raise CalibrationError(
                f"rebuilt {out_dir / sample['file']} differs from the original although its sources "
                "match: the preprocessing has changed since the set was built; build a new set"
            )
    return _write_manifest(out_dir, {**manifest, "data_root": str(root)})


def read_recipe(path: Path | str) -> dict[str, Any]:
    """A calibration recipe (``calibration/*.json``): ``description``, ``data`` and ``calibration``.

    ``calibration`` holds keyword arguments of ``build_calibration_set``; unknown keys are refused.

    >>> recipe = read_recipe("calibration/demo.json")                         # doctest: +SKIP
    >>> build_calibration_set(data_dir, out_dir, **recipe["calibration"], normalization="minmax")  # doctest: +SKIP
    """
    path = Path(path)
    recipe = json.loads(path.read_text())
    unknown = sorted(set(recipe.get("calibration", {})) - set(RECIPE_SETTINGS))
    if "calibration" not in recipe or unknown:
        raise CalibrationError(
            f"{path} is not a calibration recipe: it needs a 'calibration' section with keys among "
            f"{', '.join(RECIPE_SETTINGS)} (unknown: {unknown})"
        )
    return recipe
