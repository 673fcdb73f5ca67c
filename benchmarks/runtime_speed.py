"""Runtime speed and memory: one ``latup-edge segment`` run over many cases, stage by stage.

Each configuration runs ``latup-edge segment`` over the same cases in its own process (so its peak
memory is its own), from this tree or from another checkout (``--before DIR``: the same command, run
with that checkout's code, for a before/after table). The stages come from the run log:

- read: the case's NIfTI files decoded (``load``), on a helper thread in the overlapped pipeline;
- pre: normalisation and brain box; network: the backend call (bucket padding included); post:
  argmax and putting the labels back (older logs only have ``infer``, the three together);
- write: the label file written (helper thread in the overlapped pipeline).

"s/case, all in" is the run's wall time (process start to exit: imports, bundle verification, model
compilation, every case) divided by the number of cases. "first" is the first case's stage times
(kernel setup at its shape), "steady" the mean over the others. p95 is over each case's own time
(load + infer + write) from the second case on. Peak RSS is the process's ``ru_maxrss``.

Where the cases have label files, each configuration's labels are also scored: mean Dice per region
against the truth, and mean agreement with the first configuration's labels (what a mode changes).

    python benchmarks/runtime_speed.py --bundle bundle --cases heldout --out benchmarks/runtime_speed.json
    python benchmarks/runtime_speed.py --bundle bundle --cases heldout --before /tmp/old-checkout \\
        --config "before:--shape-policy exact" --config "after:" --config "sliding:--tiling sliding"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from latup_edge.data.cases import discover_cases, load_case_labels
from latup_edge.evaluate.metrics import agreement

FORMAT = "latup-edge-runtime-speed/1"
STAGES = ("load", "pre", "network", "post", "infer", "write")
LAUNCH = "import sys; from latup_edge.cli import main; sys.argv[0] = 'latup-edge'; main()"


def run_config(
    name: str, extra: list[str], tree: Path | None, bundle: Path, cases: Path, precision: str, threads: int
) -> dict[str, Any]:
    """One segment run in a fresh process; its stage table from the run log."""
    with tempfile.TemporaryDirectory(prefix="latup-bench-") as out:
        command = [sys.executable, "-c", LAUNCH, "segment", str(cases), "-o", out, "--bundle", str(bundle)]
        command += ["--precision", precision, "--threads", str(threads), *extra]
        started = time.perf_counter()
        # Another checkout's code runs from its own folder (cwd first on sys.path).
        done = subprocess.run(command, cwd=tree or Path.cwd(), capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{name}: segment failed ({done.returncode}):\n{done.stderr[-2000:]}")
        log = json.loads((Path(out) / "segment-log.json").read_text())
        entries = [entry for entry in log["cases"] if entry["status"] == "ok"]
        labels = {entry["case_id"]: _written_classes(Path(out) / f"{entry['case_id']}.nii.gz") for entry in entries}
    if len(entries) < 2:
        raise SystemExit(f"{name}: need at least 2 segmented cases, got {len(entries)}")
    first, rest = entries[0]["seconds"], [entry["seconds"] for entry in entries[1:]]
    per_case = [sum(s.get(key, 0.0) for key in ("load", "infer", "write")) for s in rest]
    return {
        "name": name,
        "tree": str(tree) if tree else "this checkout",
        "extra_args": extra,
        "cases": len(entries),
        "failed": log["summary"]["failed"],
        "wall_s": round(wall, 2),
        "s_per_case_all_in": round(wall / len(entries), 3),
        "first": {key: first[key] for key in STAGES if key in first},
        "steady": {key: round(float(np.mean([s[key] for s in rest])), 3) for key in STAGES if key in rest[0]},
        "p95_case_s": round(float(np.percentile(per_case, 95)), 3),
        "peak_rss_mb": max(entry["process_peak_rss_mb"] for entry in entries),
        "shape_policy": log.get("shape_policy", {}).get("resolved", "exact"),
        "backend": log["backend"],
        "labels": labels,  # popped by main once scored
    }


def _written_classes(path: Path) -> np.ndarray:
    classes = np.asarray(nib.load(path).dataobj).astype(np.uint8)
    classes[classes == 4] = 3  # the 2021 convention's ET
    return classes


def score_rows(rows: list[dict[str, Any]], cases: Path) -> None:
    """Each row's mean Dice against the truth (cases with labels) and mean agreement with the first row."""
    truths = {case.case_id: load_case_labels(case)[0] for case in discover_cases(cases) if case.seg is not None}
    first = rows[0]["labels"]
    for row in rows:
        labels = row.pop("labels")
        scored = [agreement(labels[i], truths[i]) for i in labels if i in truths]
        agreed = [agreement(labels[i], first[i]) for i in labels if i in first]
        row["dice"] = _mean_regions(scored) if scored else None
        row["agreement_with_first"] = _mean_regions(agreed)


def _mean_regions(values: list[dict[str, float]]) -> dict[str, float]:
    return {region: round(float(np.mean([v[region] for v in values])), 4) for region in values[0]}


def print_table(rows: list[dict[str, Any]]) -> None:
    stages = "read / infer (pre, net, post) / write"
    print(f"| config | s/case all in | p95 | first: {stages} | steady: {stages} | peak RSS MB | Dice WT / TC / ET "
          "| agreement with the first |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['name']} | {row['s_per_case_all_in']:.2f} | {row['p95_case_s']:.2f} | "
            f"{_stages(row['first'])} | {_stages(row['steady'])} | {row['peak_rss_mb']:.0f} | "
            f"{_regions(row['dice'])} | {_regions(row['agreement_with_first'])} |"
        )


def _regions(values: dict[str, float] | None) -> str:
    return " / ".join(f"{v:.4f}" for v in values.values()) if values else "-"


def _stages(seconds: dict[str, float]) -> str:
    inner = ", ".join(f"{seconds[key]:.2f}" for key in ("pre", "network", "post") if key in seconds)
    infer = f"{seconds.get('infer', 0):.2f}" + (f" ({inner})" if inner else "")
    return f"{seconds.get('load', 0):.2f} / {infer} / {seconds.get('write', 0):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cases", type=Path, required=True, help="BraTS-format folder (different brain boxes)")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--before", type=Path, default=None, help="another checkout, for configs named before*")
    parser.add_argument(
        "--config", action="append", default=None, help="NAME:EXTRA SEGMENT ARGS (repeatable; default: after:)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/runtime_speed.json"))
    args = parser.parse_args(argv)
    configs = [item.partition(":") for item in (args.config or ["after:"])]
    rows = []
    for name, _, extra in configs:
        tree = args.before if name.startswith("before") else None
        if tree is not None and not tree.is_dir():
            raise SystemExit(f"--before {tree} is not a checkout folder")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        bundle, cases = args.bundle.resolve(), args.cases.resolve()
        rows.append(run_config(name, shlex.split(extra), tree, bundle, cases, args.precision, args.threads))
    score_rows(rows, args.cases)
    print_table(rows)
    result = {
        "format": FORMAT,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "bundle": str(args.bundle),
        "cases": str(args.cases),
        "precision": args.precision,
        "threads": args.threads,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
