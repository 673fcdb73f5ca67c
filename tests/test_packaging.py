"""The wheel carries the shipped demo weights, so a plain `pip install .` finds them."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_module_the_shipped_weights_and_model_card(tmp_path):
    # Build from a copy: setuptools builds in the source folder, and a stale build/ there would hide a gap.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "latup_edge", "models"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
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
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("latup_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("latup-demo.safetensors", "latup-demo.json", "MODEL_CARD.md"):
        assert f"latup_edge/shipped/{shipped}" in names
    # The bundle built from them: a runtime-only install segments with nothing built locally.
    shipped_bundle = ROOT / "models" / "bundle"  # its files, core/ network included
    bundle = {path.relative_to(shipped_bundle).as_posix() for path in shipped_bundle.rglob("*") if path.is_file()}
    assert bundle >= {"manifest.json", "int8.xml", "int8.bin", "fp32.xml", "fp32.bin"}
    assert {f"latup_edge/shipped/bundle/{name}" for name in bundle} <= names
    # An explicit package list forgets new subpackages; an editable install would not notice.
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "latup_edge").rglob("*.py")}
    assert modules - names == set()


def test_default_weights_load_from_the_package():
    import latup_edge
    from latup_edge.models.checkpoint import SHIPPED_NAME, load_model, shipped_weights

    package = Path(latup_edge.__file__).parent
    # Editable (this checkout): latup_edge.shipped is the repository's models/; installed: the package's shipped/.
    expected = ROOT / "models" if package == ROOT / "latup_edge" else package / "shipped"
    assert shipped_weights() == expected / SHIPPED_NAME and shipped_weights().is_file()
    assert sum(p.numel() for p in load_model().parameters()) == 3_069_060
