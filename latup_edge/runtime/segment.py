"""Segment BraTS cases into label maps: one case at a time, atomically, with a JSON run log.

``segment_cases`` finds the cases under the inputs, opens one ``Predictor`` (or uses the one it is
given), and for each case loads and validates its images, predicts (``Predictor.predict``: normalised
as the model was trained, brain boxes shaped by the shape policy) and writes ``<case_id>.nii.gz``
(and, on request, ``<case_id>_probabilities.nii.gz``) on the input's grid. A bad case is recorded
with one sentence and the batch goes on. Every output file, and the log after each case, is written
through a hidden temporary file and renamed, so a run killed at any moment leaves only complete
files; ``skip_existing`` then resumes it. Inputs are only read.

>>> log = segment_cases([Path("BraTS2021")], Path("out"), SegmentSettings(bundle=Path("bundle")))  # doctest: +SKIP
>>> log["summary"]                                                                                 # doctest: +SKIP
{'ok': 125, 'failed': 0, 'skipped': 0}
"""

from __future__ import annotations

import csv
import json
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from latup_edge.data.cases import (
    BratsCase,
    CaseError,
    channel_order_warnings,
    image_on_grid,
    save_label_map,
    save_nifti,
)
from latup_edge.data.labels import REGIONS, LabelConvention, detect_convention
from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.data.preprocess import SIZE_MULTIPLE
from latup_edge.errors import LatupError, first_line
from latup_edge.fileio import atomic_write
from latup_edge.runtime.backends import BackendName
from latup_edge.runtime.bundle import Bundle
from latup_edge.runtime.openvino_backend import Precision
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.qa import FLAG_SEPARATOR, case_qa, region_volumes_ml
from latup_edge.runtime.trust import (
    AUDIT_REFERENCE,
    EXCHANGES,
    AuditPlan,
    audit_case,
    audit_summary,
    audit_warnings,
    bundle_gate,
    case_flags,
    exchange_check,
    input_check,
    t1ce_check,
)
from latup_edge.runtime.volume import (
    DEFAULT_OVERLAP,
    DEFAULT_TILING,
    DEFAULT_WINDOW,
    SHAPE_POLICIES,
    TILINGS,
    Prediction,
    ShapePolicy,
    Tiling,
    mirror_axes,
)
from latup_edge.scans.dicom import ModalityRules, load_rules
from latup_edge.scans.dicom_seg import write_dicom_seg
from latup_edge.scans.study import LoadedScan, Scan, discover_scans, labels_on_native_grid, load_companion, load_scan

LOG_FORMAT = "latup-edge-segment-log/1"
LOG_NAME = "segment-log.json"
VOLUMES_NAME = "volumes.csv"
VOLUMES_COLUMNS = ("case_id", "status", "WT_ml", "TC_ml", "ET_ml", "low_confidence", "ood_score",
                   "audit_WT", "audit_TC", "audit_ET", "flags")  # fmt: skip
DICOM_SEG_SUFFIX = "_seg.dcm"
PROBABILITIES_SUFFIX = "_probabilities"
# Failures of one case that must not stop the batch: bad input files (LatupError), OpenVINO runtime
# errors, a full disk on write, a case too large for memory. Anything else is a bug and stops the run.
CASE_ERRORS = (LatupError, OSError, RuntimeError, MemoryError)

Report = Callable[[dict[str, Any]], None]


class SegmentError(LatupError):
    """A run that cannot start (bad settings, unwritable output); one sentence saying what to do."""


@dataclass(frozen=True)
class SegmentSettings:
    """How ``segment_cases`` runs; the defaults are the CLI's.

    ``labels`` None writes each case in its own convention (see ``output_convention``); ``log``
    None writes ``OUT_DIR/segment-log.json``; ``shape_policy`` None is the network's default
    (``latup_edge.runtime.predictor.resolve_shape_policy``).
    """

    backend: BackendName = "openvino"
    precision: Precision | None = None
    bundle: Path | None = None
    weights: Path | None = None
    labels: LabelConvention | None = None
    probabilities: bool = False
    skip_existing: bool = False
    tiling: Tiling = DEFAULT_TILING
    window: int = DEFAULT_WINDOW
    overlap: float = DEFAULT_OVERLAP
    threads: int | None = None
    allow_failed_precision: bool = False
    log: Path | None = None
    shape_policy: ShapePolicy | None = None
    postprocessing: Postprocessing = DEFAULT_POSTPROCESSING
    modality_rules: Path | None = None  # DICOM series -> modality rules (None: the shipped ones)
    dicom_seg: bool = False  # also write a DICOM SEG for each DICOM study
    audit_every: int = 0  # also run the fp32 reference on every K-th case (0: never)
    audit_fraction: float = 0.0  # ... and on a seeded random fraction of the cases
    audit_seed: int = 0
    mirror: str = ""  # test-time mirroring: axis letters ("" or "none": off; "x": left-right, 2 passes; "xyz": 8)
    core_network: bool = True  # run a bundle's core network, when it has one, to label the tumour's parts

    @property
    def audit(self) -> AuditPlan:
        return AuditPlan(self.audit_every, self.audit_fraction, self.audit_seed)

    def __post_init__(self) -> None:
        """Refuse settings that cannot run with one SegmentError sentence, before any work."""
        if self.labels not in (None, *get_args(LabelConvention)):
            raise SegmentError(f"unknown label convention {self.labels!r}: choose 2021, 2023 or nnunet")
        if self.window < SIZE_MULTIPLE or self.window % SIZE_MULTIPLE:
            raise SegmentError(
                f"the window must be a positive multiple of {SIZE_MULTIPLE}, got {self.window}: "
                f"{DEFAULT_WINDOW} is usual"
            )
        if not 0 <= self.overlap < 1:
            raise SegmentError(f"the overlap must be at least 0 and below 1, got {self.overlap}: 0.5 is usual")
        if self.tiling not in TILINGS:
            raise SegmentError(f"unknown tiling {self.tiling!r}: choose {' or '.join(TILINGS)}")
        mirror_axes(self.mirror)  # an unknown mirroring: one sentence, before any work
        if self.threads is not None and self.threads < 1:
            raise SegmentError(f"threads must be at least 1, got {self.threads}")
        if self.shape_policy not in (None, *SHAPE_POLICIES):
            raise SegmentError(f"unknown shape policy {self.shape_policy!r}: choose {' or '.join(SHAPE_POLICIES)}")
        try:
            self.audit  # noqa: B018 (AuditPlan refuses a negative K or a fraction outside 0-1)
        except ValueError as error:
            raise SegmentError(str(error)) from None


def output_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    """Where a case's label map and probability map go: ``<case_id>.nii.gz``, ``<case_id>_probabilities.nii.gz``."""
    return out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}{PROBABILITIES_SUFFIX}.nii.gz"


def output_convention(case: Scan) -> LabelConvention:
    """The label convention a case's output follows when none is asked for: the case's own.

    Its dataset.json's, where an nnU-Net folder has one; else from its label file when that holds ET (4: 2021,
    3: the naming's, see ``detect_convention``); else from its naming (BraTS 2023+ names: 2023, nnU-Net names:
    nnU-Net's BraTS order), otherwise 2021. The label file is only a hint here: an unreadable one, or one with
    both 3 and 4, is ignored, since segmentation does not need it.
    """
    if not isinstance(case, BratsCase):  # a DICOM study has no naming: BraTS 2021's labels
        return "2021"
    by_naming = case.default_labels()
    if case.seg is None or (case.description and case.description.labels):
        return by_naming
    try:
        return detect_convention(np.asanyarray(nib.load(case.seg).dataobj), default=by_naming)
    except (OSError, EOFError, ValueError, ImageFileError):
        return by_naming


def check_output_folder(folder: Path) -> None:
    """Create ``folder`` if needed and prove it writable; SegmentError (one sentence) otherwise."""
    if folder.exists() and not folder.is_dir():
        raise SegmentError(f"output folder {folder} is a file: choose a folder (it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".latup-write-test-"):
            pass
    except OSError as error:
        raise SegmentError(
            f"cannot write to output folder {folder} ({error.strerror or error}): choose a folder you can write to"
        ) from None


def process_peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB): ``ru_maxrss``, KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6, 1)


def save_probabilities(probabilities: np.ndarray, reference: nib.Nifti1Image, path: Path) -> Path:
    """Write (K, X, Y, Z) probabilities as a float32 X x Y x Z x K NIfTI on the reference's grid, atomically."""
    image = image_on_grid(np.moveaxis(probabilities, 0, -1), reference, np.float32, display_max=1)
    return save_nifti(image, path)


def segment_cases(
    inputs: Sequence[Path],
    out_dir: Path,
    settings: SegmentSettings = SegmentSettings(),
    report: Report = lambda event: None,
    predictor: Predictor | None = None,
) -> dict[str, Any]:
    """Segment every case under ``inputs`` into ``out_dir``; returns the run log (also written as JSON).

    ``predictor`` None opens one from the settings' backend, precision, bundle, weights, threads,
    tiling and shape policy; a given predictor runs as it was opened (``Predictor.segment`` passes
    itself here) and those settings are not used.

    Before any case runs, raises SegmentError, CaseError, BackendError, BundleError or PredictorError
    (one sentence) for inputs with no case, an unwritable output folder or log, or a model that cannot
    open (``SegmentSettings`` refuses bad settings itself). Afterwards a user-facing failure of one case
    (``CASE_ERRORS``) only marks that case ``failed``; any other exception is a bug and propagates.

    ``report`` receives ``{"event": "start", "cases", "backend", "shape_policy", "warnings"}`` once the
    model is open, then ``{"event": "case", "index", ...the case's log entry}`` after each case.
    """
    out_dir = Path(out_dir)
    cases = discover_scans(*inputs)
    rules = load_rules(settings.modality_rules)
    check_output_folder(out_dir)
    log_path = Path(settings.log) if settings.log is not None else out_dir / LOG_NAME
    if log_path.is_dir():
        raise SegmentError(f"log file {log_path} is a folder: pass a file path to --log")
    check_output_folder(log_path.parent)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if predictor is None:
            predictor = Predictor.open(
                settings.backend, settings.precision, settings.bundle, settings.weights, settings.threads,
                settings.tiling, settings.window, settings.overlap, shape_policy=settings.shape_policy,
                allow_failed=settings.allow_failed_precision, postprocessing=settings.postprocessing,
                mirror=settings.mirror, use_core=settings.core_network,
            )  # fmt: skip
    modalities = predictor.modalities or MODEL_MODALITIES
    trust = RunTrust.open(predictor, settings)
    log: dict[str, Any] = {
        **log_header(inputs, out_dir, settings),
        **model_summary(predictor, [str(warning.message) for warning in caught] + channel_order_warnings(cases)),
        "memory": "process_peak_rss_mb is the whole process's peak resident memory so far (ru_maxrss)",
        "trust": trust.describe(),
        "cases": [],
        "summary": {"ok": 0, "failed": 0, "skipped": 0},
        "failures": {},
    }
    write_log(log_path, log)
    report({
        "event": "start", "cases": len(cases), "backend": log["backend"], "shape_policy": log["shape_policy"],
        "warnings": log["warnings"],
    })  # fmt: skip

    jobs = plan_jobs(cases, out_dir, settings)
    started = time.perf_counter()

    def finish(index: int, job: CaseJob) -> None:
        entry = job.finish()
        log["cases"].append(entry)
        log["summary"][entry["status"]] += 1
        if entry["status"] == "failed":
            log["failures"][job.case.case_id] = entry["error"]
        write_log(log_path, log)
        write_volumes(out_dir / VOLUMES_NAME, log["cases"])
        report({"event": "case", "index": index, **entry})

    # The next case is read and the previous one written on helper threads while the network runs
    # (OpenVINO releases the GIL); at most one case waits on each side, which bounds the memory.
    with ThreadPoolExecutor(1, "latup-read") as reader, ThreadPoolExecutor(1, "latup-write") as writer:
        runnable = iter([job for job in jobs if job.runnable])
        upcoming = next(runnable, None)
        if upcoming is not None:
            upcoming.start_loading(reader, modalities, rules)
        previous: tuple[int, CaseJob] | None = None
        for index, job in enumerate(jobs):
            if job.runnable:  # this job is ``upcoming``: the runnable jobs come in the same order
                loaded = job.wait_for_images()
                upcoming = next(runnable, None)
                if upcoming is not None:
                    upcoming.start_loading(reader, modalities, rules)
                if loaded is not None:
                    job.predict(predictor, loaded)
                    job.check(trust, loaded, modalities, audited=trust.audits(index), predictor=predictor)
                    del loaded  # this case's images are no longer needed
                job.start_writing(writer)
            if previous is not None:
                finish(*previous)
            previous = (index, job)
        if previous is not None:
            finish(*previous)
    log["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    if trust.plan.active:
        log["audit"] = trust.summary(log["cases"], time.perf_counter() - started)
        log["warnings"] += audit_warnings(log["audit"])
    write_log(log_path, log)
    return log


@dataclass
class RunTrust:
    """What a run checks beside segmenting: the fp32 audit, and the inputs against the bundle's record."""

    plan: AuditPlan
    reference: Predictor | None  # the fp32 predictor of the same bundle, when the plan audits
    gate: float
    input_reference: dict[str, Any] | None  # the bundle's input statistics (None: not recorded)
    note: str | None = None

    @classmethod
    def open(cls, predictor: Predictor, settings: SegmentSettings) -> RunTrust:
        plan, manifest = settings.audit, predictor.bundle.manifest if predictor.bundle is not None else None
        reference, note = None, None
        if plan.active and predictor.precision == AUDIT_REFERENCE:
            plan, note = AuditPlan(), f"no audit: the run itself is {AUDIT_REFERENCE}, the audit's reference"
        elif plan.active:
            reference = predictor.with_precision(AUDIT_REFERENCE, settings.threads)
        input_reference = ((manifest or {}).get("build") or {}).get("input_reference")
        return cls(plan, reference, bundle_gate(manifest), input_reference, note)

    def audits(self, index: int) -> bool:
        return self.reference is not None and self.plan.chooses(index)

    def describe(self) -> dict[str, Any]:
        return {
            "audit": self.plan.to_dict() | {"gate": self.gate} if self.plan.active else None,
            "audit_note": self.note,
            "input_reference": None if self.input_reference is None else {"cases": self.input_reference.get("n")},
        }

    def summary(self, entries: Sequence[dict[str, Any]], run_seconds: float) -> dict[str, Any]:
        return audit_summary(entries, self.plan, self.gate, run_seconds)


def plan_jobs(cases: Sequence[Scan], out_dir: Path, settings: SegmentSettings) -> list[CaseJob]:
    """One job per case, in order; a case id seen before, or outputs to skip, are decided here."""
    folders: dict[str, Path] = {}
    jobs = []
    for case in cases:
        jobs.append(CaseJob(case, folders.get(case.case_id), out_dir, settings))
        folders.setdefault(case.case_id, case.folder)
    return jobs


def log_header(inputs: Sequence[Path], out_dir: Path, settings: SegmentSettings) -> dict[str, Any]:
    """The run log's first fields: its format, times, inputs, output folder and settings."""
    return {
        "format": LOG_FORMAT,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "finished": None,
        "inputs": [str(path) for path in inputs],
        "out_dir": str(out_dir),
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(settings).items()},
    }


def model_summary(predictor: Predictor, warnings_seen: list[str]) -> dict[str, Any]:
    """What the run log says of the opened model: bundle, backend, shape policy, modalities, rules."""
    backend = predictor.backend
    return {
        "bundle": _bundle_summary(predictor.bundle),
        "backend": {
            "name": backend.name,
            "precision": backend.precision,
            "load_ms": round(backend.load_ms, 1),
            "resolved": backend.resolved(),
            "normalization": predictor.normalization,
        },
        "shape_policy": {
            "resolved": predictor.shape_policy,
            "requested": predictor.requested_shape_policy,
            "statistics": predictor.network.get("statistics", "volume"),
        },
        "modalities": list(predictor.modalities or MODEL_MODALITIES),
        "postprocessing": predictor.postprocessing.to_dict(),
        "mirror": predictor.mirror or None,
        "warnings": warnings_seen,
    }


class CaseJob:
    """One case through the pipeline: read (reader thread), predict (caller), write (writer thread).

    Its arrays live only between stages, so a case's images are freed once predicted and its
    labels once written. Every user-facing failure (``CASE_ERRORS``) of any stage ends in its entry.
    """

    def __init__(self, case: Scan, seen_in: Path | None, out_dir: Path, settings: SegmentSettings) -> None:
        self.case = case
        self.settings = settings
        self.labels_path, self.probabilities_path = output_paths(out_dir, case.case_id)
        wanted = [self.labels_path, *([self.probabilities_path] if settings.probabilities else [])]
        self.entry: dict[str, Any] = {
            "case_id": case.case_id,
            "folder": str(case.folder),
            "status": "ok",
            "error": None,
            "outputs": [str(path) for path in wanted],
            "labels": None,
            "volumes_ml": None,
            "geometry": None,
            "qa": None,
            "ood": None,
            "audit": None,
            "t1ce_check": None,
            "exchange_checks": None,
            "flags": [],
            "seconds": {},
            "process_peak_rss_mb": None,
        }
        self.loading: Future | None = None
        self.t1_loading: Future | None = None
        self.writing: Future | None = None
        self.prediction: Prediction | None = None
        self.loaded: LoadedScan | None = None
        self.qa: dict[str, Any] | None = None
        self.dicom_seg_path = out_dir / f"{case.case_id}{DICOM_SEG_SUFFIX}"
        if seen_in is not None:
            self.entry.update(
                status="failed",
                error=f"case {case.case_id} is in both {seen_in} and {case.folder}: its outputs would overwrite "
                "each other, so segment these folders into separate output folders",
            )
        elif settings.skip_existing and all(path.exists() for path in wanted):
            self.entry["status"] = "skipped"
        self.ran = self.runnable

    @property
    def runnable(self) -> bool:
        return self.entry["status"] == "ok"

    def start_loading(
        self, reader: ThreadPoolExecutor, modalities: Sequence[str], rules: ModalityRules | Path | None = None
    ) -> None:
        self.loading = reader.submit(_timed, load_scan, self.case, modalities, rules)
        if "t1ce" in modalities and "t1" not in modalities:  # for the swap checks: the model does not read T1
            self.t1_loading = reader.submit(self._read_t1, self.loading, rules)

    def wait_for_images(self) -> LoadedScan | None:
        """This case's images on the model grid, once read; None (and the entry failed) if they cannot be."""
        assert self.loading is not None
        try:
            loaded, self.entry["seconds"]["load"] = self.loading.result()
            self.entry["geometry"] = loaded.steps
            return loaded
        except CASE_ERRORS as error:
            self._fail(error)
            return None
        finally:
            self.loading = None

    def predict(self, predictor: Predictor, loaded: LoadedScan) -> None:
        # Labels go back to a native grid through the class probabilities (label-aware resampling).
        wanted = self.settings.probabilities or loaded.native is not None
        try:
            self.prediction, self.entry["seconds"]["infer"] = _timed(predictor.predict, loaded.images, wanted)
            self.entry["seconds"].update(self.prediction.seconds)  # pre, network, post within infer
            self.loaded = loaded
        except CASE_ERRORS as error:
            self._fail(error)

    def check(
        self, trust: RunTrust, loaded: LoadedScan, modalities: Sequence[str], audited: bool, predictor: Predictor
    ) -> None:
        """QA figures, the input's OOD score, the swap checks and, when ``audited``, the fp32 audit."""
        if self.prediction is None:
            return
        classes, spacing = self.prediction.classes, loaded.reference.header.get_zooms()[:3]  # the network's grid
        voxel_ml = float(np.prod(spacing)) / 1000
        removed, kept = (round(voxels * voxel_ml, 2) for voxels in self.prediction.removed_and_kept_voxels)
        removed_et, kept_et = (round(voxels * voxel_ml, 2) for voxels in self.prediction.removed_and_kept_et_voxels)
        self.qa = case_qa(classes, spacing) | {
            "low_confidence_fraction": self.prediction.low_confidence_fraction,
            "removed_component_ml": removed,
            "largest_kept_ml": kept,
            "removed_et_ml": removed_et,
            "kept_et_ml": kept_et,
        }
        self.entry["ood"] = input_check(loaded.images, modalities, spacing, trust.input_reference,
                                        loaded.acquired_spacing)  # fmt: skip
        t1, why = self._t1_on_grid()
        check, seconds = _timed(
            t1ce_check, loaded.images, modalities, classes, t1,
            lambda images: predictor.predict(images).classes, float(np.prod(spacing)) / 1000, why,
        )  # fmt: skip
        if check is not None:
            self.entry["t1ce_check"] = check | {"seconds": round(seconds, 3)}
        volumes = dict(zip(modalities, loaded.images, strict=True)) | ({} if t1 is None else {"t1": t1})
        exchanges = {}
        for name in EXCHANGES:
            check, seconds = _timed(exchange_check, name, volumes, modalities, classes,
                                    self.prediction.low_confidence_fraction, predictor.predict)  # fmt: skip
            if check is not None:
                exchanges[name] = check | {"seconds": round(seconds, 3)}
        self.entry["exchange_checks"] = exchanges or None
        if audited:
            try:
                reference, seconds = _timed(trust.reference.predict, loaded.images)
            except CASE_ERRORS as error:  # the audit is extra: its failure is noted, the case stands
                self.entry["audit"] = {"reference": AUDIT_REFERENCE, "error": first_line(error), "passed": None}
                return
            self.entry["audit"] = audit_case(classes, reference.classes, trust.gate, seconds)

    def _read_t1(
        self, loading: Future, rules: ModalityRules | Path | None
    ) -> tuple[np.ndarray | None, list[dict[str, Any]], str | None]:
        """The case's T1 on its model grid, aligned as its inputs were (reader thread, after them): the volume,
        its geometry steps and, without one, why. The model does not read T1, so a T1 missing, unreadable or
        not aligned ends only the checks that need it, never the case."""
        try:
            loaded, _ = loading.result()
        except Exception:  # noqa: BLE001 - the case's own failure is reported where its images are awaited
            return None, [], "the case's images could not be read"
        return load_companion(self.case, "t1", loaded, rules)

    def _t1_on_grid(self) -> tuple[np.ndarray | None, str | None]:
        """The T1 on the network's grid (its steps go into the case's geometry log), or None and why not."""
        future, self.t1_loading = self.t1_loading, None
        if future is None:
            return None, "T1 not read"
        volume, steps, why = future.result()
        if self.entry["geometry"] is not None:  # each step with its own seconds
            self.entry["geometry"] += [{**step, "for": "the swap checks"} for step in steps]
        return volume, why

    def start_writing(self, writer: ThreadPoolExecutor) -> None:
        if self.runnable:
            self.writing = writer.submit(_timed, self._write)

    def _write(self) -> None:
        prediction, self.prediction = self.prediction, None
        loaded, self.loaded = self.loaded, None
        assert prediction is not None and loaded is not None
        convention = self.settings.labels or output_convention(self.case)
        if self.settings.probabilities:  # on the grid the network ran on (the model grid for resampled scans)
            save_probabilities(prediction.probabilities, loaded.reference, self.probabilities_path)
        classes, reference = prediction.classes, loaded.reference
        if loaded.native is not None:
            classes, record = labels_on_native_grid(loaded.native, prediction.classes, prediction.probabilities)
            reference = loaded.native.header
            self.entry["geometry"].append(record)
        del prediction
        save_label_map(classes, reference, self.labels_path, convention)
        self.entry["labels"] = convention
        self.entry["volumes_ml"] = region_volumes_ml(classes, reference.header.get_zooms()[:3])
        if self.qa is not None:  # on the label map's own grid, as written
            self.qa["volumes_ml"] = self.entry["volumes_ml"]
        if self.settings.dicom_seg:
            self._write_dicom_seg(classes, loaded)

    def _write_dicom_seg(self, classes: np.ndarray, loaded: LoadedScan) -> None:
        series = loaded.native.series if loaded.native is not None else None
        if series is None:
            self.entry.setdefault("notes", []).append("no DICOM SEG: the input is NIfTI, not a DICOM series")
            return
        write_dicom_seg(np.ascontiguousarray(classes.transpose(2, 1, 0)), series, self.dicom_seg_path)
        self.entry["outputs"].append(str(self.dicom_seg_path))

    def finish(self) -> dict[str, Any]:
        """The case's log entry, once its outputs are written (or it failed)."""
        if self.writing is not None:
            try:
                _, self.entry["seconds"]["write"] = self.writing.result()
            except CASE_ERRORS as error:
                self._fail(error)
            self.writing = None
        self.prediction = self.loaded = self.t1_loading = None
        if self.entry["status"] == "ok" and self.qa is not None:
            self.entry["qa"] = self.qa
            entry = self.entry
            entry["flags"] = case_flags(self.qa, entry.get("ood"), entry.get("audit"), entry.get("t1ce_check"),
                                        entry.get("exchange_checks"))  # fmt: skip
        if self.ran:
            self.entry["process_peak_rss_mb"] = process_peak_rss_mb()
        return self.entry

    def _fail(self, error: BaseException) -> None:
        self.entry.update(status="failed", error=case_sentence(self.case, error))


def _timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function(*args)
    return result, _since(start)


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def case_sentence(case: Scan, error: BaseException) -> str:
    """One line for the log: CaseError messages already name the case, other LatupErrors get it;
    the rest (runtime, disk and memory errors) also say their type."""
    if isinstance(error, CaseError):
        return str(error)
    if isinstance(error, LatupError):
        return f"case {case.case_id}: {error}"
    return f"case {case.case_id}: {type(error).__name__}: {first_line(error)}"


def _bundle_summary(bundle: Bundle | None) -> dict[str, Any] | None:
    if bundle is None:
        return None
    return {
        "path": str(bundle.path),
        "default_precision": bundle.default_precision,
        "checksum": bundle.manifest.get("checksum"),
    }


def write_volumes(path: Path, entries: Sequence[dict[str, Any]]) -> None:
    """The tumour volumes of every segmented case (mL, on the label map's own grid) as CSV, atomically."""
    rows = []
    for entry in entries:
        volumes = entry.get("volumes_ml") or {}
        qa, ood, audit = entry.get("qa") or {}, entry.get("ood") or {}, entry.get("audit") or {}
        agreement = audit.get("agreement") or {}
        rows.append([
            entry["case_id"], entry["status"],
            *(f"{volumes[name]:.2f}" if name in volumes else "" for name in REGIONS),
            _cell(qa.get("low_confidence_fraction")), _cell(ood.get("score")),
            *(_cell(agreement.get(name)) for name in REGIONS),
            FLAG_SEPARATOR.join(entry.get("flags") or []),
        ])  # fmt: skip

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(VOLUMES_COLUMNS)
            writer.writerows(rows)

    atomic_write(path, write)


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.4g}"


def write_log(path: Path, log: dict[str, Any]) -> None:
    text = json.dumps(log, indent=2, default=str) + "\n"
    atomic_write(path, lambda temporary: temporary.write_text(text))
