"""Training batches: each one a pure function of (seed, step), drawn in worker processes when asked.

A batch's random numbers come from ``numpy.random.default_rng([seed, step])`` alone, so a run draws
the same batches with any number of workers, and a run stopped mid-epoch resumes exactly where it
stopped. On a GPU one process cannot sample and augment 128^3 patches as fast as the network eats
them; ``BatchStream(workers=N)`` keeps N forked processes ahead of the training loop.

>>> with BatchStream(cases, settings, steps=range(0, 100), workers=4) as stream:  # doctest: +SKIP
...     for step, (images, classes) in zip(range(0, 100), stream):
...         ...
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from latup_edge.train.augment import augment_patch
from latup_edge.train.sampling import TrainingCase, choose_case, sample_patch

if TYPE_CHECKING:
    from latup_edge.train.loop import TrainingSettings

Batch = tuple[np.ndarray, np.ndarray]  # images float32 (B, C, P, P, P), classes int64 (B, P, P, P)

# Set in the parent before the workers fork: the cases reach them by copy-on-write, not by pickling.
_WORKER_CASES: Sequence[TrainingCase] = ()


def draw_batch(cases: Sequence[TrainingCase], settings: TrainingSettings, step: int) -> Batch:
    """The batch of global step ``step``: ``settings.batch`` augmented patches, seeded by (seed, step)."""
    rng = np.random.default_rng([settings.seed, step])
    pairs = [
        augment_patch(
            *sample_patch(
                choose_case(cases, rng, settings.no_et_fraction), settings.patch, rng, settings.tumour_fraction
            ),
            rng,
            settings.augmentation,
        )
        for _ in range(settings.batch)
    ]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _draw_in_worker(settings: TrainingSettings, step: int) -> Batch:
    return draw_batch(_WORKER_CASES, settings, step)


class BatchStream:
    """Iterate the batches of ``steps`` in order; with ``workers`` > 0, drawn ahead in forked processes."""

    def __init__(self, cases: Sequence[TrainingCase], settings: TrainingSettings, steps: range, workers: int = 0):
        self.cases, self.settings, self.steps, self.workers = cases, settings, steps, workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> BatchStream:
        if self.workers > 0:
            global _WORKER_CASES
            _WORKER_CASES = self.cases
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __iter__(self) -> Iterator[Batch]:
        if self._pool is None:
            for step in self.steps:
                yield draw_batch(self.cases, self.settings, step)
            return
        ahead: deque[Future[Batch]] = deque()
        pending = iter(self.steps)
        for step in pending:  # fill the pipeline: two batches a worker
            ahead.append(self._pool.submit(_draw_in_worker, self.settings, step))
            if len(ahead) >= 2 * self.workers:
                break
        while ahead:
            batch = ahead.popleft().result()
            following = next(pending, None)
            if following is not None:
                ahead.append(self._pool.submit(_draw_in_worker, self.settings, following))
            yield batch
