"""A bundle runs with only the base (runtime) install: a fresh virtual environment without torch.

The project is pip-installed, without extras and not editable, into a new venv (no system site
packages); a narrow bundle and a small case are made with the dev environment; then the venv's
`latup-edge segment` and `bundle-info` run, and `segment_cases` runs in a venv interpreter that
checks torch was never imported; last, the venv reads an enhanced multi-frame JPEG-lossless DICOM series
with its own decoders.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from conftest import narrow_network
from pydicom.uid import JPEGLosslessSV1
from test_segment import SHAPE, write_case

from latup_edge.deploy.compile import compile_bundle
from latup_edge.deploy.export import export_onnx
from latup_edge.scans.dicom import find_series, read_series
from latup_edge.scans.dicom_write import StudyInfo, compress_files, write_multiframe, write_series

ROOT = Path(__file__).resolve().parents[1]
# What the wheel is built from (pyproject's readme, packages and package-dir).
SOURCES = ("pyproject.toml", "README.md", "latup_edge", "models")
INSTALL_TIMEOUT_S = 900


def copy_sources(destination: Path) -> Path:
    """The project's sources without outputs: pip builds inside the source tree, so it builds in this copy."""
    destination.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=_outputs)
        else:
            shutil.copy2(source, destination / name)
    return destination


def _outputs(folder: str, names: list[str]) -> list[str]:
    """Caches, and models/*/ (training runs, never packaged)."""
    in_models = Path(folder) == ROOT / "models"
    return [name for name in names if name == "__pycache__" or (in_models and (Path(folder) / name).is_dir())]


def clean_env() -> dict[str, str]:
    """This environment without the dev venv's activation, so the new venv's own packages are used."""
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix))
    return env


def run(command: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    finished = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert finished.returncode == 0, f"{command} failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-4000:]}"
    return finished


def test_a_bundle_segments_a_case_with_the_runtime_install_alone(tmp_path):
    venv = tmp_path / "runtime-venv"
    # Run from tmp_path: from the repository root, `python -c` would import the source tree, not the install.
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python, cli = venv / "bin" / "python", venv / "bin" / "latup-edge"
    run([python, "-m", "pip", "install", "-q", copy_sources(tmp_path / "src")], tmp_path, INSTALL_TIMEOUT_S)

    probe = "import importlib.util, latup_edge; print(latup_edge.__file__, importlib.util.find_spec('torch') is None)"
    where, no_torch = run([python, "-c", probe], tmp_path).stdout.split()
    assert Path(where).is_relative_to(venv), f"imported {where}, not the install"
    assert no_torch == "True", "the base install pulled in torch"

    onnx = export_onnx(narrow_network(), tmp_path / "narrow.onnx")
    bundle = compile_bundle(onnx, onnx, tmp_path / "bundle", probe_shape=(1, 3, 16, 16, 16), repeats=1)
    case = write_case(tmp_path / "cases", "BraTS2021_00001", "2021", seed=1)

    out = tmp_path / "out"
    run([cli, "segment", case, "-o", out, "--bundle", bundle], tmp_path)
    labels = nib.load(out / "BraTS2021_00001.nii.gz")
    assert labels.shape == SHAPE
    assert set(labels.get_fdata().ravel().astype(int)) <= {0, 1, 2, 4}

    assert "fp32" in run([cli, "bundle-info", bundle], tmp_path).stdout

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from latup_edge.runtime.segment import SegmentSettings, segment_cases\n"
        f"log = segment_cases([Path({str(case)!r})], Path({str(tmp_path / 'out-api')!r}), "
        f"SegmentSettings(bundle=Path({str(bundle)!r})))\n"
        "assert log['summary'] == {'ok': 1, 'failed': 0, 'skipped': 0}, log['failures']\n"
        "assert 'torch' not in sys.modules, 'segment imported torch'\n"
    )
    run([python, "-c", code], tmp_path)
    assert nib.load(tmp_path / "out-api" / "BraTS2021_00001.nii.gz").shape == SHAPE

    # A scanner's enhanced export, JPEG-lossless compressed: the runtime's own decoders read it to the same voxels.
    image = sitk.GetImageFromArray(np.random.default_rng(2).normal(500, 80, (12, 20, 24)).astype(np.float32))
    files = write_series(image, tmp_path / "single", description="T1 POST", series_number=5, study=StudyInfo.new("P"))
    (tmp_path / "enhanced").mkdir()
    compress_files([write_multiframe(files, tmp_path / "enhanced" / "volume.dcm", shuffle_seed=0)], JPEGLosslessSV1)
    code = (
        "import numpy, SimpleITK\n"
        "from latup_edge.scans.dicom import find_series, read_series\n"
        f"(series,) = find_series({str(tmp_path / 'enhanced')!r})\n"
        f"numpy.save({str(tmp_path / 'read.npy')!r}, SimpleITK.GetArrayFromImage(read_series(series)))\n"
    )
    run([python, "-c", code], tmp_path)
    expected = sitk.GetArrayFromImage(read_series(find_series(tmp_path / "single")[0]))
    np.testing.assert_array_equal(np.load(tmp_path / "read.npy"), expected)
