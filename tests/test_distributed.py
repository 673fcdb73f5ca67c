"""`segment --cluster`: Dask workers write what serial segment writes, and no case is lost to a dead worker.

Most tests share one LocalCluster of 2 worker processes (``scheduler``, reached by its tcp address as
a remote cluster is); the CLI test starts its own with ``--cluster local:2``. What workers run is
changed through ``open_predictor`` (tests/distributed_helpers.py): monkeypatching does not reach them.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import nibabel as nib
import pytest
from conftest import BRAIN, narrow_network
from distributed_helpers import open_fatal, open_slow
from test_segment import SHAPE, write_case
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.data.naming import case_filename
from latup_edge.deploy.compile import compile_bundle
from latup_edge.deploy.export import export_onnx
from latup_edge.fileio import gunzip_file
from latup_edge.runtime.cluster import ClusterSpec, commit_output, connect, local_threads, run, segment_distributed
from latup_edge.runtime.cluster.run import ALLOWED_FAILURES
from latup_edge.runtime.segment import LOG_FORMAT, SegmentError, SegmentSettings, segment_cases

ROOT = Path(__file__).resolve().parents[1]
IDS = [f"BraTS2021_{i:05d}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """An fp32 bundle of the narrow brain-statistics network (shape policy bucket32, as shipped bundles)."""
    root = tmp_path_factory.mktemp("bundle")
    onnx = export_onnx(narrow_network(BRAIN), root / "brain.onnx")
    return compile_bundle(onnx, None, root / "bundle", probe_shape=(1, 3, 16, 16, 16), repeats=1)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cases")
    for seed, case_id in enumerate(IDS):
        write_case(root, case_id, seed=seed)
    return root


@pytest.fixture(scope="module")
def serial(bundle, cases, tmp_path_factory) -> Path:
    """The six cases segmented serially, at the threads each local:2 worker gets."""
    out = tmp_path_factory.mktemp("serial")
    segment_cases([cases], out, SegmentSettings(bundle=bundle, threads=local_threads(2)))
    return out


@pytest.fixture(scope="module")
def scheduler():
    """The address of a LocalCluster of 2 worker processes, as segment_distributed starts them."""
    with connect(ClusterSpec.parse("local:2")) as client:
        yield client.scheduler.address


def settings(bundle: Path, **changes) -> SegmentSettings:
    return SegmentSettings(bundle=bundle, threads=local_threads(2), **changes)


def image_bytes(path: Path) -> bytes:
    """A label map's NIfTI bytes; the gzip header around them holds the time of writing."""
    return gunzip_file(path)


def assert_same_as_serial(out: Path, serial: Path, case_ids: list[str]) -> None:
    for case_id in case_ids:
        assert image_bytes(out / f"{case_id}.nii.gz") == image_bytes(serial / f"{case_id}.nii.gz"), case_id


def hidden_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_local_cluster_of_two_workers_writes_what_serial_segment_writes(bundle, cases, serial, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["segment", str(cases), "-o", str(out), "--bundle", str(bundle), "--cluster", "local:2", "--json"]
    )
    assert result.exit_code == 0, result.output
    log = json.loads(result.stdout)  # stdout holds only the log
    assert log == json.loads((out / "segment-log.json").read_text())
    serial_log = json.loads((serial / "segment-log.json").read_text())
    assert log["format"] == LOG_FORMAT and set(serial_log) <= set(log)
    assert [case["case_id"] for case in log["cases"]] == IDS and log["summary"] == {"ok": 6, "failed": 0, "skipped": 0}
    assert all(set(serial_log["cases"][0]) | {"worker"} == set(case) for case in log["cases"])
    assert_same_as_serial(out, serial, IDS)
    assert {case["worker"] for case in log["cases"]} == set(log["workers"]) and len(log["workers"]) == 2
    assert all(worker["threads"] == local_threads(2) for worker in log["workers"].values())
    assert log["cluster"]["allowed_failures"] == ALLOWED_FAILURES and log["cluster"]["worker_saturation"] == 1
    assert log["backend"]["resolved"]["openvino"]["ENABLE_CPU_PINNING"] is False
    assert all(case["process_peak_rss_mb"] > 0 for case in log["cases"])
    assert hidden_files(out) == []


def test_a_worker_killed_mid_case_costs_no_case(bundle, cases, serial, scheduler, tmp_path):
    out, markers = tmp_path / "out", tmp_path / "markers"
    out.mkdir()
    markers.mkdir()
    stale = out / f".deadbeef.{IDS[0]}.nii.gz"  # what a writer killed in an earlier run leaves
    stale.write_bytes(b"partial")
    killed: list[int] = []

    def kill_a_busy_worker(event):
        if event["event"] != "case" or killed:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a worker inside predict: started, not done
            busy = [p for p in markers.glob("*.started") if not p.with_suffix(".done").exists()]
            if busy:
                killed.append(int(busy[0].stem.split("-")[0]))
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    slow = functools.partial(open_slow, seconds=1.0, markers=markers)
    log = segment_distributed([cases], out, settings(bundle), scheduler, kill_a_busy_worker, open_predictor=slow)

    assert killed, "no worker was inside a case to kill"
    started = list(markers.glob("*.started"))
    assert any(p.stem.startswith(f"{killed[0]}-") and not p.with_suffix(".done").exists() for p in started)
    assert len(started) > len(IDS)  # the killed worker's case ran again
    assert [case["case_id"] for case in log["cases"]] == IDS and log["summary"] == {"ok": 6, "failed": 0, "skipped": 0}
    assert_same_as_serial(out, serial, IDS)
    assert hidden_files(out) == []
    expected = [*(f"{i}.nii.gz" for i in IDS), "segment-log.json", "volumes.csv"]
    assert sorted(path.name for path in out.iterdir()) == sorted(expected)


def test_a_bad_case_fails_alone_with_serial_segments_sentence(bundle, scheduler, tmp_path):
    data = tmp_path / "data"
    good = ["BraTS2021_00011", "BraTS2021_00014"]
    for seed, case_id in enumerate([good[0], "BraTS2021_00012", "BraTS2021_00013", good[1]]):
        write_case(data, case_id, seed=seed)
    truncated = data / "BraTS2021_00012" / case_filename("BraTS2021_00012", "t1ce", "2021")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (data / "BraTS2021_00013" / case_filename("BraTS2021_00013", "t2", "2021")).unlink()

    serial = segment_cases([data], tmp_path / "serial", settings(bundle))
    log = segment_distributed([data], tmp_path / "out", settings(bundle), scheduler)
    assert log["summary"] == serial["summary"] == {"ok": 2, "failed": 2, "skipped": 0}
    assert log["failures"] == serial["failures"]
    assert "truncated" in log["failures"]["BraTS2021_00012"] and "missing" in log["failures"]["BraTS2021_00013"]
    assert_same_as_serial(tmp_path / "out", tmp_path / "serial", good)


def test_a_case_that_kills_every_worker_fails_after_the_allowed_failures(bundle, scheduler, tmp_path):
    data = tmp_path / "data"
    for seed, case_id in enumerate(["BraTS2021_00021", "BraTS2021_00022", "BraTS2021_00023"]):
        write_case(data, case_id, seed=seed)
    fatal_shape = (SHAPE[0], SHAPE[1], SHAPE[2] - 4)
    for path in (data / "BraTS2021_00022").iterdir():  # a smaller grid marks the case that kills its worker
        image = nib.load(path)
        nib.save(nib.Nifti1Image(image.get_fdata(dtype="float32")[..., : fatal_shape[2]], image.affine), path)

    fatal = functools.partial(open_fatal, fatal_shape=fatal_shape)
    start = time.monotonic()
    log = segment_distributed([data], tmp_path / "out", settings(bundle), scheduler, open_predictor=fatal)
    assert time.monotonic() - start < 90
    assert log["summary"] == {"ok": 2, "failed": 1, "skipped": 0}
    message = log["failures"]["BraTS2021_00022"]
    assert message.startswith("case BraTS2021_00022: the worker running it died 3 times") and "2 allowed" in message
    failed = next(case for case in log["cases"] if case["status"] == "failed")
    assert failed["worker"].startswith("tcp://") and log["finished"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == [
        "BraTS2021_00021.nii.gz",
        "BraTS2021_00023.nii.gz",
    ]


def test_skip_existing_is_decided_on_the_client_across_runs(bundle, cases, serial, scheduler, tmp_path):
    out = tmp_path / "out"
    segment_cases([cases / IDS[0], cases / IDS[1]], out, settings(bundle))  # an earlier, serial run
    written = {case_id: (out / f"{case_id}.nii.gz").stat().st_mtime_ns for case_id in IDS[:2]}
    log = segment_distributed([cases], out, settings(bundle, skip_existing=True), scheduler)
    assert [case["status"] for case in log["cases"]] == ["skipped"] * 2 + ["ok"] * 4
    assert all(case["worker"] is None for case in log["cases"][:2])
    assert {case_id: (out / f"{case_id}.nii.gz").stat().st_mtime_ns for case_id in IDS[:2]} == written
    assert_same_as_serial(out, serial, IDS)
    again = segment_distributed([cases], out, settings(bundle, skip_existing=True), scheduler)
    assert again["summary"] == {"ok": 0, "failed": 0, "skipped": 6}


def test_symlinked_case_folders_and_a_link_cycle_on_a_cluster(bundle, cases, serial, scheduler, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for case_id in IDS[:3]:
        (archive / case_id).symlink_to(cases / case_id, target_is_directory=True)
    (archive / "loop").symlink_to(archive, target_is_directory=True)
    log = segment_distributed([archive], tmp_path / "out", settings(bundle), scheduler)
    assert [(case["case_id"], case["status"]) for case in log["cases"]] == [(case_id, "ok") for case_id in IDS[:3]]
    assert log["cases"][0]["folder"] == str(archive / IDS[0])
    assert_same_as_serial(tmp_path / "out", serial, IDS[:3])


def test_a_rerun_keeps_a_final_file_that_holds_the_same_image(tmp_path, serial):
    final = tmp_path / f"{IDS[0]}.nii.gz"
    final.write_bytes((serial / final.name).read_bytes())
    os.utime(final, ns=(0, 0))
    same = tmp_path / f".0badc0de.{final.name}"
    same.write_bytes((serial / final.name).read_bytes())
    assert commit_output(same, final) is False
    assert final.stat().st_mtime_ns == 0 and not same.exists()  # the earlier attempt's file stays
    other = tmp_path / f".0badc0de.{IDS[1]}.nii.gz"
    other.write_bytes((serial / f"{IDS[1]}.nii.gz").read_bytes())
    assert commit_output(other, final) is True
    assert image_bytes(final) == image_bytes(serial / f"{IDS[1]}.nii.gz") and not other.exists()


def test_cluster_settings_and_a_missing_dask_fail_with_one_sentence(bundle, cases, tmp_path, monkeypatch):
    assert ClusterSpec.parse("local:3").workers == 3
    assert ClusterSpec.parse("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    for bad in ("local:0", "local:x", "cluster", "tcp://"):
        with pytest.raises(SegmentError, match="local:N"):
            ClusterSpec.parse(bad)
    with pytest.raises(SegmentError, match="pass --bundle"):
        segment_distributed([cases], tmp_path / "out", SegmentSettings(backend="torch"), "local:1")
    monkeypatch.setattr(run, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(SegmentError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1 "):
        segment_distributed([cases], tmp_path / "out", SegmentSettings(bundle=bundle), "tcp://127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "distributed", None)  # as on the base install
    with pytest.raises(SegmentError, match=r'pip install "latup-edge\[distributed\]"'):
        segment_distributed([cases], tmp_path / "out", SegmentSettings(bundle=bundle), "local:1")
    command = ["segment", str(cases), "-o", str(tmp_path / "cli"), "--bundle", str(bundle), "--cluster", "local:2"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1 and "latup-edge[distributed]" in "".join(result.output.split())


def test_dask_is_an_extra_and_the_runtime_imports_without_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if dep.startswith(("dask", "distributed"))]
    assert {dep.split(">")[0] for dep in project["optional-dependencies"]["distributed"]} == {"dask", "distributed"}
    check = (
        "import sys; import latup_edge.runtime.cluster, latup_edge.runtime.segment, latup_edge.cli; "
        "assert not {'dask', 'distributed'} & set(sys.modules), sorted({'dask', 'distributed'} & set(sys.modules))"
    )
    subprocess.run([sys.executable, "-c", check], check=True, cwd=ROOT)
