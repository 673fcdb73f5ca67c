"""models/retrain_gpu.sh, the one-command GPU retraining, dry-run on this CPU at toy size.

A lent GPU gives one ~10-minute command a session; a script that fails there wastes the loan. This
runs the same script end to end (phantoms in processes, the timing probe, the sized run) on 2 cases.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latup_edge.models.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_gpu_retraining_script_runs_end_to_end_at_toy_size(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # this venv's python3
        "OUT": str(tmp_path / "out"),
        "WORK": str(tmp_path / "work"),
        "CASES": "2",
        "PATCH": "32",
        "BATCH": "1",
        "EPOCHS": "1",
        "VAL_CASES": "1",
        "PROBE_STEPS": "1",
        "TRAIN_MINUTES": "0.02",
        "WORKERS": "1",
    }
    done = subprocess.run(
        ["bash", "models/retrain_gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (tmp_path / "out" / "retrain.log").read_text()
    assert "s a step in the probe" in log and "] done" in log
    run = tmp_path / "out" / "run"
    provenance = json.loads((run / "last.json").read_text())
    settings = provenance["settings"]
    assert (settings["patch"], settings["ce_weight"], settings["no_et_fraction"]) == (32, 1.0, 0.2)
    assert settings["init_from"] == "models/latup-demo.safetensors" and provenance["steps"] >= 1
    assert load_model(run / "last.safetensors").config.normalization == "zscore-brain"
