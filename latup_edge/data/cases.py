"""BraTS cases on disk: find them, load and validate their images and labels, save label maps.

A case is the set of NIfTI files of one patient under one naming convention (see ``naming``).
Discovery only groups files; loading validates them and raises ``CaseError`` with one sentence
that names the case, the file and what to do, so a batch can report a bad case and go on.

>>> cases = discover_cases("BraTS2021_Training_Data")       # doctest: +SKIP
>>> images, reference = load_case_images(cases[0])         # doctest: +SKIP
>>> images.shape, images.dtype                              # doctest: +SKIP
((3, 240, 240, 155), dtype('float32'))
>>> save_label_map(classes, reference, "out/BraTS2021_00000.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from scipy import ndimage

from latup_edge.data.dataset_json import (
    DatasetDescription,
    DatasetJsonError,
    find_description,
    is_decathlon,
    read_description,
)
from latup_edge.data.labels import LabelConvention, detect_convention, from_classes, to_classes
from latup_edge.data.naming import (
    CHANNELS_NNUNET,
    MODALITIES,
    MODALITY_NAMES,
    MODEL_MODALITIES,
    NAMINGS,
    Naming,
    case_filename,
    case_id_for,
    parse_filename,
)
from latup_edge.errors import LatupError
from latup_edge.fileio import atomic_write, gunzip_file, gzip_bytes

# Geometry tolerance on every entry of the 4x4 affine (mm for translations, ~rad for rotations).
AFFINE_ATOL = 1e-3

# Everything nibabel and gzip raise for a damaged or truncated file.
_READ_ERRORS = (OSError, EOFError, zlib.error, ImageFileError, ValueError)


class CaseError(LatupError):
    """A case that cannot be used; the message is one sentence: case, file, problem, what to do."""

    def __init__(self, message: str, case_id: str = "", path: Path | None = None) -> None:
        super().__init__(message)
        self.case_id = case_id
        self.path = path


class NoCaseFound(CaseError):
    """A folder that holds no file named as a BraTS or nnU-Net case (a caller may look for other forms there)."""


@dataclass(frozen=True)
class BratsCase:
    """The files of one BraTS case, as found on disk (nothing is read until loading)."""

    case_id: str
    naming: Naming
    folder: Path
    files: dict[str, Path]  # canonical modality key (naming.MODALITIES) -> file
    seg: Path | None
    description: DatasetDescription | None = None  # an nnU-Net folder's dataset.json: channels and labels

    def missing(self, modalities: Sequence[str] = MODEL_MODALITIES) -> list[str]:
        """The modalities, among ``modalities``, that this case has no file for."""
        return [key for key in modalities if key not in self.files]

    def expected_path(self, key: str) -> Path:
        """Where the file of ``key`` (a modality or ``seg``) would be under this case's naming."""
        compressed = not any(path.name.endswith(".nii") for path in self.files.values())
        channels = self.description.channels if self.description else CHANNELS_NNUNET
        bare = all(parse_filename(path.name, channels)[0] == "" for path in self.files.values())  # type: ignore[index]
        return self.folder / case_filename(self.case_id, key, self.naming, compressed, channels, bare)

    def default_labels(self) -> LabelConvention:
        """The label convention of this case's files where its label values alone cannot tell: the dataset.json's,
        else nnU-Net's BraTS order for nnU-Net names, BraTS 2023's for 2023 names, BraTS 2021's otherwise."""
        if self.description and self.description.labels:
            return self.description.labels
        return {"nnunet": "nnunet", "2023": "2023"}.get(self.naming, "2021")  # type: ignore[return-value]


def _expected_names() -> str:
    examples = [case_filename(case_id_for(1, naming), "flair", naming) for naming in NAMINGS]
    return ", ".join(examples) + " (.nii or .nii.gz), or a case folder of flair.nii.gz, t1ce.nii.gz, t2.nii.gz ..."


def _nifti_files(root: Path) -> list[Path]:
    """The visible files under ``root``, following symbolic links to folders and files, as ``os.walk``
    lists them top-down (each folder's files, then its subfolders, in name order).

    Archives are often assembled from links to the real case folders. Each real folder, identified by
    ``(st_dev, st_ino)``, is entered once, so a link cycle (or a folder reached through two links)
    ends there; links that lead nowhere and folders that cannot be read are skipped.
    """
    found: list[Path] = []
    entered: set[tuple[int, int]] = set()
    pending = [Path(root)]
    while pending:
        folder = pending.pop()
        try:
            status = folder.stat()
            if (status.st_dev, status.st_ino) in entered:
                continue
            entered.add((status.st_dev, status.st_ino))
            with os.scandir(folder) as scan:
                # Hidden entries are macOS resource forks ("._x.nii.gz") and tool caches, never cases.
                entries = sorted((entry for entry in scan if not entry.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            continue
        found += [folder / entry.name for entry in entries if _is(entry.is_file)]
        pending += reversed([folder / entry.name for entry in entries if _is(entry.is_dir)])
    return found


def _is(check: Callable[[], bool]) -> bool:
    """``DirEntry.is_file``/``is_dir`` (which follow links), False for an entry that vanished or cannot be read."""
    try:
        return check()
    except OSError:
        return False


def _nnunet_seg(folder: Path, case_id: str) -> Path | None:
    # nnU-Net keeps labels next to images, or in labelsTr/labelsTs beside imagesTr/imagesTs.
    folders = [folder]
    if folder.name.startswith("images"):
        folders.append(folder.parent / ("labels" + folder.name.removeprefix("images")))
    for candidate_folder in folders:
        for ext in (".nii.gz", ".nii"):
            candidate = candidate_folder / f"{case_id}{ext}"
            if candidate.is_file():
                return candidate
    return None


def discover_cases(*roots: Path | str) -> list[BratsCase]:
    """Find every BraTS case under ``roots``, sorted by case id.

    A root may be one case's folder, a folder of case folders, or a flat folder holding the
    files of many cases side by side; folders are searched recursively, following symbolic links
    to folders and files (each real folder once, so a link cycle ends). Files that follow no
    naming convention are ignored. A case missing a modality is still returned (``missing()``
    reports it, loading raises), so a batch can go on past it. nnU-Net channel files are read by the
    ``dataset.json`` beside them or above imagesTr (``latup_edge.data.dataset_json``), else in Dataset137's order.

    Raises CaseError when a root does not exist, is a file, or holds no case, and when one case
    has two files for the same modality (e.g. both ``.nii`` and ``.nii.gz``).
    """
    if not roots:
        raise CaseError("no folder given: pass one or more BraTS folders")
    groups: dict[tuple[Path, str, str], dict[str, Path]] = {}
    bare_2023: set[Path] = set()  # folders of bare names where one is BraTS 2023's alone (t2f ...)
    seen: set[tuple[Path, str]] = set()
    descriptions: dict[Path, DatasetDescription | None] = {}
    for root in map(Path, roots):
        if not root.exists():
            raise CaseError(f"{root} does not exist: check the path to the BraTS folder", path=root)
        if not root.is_dir():
            raise CaseError(f"{root} is a file: pass the folder that holds the case", path=root)
        found_here = False
        for path in _nifti_files(root):
            parsed = parse_filename(path.name)
            if parsed is None:
                continue
            case_id, key, naming = parsed
            if not case_id:  # bare names: the folder is the case; its naming is decided by all its files
                case_id = path.parent.name
                if naming == "2023":
                    bare_2023.add(path.parent)
                naming = "bare"  # type: ignore[assignment]
            if naming == "nnunet":  # channel numbers mean what the folder's dataset.json says
                description = _description(path.parent, descriptions)
                if description is not None:
                    case_id, key, naming = parse_filename(path.name, description.channels)  # type: ignore[misc]
            if key not in MODALITIES and key != "seg":
                continue
            found_here = True
            # The same file under the same name, reached through overlapping roots or two links, counts
            # once; a file linked under another case's name is that case's file.
            if (path.resolve(), path.name) in seen:
                continue
            seen.add((path.resolve(), path.name))
            files = groups.setdefault((path.parent, case_id, naming), {})
            if key in files:
                raise CaseError(
                    f"case {case_id} has two {key} files, {files[key]} and {path}: keep only one",
                    case_id=case_id,
                    path=path,
                )
            files[key] = path
        if not found_here:
            if decathlon := _decathlon_sentence(root):
                raise CaseError(decathlon, path=root)
            raise NoCaseFound(
                f"no BraTS case found under {root}: expected files named like {_expected_names()}", path=root
            )

    cases = []
    for (folder, case_id, naming), files in groups.items():
        seg = files.pop("seg", None)
        if not files:  # a label file alone (e.g. a folder of reference segmentations) is no case
            continue
        description = None
        if naming == "nnunet":
            seg = _nnunet_seg(folder, case_id)
            description = descriptions.get(folder)
        if naming == "bare":
            naming = "2023" if folder in bare_2023 else "2021"
        cases.append(BratsCase(case_id, naming, folder, files, seg, description))  # type: ignore[arg-type]
    if not cases:
        raise NoCaseFound(
            f"no BraTS case with images found under {', '.join(map(str, roots))}: "
            f"expected files named like {_expected_names()}"
        )
    return sorted(cases, key=lambda case: (case.case_id, str(case.folder), case.naming))


def channel_order_warnings(cases: Sequence[object]) -> list[str]:
    """One warning per folder of nnU-Net channel files without a dataset.json: their order was assumed."""
    folders = sorted(
        {str(c.folder) for c in cases if isinstance(c, BratsCase) and c.naming == "nnunet" and not c.description}
    )
    return [
        f"{folder} holds nnU-Net channel files but no dataset.json: read in Dataset137's order (0000 T1, 0001 T1ce, "
        "0002 T2, 0003 FLAIR; labels 1 oedema, 2 necrosis, 3 ET); if the dataset has another, put its dataset.json "
        "beside the files or above imagesTr"
        for folder in folders
    ]


def _description(folder: Path, read: dict[Path, DatasetDescription | None]) -> DatasetDescription | None:
    """The dataset.json of an nnU-Net folder, read once per folder; CaseError if it cannot be used."""
    if folder not in read:
        path = find_description(folder)
        try:
            read[folder] = None if path is None else read_description(path)
        except DatasetJsonError as error:
            raise CaseError(str(error), path=path) from error
    return read[folder]


def _decathlon_sentence(root: Path) -> str | None:
    """Why a Medical Segmentation Decathlon folder holds no case here, and what to do; None for other folders."""
    if not is_decathlon(find_description(root) or find_description(root / "imagesTr")):
        return None
    return (
        f"{root} is a Medical Segmentation Decathlon folder (one 4-D file of all modalities per case): split it "
        f"into one file per modality with nnU-Net's `nnUNetv2_convert_MSD_dataset -i {root}`, then pass the "
        "converted folder (its dataset.json says which channel is which)"
    )


def _missing_modalities(case: BratsCase, missing: Sequence[str]) -> CaseError:
    described = case.description.channels.values() if case.description and case.naming == "nnunet" else None
    absent = [key for key in missing if described is not None and key not in described]
    if absent:  # no file could hold it: the dataset.json names no such channel
        return CaseError(
            f"case {case.case_id}: {case.description.path} names no {' or '.join(MODALITY_NAMES[k] for k in absent)} "
            f"channel (it names {', '.join(MODALITY_NAMES[k] for k in described) or 'none'}): add that channel and "
            "name it there",
            case_id=case.case_id,
            path=case.description.path,
        )
    expected = [case.expected_path(key) for key in missing]
    return CaseError(
        f"case {case.case_id}: {', '.join(map(str, expected))} not found ({', '.join(missing)} missing): add the "
        "file or leave this case out",
        case_id=case.case_id,
        path=expected[0],
    )


def _fail(case: BratsCase, path: Path | None, problem: str) -> CaseError:
    return CaseError(f"case {case.case_id}: {path} {problem}", case_id=case.case_id, path=path)


def _open(case: BratsCase, path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except FileNotFoundError as error:
        raise _fail(case, path, "has disappeared since discovery: check the folder") from error
    except _READ_ERRORS as error:
        raise _fail(case, path, f"is not a readable NIfTI file ({error}): re-copy or re-export it") from error


def _shape3(case: BratsCase, path: Path, image: nib.Nifti1Image) -> tuple[int, int, int]:
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:  # some converters write a single volume as X x Y x Z x 1
        shape = shape[:3]
    if len(shape) != 3:
        raise _fail(
            case,
            path,
            f"has shape {_fmt(shape)} but one 3-D volume was expected: split it or export it as 3-D",
        )
    return shape


def _read(case: BratsCase, path: Path, image: nib.Nifti1Image, dtype: type | None) -> np.ndarray:
    shape = _shape3(case, path, image)
    # Reading the data here is what makes a truncated file fail at load, not later.
    try:
        if path.name.endswith(".gz"):  # decompressed in one call (ISA-L), not streamed through zlib
            image = type(image).from_bytes(gunzip_file(path))
        return np.asanyarray(image.dataobj, dtype=dtype).reshape(shape)
    except _READ_ERRORS as error:
        raise _fail(case, path, f"is truncated or damaged ({error}): re-copy or re-download it") from error


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _check_same_grid(
    case: BratsCase,
    path: Path,
    shape: Sequence[int],
    affine: np.ndarray,
    reference_path: Path | str | None,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
) -> None:
    if tuple(shape) != tuple(reference_shape):
        raise _fail(
            case,
            path,
            f"is {_fmt(shape)} but {reference_path} is {_fmt(reference_shape)}: "
            "all files of a case must share one voxel grid, so resample them to one",
        )
    difference = float(np.abs(affine - reference_affine).max())
    if difference > AFFINE_ATOL:
        raise _fail(
            case,
            path,
            f"has an affine that differs from {reference_path}'s by up to {difference:.4g}: "
            "all files of a case must share one voxel grid, so register or resample them to one",
        )


def load_case_images(
    case: BratsCase, modalities: Sequence[str] = MODEL_MODALITIES, offsets: dict[str, dict] | None = None
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Load and validate a case's images as float32 ``(C, X, Y, Z)`` in the order of ``modalities``.

    Returns the images and the reference image (the first modality; its header and affine give
    the output geometry; its data is not held in memory). Raises CaseError for a missing
    modality, an unreadable or truncated file, a volume that is not 3-D (X x Y x Z x 1 is
    accepted), shapes or affines that disagree, NaN/inf values, or an all-zero volume.
    A constant background is set to 0 (``zero_constant_background``); ``offsets``, when given, receives
    each such modality's figures.
    """
    unknown = [key for key in modalities if key not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty selection of {MODALITIES}, got {modalities}")
    missing = case.missing(modalities)
    if missing:
        raise _missing_modalities(case, missing)

    paths = [case.files[key] for key in modalities]
    # Check every header before reading any data: a mismatch fails fast, without reading a volume.
    images = [_open(case, path) for path in paths]
    shape = _shape3(case, paths[0], images[0])
    for path, image in zip(paths[1:], images[1:], strict=True):
        _check_same_grid(case, path, _shape3(case, path, image), image.affine, paths[0], shape, images[0].affine)

    # Filled one modality at a time so that only one extra volume is ever held.
    stacked = np.empty((len(paths), *shape), dtype=np.float32)
    for channel, (key, path, image) in enumerate(zip(modalities, paths, images, strict=True)):
        stacked[channel] = _checked_volume(case, key, path, image, offsets)
    return stacked, images[0]


def read_case_volume(
    case: BratsCase, key: str, offsets: dict[str, dict] | None = None
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """One modality of a case on its own grid: float32 (X, Y, Z) and its image (header and affine).

    The checks of ``load_case_images`` for one file (readable, 3-D, finite, not all zeros) and its
    constant background set to 0, without the shared-grid check: for scans whose modalities are
    resampled onto one grid afterwards.
    """
    if key not in case.files:
        raise _missing_modalities(case, [key])
    path = case.files[key]
    image = _open(case, path)
    return _checked_volume(case, key, path, image, offsets), image


def _checked_volume(
    case: BratsCase, key: str, path: Path, image: nib.Nifti1Image, offsets: dict[str, dict] | None
) -> np.ndarray:
    volume = _read(case, path, image, np.float32)
    non_finite = volume.size - int(np.count_nonzero(np.isfinite(volume)))
    if non_finite:
        raise _fail(case, path, f"holds {non_finite} NaN or infinite voxels: fix or re-export it")
    if not volume.any():
        raise _fail(case, path, "is all zeros: re-export it (the image data is missing)")
    if (found := zero_constant_background(volume)) is not None and offsets is not None:
        offsets[key] = found
    return volume


def zero_constant_background(values: np.ndarray) -> dict | None:
    """In place: a background that holds one nonzero constant (an offset: a NIfTI ``scl_inter``, a DICOM rescale
    intercept, a whole-volume z-score) becomes 0; its figures for the log, or None when there was none.

    The constant is the value most voxels on the grid's faces hold, when over half of them do; the voxels that
    hold it and connect to a face become 0, so a brain voxel that happens to equal it stays. BraTS data are 0
    outside the brain and the network's brain is the nonzero voxels; its input is z-scored over them, which an
    offset does not change, so this is exact for it.
    """
    constant = constant_background(_faces(values))
    if constant is None:
        return None
    components, _ = ndimage.label(values == constant)
    on_faces = np.unique(_faces(components))
    outside = np.isin(components, on_faces[on_faces > 0])
    if outside.all():  # one value everywhere: no brain to tell the background from
        return None
    values[outside] = 0
    return {"offset": constant, "zeroed": int(outside.sum())}


def _faces(values: np.ndarray) -> np.ndarray:
    """The voxels on the grid's faces, flattened."""
    return np.concatenate([np.ravel(np.take(values, end, axis=axis)) for axis in range(values.ndim) for end in (0, -1)])


def constant_background(background: np.ndarray) -> float | None:
    """The value most of ``background`` holds when that is one nonzero constant (an offset), else None."""
    if not background.size:
        return None
    values, counts = np.unique(background, return_counts=True)
    top = int(np.argmax(counts))
    return float(values[top]) if values[top] != 0 and counts[top] > background.size // 2 else None


def load_case_labels(case: BratsCase, reference: nib.Nifti1Image | None = None) -> tuple[np.ndarray, LabelConvention]:
    """Load a case's label map as network classes (uint8: 0 bg, 1 NCR, 2 ED, 3 ET).

    Returns the classes and the convention the file follows: its folder's dataset.json's, else what its
    ET value shows (4: 2021; 3: 2023, or nnU-Net's order under nnU-Net names, see ``BratsCase.default_labels``).
    With ``reference``, the label map must share its shape and affine. Raises
    CaseError when the case has no label file, the file is unreadable, or its grid or values
    are wrong.
    """
    if case.seg is None:
        raise CaseError(
            f"case {case.case_id} has no label file ({case.expected_path('seg')} not found): "
            "add it, or run without reference labels",
            case_id=case.case_id,
            path=case.expected_path("seg"),
        )
    image = _open(case, case.seg)
    shape = _shape3(case, case.seg, image)
    if reference is not None:
        reference_shape = reference.shape[:3] if len(reference.shape) == 4 else reference.shape
        _check_same_grid(
            case,
            case.seg,
            shape,
            image.affine,
            reference.get_filename() or "the reference image",
            reference_shape,
            reference.affine,
        )
    labels = _read(case, case.seg, image, None)
    # Float label files exist; values like 1.5 would be silently truncated to a class.
    if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise _fail(case, case.seg, "holds non-integer label values: fix the label file")
    declared = case.description.labels if case.description else None
    try:
        convention = declared or detect_convention(labels, default=case.default_labels())
        return to_classes(labels, convention), convention
    except ValueError as error:
        if declared:
            raise _fail(
                case, case.seg, f"does not follow {case.description.path}'s labels ({error}): fix either"
            ) from error
        raise _fail(
            case,
            case.seg,
            f"is not a BraTS label map ({error}): use 0, 1, 2 and 4 (2020/2021) or 3 (2023+) for ET",
        ) from error


def save_label_map(
    classes: np.ndarray,
    reference: nib.Nifti1Image,
    path: Path | str,
    convention: LabelConvention = "2021",
) -> Path:
    """Write network classes (0-3) as a uint8 BraTS label map on the reference image's grid.

    The file gets exactly the reference's affine, qform/sform and their codes, voxel sizes and
    units. The write is atomic: a temporary file in the same folder is written, synced and
    renamed, so ``path`` holds either the complete file or nothing new. Compressed when ``path``
    ends with ``.nii.gz``. Refuses to overwrite the reference's own file.
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a label map must be saved as .nii or .nii.gz")
    reference_file = reference.get_filename()
    if reference_file is not None and path.resolve() == Path(reference_file).resolve():
        raise LatupError(f"{path} is the input image itself: choose another output path")
    shape = reference.shape[:3]
    if classes.shape != shape:
        raise ValueError(f"{path}: label map is {_fmt(classes.shape)} but the reference is {_fmt(shape)}")
    if classes.size and int(classes.max()) > 3:
        raise ValueError(f"{path}: classes must be 0-3, found {int(classes.max())}")

    image = image_on_grid(from_classes(classes, convention), reference, np.uint8, display_max=0)
    return save_nifti(image, path)


def save_nifti(image: nib.Nifti1Image, path: Path | str) -> Path:
    """Write ``image`` atomically; ``.nii.gz`` is compressed in one call (ISA-L where installed)."""
    path = Path(path)
    if not path.name.endswith(".gz"):
        return atomic_write(path, lambda temporary: nib.save(image, temporary))
    return atomic_write(path, lambda temporary: temporary.write_bytes(gzip_bytes(image.to_bytes())))


def image_on_grid(data: np.ndarray, reference: nib.Nifti1Image, dtype: type, display_max: float) -> nib.Nifti1Image:
    """A NIfTI image of ``data`` with exactly the reference's affine, qform/sform codes, zooms and units."""
    source = reference.header
    image = nib.Nifti1Image(data, None, nib.Nifti1Header.from_header(source))
    image.set_data_dtype(dtype)
    image.set_qform(source.get_qform(), code=int(source["qform_code"]))
    image.set_sform(source.get_sform(), code=int(source["sform_code"]))
    # The reference's intensity scaling and display range mean nothing for derived maps.
    image.header.set_slope_inter(1, 0)
    image.header["cal_min"], image.header["cal_max"] = 0, display_max
    return image
