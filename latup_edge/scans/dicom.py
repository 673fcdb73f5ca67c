"""DICOM series as a clinic has them: found on disk, sorted, told apart by contrast and read as volumes.

``find_series`` reads the headers of every DICOM file under some folders (no pixel data), groups
them by SeriesInstanceUID, sorts each series' files along the slice normal and says why a series
cannot be a model input (a localizer, a 2-D or derived series, a gap between slices ...).
``assign_modalities`` picks one series per model modality by the regular expressions of a rules
file (``modality_rules.json`` by default) and refuses, with one sentence, a study where a modality
is missing or matched twice. ``read_series`` decodes a series into a float32 ``SimpleITK.Image`` in
physical LPS coordinates, as DICOM has them.

A series may also be enhanced or legacy-converted multi-frame files (the export of many current
scanners): each frame is then a slice, with its position, orientation, spacing and rescale read
from the file's functional groups, and sorted and checked like single-frame slices.

>>> series = find_series(Path("clinic/PAT001"))                                    # doctest: +SKIP
>>> chosen = assign_modalities(series, load_rules())                              # doctest: +SKIP
>>> flair = read_series(chosen["flair"])                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from latup_edge.data.naming import MODALITY_NAMES, MODEL_MODALITIES
from latup_edge.errors import LatupError

# Fewer slices than this cannot hold a brain volume (a localizer has 1-9, a 3-D brain 20 or more).
MIN_SLICES = 10
# Image types of images computed from others (MPR, ADC, subtraction, MIP ...): never a model input.
DERIVED_TYPES = ("DERIVED", "SECONDARY")
IMAGE_MODALITIES = ("MR", "CT")
# Matches a localizer by its description where its ImageType does not say LOCALIZER.
LOCALIZER_DESCRIPTION = re.compile(r"locali[sz]er|scout|survey|3.?plane.?loc|(?<![a-z])loc(?![a-z])", re.IGNORECASE)
# Slice positions may differ from even steps by this fraction of the step (DS rounding, scanner jitter).
SPACING_TOLERANCE = 0.01
# Direction cosines of one series may differ by this much (they are stored as 16-character decimals).
ORIENTATION_TOLERANCE = 1e-4
RULES_FILE = "modality_rules.json"
# Legacy-to-enhanced converters (highdicom) append this to SeriesDescription; it says nothing of the contrast, and
# its "enhanced" would otherwise read as contrast-enhanced.
CONVERSION_SUFFIX = re.compile(r"\s*\(enhanced conversion\)\s*$", re.IGNORECASE)


class DicomError(LatupError):
    """A DICOM series or study that cannot be used as it is: one sentence that says which and what to do."""


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series as found on disk (headers only), its files sorted along the slice normal."""

    series_uid: str
    study_uid: str
    patient_id: str
    study_date: str
    series_number: int | None
    description: str  # SeriesDescription, or ProtocolName where it is empty
    protocol: str
    image_type: tuple[str, ...]
    sop_class_uid: str
    files: tuple[Path, ...]
    n_slices: int
    rows: int
    columns: int
    skip_reason: str | None = None  # why it cannot be a model input, None when it can
    contrast_agent: str = ""  # ContrastBolusAgent: set by the scanner on series acquired after an injection
    # Per slice (aligned with ``files``), its frame in a multi-frame file, None for a single-frame file;
    # empty when every file is single-frame.
    frames: tuple[int | None, ...] = ()

    @property
    def label(self) -> str:
        """How messages name the series: ``series 4 "AX FLAIR" (...2345.6789)``."""
        number = "?" if self.series_number is None else self.series_number
        return f'series {number} "{self.description}" ({_short_uid(self.series_uid)})'

    @property
    def folder(self) -> Path:
        """The folder of its first file (where a user finds it)."""
        return self.files[0].parent if self.files else Path()


@dataclass(frozen=True)
class _Header:
    """The header fields of one file that grouping, sorting and the skip checks need."""

    path: Path
    series_uid: str
    study_uid: str
    patient_id: str
    study_date: str
    series_number: int | None
    description: str
    protocol: str
    image_type: tuple[str, ...]
    sop_class_uid: str
    modality: str
    instance: int
    rows: int | None
    columns: int | None
    frames: int
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    contrast_agent: str
    frame: int | None = None  # this slice's frame (0-based) in a multi-frame file; None for a single-frame file


def find_series(*roots: Path) -> list[DicomSeries]:
    """Every DICOM series under ``roots`` (searched recursively), sorted by study and series number.

    Only headers are read. Files that are not DICOM, and DICOMDIR indexes, are ignored. Each series
    that cannot be a model input has its ``skip_reason`` set; it is listed all the same, so that a
    log can say what was passed over and why.
    """
    headers: dict[str, list[_Header]] = {}
    for root in roots:
        paths = [Path(root)] if Path(root).is_file() else sorted(p for p in Path(root).rglob("*") if p.is_file())
        for path in paths:
            for header in _read_headers(path):
                headers.setdefault(header.series_uid, []).append(header)
    series = [_series(members) for members in headers.values()]
    return sorted(series, key=lambda s: (s.study_date, s.study_uid, _number(s.series_number), s.series_uid))


def group_studies(series: Iterable[DicomSeries]) -> dict[str, list[DicomSeries]]:
    """The series by StudyInstanceUID, in the order given (``find_series``'s order keeps studies together)."""
    studies: dict[str, list[DicomSeries]] = {}
    for item in series:
        studies.setdefault(item.study_uid, []).append(item)
    return studies


@dataclass(frozen=True)
class ModalityRules:
    """Which series is which contrast: regular expressions per modality key, tried in order."""

    match: dict[str, tuple[re.Pattern[str], ...]]  # in precedence order: a series takes the first key that fits
    exclude: dict[str, tuple[re.Pattern[str], ...]]
    exclude_all: tuple[re.Pattern[str], ...]  # never a model input (diffusion, perfusion, maps ...)
    source: str  # the file the rules came from, for messages

    def modality_of(self, series: DicomSeries) -> str | None:
        """The modality key of a series by its description (then its protocol), or None when no rule fits."""
        for text in (CONVERSION_SUFFIX.sub("", series.description), series.protocol):
            if not text:
                continue
            if any(pattern.search(text) for pattern in self.exclude_all):
                return None  # diffusion, perfusion ...: the protocol is not asked to overrule the description
            for key, patterns in self.match.items():
                fits = any(pattern.search(text) for pattern in patterns)
                if fits and not any(pattern.search(text) for pattern in self.exclude.get(key, ())):
                    return key
        return None


def load_rules(path: Path | None = None) -> ModalityRules:
    """The modality rules of a JSON file (``modality_rules.json``'s format), or the shipped ones when None."""
    if path is None:
        source = "the shipped modality_rules.json"
        text = resources.files("latup_edge.scans").joinpath(RULES_FILE).read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise DicomError(
                f"the modality rules file {path} cannot be read ({error.strerror}): check the path"
            ) from None
    try:
        raw = json.loads(text)
        modalities = raw["modalities"]
        return ModalityRules(
            match={key: _patterns(rule["match"]) for key, rule in modalities.items()},
            exclude={key: _patterns(rule.get("exclude", [])) for key, rule in modalities.items()},
            exclude_all=_patterns(raw.get("exclude", [])),
            source=source,
        )
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, re.error) as error:
        raise DicomError(
            f"the modality rules file {source} is not valid ({type(error).__name__}: {error}): it must be JSON with "
            '"modalities": {key: {"match": [regex, ...], "exclude": [regex, ...]}} and an optional "exclude" list, '
            "as in the shipped modality_rules.json"
        ) from None


def assign_modalities(
    series: Sequence[DicomSeries], rules: ModalityRules, modalities: Sequence[str] = MODEL_MODALITIES
) -> dict[str, DicomSeries]:
    """One series per modality key among the usable series of one study, by ``rules``.

    There is no guessing: when a modality matches no series, or two, this raises DicomError with
    one sentence that lists every series found (with the modality each matched or why it was
    skipped) and says what to do, because guessing between two FLAIRs could feed the network the
    wrong contrast without anyone noticing. The one tie-break is the scanner's own record: two
    series named T1 and none T1ce, exactly one of them with a ContrastBolusAgent, are the T1ce (that
    one) and the T1.
    """
    found = _t1ce_by_contrast_agent(
        series, {item.series_uid: (None if item.skip_reason else rules.modality_of(item)) for item in series}
    )
    chosen: dict[str, DicomSeries] = {}
    problems = []
    for key in modalities:
        matches = [item for item in series if found[item.series_uid] == key]
        name = MODALITY_NAMES.get(key, key)
        if not matches:
            problems.append(f"no series matches {name}")
        elif len(matches) > 1:
            problems.append(f"{len(matches)} series match {name} ({', '.join(_brief(m) for m in matches)})")
        else:
            chosen[key] = matches[0]
    if problems:
        first = series[0] if series else None
        study = f"study {_short_uid(first.study_uid)} of patient {first.patient_id or '(none)'}" if first else "a study"
        listed = "; ".join(f"{_brief(item)}: {_found(item, found[item.series_uid])}" for item in series) or "none"
        # What to do depends on the problem: a missing series must be exported, an extra one set aside.
        remedy = []
        if any(problem.startswith("no series") for problem in problems):
            remedy.append("export the missing series into the study folder")
        if any(not problem.startswith("no series") for problem in problems):
            remedy.append("remove the extra series from the study folder")
        raise DicomError(
            f"in {study}, {' and '.join(problems)} (series found: {listed}) by {rules.source}: pass a copy of "
            "the rules edited so that exactly one series matches each of "
            f"{', '.join(MODALITY_NAMES.get(k, k) for k in modalities)} with --rules, or {' and '.join(remedy)}"
        )
    return chosen


def _t1ce_by_contrast_agent(series: Sequence[DicomSeries], found: dict[str, str | None]) -> dict[str, str | None]:
    """Two T1 series by name and no T1ce (``t1_mprage_sag`` before and after the injection) are told apart by
    the scanner's own record: when exactly one of them carries a ContrastBolusAgent, it is the T1ce."""
    t1 = [item for item in series if found[item.series_uid] == "t1"]
    injected = [item for item in t1 if item.contrast_agent]
    if "t1ce" in found.values() or len(t1) != 2 or len(injected) != 1:
        return found
    return found | {injected[0].series_uid: "t1ce"}


def told_by_contrast_agent(series: DicomSeries, rules: ModalityRules) -> bool:
    """Whether ``series`` is the T1ce by its ContrastBolusAgent, its name matching T1 (for the run log)."""
    return bool(series.contrast_agent) and rules.modality_of(series) == "t1"


def read_series(series: DicomSeries) -> sitk.Image:
    """The series as a float32 image in physical LPS coordinates, RescaleSlope/Intercept applied.

    Slices are read in the order of ``series.files`` (along the slice normal, whatever their
    InstanceNumber), and the geometry SimpleITK reads is checked against the slice positions.
    """
    if series.skip_reason:
        raise DicomError(f"{series.label} in {series.folder} cannot be read as a volume: {series.skip_reason}")
    if series.frames:
        return _read_frames(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise DicomError(
            f"the pixel data of {series.label} in {series.folder} cannot be decoded ({reason[:160]}): "
            "re-export the series uncompressed (explicit VR little endian) from the PACS or scanner"
        ) from None
    if image.GetSize() != (series.columns, series.rows, series.n_slices):
        raise DicomError(
            f"{series.label} in {series.folder} decodes to {image.GetSize()} voxels instead of "
            f"{(series.columns, series.rows, series.n_slices)}: check the series for multi-frame or damaged files"
        )
    _check_geometry(series, image)
    return image


def _stack_geometry(
    positions: np.ndarray, orientation: Sequence[float], pixel_spacing: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """Origin, spacing (column, row, slice) and direction columns of slices sorted along their normal, by their tags."""
    row, column = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float)
    direction = np.column_stack([row, column, np.cross(row, column)])
    step = float(np.mean(np.diff(positions @ direction[:, 2])))
    return tuple(float(v) for v in positions[0]), (float(pixel_spacing[1]), float(pixel_spacing[0]), step), direction


def _check_geometry(series: DicomSeries, image: sitk.Image) -> None:
    """Refuse an image whose origin, spacing or direction disagree with its files' positions and orientation,
    or whose files hold less uncompressed pixel data than their rows and columns need (GDCM pads it silently)."""
    headers = [pydicom.dcmread(path, specific_tags=_GEOMETRY_TAGS) for path in series.files]
    for path, ds in zip(series.files, headers, strict=True):
        length = len(ds.get("PixelData") or b"")
        needed = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        if not ds.file_meta.TransferSyntaxUID.is_encapsulated and length < needed:
            raise DicomError(
                f"the file {path} of {series.label} holds {length} bytes of pixel data where its "
                f"{ds.Rows} x {ds.Columns} pixels need {needed}: the file is damaged, re-export the series"
            )
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    origin, spacing, direction = _stack_geometry(
        positions, [float(v) for v in headers[0].ImageOrientationPatient], headers[0].PixelSpacing
    )
    problems = []
    if not np.allclose(image.GetOrigin(), origin, atol=1e-3):
        problems.append(f"origin {np.round(image.GetOrigin(), 3)} is not the first slice's {np.round(origin, 3)}")
    if not np.allclose(image.GetSpacing(), spacing, rtol=1e-3):
        problems.append(f"spacing {np.round(image.GetSpacing(), 4)} is not {np.round(spacing, 4)}")
    if not np.allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=1e-3):
        problems.append("its direction is not the ImageOrientationPatient's")
    if problems:
        raise DicomError(
            f"{series.label} in {series.folder} was read with a geometry that does not match its slice positions "
            f"({'; '.join(problems)}): re-export the series, or convert it to NIfTI with dcm2niix and segment that"
        )


_GEOMETRY_TAGS = [
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "PixelData",
]


def _read_headers(path: Path) -> list[_Header]:
    """The header of one file, one per frame of a multi-frame file; none when it is not a DICOM image file
    (or is a DICOMDIR)."""
    if path.name.upper() == "DICOMDIR":
        return []
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError):
        return []  # not DICOM (a readme, a thumbnail) or not readable as DICOM: ignored as the docstring says
    if "SeriesInstanceUID" not in ds or ds.get("MediaStorageSOPClassUID") == "1.2.840.10008.1.3.10":
        return []  # a DICOMDIR under another name, or no series at all
    header = _Header(
        path=path,
        series_uid=str(ds.SeriesInstanceUID),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        study_date=str(ds.get("StudyDate", "")),
        series_number=_int(ds.get("SeriesNumber")),
        description=str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "")).strip(),
        protocol=str(ds.get("ProtocolName", "")).strip(),
        image_type=tuple(str(v).upper() for v in _values(ds.get("ImageType"))),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        modality=str(ds.get("Modality", "")).upper(),
        instance=_int(ds.get("InstanceNumber")) or 0,
        rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")),
        frames=_int(ds.get("NumberOfFrames")) or 1,
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        contrast_agent=str(ds.get("ContrastBolusAgent", "") or "").strip(),
    )
    if header.frames == 1 or "PerFrameFunctionalGroupsSequence" not in ds:
        return [header]  # a multi-frame file without functional groups has no frame positions: skipped as such
    return [
        replace(header, frame=index, orientation=frame.orientation, position=frame.position)
        for index, frame in enumerate(_frame_geometry(ds))
    ]


@dataclass(frozen=True)
class _Frame:
    """What a multi-frame file's functional groups say of one frame's geometry and values."""

    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    rescale: tuple[float, float]  # slope, intercept


def _frame_geometry(ds: pydicom.Dataset) -> list[_Frame]:
    """Per frame: its own functional group, else the shared one, else the file's top-level attribute (so a
    single-frame file is one frame of its top-level attributes)."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]

    def find(item: Any, group: str, attribute: str) -> Any:
        for source in (item, shared):
            if source is not None and source.get(group):
                value = source.get(group)[0].get(attribute)
                if value is not None:
                    return value
        return ds.get(attribute)

    frames = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or [None]:
        slope = find(item, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = find(item, "PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(
            _Frame(
                orientation=_floats(find(item, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                position=_floats(find(item, "PlanePositionSequence", "ImagePositionPatient"), 3),
                pixel_spacing=_floats(find(item, "PixelMeasuresSequence", "PixelSpacing"), 2),
                rescale=(
                    1.0 if slope in (None, "") else float(slope),
                    0.0 if intercept in (None, "") else float(intercept),
                ),
            )
        )
    return frames


def _read_frames(series: DicomSeries) -> sitk.Image:
    """A series with multi-frame files as a float32 image: each frame decoded by pydicom, rescaled by its own
    functional group, and placed by its own position (the slices are already sorted along the normal)."""
    decoded: dict[Path, tuple[np.ndarray, list[_Frame]]] = {}
    slices, frames = [], []
    for path, index in zip(series.files, series.frames, strict=True):
        if path not in decoded:
            try:
                ds = pydicom.dcmread(path)
                pixels = np.asarray(ds.pixel_array)
            except Exception as error:  # pydicom's decoders raise many kinds of error; each becomes one sentence
                raise DicomError(
                    f"the pixel data of {series.label} in {path} cannot be decoded ({type(error).__name__}: "
                    f"{str(error)[:160]}): re-export the series uncompressed (explicit VR little endian) from the "
                    "PACS or scanner"
                ) from None
            geometry = _frame_geometry(ds)
            decoded[path] = (pixels.reshape(len(geometry), *pixels.shape[-2:]), geometry)
        pixels, geometry = decoded[path]
        frame = geometry[index or 0]
        # In double, then float32: the values SimpleITK gives a single-frame series of the same pixels.
        slices.append((pixels[index or 0].astype(np.float64) * frame.rescale[0] + frame.rescale[1]).astype(np.float32))
        frames.append(frame)
    spacings = {frame.pixel_spacing for frame in frames}
    if len(spacings) != 1 or None in spacings:
        raise DicomError(
            f"{series.label} in {series.folder} has frames with different or missing pixel spacings "
            f"({', '.join(sorted(str(s) for s in spacings))}): re-export the series as one volume"
        )
    (pixel_spacing,) = spacings
    origin, spacing, direction = _stack_geometry(
        np.array([frame.position for frame in frames]), frames[0].orientation, pixel_spacing
    )
    image = sitk.GetImageFromArray(np.stack(slices))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(float(v) for v in direction.flatten()))
    return image


def _series(members: list[_Header]) -> DicomSeries:
    """One series from its files' headers: the files sorted along the slice normal, and why it is skipped, if it is."""
    first = members[0]
    normal = None
    if first.orientation is not None:
        normal = np.cross(first.orientation[:3], first.orientation[3:])
    if normal is not None and all(m.position is not None for m in members):
        members = sorted(members, key=lambda m: (float(np.dot(m.position, normal)), m.instance, m.frame or 0))
    else:
        members = sorted(members, key=lambda m: (m.instance, m.path, m.frame or 0))
    return DicomSeries(
        series_uid=first.series_uid,
        study_uid=first.study_uid,
        patient_id=first.patient_id,
        study_date=first.study_date,
        series_number=first.series_number,
        description=first.description,
        protocol=first.protocol,
        image_type=first.image_type,
        sop_class_uid=first.sop_class_uid,
        files=tuple(m.path for m in members),
        n_slices=len(members),
        rows=first.rows or 0,
        columns=first.columns or 0,
        skip_reason=_skip_reason(members),
        contrast_agent=first.contrast_agent,
        frames=tuple(m.frame for m in members) if any(m.frame is not None for m in members) else (),
    )


def _skip_reason(members: list[_Header]) -> str | None:
    """Why a series (its headers sorted along the normal) cannot be a model input, or None when it can."""
    first = members[0]
    if first.modality not in IMAGE_MODALITIES or first.rows is None or first.columns is None:
        return f"not an MR or CT image series (modality {first.modality or 'none'})"
    if "LOCALIZER" in first.image_type or LOCALIZER_DESCRIPTION.search(first.description):
        return "a localizer"
    if first.image_type and first.image_type[0] in DERIVED_TYPES:
        return f"derived or secondary images (ImageType {'/'.join(first.image_type)})"
    if any(m.frames > 1 and m.frame is None for m in members):
        return "multi-frame files without per-frame positions (no functional groups): export single-frame images"
    if len(members) < MIN_SLICES:
        return f"2-D, {len(members)} slice{'s' if len(members) != 1 else ''} (a volume needs {MIN_SLICES} or more)"
    if len({(m.rows, m.columns) for m in members}) > 1:
        return "slices of different sizes (rows/columns)"
    if any(m.orientation is None or m.position is None for m in members):
        return "slices without ImagePositionPatient/ImageOrientationPatient"
    orientations = np.array([m.orientation for m in members])
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        return "slices of different orientations"
    return _stacking_problem(np.array([m.position for m in members]), np.asarray(first.orientation))


def _stacking_problem(positions: np.ndarray, orientation: np.ndarray) -> str | None:
    """Why sorted slice positions do not make one evenly spaced stack along the normal, or None."""
    normal = np.cross(orientation[:3], orientation[3:])
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    if np.any(along < 1e-3):
        return "several slices at one position (multiple echoes, time points or duplicates)"
    step = float(np.median(along))
    if np.abs(along - step).max() > SPACING_TOLERANCE * step:
        return f"uneven slice spacing (steps from {along.min():.2f} to {along.max():.2f} mm: missing slices?)"
    sideways = np.linalg.norm(steps - np.outer(along, normal), axis=1)
    if sideways.max() > SPACING_TOLERANCE * step:
        return "slices not stacked along their normal (gantry tilt or shear)"
    return None


def _patterns(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    if isinstance(patterns, str):
        raise TypeError(f"a list of patterns was expected, not the string {patterns!r}")
    return tuple(re.compile(pattern, re.IGNORECASE) for pattern in patterns)


def _brief(series: DicomSeries) -> str:
    number = "?" if series.series_number is None else series.series_number
    return f'{number} "{series.description}"'


def _found(series: DicomSeries, key: str | None) -> str:
    if series.skip_reason:
        return f"skipped, {series.skip_reason}"
    return MODALITY_NAMES.get(key, key) if key else "no rule matches"


def _short_uid(uid: str) -> str:
    """The end of a UID (its start is an organisation's root, the same for every series of a scanner)."""
    return uid if len(uid) <= 16 else f"...{uid[-12:]}"


def _number(value: int | None) -> int:
    return -1 if value is None else value


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in _values(value))
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None
