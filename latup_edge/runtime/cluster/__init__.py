"""Segment an archive on a Dask distributed cluster: ``segment --cluster local:N`` or ``tcp://HOST:PORT``.

``segment_distributed`` (``run``) finds the cases and decides, as serial ``segment_cases`` does, which
to skip (``skip_existing``) and which to refuse (one case id in two folders); then it submits one
task per remaining case. Each worker opens the bundle once, through ``PredictorPlugin`` (``worker``),
and runs its cases with serial segment's own per-case job (``task.run_case``), so every label map is
the one a serial run writes. The client alone writes the run log: the serial log's format, one
entry per case with the ``worker`` that ran it, rewritten atomically after every case.

Faults, and why nothing is lost or written twice:

- **A worker dies mid-case** (SIGKILL, the OOM killer, a segfault): the scheduler gives its task to
  another worker and the nanny starts a fresh worker, whose plugin opens the bundle again. Each
  output is written in full under a temporary name beside it and only then renamed into place, so
  no output is ever partial. A rerun cannot tell whether the dead attempt got as far as its rename,
  so its rename is skipped when the final file already holds the same image (``commit_output``):
  an output is replaced at most once, by a complete file with the same content. The client records
  each case once, from the one result the scheduler accepts for its task. Temporaries of writers
  that died are removed when the run ends (``remove_stale_temporaries``).
- **A bad case** (a truncated file, a missing modality): the job catches it as serial segment does;
  the case fails alone, with serial segment's sentence.
- **A case that kills every worker that runs it**: after the scheduler's allowed failures
  (``distributed.scheduler.allowed-failures``, set to ``ALLOWED_FAILURES`` on local clusters) it is
  marked failed (``KilledWorker``), and the run ends normally. Local clusters also set
  ``worker-saturation`` to 1, so a worker holds only the case it runs: a worker that dies takes no
  waiting case's allowance with it.

Dask is imported inside the functions that need it (and by ``worker``, which only Dask imports):
the runtime runs without the ``distributed`` extra, and ``--cluster`` then says how to install it.
OpenVINO's CPU pinning stays off (``openvino_backend``): pinned workers on one machine fight over
the same cores. Running it on SLURM or Kubernetes: docs/DISTRIBUTED.md.

>>> log = segment_distributed([Path("archive")], Path("out"), SegmentSettings(bundle=Path("bundle")),
...                           cluster="local:2")                                    # doctest: +SKIP
>>> {case["worker"] for case in log["cases"]}                                       # doctest: +SKIP
{'tcp://127.0.0.1:40211', 'tcp://127.0.0.1:36347'}
"""

from latup_edge.runtime.cluster.run import ALLOWED_FAILURES, ClusterSpec, connect, local_threads, segment_distributed
from latup_edge.runtime.cluster.task import commit_output, open_predictor, run_case

__all__ = [
    "ALLOWED_FAILURES",
    "ClusterSpec",
    "commit_output",
    "connect",
    "local_threads",
    "open_predictor",
    "run_case",
    "segment_distributed",
]
