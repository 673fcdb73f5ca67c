"""Serial ``segment`` against ``segment --cluster local:N``: throughput, memory per worker, scheduler overhead.

Each configuration runs in its own Python process (so its memory is its own) over the same cases:

- ``serial``: ``segment_cases`` with ``--threads`` = the usable CPUs;
- ``local:N`` for each ``--workers N`` (default 1 and 2): a ``LocalCluster`` of N worker processes,
  each with CPUs // N inference threads, as ``segment --cluster local:N`` starts it (``connect``).
  On that cluster, before segmenting, trivial tasks measure the scheduler's overhead per task:
  pipelined (``--overhead-tasks`` submitted at once, wall / count) and round trip (one task
  submitted and awaited at a time). Then ``segment_distributed`` runs on the same cluster.

Columns: wall (process start to exit: imports, cluster start, bundle opened on every worker, every
case, cluster shut down; the overhead measurement taken out), ready (until the model is open
everywhere: the ``start`` event; the cluster's start is ``cluster_start_s`` in the JSON), cases/s
all in (cases / wall) and steady (cases / time from ``start`` to the last case), s/case in a worker
(the mean of each case's load + infer + write, from the log), peak RSS per worker (the max over
each worker's entries of ``process_peak_rss_mb``; serial: the process) and the client's own peak
RSS (the client process holds the local cluster's scheduler).

Scaling estimate for M machines like this one, each running the fastest ``local:N`` configuration:
each worker spends the measured time per case (s/case in a worker) plus one scheduler round trip
between cases (a worker holds only the case it runs), and one scheduler serves every task at its
pipelined cost: ``cases/s(M) = min(M * N / (s/case + round trip), 1 / pipelined overhead)``; the
table shows the measured cases/s of one machine beside it. Shared storage bandwidth and network
latency are not in it: measure one real machine of the cluster first.

    python benchmarks/distributed_speed.py --bundle runs/bundle-shipped --cases runs/val-wide --n 8
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT = "latup-edge-distributed-speed/1"
MACHINES = (1, 2, 4, 8, 16, 64)


def select_cases(cases: Path, n: int | None, into: Path) -> Path:
    """The first ``n`` cases (by case id) under ``cases``, as a folder of symbolic links in ``into``."""
    from latup_edge.data.cases import discover_cases

    found = discover_cases(cases)
    if n is not None:
        if len(found) < n:
            raise SystemExit(f"--n {n}: {cases} holds only {len(found)} cases")
        found = found[:n]
    for case in found:
        folder = into / case.case_id
        folder.mkdir(parents=True)
        for path in [*case.files.values(), *([case.seg] if case.seg else [])]:
            (folder / path.name).symlink_to(path.resolve())
    return into


def run_config(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration in a fresh process (this script with ``--child``); its measurements."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{config['name']}: failed ({done.returncode}):\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    wall -= row["overhead"]["measured_in_s"] if row["overhead"] else 0  # not part of a segment run
    cases = row["cases"]
    return {
        **row,
        "wall_s": round(wall, 2),
        "cases_per_s_all_in": round(cases / wall, 4),
        "cases_per_s_steady": round(cases / row["run_s"], 4) if row["run_s"] else None,
    }


def child(config: dict[str, Any]) -> dict[str, Any]:
    """Runs in the configuration's own process: segment, timing every report event."""
    from latup_edge.runtime.cluster import ClusterSpec, connect, segment_distributed
    from latup_edge.runtime.segment import SegmentSettings, process_peak_rss_mb, segment_cases

    start = time.perf_counter()
    events: list[tuple[float, str]] = []

    def report(event: dict[str, Any]) -> None:
        events.append((time.perf_counter(), event["event"]))

    settings = SegmentSettings(bundle=Path(config["bundle"]), precision=config["precision"], threads=config["threads"])
    inputs, out = [Path(config["cases"])], Path(config["out"])
    overhead = cluster_s = None
    if config["workers"] == 0:
        log = segment_cases(inputs, out, settings, report)
    else:
        with connect(ClusterSpec.parse(f"local:{config['workers']}")) as client:
            cluster_s = time.perf_counter() - start
            overhead = scheduler_overhead(client, config["overhead_tasks"])
            start = time.perf_counter()  # the segment run's own clock starts on the running cluster
            log = segment_distributed(inputs, out, settings, client.scheduler.address, report)
    ready = next(t for t, name in events if name == "start")
    last = max((t for t, name in events if name == "case"), default=ready)
    ok = [entry for entry in log["cases"] if entry["status"] == "ok"]
    if len(ok) != len(log["cases"]):
        raise SystemExit(f"{config['name']}: {log['failures']}")
    per_worker: dict[str, float] = {}
    for entry in ok:
        worker = entry.get("worker") or "serial"
        per_worker[worker] = max(per_worker.get(worker, 0.0), entry["process_peak_rss_mb"])
    return {
        "name": config["name"],
        "workers": config["workers"],
        "threads": config["threads"],
        "cases": len(ok),
        "cluster_start_s": round(cluster_s, 3) if cluster_s is not None else None,
        "ready_s": round(ready - start, 3),
        "run_s": round(last - ready, 3),
        "worker_s_per_case": round(
            sum(sum(e["seconds"].get(k, 0) for k in ("load", "infer", "write")) for e in ok) / len(ok), 3
        ),  # fmt: skip
        "peak_rss_mb_per_worker": per_worker,
        "peak_rss_mb_worker_max": max(per_worker.values()),
        "client_peak_rss_mb": process_peak_rss_mb(),
        "overhead": overhead,
        "precision": log["backend"]["precision"],
        "resolved_threads": log["backend"]["resolved"].get("threads"),
    }


def scheduler_overhead(client: Any, tasks: int) -> dict[str, float]:
    """Per-task cost of trivial tasks on ``client``'s cluster: pipelined (all at once) and round trip (one by one)."""
    begun = time.perf_counter()
    client.gather([client.submit(operator.add, i, 1, pure=False) for i in range(10)])  # warm the comms
    started = time.perf_counter()
    client.gather([client.submit(operator.add, i, 1, pure=False) for i in range(tasks)])
    pipelined = (time.perf_counter() - started) / tasks
    rounds = max(10, tasks // 10)
    started = time.perf_counter()
    for i in range(rounds):
        client.submit(operator.add, i, 1, pure=False).result()
    round_trip = (time.perf_counter() - started) / rounds
    return {
        "tasks": tasks,
        "pipelined_ms": round(pipelined * 1000, 3),
        "round_trip_ms": round(round_trip * 1000, 3),
        "measured_in_s": round(time.perf_counter() - begun, 3),
    }


def scaling(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Cases per second for M machines like this one, each running the fastest measured ``local:N``."""
    clusters = [row for row in rows if row["workers"] and row["cases_per_s_steady"]]
    if not clusters:
        return None
    best = max(clusters, key=lambda row: row["cases_per_s_steady"])
    per_case = best["worker_s_per_case"]
    round_trip = best["overhead"]["round_trip_ms"] / 1000
    ceiling = 1000 / best["overhead"]["pipelined_ms"]
    estimate = {m: round(min(m * best["workers"] / (per_case + round_trip), ceiling), 3) for m in MACHINES}
    return {
        "config": best["name"],
        "worker_s_per_case": per_case,
        "round_trip_s": round_trip,
        "scheduler_ceiling_cases_per_s": round(ceiling, 1),
        "measured_one_machine_cases_per_s": best["cases_per_s_steady"],
        "cases_per_s": estimate,
    }


def print_tables(rows: list[dict[str, Any]], estimate: dict[str, Any] | None) -> None:
    print(
        "| config | workers x threads | wall s | ready s | cases/s all in | cases/s steady | s/case in a worker "
        "| peak RSS MB per worker (max) | client RSS MB | overhead ms/task pipelined / round trip |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        shape = f"{row['workers']} x {row['threads']}" if row["workers"] else f"1 process x {row['threads']}"
        overhead = row["overhead"]
        cost = f"{overhead['pipelined_ms']:.2f} / {overhead['round_trip_ms']:.2f}" if overhead else "-"
        client = f"{row['client_peak_rss_mb']:.0f}" if row["workers"] else "(the worker)"
        print(
            f"| {row['name']} | {shape} | {row['wall_s']:.1f} | {row['ready_s']:.1f} | "
            f"{row['cases_per_s_all_in']:.3f} | {row['cases_per_s_steady']:.3f} | {row['worker_s_per_case']:.2f} | "
            f"{row['peak_rss_mb_worker_max']:.0f} | {client} | {cost} |"
        )
    if estimate is None:
        return
    print()
    print(
        f"Scaling estimate ({estimate['config']} per machine: {estimate['worker_s_per_case']:.2f} s per case per "
        f"worker, {estimate['round_trip_s'] * 1000:.1f} ms round trip, scheduler ceiling "
        f"{estimate['scheduler_ceiling_cases_per_s']:.0f} tasks/s; measured on this machine: "
        f"{estimate['measured_one_machine_cases_per_s']:.3f} cases/s):"
    )
    print()
    print("| machines | " + " | ".join(map(str, estimate["cases_per_s"])) + " |")
    print("|---|" + "---|" * len(estimate["cases_per_s"]))
    print("| cases/s | " + " | ".join(f"{v:.2f}" for v in estimate["cases_per_s"].values()) + " |")


def versions() -> dict[str, str]:
    found = {}
    for name in ("latup-edge", "dask", "distributed", "openvino", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=False)
    parser.add_argument("--cases", type=Path, required=False, help="BraTS-format folder")
    parser.add_argument("--n", type=int, default=None, help="take the first N cases (by case id)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="local:N configurations")
    parser.add_argument("--precision", default=None, help="default: the bundle's default")
    parser.add_argument("--overhead-tasks", type=int, default=500, help="trivial tasks for the overhead")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/distributed_speed.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.bundle is None or args.cases is None:
        parser.error("--bundle and --cases are required")
    from latup_edge.runtime.cluster.run import usable_cpus

    cpus = usable_cpus()
    rows = []
    with tempfile.TemporaryDirectory(prefix="latup-distributed-bench-") as work:
        cases = select_cases(args.cases.resolve(), args.n, Path(work) / "cases")
        configs = [("serial", 0, cpus), *((f"local:{n}", n, max(1, cpus // n)) for n in args.workers)]
        for name, workers, threads in configs:
            print(f"running {name} ({threads} threads per process) ...", file=sys.stderr, flush=True)
            out = Path(work) / f"out-{workers}"
            config = {
                "name": name, "workers": workers, "threads": threads, "bundle": str(args.bundle.resolve()),
                "cases": str(cases), "out": str(out), "precision": args.precision,
                "overhead_tasks": args.overhead_tasks,
            }  # fmt: skip
            rows.append(run_config(config))
    estimate = scaling(rows)
    print_tables(rows, estimate)
    result = {
        "format": FORMAT,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "usable_cpus": cpus,
            "load_average": os.getloadavg(),
        },  # fmt: skip
        "versions": versions(),
        "bundle": str(args.bundle),
        "cases": str(args.cases),
        "n": args.n,
        "rows": rows,
        "scaling": estimate,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
