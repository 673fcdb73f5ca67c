"""The wheel carries the shipped demo weights, so a plain `pip install .` finds them."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_shipped_weights_and_model_card(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("latup_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("latup-demo.safetensors", "latup-demo.json", "MODEL_CARD.md"):
        assert f"latup_edge/shipped/{shipped}" in names


def test_default_weights_load_from_the_package():
    from latup_edge.models.checkpoint import load_model, shipped_weights

    assert shipped_weights().parent.name in ("shipped", "models")
    assert sum(p.numel() for p in load_model().parameters()) == 3_069_060
