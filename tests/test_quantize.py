"""INT8 quantization: both engines, the layer graph, sensitivity, mixed precision, and the drift gate."""

import json

import numpy as np
import openvino as ov
import pytest
import torch
from conftest import BRAIN, NARROW, narrow_network

from latup_edge.data.cases import discover_cases
from latup_edge.data.preprocess import Crop
from latup_edge.deploy.build import BuildSettings, build_bundle, verdict
from latup_edge.deploy.deploy_form import to_deploy_form
from latup_edge.deploy.export import export_onnx
from latup_edge.deploy.quantize import QuantizationResult, quantize, run_engine
from latup_edge.deploy.quantize.graph import brain_statistics_ops, bypass, quantized_layers
from latup_edge.deploy.quantize.sensitivity import MIN_GAIN, AgreementJudge, block_of, rank_blocks, rank_layers
from latup_edge.errors import LatupError
from latup_edge.evaluate.drift import PreparedCase, format_ratio, measure_drift, summarise_drift
from latup_edge.models.checkpoint import save_checkpoint
from latup_edge.runtime.bundle import load_bundle
from latup_edge.runtime.openvino_backend import OpenVINOModel, int8_kernel_report
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing, postprocess
from latup_edge.runtime.segment import SegmentSettings, segment_cases
from latup_edge.runtime.volume import DEFAULT_OVERLAP, DEFAULT_TILING, DEFAULT_WINDOW

SKIP_CONV = "/decoder1/conv_skip/Conv"
STEM_NORM = "/encoder2/norm/InstanceNormalization"


def tiny_case(case_id: str, seed: int) -> PreparedCase:
    """A 32^3 input with a bright blob, so a random network still predicts several classes."""
    rng = np.random.default_rng(seed)
    x = rng.random((1, 3, 32, 32, 32), dtype=np.float32) * 0.3
    x[:, :, 10:22, 8:20, 12:24] += 0.7
    return PreparedCase(case_id, x, Crop((32, 32, 32), (0, 0, 0), (32, 32, 32)), None, (1.0, 1.0, 1.0))


def skull_stripped_case(case_id: str, seed: int) -> PreparedCase:
    """``tiny_case`` with zeros around a brain that does not fill the input: what a brain box holds."""
    case = tiny_case(case_id, seed)
    inputs = np.zeros_like(case.inputs)
    inputs[:, :, 2:30, 4:28, 3:31] = case.inputs[:, :, 2:30, 4:28, 3:31]
    return PreparedCase(case_id, inputs, case.crop, None, case.spacing)


@pytest.fixture(scope="module")
def brain_onnx(tmp_path_factory):
    """The narrow network with brain statistics, deploy form."""
    return export_onnx(to_deploy_form(narrow_network(config=BRAIN)), tmp_path_factory.mktemp("q") / "brain.onnx")


@pytest.fixture(scope="module")
def brain_samples():
    return [skull_stripped_case(f"s{i}", i).inputs for i in range(2)]


@pytest.fixture(scope="module")
def samples():
    return [tiny_case(f"s{i}", i).inputs for i in range(2)]


@pytest.fixture(scope="module")
def judge(float_onnx):
    return AgreementJudge.from_float_model(float_onnx, [tiny_case("a", 10), tiny_case("b", 11)])


@pytest.mark.parametrize("config", [NARROW, BRAIN], ids=["volume", "brain"])
def test_deploy_form_computes_the_same_function(config):
    model = narrow_network(config=config)
    x = torch.zeros(1, 3, 24, 32, 16)
    x[:, :, 2:20, 3:30, 1:13] = torch.rand(1, 3, 18, 27, 12)
    with torch.no_grad():
        torch.testing.assert_close(to_deploy_form(model)(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("statistics", ["volume", "brain"])
@pytest.mark.parametrize("engine", ["nncf", "inc"])
def test_each_engine_makes_a_model_that_runs_int8_convolutions(engine, statistics, request, tmp_path):
    onnx_path = request.getfixturevalue("float_onnx" if statistics == "volume" else "brain_onnx")
    samples = request.getfixturevalue("samples" if statistics == "volume" else "brain_samples")
    path = run_engine(engine, onnx_path, samples, tmp_path)
    report = int8_kernel_report(OpenVINOModel(path, "int8").compiled, (1, 3, 32, 32, 32))
    assert report["int8_convolutions"] == report["convolutions"] > 0
    assert SKIP_CONV in quantized_layers(ov.Core().read_model(str(path)))


@pytest.mark.parametrize("engine", ["nncf", "inc"])
def test_the_brain_mask_is_computed_from_the_unquantized_input(engine, brain_onnx, brain_samples, tmp_path):
    int8 = ov.Core().read_model(str(run_engine(engine, brain_onnx, brain_samples, tmp_path)))
    ops = {op.get_friendly_name(): op for op in int8.get_ordered_ops()}
    # Input -> Abs -> ReduceMax -> Greater: no quantizer anywhere on the way, so background zeros stay zeros
    # and no brain voxel near zero leaves the mask.
    assert ops["/Abs"].input_value(0).get_node().get_type_name() == "Parameter"
    assert ops["/ReduceMax"].input_value(0).get_node().get_friendly_name() == "/Abs"
    assert ops["/Greater"].input_value(0).get_node().get_friendly_name() == "/ReduceMax"
    mask_and_statistics = set(brain_statistics_ops(int8))
    assert {"/Abs", "/ReduceMax", "/Greater", "/MaxPool_2"} <= mask_and_statistics
    assert "/encoder2/norm/ReduceSum" in mask_and_statistics
    assert not mask_and_statistics & set(quantized_layers(int8))
    # The layer labels stay stable, and the convolutions after the statistics are quantized.
    assert "/encoder2/conv2/conv2.0/Conv" in quantized_layers(int8) == quantized_layers(int8.clone())


def test_the_papers_network_has_no_brain_statistics_ops(float_onnx):
    assert brain_statistics_ops(ov.Core().read_model(str(float_onnx))) == []


def test_int8_keeps_brain_statistics_close_to_float(brain_onnx, brain_samples, tmp_path):
    int8 = OpenVINOModel(run_engine("nncf", brain_onnx, brain_samples, tmp_path), "int8")
    fp32 = OpenVINOModel(brain_onnx, "fp32")
    case = skull_stripped_case("x", 5)
    agreement = (int8(case.inputs).argmax(axis=1) == fp32(case.inputs).argmax(axis=1)).mean()
    assert agreement > 0.8  # a random narrow network: its near-tied logits flip easily


@pytest.mark.parametrize("engine", ["nncf", "inc"])
def test_keep_float_leaves_exactly_that_layer_unquantized(engine, float_onnx, samples, tmp_path):
    path = run_engine(engine, float_onnx, samples, tmp_path, keep_float=[SKIP_CONV])
    layers = quantized_layers(ov.Core().read_model(str(path)))
    assert SKIP_CONV not in layers and "/decoder1/conv2/conv2.0/Conv" in layers


def test_layer_labels_are_stable_across_reads(float_onnx, samples, tmp_path):
    path = run_engine("nncf", float_onnx, samples, tmp_path)
    first, second = (quantized_layers(ov.Core().read_model(str(path))) for _ in range(2))
    assert first == second and STEM_NORM in first  # InstanceNorm gets a new OpenVINO name on each read


def test_bypassing_every_layer_brings_int8_back_towards_float(float_onnx, samples, tmp_path):
    int8 = ov.Core().read_model(str(run_engine("nncf", float_onnx, samples, tmp_path)))
    x = tiny_case("x", 5).inputs
    reference = OpenVINOModel(float_onnx, "fp32")(x)
    quantized = OpenVINOModel(int8, "int8")(x)
    unquantized = OpenVINOModel(bypass(int8, quantized_layers(int8)), "int8")(x)
    assert np.abs(unquantized - reference).max() < np.abs(quantized - reference).max()
    with pytest.raises(ValueError, match="no quantized layer"):
        bypass(int8, ["/not/a/layer"])


def test_sensitivity_ranks_every_layer_most_harmful_first(float_onnx, samples, judge, tmp_path):
    int8 = ov.Core().read_model(str(run_engine("nncf", float_onnx, samples, tmp_path)))
    baseline, ranking = rank_layers(int8, judge)
    assert [entry.layer for entry in ranking] != [] and len(ranking) == len(quantized_layers(int8))
    gains = [entry.gain for entry in ranking]
    assert gains == sorted(gains, reverse=True)
    assert all(entry.agreement == pytest.approx(baseline + entry.gain) for entry in ranking)


def test_screening_ranks_blocks_then_only_the_layers_of_harmful_blocks(float_onnx, samples, judge, tmp_path):
    int8 = ov.Core().read_model(str(run_engine("nncf", float_onnx, samples, tmp_path)))
    baseline = judge(int8)
    blocks = rank_blocks(int8, judge, baseline)
    assert sorted(b.layer for b in blocks) == sorted({block_of(layer) for layer in quantized_layers(int8)})
    assert [b.gain for b in blocks] == sorted((b.gain for b in blocks), reverse=True)
    result = quantize("nncf", float_onnx, samples, tmp_path / "screened", judge=judge, mixed=False)
    harmful = {b.layer for b in result.blocks if b.gain >= MIN_GAIN}
    assert {block_of(entry.layer) for entry in result.ranking} == harmful
    assert len(result.ranking) == sum(block_of(layer) in harmful for layer in quantized_layers(int8))


def test_mixed_precision_keeps_only_layers_that_help(float_onnx, samples, judge, tmp_path):
    # A target above what any choice reaches makes the search take every layer that gains enough.
    result = quantize("nncf", float_onnx, samples, tmp_path, judge=judge, mixed=True, target=1.01)
    gaining = []
    for entry in result.ranking[:6]:
        if entry.gain < MIN_GAIN:
            break
        gaining.append(entry.layer)
    assert result.keep_float == gaining
    assert set(result.keep_float).isdisjoint(quantized_layers(ov.Core().read_model(str(result.path))))
    json.dumps(result.to_dict())


@pytest.mark.parametrize("engine", ["nncf", "inc"])
def test_accuracy_control_is_driven_by_our_agreement(engine, float_onnx, samples, judge, tmp_path):
    # A bound every model meets: the engine's loop runs our scorer on the fp32 and INT8 models and stops.
    result = quantize(engine, float_onnx, samples, tmp_path, judge=judge, accuracy_control=True, target=0.0)
    assert result.keep_float == [] and result.agreement == pytest.approx(result.baseline_agreement)
    assert result.agreement == pytest.approx(judge(result.path)) and 0 < result.agreement < 1


def test_inc_accuracy_control_says_when_no_model_meets_the_bound(float_onnx, samples, judge, tmp_path):
    with pytest.raises(ValueError, match="no INT8 model within"):
        quantize("inc", float_onnx, samples, tmp_path, judge=judge, accuracy_control=True, target=1.0)


def test_drift_verdicts_follow_the_bound():
    regions = {r: {"agreement_mean": 0.995} for r in ("WT", "TC", "ET")}
    summary = {"worst_ratio": 0.9995, "basis": "dice_ratio", "regions": regions}
    assert verdict(summary, 0.001).startswith("pass")
    assert verdict(summary | {"worst_ratio": 0.998}, 0.001).startswith("fail")
    # A Dice ratio above 1 does not pass labels that disagree with fp32.
    disagreeing = summary | {"worst_ratio": 1.06, "regions": regions | {"WT": {"agreement_mean": 0.91}}}
    assert verdict(disagreeing, 0.001).startswith("fail: WT agreement")


def test_a_drift_summary_without_regions_fails_the_gate():
    text = verdict({"worst_ratio": 1.0, "basis": "dice_ratio", "regions": {}}, 0.001)
    assert text == "fail: the drift summary has no regions, so nothing was compared with fp32"


def labelled_scores(dice: dict[str, float], agreement: dict[str, float]) -> dict:
    """One precision's scores on one case, as measure_drift records them."""
    return {"agreement": agreement, "metrics": {r: {"dice": dice[r], "hd95": 1.0} for r in dice}}


def test_a_region_fp32_misses_entirely_has_no_ratio_and_is_judged_by_agreement():
    fp32 = labelled_scores({"WT": 0.9, "TC": 0.8, "ET": 0.0}, {"WT": 1.0, "TC": 1.0, "ET": 1.0})
    int8 = labelled_scores({"WT": 0.9, "TC": 0.8, "ET": 0.3}, {"WT": 1.0, "TC": 1.0, "ET": 0.6})
    summary = summarise_drift({"a": {"precisions": {"fp32": fp32, "int8": int8}}}, ["fp32", "int8"])["int8"]
    # 0.3 / 0.0 is undefined, not perfect: ET's agreement (0.6) stands in, and the summary says so.
    assert "ratio" not in summary["regions"]["ET"] and summary["regions"]["TC"]["ratio"] == 1.0
    assert summary["worst_ratio"] == 0.6 and summary["ratio_undefined"] == ["ET"]
    assert not summary["verdicts"]["99"]
    text = verdict(summary, 0.001, min_agreement=0.5)
    assert text.startswith("fail: worst region Dice ratio to fp32 (ET: fp32 Dice 0, no ratio") and "0.6000" in text


def test_build_refuses_no_calibration_cases_before_any_work(tmp_path):
    with pytest.raises(LatupError, match="at least 1 calibration case"):
        build_bundle(tmp_path / "nowhere", tmp_path / "bundle", BuildSettings(calibration_cases=0))


def break_int8(path, out):
    """Squash every activation quantizer's range: a deliberately broken INT8 model."""
    model = ov.Core().read_model(str(path))
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            for index in (1, 2, 3, 4):
                low_high = np.full(op.input_value(index).get_shape(), 1e-3 * (index % 2 == 0), np.float32)
                op.input(index).replace_source_output(ov.opset13.constant(low_high).output(0))
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def test_drift_scores_the_labels_after_the_rule_and_keeps_the_argmax_agreement():
    inputs = np.zeros((1, 3, 24, 24, 24), np.float32)
    case = PreparedCase("a", inputs, Crop((24, 24, 24), (0, 0, 0), (24, 24, 24)), None, (1.0, 1.0, 1.0))

    def logits(speck: bool):
        def forward(x):
            scores = np.zeros((1, 4, 24, 24, 24), np.float32)
            scores[0, 0] = 1
            scores[0, 2, 2:12, 2:12, 2:12] = 2  # a lesion: oedema ...
            scores[0, 1, 5:9, 5:9, 5:9] = 3  # ... around a core
            if speck:
                scores[0, 2, 14:22, 14:22, 14:22] = 2  # a coreless blob the rules remove
            return scores

        return forward

    forwards = {"fp32": logits(False), "int8": logits(True)}
    rules = Postprocessing()
    delivered = measure_drift([case], forwards, labels=lambda classes, inputs: postprocess(classes, rules, inputs))
    scores = delivered["cases"]["a"]["precisions"]["int8"]
    assert scores["agreement"]["WT"] == 1.0 and scores["raw_agreement"]["WT"] < 0.9
    assert delivered["summary"]["int8"]["labels"] == "post-processed"
    assert delivered["summary"]["int8"]["regions"]["WT"]["raw_agreement_min"] < 0.9
    raw = measure_drift([case], forwards)
    assert raw["cases"]["a"]["precisions"]["int8"]["agreement"]["WT"] < 0.9
    assert raw["summary"]["int8"]["labels"] == "network argmax"
    assert "raw_agreement" not in raw["cases"]["a"]["precisions"]["int8"]


def test_drift_catches_a_broken_int8_model(float_onnx, samples, tmp_path):
    broken = break_int8(run_engine("nncf", float_onnx, samples, tmp_path), tmp_path / "broken.xml")
    cases = [tiny_case("a", 10), tiny_case("b", 11)]
    forwards = {"fp32": OpenVINOModel(float_onnx, "fp32"), "int8": OpenVINOModel(broken, "int8")}
    summary = measure_drift(cases, forwards)["summary"]
    assert summary["fp32"]["worst_ratio"] == 1.0
    assert summary["int8"]["worst_ratio"] < 0.9 and not summary["int8"]["verdicts"]["99"]


@pytest.mark.parametrize(
    ("engine", "config"), [("nncf", NARROW), ("inc", NARROW), ("nncf", BRAIN)], ids=["nncf", "inc", "nncf-brain"]
)
def test_build_makes_a_verified_bundle_with_a_drift_gate(engine, config, two_phantoms, tmp_path):
    weights = save_checkpoint(narrow_network(config=config), tmp_path / "narrow")
    # The sensitivity search is tested on tiny cases above; here it would cost minutes per engine.
    settings = BuildSettings(
        engine=engine, weights=weights, held_out=1, calibration_cases=1, crop_size=32, sensitivity=False
    )
    report = build_bundle(two_phantoms, tmp_path / "bundle", settings)
    bundle = load_bundle(tmp_path / "bundle")
    assert set(report["verdicts"]) >= {"fp32", "int8"}
    assert bundle.manifest["build"]["engine"] == engine
    assert report["held_out"] and report["held_out"][0] not in report["calibration"]["cases"]
    # The gate ran the held-out boxes as segment runs them by default.
    assert report["gate_tiling"] == {"tiling": DEFAULT_TILING, "window": DEFAULT_WINDOW, "overlap": DEFAULT_OVERLAP}
    # ... and scored the labels segment writes: post-processed.
    assert report["gate_postprocessing"] == DEFAULT_POSTPROCESSING.to_dict()
    assert report["drift"]["summary"]["int8"]["labels"] == "post-processed"
    int8 = bundle.manifest["precisions"]["int8"]
    assert int8["int8_kernels"]["int8_convolutions"] > 0
    assert int8["eligible"] == report["verdicts"]["int8"].startswith("pass")
    # The bundle records the network and the normalisation its calibration and gate used.
    assert bundle.manifest["network"] == config.to_dict() and bundle.normalization == config.normalization
    assert report["calibration"]["normalization"] == config.normalization
    assert bundle.manifest["preprocessing"]["normalization"] == config.normalization
    # It records its inputs' statistics, and segment scores each scan against them.
    inputs = bundle.manifest["build"]["input_reference"]
    assert sorted(inputs["cases"]) == sorted([*report["calibration"]["cases"], *report["held_out"]]) and inputs["n"]
    case = discover_cases(two_phantoms)[0]
    swapped = tmp_path / "swapped" / case.case_id
    swapped.mkdir(parents=True)
    for key, path in case.files.items():
        source = case.files[{"flair": "t2", "t2": "flair"}.get(key, key)]
        (swapped / path.name).write_bytes(source.read_bytes())
    settings = SegmentSettings(bundle=tmp_path / "bundle", threads=1)
    ordinary = segment_cases([case.folder], tmp_path / "ordinary", settings)["cases"][0]
    assert ordinary["ood"]["score"] is not None and ordinary["ood"]["flags"] == []
    shifted = segment_cases([swapped], tmp_path / "shifted", settings)["cases"][0]
    assert any("bright_asymmetry.flair~t2" in flag for flag in shifted["ood"]["flags"])
    assert any(flag.startswith("input unlike the bundle's data") for flag in shifted["flags"])


def test_build_never_makes_a_broken_int8_model_the_default(two_phantoms, tmp_path, monkeypatch):
    import latup_edge.deploy.build as build_module

    def broken_quantize(engine, onnx_path, samples, out_dir, **kwargs):
        good = run_engine("nncf", onnx_path, samples, out_dir)
        return QuantizationResult("nncf", break_int8(good, out_dir / "broken.xml"), [], 0.0)

    monkeypatch.setattr(build_module, "quantize", broken_quantize)
    weights = save_checkpoint(narrow_network(), tmp_path / "narrow")
    settings = BuildSettings(weights=weights, held_out=1, calibration_cases=1, crop_size=32, sensitivity=False)
    report = build_bundle(two_phantoms, tmp_path / "bundle", settings)
    bundle = load_bundle(tmp_path / "bundle")
    assert report["verdicts"]["int8"].startswith("fail")
    assert bundle.default_precision != "int8" and not bundle.manifest["precisions"]["int8"]["eligible"]


@pytest.mark.parametrize("engine", ["nncf", "inc"])
def test_engines_leave_stdout_to_the_json_result(engine, float_onnx, samples, tmp_path, capfd):
    run_engine(engine, float_onnx, samples, tmp_path)
    assert capfd.readouterr().out == ""


def _activation_ranges(model: ov.Model) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_low, input_high) of every activation quantizer, in graph order."""
    ranges = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            low, high = (op.input_value(i).get_node().get_data() for i in (1, 2))
            ranges.append((low, high))
    return ranges


def test_extreme_activation_ranges_cover_every_calibration_sample(float_onnx, tmp_path):
    # Two samples of different contrast: the mean of their extremes clips the brighter one.
    case = tiny_case("s", 0).inputs
    samples = [case, case * 3]
    mean, extreme = (
        _activation_ranges(
            ov.Core().read_model(str(run_engine("nncf", float_onnx, samples, tmp_path / r, activation_ranges=r)))
        )
        for r in ("mean", "extreme")
    )
    assert len(mean) == len(extreme) > 10
    assert all(
        np.all(e_low <= m_low + 1e-6) and np.all(e_high >= m_high - 1e-6)
        for (m_low, m_high), (e_low, e_high) in zip(mean, extreme, strict=True)
    )
    widths = [
        float(np.max(e_high - e_low) / np.max(m_high - m_low))
        for (m_low, m_high), (e_low, e_high) in zip(mean, extreme, strict=True)
    ]
    assert max(widths) > 1.2


def test_an_unknown_activation_range_rule_is_refused(float_onnx, samples, tmp_path):
    with pytest.raises(LatupError, match="activation ranges must be one of mean, extreme"):
        run_engine("nncf", float_onnx, samples, tmp_path, activation_ranges="median")


def test_the_cli_default_activation_ranges_are_the_library_default():
    from latup_edge.cli.quantize import DEFAULT_ACTIVATION_RANGES as cli_default
    from latup_edge.deploy.quantize.nncf_engine import DEFAULT_ACTIVATION_RANGES

    assert cli_default == DEFAULT_ACTIVATION_RANGES


def test_quantize_passes_the_range_rule_to_the_engine_and_records_it(float_onnx, tmp_path):
    case = tiny_case("s", 0).inputs
    samples = [case, case * 3]
    result = quantize("nncf", float_onnx, samples, tmp_path / "q", activation_ranges="extreme")
    direct = run_engine("nncf", float_onnx, samples, tmp_path / "direct", activation_ranges="extreme")
    mean = run_engine("nncf", float_onnx, samples, tmp_path / "mean")
    ranges = [_activation_ranges(ov.Core().read_model(str(path))) for path in (result.path, direct, mean)]
    flat = [np.concatenate([np.ravel(bound) for pair in r for bound in pair]) for r in ranges]
    np.testing.assert_allclose(flat[0], flat[1])
    assert not np.allclose(flat[0], flat[2])
    assert result.to_dict()["activation_ranges"] == "extreme"


def test_the_ratio_comes_with_a_bootstrap_interval_that_repeats_and_the_verdict_shows_it():
    agree = {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    cases = {}
    for i in range(20):
        fp32 = labelled_scores({"WT": 0.9, "TC": 0.8, "ET": 0.85}, agree)
        int8 = labelled_scores({"WT": 0.9, "TC": 0.8 - 0.05 * (i == 3), "ET": 0.85}, agree)  # one case flips
        cases[f"c{i}"] = {"precisions": {"fp32": fp32, "int8": int8}}
    summary = summarise_drift(cases, ["fp32", "int8"])["int8"]
    tc = summary["regions"]["TC"]
    low, high = tc["ratio_ci95"]
    assert low < tc["ratio"] < 1.0 and high == 1.0  # resamples without the flipped case have ratio 1
    assert summary["regions"]["WT"]["ratio_ci95"] == [1.0, 1.0]
    assert summarise_drift(cases, ["fp32", "int8"])["int8"]["regions"]["TC"]["ratio_ci95"] == [low, high]
    text = verdict(summary, 0.001, min_agreement=0.5)
    assert text.startswith("fail: worst region Dice ratio to fp32 (95 % interval over the cases")
    assert f"{low:.4f}-1.0000" in text and f"{tc['ratio']:.4f} < 0.9990" in text
    # Tables: the interval where asked (the drift summary), the bare ratio elsewhere (the build's narrow table).
    assert format_ratio(tc) == f"{tc['ratio']:.4f}"
    assert format_ratio(tc, interval=True) == f"{tc['ratio']:.4f} [{low:.4f}, 1.0000]"
