"""``segment_distributed``: the client side of ``segment --cluster`` (see the package docstring)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latup_edge.runtime.cluster.task import open_predictor, remove_stale_temporaries, require_bundle
from latup_edge.runtime.segment import (
    CASE_ERRORS,
    LOG_NAME,
    VOLUMES_NAME,
    CaseJob,
    Report,
    SegmentError,
    SegmentSettings,
    case_sentence,
    check_output_folder,
    log_header,
    plan_jobs,
    write_log,
    write_volumes,
)
from latup_edge.scans.dicom import load_rules
from latup_edge.scans.study import discover_scans

if TYPE_CHECKING:
    from distributed import Client

    from latup_edge.runtime.cluster.worker import OpenPredictor

# Retries of a case whose worker died, set on local clusters (a remote scheduler keeps its own).
ALLOWED_FAILURES = 2
# Each worker holds only the task it runs: a worker that dies then takes no waiting case down with it.
WORKER_SATURATION = 1.0
CONNECT_TIMEOUT_S = 30
INSTALL = 'pip install "latup-edge[distributed]"'


@dataclass(frozen=True)
class ClusterSpec:
    """Where tasks run: ``local:N`` (``workers`` N processes on this machine) or a scheduler ``address``."""

    text: str
    workers: int | None = None
    address: str | None = None

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        """``local:N`` or a scheduler address (``tcp://HOST:PORT``, any ``scheme://``); SegmentError otherwise."""
        kind, _, value = text.partition(":")
        if kind == "local":
            if not value.isdigit() or int(value) < 1:
                raise SegmentError(f"cluster {text!r} needs a worker count of at least 1: pass local:N, e.g. local:2")
            return cls(text, workers=int(value))
        if "://" in text and text.partition("://")[2]:
            return cls(text, address=text)
        raise SegmentError(
            f"unknown cluster {text!r}: pass local:N (N worker processes on this machine) or a Dask scheduler "
            "address such as tcp://HOST:8786"
        )


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS says it), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def local_threads(workers: int) -> int:
    """Each local worker's inference threads when none are asked for: the usable CPUs shared out."""
    return max(1, usable_cpus() // workers)


def segment_distributed(
    inputs: Sequence[Path],
    out_dir: Path,
    settings: SegmentSettings | None = None,
    cluster: str = "local:1",
    report: Report = lambda event: None,
    *,
    open_predictor: OpenPredictor = open_predictor,
    worker_timeout_s: float = 300,
) -> dict[str, Any]:
    """Segment every case under ``inputs`` into ``out_dir`` on a Dask cluster; returns the run log.

    ``settings`` None runs the CLI's defaults; it needs a bundle. ``cluster`` is ``local:N`` (a
    ``LocalCluster`` of N worker processes, one thread each, closed at the end) or the address of a
    running scheduler. ``settings.threads`` None gives each local worker ``local_threads(N)``
    inference threads (remote workers: the engine's default). One task per case; each worker opens
    the bundle once (``PredictorPlugin``, with ``open_predictor``: tests pass their own). The log, its
    events for ``report`` and its failures are those of ``segment_cases``, with the ``worker`` of each
    case, the ``workers`` and the ``cluster``; it is written by this process only.

    Raises SegmentError (one sentence) when Dask is not installed, the cluster cannot be reached or
    no worker joins within ``worker_timeout_s``, and what ``segment_cases`` raises before any case
    runs (no case, an unwritable output, a bundle no worker can open). A case whose worker died
    more often than the scheduler's allowed failures is marked failed, and the run goes on.
    """
    settings = settings or SegmentSettings()
    spec = ClusterSpec.parse(cluster)
    if settings.audit.active:  # the audit's fp32 reference would be a second model on every worker
        raise SegmentError("--audit and --audit-fraction run serially: drop --cluster, or audit in a serial run")
    bundle = require_bundle(settings)
    require_dask()
    from distributed import KilledWorker, as_completed

    from latup_edge.runtime.cluster.worker import PredictorPlugin, segment_case

    # Absolute paths: a remote worker runs in a folder of its own, and sees shared storage at the same paths.
    given_out_dir, out_dir = out_dir, Path(out_dir).absolute()
    settings = replace(settings, bundle=bundle.absolute())
    cases = discover_scans(*(Path(path).absolute() for path in inputs))
    load_rules(settings.modality_rules)  # a bad rules file stops the run before any worker starts
    check_output_folder(out_dir)
    log_path = Path(settings.log) if settings.log is not None else out_dir / LOG_NAME
    if log_path.is_dir():
        raise SegmentError(f"log file {log_path} is a folder: pass a file path to --log")
    check_output_folder(log_path.parent)
    if spec.workers is not None and settings.threads is None:
        settings = replace(settings, threads=local_threads(spec.workers))

    jobs = plan_jobs(cases, out_dir, settings)  # skipping and duplicate case ids: as serial segment decides them
    task_settings = replace(settings, skip_existing=False)

    with connect(spec) as client:
        run = secrets.token_hex(4)
        plugin_name = f"latup-edge-predictor-{run}"
        client.register_plugin(PredictorPlugin(task_settings, open_predictor), name=plugin_name)
        summaries = _wait_for_summaries(client, plugin_name, worker_timeout_s, spec)
        log = _start_log(inputs, given_out_dir, settings, spec, client, summaries)
        write_log(log_path, log)
        report({
            "event": "start", "cases": len(cases), "backend": log["backend"], "shape_policy": log["shape_policy"],
            "warnings": log["warnings"], "workers": len(summaries), "cluster": log["cluster"],
        })  # fmt: skip

        entries: dict[int, dict[str, Any]] = {}

        def finish(index: int, entry: dict[str, Any]) -> None:
            entries[index] = entry
            log["cases"] = [entries[i] for i in sorted(entries)]  # in discovery order, as serial segment
            log["summary"][entry["status"]] += 1
            if entry["status"] == "failed":
                log["failures"][entry["case_id"]] = entry["error"]
            write_log(log_path, log)
            write_volumes(out_dir / VOLUMES_NAME, log["cases"])
            report({"event": "case", "index": index, **entry})

        futures = {}
        for index, job in enumerate(jobs):
            if not job.runnable:
                finish(index, {**job.finish(), "worker": None})
                continue
            key = f"segment-{job.case.case_id}-{run}"
            future = client.submit(segment_case, plugin_name, job.case, out_dir, task_settings, key=key, pure=False)
            futures[future] = index, job
        for future in as_completed(futures):
            index, job = futures[future]
            if future.status == "finished":
                entry, summary = future.result()
                if summary is not None:
                    log["workers"].setdefault(entry["worker"], _worker_row(summary))
            else:
                entry = _task_failure(job, future.exception(), KilledWorker)
            finish(index, entry)
            future.release()
        # A remote cluster's workers outlive the run: free the model each one holds.
        with contextlib.suppress(ValueError, OSError):
            client.unregister_worker_plugin(plugin_name)

    remove_stale_temporaries(out_dir, (Path(path) for job in jobs if job.ran for path in job.entry["outputs"]))
    log["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_log(log_path, log)
    return log


def _start_log(
    inputs: Sequence[Path],
    out_dir: Path,
    settings: SegmentSettings,
    spec: ClusterSpec,
    client: Client,
    summaries: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The run log before any case: serial segment's header from the first worker's summary, the cluster
    and its workers."""
    first = summaries[min(summaries)]
    return {
        **log_header(inputs, out_dir, settings),
        **{key: value for key, value in first.items() if key not in ("host", "pid")},
        "memory": "process_peak_rss_mb is the peak resident memory so far (ru_maxrss) of the worker process that "
        "ran the case",
        "cluster": {
            "spec": spec.text,
            "scheduler": client.scheduler.address,
            "allowed_failures": client.run_on_scheduler(_allowed_failures),
            "worker_saturation": client.run_on_scheduler(_worker_saturation),
        },
        "workers": {address: _worker_row(summary) for address, summary in sorted(summaries.items())},
        "cases": [],
        "summary": {"ok": 0, "failed": 0, "skipped": 0},
        "failures": {},
    }


def require_dask() -> None:
    """SegmentError, saying how to install it, unless Dask distributed can be imported."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SegmentError(f"--cluster runs on Dask distributed, which is not installed: {INSTALL}") from None


@contextlib.contextmanager
def connect(spec: ClusterSpec) -> Iterator[Client]:
    """A client of a new ``LocalCluster`` (configured as ``segment_distributed`` needs it, closed
    afterwards) or of the running scheduler at ``spec.address``; SegmentError when it cannot start."""
    require_dask()
    import dask
    from distributed import Client, LocalCluster

    if spec.workers is not None:
        config = {
            "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
            "distributed.scheduler.worker-saturation": WORKER_SATURATION,
        }
        with (
            dask.config.set(config),
            LocalCluster(
                n_workers=spec.workers, processes=True, threads_per_worker=1, dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):  # fmt: skip
            yield client
        return
    try:
        client = Client(spec.address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        raise SegmentError(
            f"cannot reach the Dask scheduler at {spec.address} ({error}): start it (dask scheduler) or check "
            "the address"
        ) from None
    with client:
        yield client


def _wait_for_summaries(
    client: Client, plugin_name: str, timeout_s: float, spec: ClusterSpec
) -> dict[str, dict[str, Any]]:
    """Each worker's predictor summary, once at least one worker has opened the bundle."""
    from latup_edge.runtime.cluster.worker import worker_summary

    deadline = time.monotonic() + timeout_s
    while True:
        summaries = {
            address: summary for address, summary in client.run(worker_summary, plugin_name).items() if summary
        }
        if summaries:
            return summaries
        if time.monotonic() > deadline:
            raise SegmentError(
                f"no Dask worker of {spec.text} opened the bundle within {timeout_s:.0f} s: start workers "
                "(dask worker ADDRESS, or your cluster's scale command) and run again"
            )
        time.sleep(0.2)


def _allowed_failures(dask_scheduler: Any) -> int:
    return dask_scheduler.allowed_failures


def _worker_saturation(dask_scheduler: Any) -> float:
    return dask_scheduler.WORKER_SATURATION


def _worker_row(summary: dict[str, Any]) -> dict[str, Any]:
    """A worker in the log: where it ran and what it resolved."""
    backend = summary["backend"]
    return {
        "host": summary["host"],
        "pid": summary["pid"],
        "load_ms": backend["load_ms"],
        "threads": backend["resolved"].get("threads"),
    }


def _task_failure(job: CaseJob, error: BaseException, killed_worker: type[BaseException]) -> dict[str, Any]:
    """The entry of a case whose task raised: a user-facing error or workers that kept dying (KilledWorker).

    Anything else is a bug, as in serial segment: it is raised.
    """
    if isinstance(error, killed_worker):
        attempts = error.allowed_failures + 1
        last = error.last_worker.address
        message = (
            f"case {job.case.case_id}: the worker running it died {attempts} times (the last was {last}), so it was "
            f"left out after the scheduler's {error.allowed_failures} allowed failures: segment it alone without "
            "--cluster to see why (often too little memory per worker)"
        )
        return {**job.entry, "status": "failed", "error": message, "worker": last}
    if isinstance(error, CASE_ERRORS):
        return {**job.entry, "status": "failed", "error": case_sentence(job.case, error), "worker": None}
    raise error
