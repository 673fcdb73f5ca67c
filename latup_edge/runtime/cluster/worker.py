"""What runs on a Dask worker: the plugin that holds its ``Predictor``, and the task that segments one case.

Imported only where Dask is installed (by ``segment_distributed``, and by each worker when it
unpickles the plugin and the tasks): the rest of the runtime runs without the ``distributed`` extra.
"""

from __future__ import annotations

import asyncio
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed import Worker, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from latup_edge.runtime.cluster.task import open_predictor, run_case
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.segment import RunTrust, SegmentSettings, model_summary
from latup_edge.scans.study import Scan

OpenPredictor = Callable[[SegmentSettings], Predictor]


class PredictorPlugin(WorkerPlugin):
    """Opens the bundle once per worker process (``open_predictor``: read, hashes verified, compiled)
    and holds the ``Predictor`` for every case the worker runs, and a summary of what it resolved.

    Set up when registered (``Client.register_plugin``) and on every worker that joins later, such as
    the one a nanny starts in place of a worker that died. An error opening the bundle is raised to
    the client when registering; on a worker joining later, to the first task that needs the model.
    """

    def __init__(self, settings: SegmentSettings, open_predictor: OpenPredictor = open_predictor) -> None:
        self.settings = settings
        self.open_predictor = open_predictor
        self.predictor: Predictor | None = None
        self.summary: dict[str, Any] | None = None

    async def setup(self, worker: Worker) -> None:
        # Compiled off the worker's event loop, which keeps answering the scheduler meanwhile.
        await asyncio.to_thread(self.open)

    def teardown(self, worker: Worker) -> None:
        self.predictor = self.summary = None

    def open(self) -> Predictor:
        """The worker's predictor, opened now if it is not open yet."""
        if self.predictor is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                predictor = self.open_predictor(self.settings)
            self.summary = opened_summary(predictor, [str(warning.message) for warning in caught], self.settings)
            self.predictor = predictor
        return self.predictor


def opened_summary(predictor: Predictor, caught: list[str], settings: SegmentSettings) -> dict[str, Any]:
    """What a worker opened, in the run log's words (``model_summary`` and the run's ``trust``), with its
    host and pid."""
    trust = RunTrust.open(predictor, settings).describe()
    return {"host": socket.gethostname(), "pid": os.getpid(), **model_summary(predictor, caught), "trust": trust}


def segment_case(
    plugin_name: str, case: Scan, out_dir: Path, settings: SegmentSettings
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The task of one case: its log entry (with the ``worker`` that ran it) and that worker's summary."""
    worker = get_worker()
    plugin: PredictorPlugin = worker.plugins[plugin_name]
    entry = run_case(plugin.open(), case, out_dir, settings)
    return {**entry, "worker": worker.address}, plugin.summary


def worker_summary(plugin_name: str, dask_worker: Worker) -> dict[str, Any] | None:
    """For ``Client.run``: the summary of this worker's predictor, or None while it is still opening."""
    plugin = dask_worker.plugins.get(plugin_name)
    return plugin.summary if isinstance(plugin, PredictorPlugin) else None
