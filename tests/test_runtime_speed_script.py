"""benchmarks/runtime_speed.py: stage tables and Dice from real segment runs, before/after from two checkouts."""

import json
from pathlib import Path

from conftest import benchmark_script, narrow_network
from test_segment import write_case

from latup_edge.deploy.compile import compile_bundle
from latup_edge.deploy.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]


def test_the_runtime_benchmark_reads_its_stages_from_segment_logs(tmp_path, capsys):
    onnx = export_onnx(narrow_network(), tmp_path / "narrow.onnx")
    bundle = compile_bundle(onnx, onnx, tmp_path / "bundle", probe_shape=(1, 3, 16, 16, 16), repeats=1)
    for index in (1, 2, 3):
        write_case(tmp_path / "cases", f"BraTS2021_0000{index}", seed=index)
    module = benchmark_script("runtime_speed")
    out = tmp_path / "speed.json"
    # "before" runs the same command from another checkout: this one, here, so it must agree.
    args = ["--bundle", str(bundle), "--cases", str(tmp_path / "cases"), "--precision", "fp32", "--threads", "1"]
    args += ["--before", str(ROOT), "--config", "before:--shape-policy exact", "--config", "after:", "--out", str(out)]
    assert module.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["name"] for row in rows] == ["before", "after"]
    for row in rows:
        assert row["cases"] == 3 and row["failed"] == 0 and row["peak_rss_mb"] > 0
        assert {"load", "pre", "network", "post", "infer", "write"} <= row["steady"].keys()
        assert row["s_per_case_all_in"] * 3 <= row["wall_s"] + 0.01
        assert set(row["dice"]) == {"WT", "TC", "ET"} and all(0 <= v <= 1 for v in row["dice"].values())
    assert rows[0]["agreement_with_first"] == {"WT": 1.0, "TC": 1.0, "ET": 1.0}  # its own labels
    assert rows[0]["shape_policy"] == "exact" and rows[0]["tree"] == str(ROOT)
    assert "| before |" in capsys.readouterr().out
