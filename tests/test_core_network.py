"""A bundle with a core network: one network finds the whole tumour, the other labels its parts."""

import itertools
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import BRAIN, benchmark_script, narrow_network
from test_benchmark import make_narrow_bundle
from test_predictor import raw_images
from typer.testing import CliRunner

from latup_edge.cli import app
from latup_edge.data.cases import discover_cases, load_case_images, load_case_labels
from latup_edge.data.preprocess import SIZE_MULTIPLE, brain_box
from latup_edge.deploy import compose as compose_module
from latup_edge.deploy.compile import compile_bundle
from latup_edge.deploy.compose import compose_bundle
from latup_edge.deploy.export import export_onnx
from latup_edge.evaluate.metrics import region_metrics
from latup_edge.runtime.bundle import BundleError, load_bundle
from latup_edge.runtime.drift import run_drift
from latup_edge.runtime.openvino_backend import cpu_supports_bf16
from latup_edge.runtime.postprocess import (
    DEFAULT_POSTPROCESSING,
    ED,
    NCR,
    Postprocessing,
    compose_probabilities,
    compose_regions,
    delivered_classes,
    postprocess,
)
from latup_edge.runtime.predictor import Predictor
from latup_edge.runtime.tiling import fitted_windows
from latup_edge.runtime.volume import core_scores, normalized_box, predict_volume, tumour_region

runner = CliRunner()


@pytest.fixture(scope="module")
def networks(tmp_path_factory) -> dict[str, Path]:
    """Two fp32 bundles of different narrow brain-statistics networks."""
    root = tmp_path_factory.mktemp("networks")
    bundles = {}
    for name, seed in (("whole", 1), ("core", 2)):
        onnx = export_onnx(narrow_network(BRAIN, seed), root / f"{name}.onnx")
        bundles[name] = compile_bundle(onnx, None, root / name, probe_shape=(1, 3, 16, 16, 16), repeats=1)
    return bundles


@pytest.fixture(scope="module")
def composed(networks, two_phantoms, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("composed") / "bundle"
    compose_bundle(networks["whole"], networks["core"], out, two_phantoms)
    return out


def test_the_whole_tumour_and_its_et_are_one_networks_and_the_core_the_others():
    whole = np.zeros((30, 30, 30), np.uint8)
    whole[5:25, 5:25, 5:25] = 2
    whole[10:14, 10:14, 10:14] = 3  # the whole network's ET: kept, whatever the core network says there
    whole[6:9, 6:9, 6:9] = 1  # ... its necrosis: the core network sees none there, so oedema
    core = np.zeros_like(whole)
    core[15:22, 15:22, 15:22] = 3  # the core network's ET inside the tumour: core, but not enhancing
    core[18:20, 18:20, 18:20] = 1
    core[0:4, 0:4, 0:4] = 3  # ... and outside it: not a tumour
    composed = compose_regions(whole, core)
    np.testing.assert_array_equal(composed > 0, whole > 0)
    np.testing.assert_array_equal(composed == 3, whole == 3)
    assert np.all(composed[15:22, 15:22, 15:22] == 1) and np.all(composed[6:9, 6:9, 6:9] == 2)
    assert not composed[0:4, 0:4, 0:4].any()
    assert np.count_nonzero(composed == 2) == np.count_nonzero(whole > 0) - 4**3 - 7**3


def test_the_rules_see_the_core_networks_core_only_when_asked():
    raw = np.zeros((40, 40, 40), np.uint8)
    raw[2:12, 2:12, 2:12] = 2  # a tumour the whole network reads as oedema only (no enhancement) ...
    raw[25:33, 25:33, 25:33] = 2  # ... beside a smaller false spot that has some core
    raw[28:30, 28:30, 28:30] = 3
    core = np.zeros_like(raw)
    core[4:9, 4:9, 4:9] = 1  # the core network sees the first tumour's core
    then_core = Postprocessing(rules_see_core=False, min_core_density=0)  # the rules judge the whole network's core
    before = delivered_classes(raw, then_core, None, core)
    after = delivered_classes(raw, replace(then_core, rules_see_core=True), None, core)  # ... or the composed one
    assert not before[2:12, 2:12, 2:12].any() and (before[25:33, 25:33, 25:33] > 0).all()
    assert (after[4:9, 4:9, 4:9] == 1).all() and (after[2:12, 2:12, 2:12] > 0).all()
    assert (after[25:33, 25:33, 25:33] > 0).all()  # both components have a core now: both stay
    np.testing.assert_array_equal(after[28:30, 28:30, 28:30], 1)  # 8 ET voxels, under 200: necrosis ...
    np.testing.assert_array_equal(before[28:30, 28:30, 28:30], 2)  # ... or, composed after, the core network's call
    np.testing.assert_array_equal(delivered_classes(raw, Postprocessing(), None), postprocess(raw, Postprocessing()))


def test_composed_probabilities_keep_background_and_et_and_split_the_rest_by_the_cores_odds():
    rng = np.random.default_rng(0)
    whole, core = (rng.dirichlet(np.ones(4), size=(6, 5, 4)).transpose(3, 0, 1, 2).astype(np.float32) for _ in "ab")
    composed = compose_probabilities(whole, core)
    np.testing.assert_allclose(composed.sum(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(composed[[0, 3]], whole[[0, 3]])
    np.testing.assert_allclose(composed[1] / composed[2], (core[1] + core[3]) / core[2], rtol=1e-4)


def test_the_predictor_composes_the_two_networks_labels(networks, composed):
    images = raw_images()
    # Without the T1ce rules, whose NCR the core network would relabel: here the rules commute with the composition.
    rules = replace(DEFAULT_POSTPROCESSING, min_et_t1ce_percentile=0.0, min_et_voxel_t1ce_percentile=0.0)
    got = Predictor.from_bundle(composed, threads=1, postprocessing=rules).predict(images, probabilities=True)
    whole = Predictor.from_bundle(networks["whole"], threads=1, postprocessing=rules).predict(images).classes
    core = Predictor.from_bundle(networks["core"], threads=1, postprocessing=Postprocessing.none()).predict(images)
    assert np.isin(core.classes[whole > 0], (1, 3)).any() and (core.classes[whole > 0] == 2).any()  # not trivial
    np.testing.assert_array_equal(got.classes, compose_regions(whole, core.classes))
    assert not np.array_equal(got.classes, whole)
    np.testing.assert_allclose(got.probabilities.sum(axis=0), 1, atol=1e-5)
    alone = Predictor.from_bundle(composed, threads=1, use_core=False, postprocessing=rules)
    assert alone.core is None
    np.testing.assert_array_equal(alone.predict(images).classes, whole)


def test_without_probabilities_the_core_network_runs_only_over_the_tumour_with_the_same_labels(
    networks, composed, monkeypatch
):
    images = raw_images()
    predictor = Predictor.from_bundle(composed, threads=1, window=16)
    everywhere = predictor.predict(images, probabilities=True).classes  # the core network on every voxel
    calls = []
    for network, name in ((predictor.backend, "whole"), (predictor.core, "core")):
        monkeypatch.setattr(network, "model", Spy(network.model, name, calls))
    np.testing.assert_array_equal(predictor.predict(images).classes, everywhere)
    windows = len(fitted_windows_of(predictor, images))
    assert calls[: windows + 1] == [("whole", "window")] * windows + [("whole", "release")]
    assert set(calls[windows + 1 : -1]) == {("core", "window")}
    assert calls[-1] == ("core", "release")  # each network gave its activations back after its turn


def bright_is(label: int) -> Callable[[np.ndarray], np.ndarray]:
    """A pointwise network: ``label`` where the first channel is bright (the tumour of ``raw_images``)."""

    def forward(x: np.ndarray) -> np.ndarray:
        logits = np.zeros((1, 4, *x.shape[2:]), np.float32)
        logits[0, label] = (x[0, 0] - 1.5) * 10
        return logits

    return forward


def test_the_core_network_runs_only_the_windows_over_the_tumour_and_none_without_one():
    images = raw_images()
    windows = []
    core = bright_is(NCR)
    counted = lambda x: windows.append(1) or core(x)  # noqa: E731
    settings = {"window": 16, "normalization": "zscore-brain", "core": counted}
    got = predict_volume(images, bright_is(ED), **settings).classes
    assert 0 < len(windows) < 36 and (got == NCR).any()  # the tumour lies in a few of the box's 36 windows
    np.testing.assert_array_equal(got, predict_volume(images, bright_is(ED), probabilities=True, **settings).classes)
    windows.clear()
    background = lambda x: np.eye(4, dtype=np.float32)[0][None, :, None, None, None] * np.ones_like(x[:, :1])  # noqa: E731
    nothing = predict_volume(images, background, **settings).classes
    assert not windows and not nothing.any()


def test_with_a_margin_the_core_network_runs_only_on_the_tumours_region():
    images = raw_images()
    box, _ = normalized_box(images, "zscore-brain")
    tumour = bright_is(ED)(box)[0, ED] > 0
    region = tumour_region(tumour, 16, 4)
    assert tumour[region].sum() == tumour.sum()  # the whole tumour, in windows smaller than the box
    assert all(0 < r.stop - r.start <= size for r, size in zip(region, tumour.shape, strict=True))
    assert math.prod(r.stop - r.start for r in region) < tumour.size
    shapes = []
    seen = lambda x: shapes.append(x.shape[2:]) or bright_is(NCR)(x)  # noqa: E731
    in_region = core_scores(box, tumour, seen, window=16, margin=4)
    whole_box = core_scores(box, tumour, bright_is(NCR), window=16)
    # a pointwise core network gives the same labels on the tumour, and nothing is computed outside the region
    np.testing.assert_array_equal(np.argmax(in_region[0], 0)[tumour], np.argmax(whole_box[0], 0)[tumour])
    outside = np.ones(tumour.shape, bool)
    outside[region] = False
    assert not in_region[0][:, outside].any()
    assert sum(math.prod(s) for s in shapes) < sum(math.prod(s) for s in fitted_windows_of_box(tumour.shape, 16))


def test_the_tumours_region_is_its_bounding_box_grown_and_at_least_one_window():
    tumour = np.zeros((160, 192, 160), bool)
    tumour[10:130, 100:110, 150:152] = True
    region = tumour_region(tumour, 96, 16)
    assert region[0] == slice(0, 152)  # 120 + 2 x 16 voxels, shifted to start inside the box
    assert region[1] == slice(57, 153)  # one window's side, centred on the tumour
    assert region[2] == slice(64, 160)  # pushed back inside the box
    assert all((r.stop - r.start) % SIZE_MULTIPLE == 0 for r in region)
    assert tumour_region(tumour, 96, 200) == (slice(0, 160), slice(0, 192), slice(0, 160))


def fitted_windows_of_box(shape: tuple[int, ...], window: int) -> list[tuple[int, ...]]:
    sides, starts = fitted_windows(shape, window, 0.25)
    return [sides] * math.prod(len(axis) for axis in starts)


class Spy:
    """An OpenVINO model that records its calls and releases in a shared list."""

    def __init__(self, model, name: str, calls: list) -> None:
        self.model, self.name, self.calls = model, name, calls

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append((self.name, "window"))
        return self.model(x)

    def release(self) -> None:
        self.calls.append((self.name, "release"))
        self.model.release()


def fitted_windows_of(predictor: Predictor, images: np.ndarray) -> list[tuple[int, ...]]:
    """The windows the predictor's tiling runs over the images' brain box."""
    crop = brain_box(images, multiple=SIZE_MULTIPLE)
    box = [stop - start for start, stop in zip(crop.start, crop.stop, strict=True)]
    return list(itertools.product(*fitted_windows(box, predictor.window, predictor.overlap)[1]))


def test_the_composition_is_gated_and_recorded(composed, networks):
    manifest = json.loads((composed / "manifest.json").read_text())
    core = manifest["core"]
    assert core["path"] == "core" and core["checksum"] == load_bundle(networks["core"]).manifest["checksum"]
    assert core["gate"]["passed"] and core["gate"]["verdict"].startswith("pass")
    assert core["gate"]["precisions"] == {"whole": "fp32", "core": "fp32"}
    loaded = load_bundle(composed)
    assert loaded.core is not None and loaded.core.path == composed / "core"
    assert "core network fp32" in Predictor.from_bundle(loaded, threads=1).describe()


def test_a_changed_or_swapped_core_network_is_refused(composed, networks, tmp_path):
    changed = shutil.copytree(composed, tmp_path / "changed")
    with (changed / "core" / "fp32.bin").open("r+b") as file:
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BundleError, match=r"core/?\b.*fp32.bin does not match"):
        load_bundle(changed)
    swapped = shutil.copytree(composed, tmp_path / "swapped")
    shutil.rmtree(swapped / "core")
    shutil.copytree(networks["whole"], swapped / "core")
    with pytest.raises(BundleError, match="not the one it was composed with"):
        load_bundle(swapped)


def test_compose_refuses_bundles_that_do_not_fit_and_writes_nothing(networks, two_phantoms, tmp_path, monkeypatch):
    volume = make_narrow_bundle(tmp_path / "volume")  # min-max and volume statistics: another preprocessing
    out = tmp_path / "out"
    with pytest.raises(BundleError, match="differ in their preprocessing"):
        compose_bundle(networks["whole"], volume, out, two_phantoms)
    with pytest.raises(BundleError, match="is one of the bundles being composed"):
        compose_bundle(networks["whole"], networks["core"], networks["whole"], two_phantoms)
    failed = {"passed": False, "verdict": "fail: TC agreement with fp32 0.9800 < 0.9900"}
    monkeypatch.setattr(compose_module, "composition_gate", lambda *args, **kwargs: failed)
    arguments = [str(networks["whole"]), str(networks["core"]), "-o", str(out), "--gate-data", str(two_phantoms)]
    result = runner.invoke(app, ["compose", *arguments])
    assert result.exit_code != 0
    assert "fails its INT8 gate" in " ".join(result.output.split()) and "nothing was written" in result.output
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert not load_bundle(networks["whole"]).manifest.get("core")  # the inputs are untouched


@pytest.mark.skipif(not cpu_supports_bf16(), reason="drift compares a reduced precision; this CPU has no bf16")
def test_drift_scores_the_labels_segment_writes_from_both_networks(composed, two_phantoms):
    result = run_drift(two_phantoms, composed, precisions=["bf16"], threads=1)
    assert result["summary"]["fp32"]["labels"] == "composed, as segment writes them"
    case = discover_cases(two_phantoms)[0]
    images, _ = load_case_images(case)
    predictor = Predictor.from_bundle(composed, "fp32", threads=1)
    expected = region_metrics(predictor.predict(images).classes, load_case_labels(case)[0])
    scored = result["cases"][case.case_id]["precisions"]["fp32"]["metrics"]
    for region in ("WT", "TC", "ET"):
        assert scored[region]["dice"] == pytest.approx(expected[region]["dice"])


def test_the_judge_scores_each_rule_variant_as_the_predictor_writes_it(composed, two_phantoms):
    script = benchmark_script("judge_bundles")
    variants = dict(map(script.parse_variant, ["shipped:", "stage16:rules_see_core=true,min_core_density=0.05"]))
    assert variants["stage16"] == Postprocessing(rules_see_core=True, min_core_density=0.05)
    result = script.judge([two_phantoms], [composed], variants)
    case = discover_cases(two_phantoms)[0]
    images, _ = load_case_images(case)
    truth = load_case_labels(case)[0]
    for name, rules in variants.items():
        expected = region_metrics(Predictor.from_bundle(composed, postprocessing=rules).predict(images).classes, truth)
        scored = result["bundles"][f"{composed} [{name}]"]["sets"][str(two_phantoms)]["cases"][case.case_id]
        for region in ("WT", "TC", "ET"):
            assert scored[region]["dice"] == expected[region]["dice"]
