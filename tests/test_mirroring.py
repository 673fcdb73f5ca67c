"""Test-time mirroring: the logits averaged over mirror images, equivariant by construction, in every path."""

import json

import nibabel as nib
import numpy as np
import pytest
from test_predictor import brain_bundle, volume_bundle  # noqa: F401 (module fixtures)
from test_segment import write_case
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.errors import LatupError
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.segment import SegmentSettings
from latup_edge.runtime.volume import mirror_axes, mirrored

runner = CliRunner()
RNG = np.random.default_rng(0)
MIX = RNG.normal(size=(4, 3)).astype(np.float32)


def lopsided(x: np.ndarray) -> np.ndarray:
    """A forward that is not mirror-equivariant: a channel mix weighted by a ramp along every axis."""
    ramp = sum(np.arange(n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)]) for i, n in
               enumerate(x.shape[2:]))  # fmt: skip
    return np.einsum("kc,bcdhw->bkdhw", MIX, x) * (1 + ramp)


def test_mirror_specs_name_axes_and_unknown_ones_are_refused():
    assert mirror_axes("") == mirror_axes("none") == ()
    assert mirror_axes("x") == (0,) and mirror_axes("zx") == (0, 2) and mirror_axes("xyz") == (0, 1, 2)
    for bad in ("q", "xx", "x,y"):
        with pytest.raises(LatupError, match="unknown mirroring"):
            mirror_axes(bad)
    with pytest.raises(LatupError, match="unknown mirroring"):
        SegmentSettings(mirror="left")


def test_mirrored_averages_the_logits_of_each_mirror_image_flipped_back():
    x = RNG.normal(size=(1, 3, 6, 5, 4)).astype(np.float32)
    assert mirrored(lopsided, ()) is lopsided
    expected = (lopsided(x) + np.flip(lopsided(np.flip(x, 2)), 2)) / 2
    np.testing.assert_allclose(mirrored(lopsided, (0,))(x), expected, rtol=1e-6)
    eight = [
        np.flip(lopsided(np.flip(x, axes)), axes) for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    ]
    np.testing.assert_allclose(mirrored(lopsided, (0, 1, 2))(x), np.mean(eight, axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("axes", "flip"), [((0,), (2,)), ((0, 1, 2), (2, 4)), ((0, 1, 2), (2, 3, 4))])
def test_a_mirrored_forward_is_equivariant_under_its_mirrors(axes, flip):
    x = RNG.normal(size=(1, 3, 6, 5, 4)).astype(np.float32)
    forward = mirrored(lopsided, axes)
    assert not np.allclose(lopsided(np.flip(x, flip)), np.flip(lopsided(x), flip))  # the plain one is not
    np.testing.assert_allclose(forward(np.flip(x, flip)), np.flip(forward(x), flip), rtol=1e-5, atol=1e-4)


def test_the_predictor_runs_mirrored_and_says_so(brain_bundle):  # noqa: F811
    plain = Predictor.from_bundle(brain_bundle, "fp32", threads=1, tiling="whole")
    mirror = Predictor.from_bundle(brain_bundle, "fp32", threads=1, tiling="whole", mirror="x")
    assert mirror.resolved()["mirror"] == "x" and plain.resolved()["mirror"] is None
    assert "mirrored along x (2 passes)" in mirror.describe()
    assert mirror.with_precision("fp32").mirror == "x"  # the audit's reference runs as the run does
    box = RNG.normal(size=(1, 3, 16, 16, 16)).astype(np.float32)
    expected = (plain.forward(box) + np.flip(plain.forward(np.flip(box, 2)), 2)) / 2
    np.testing.assert_allclose(mirror.forward(box), expected, rtol=1e-5, atol=1e-5)


def test_segment_and_drift_take_mirror_and_record_it(brain_bundle, volume_bundle, tmp_path):  # noqa: F811
    write_case(tmp_path / "data", "BraTS2021_00001", seed=5)
    maps = {}
    for mirror in ("none", "x"):
        arguments = ["segment", str(tmp_path / "data"), "-o", str(tmp_path / mirror), "--bundle", str(brain_bundle)]
        result = runner.invoke(app, [*arguments, "--threads", "1", "--mirror", mirror, "--json"])
        assert result.exit_code == 0, result.output
        logged = json.loads((tmp_path / mirror / "segment-log.json").read_text())
        assert logged["mirror"] == (None if mirror == "none" else "x")
        maps[mirror] = np.asanyarray(nib.load(tmp_path / mirror / "BraTS2021_00001.nii.gz").dataobj)
    assert maps["none"].shape == maps["x"].shape
    refused = runner.invoke(app, ["segment", str(tmp_path / "data"), "-o", str(tmp_path / "q"), "--mirror", "q"])
    assert refused.exit_code != 0 and "unknown mirroring 'q'" in refused.output
    assert not (tmp_path / "q").exists()
    drift = runner.invoke(
        app, ["drift", str(tmp_path / "data"), "--bundle", str(volume_bundle), "--precisions", "int8", "--mirror", "x",
              "--threads", "1", "--json"],
    )  # fmt: skip
    assert drift.exit_code == 0, drift.output
    assert {p["mirror"] for p in json.loads(drift.stdout)["precisions"].values()} == {"x"}
