"""One case as a cluster task, without Dask: the serial per-case job, its outputs staged, then committed.

``run_case`` runs a case exactly as ``segment_cases`` does (its ``CaseJob``: ``load_case_images``,
``Predictor.predict``, ``save_label_map`` in ``output_convention``), so the label maps are the same;
the only difference is where they are written first. A task may run more than once (Dask reruns the
task of a worker that died), so each output goes to a temporary name beside it, in full, and then
``commit_output`` renames it into place, unless the final file already holds the same image.

>>> entry = run_case(open_predictor(SegmentSettings(bundle=Path("bundle"))), case, Path("out"))  # doctest: +SKIP
>>> entry["status"], entry["outputs"]                                                            # doctest: +SKIP
('ok', ['out/BraTS2021_00001.nii.gz'])
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from latup_edge.data.naming import MODEL_MODALITIES
from latup_edge.fileio import gunzip_file
from latup_edge.runtime.bundle import resolve_bundle
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.segment import CaseJob, RunTrust, SegmentError, SegmentSettings
from latup_edge.scans.study import Scan

# A temporary beside an output, as ``atomic_write`` names them (".<8 hex>.<name>"), and the
# temporary ``atomic_write`` makes while writing a staged output (".<8 hex>..<8 hex>.<name>").
_TEMPORARY = re.compile(r"\.[0-9a-f]{8}\.(?:\.[0-9a-f]{8}\.)?(?P<name>.+)")


def require_bundle(settings: SegmentSettings) -> Path:
    """The settings' bundle (None: the shipped one): a cluster runs bundles only (SegmentError for torch)."""
    if settings.backend == "torch":
        raise SegmentError("--cluster runs a bundle on each worker: pass --bundle (the torch backend runs serially)")
    return resolve_bundle(settings.bundle)


def open_predictor(settings: SegmentSettings, predictor_class: type[Predictor] = Predictor) -> Predictor:
    """The settings' bundle, read and verified (``Predictor.from_bundle``), compiled at their precision."""
    return predictor_class.from_bundle(
        require_bundle(settings), settings.precision, settings.threads, settings.tiling, settings.window,
        settings.overlap, backend=settings.backend, shape_policy=settings.shape_policy,
        allow_failed=settings.allow_failed_precision, postprocessing=settings.postprocessing, mirror=settings.mirror,
        use_core=settings.core_network,
    )  # fmt: skip


def run_case(predictor: Predictor, case: Scan, out_dir: Path, settings: SegmentSettings) -> dict[str, Any]:
    """Segment one case into ``out_dir`` as serial ``segment`` does; returns its log entry.

    Whether to skip the case was decided before (``settings.skip_existing`` is ignored here: a rerun
    of a task must not skip outputs its first attempt committed). A user-facing failure of the case
    ends in the entry as serial segment words it.
    """
    job = _StagedCaseJob(case, None, Path(out_dir), replace(settings, skip_existing=False))
    with ThreadPoolExecutor(1, "latup-io") as io:
        job.start_loading(io, predictor.modalities or MODEL_MODALITIES, settings.modality_rules)
        loaded = job.wait_for_images()
        if loaded is not None:
            job.predict(predictor, loaded)
            # QA, the input check and the swap checks as serial segment runs them; the audit is serial only.
            modalities = predictor.modalities or MODEL_MODALITIES
            job.check(RunTrust.open(predictor, settings), loaded, modalities, False, predictor)
            del loaded  # the images are no longer needed once predicted
        job.start_writing(io)
        return job.finish()


class _StagedCaseJob(CaseJob):
    """Serial segment's per-case job, whose outputs are written in full under temporary names and then
    committed: probabilities first, labels last (as serial segment writes them)."""

    def _write(self) -> None:
        finals = self.labels_path, self.probabilities_path
        token = secrets.token_hex(4)
        staged = tuple(path.with_name(f".{token}.{path.name}") for path in finals)
        self.labels_path, self.probabilities_path = staged
        try:
            super()._write()
            if self.settings.probabilities:
                commit_output(staged[1], finals[1])
            commit_output(staged[0], finals[0])
        finally:
            self.labels_path, self.probabilities_path = finals
            for path in staged:
                path.unlink(missing_ok=True)


def commit_output(staged: Path, final: Path) -> bool:
    """Rename a complete ``staged`` output to ``final``; True if moved in, False if ``final`` was kept.

    ``final`` is kept (and ``staged`` removed) when it already holds the same image: written by an
    earlier attempt of the same task, or by an earlier run. The rename is atomic, so a reader sees
    the old file or the new one, never a part.
    """
    if final.is_file() and same_image(staged, final):
        staged.unlink()
        return False
    os.replace(staged, final)
    return True


def same_image(first: Path, second: Path) -> bool:
    """Whether two NIfTI files hold the same bytes once decompressed (a gzip header carries its write time)."""
    if first.stat().st_size != second.stat().st_size:  # one compressor on one image gives one size
        return False
    return _image_bytes(first) == _image_bytes(second)


def _image_bytes(path: Path) -> bytes:
    return gunzip_file(path) if path.name.endswith(".gz") else path.read_bytes()


def remove_stale_temporaries(out_dir: Path, outputs: Iterable[Path]) -> list[Path]:
    """Remove the temporaries of ``outputs`` in ``out_dir`` left by writers that were killed; returns them.

    Only call it when no task writing these outputs is still running: a live writer's temporary
    looks the same.
    """
    names = {Path(path).name for path in outputs}
    removed = []
    with os.scandir(out_dir) as entries:
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match and match["name"] in names and entry.is_file(follow_symlinks=False):
                removed.append(Path(entry.path))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
