"""Shared by the test files: a narrow LATUP-Net (and its float ONNX), and a few phantom cases generated once
per session, and the benchmark scripts as modules."""

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch

from latup_edge.models import LATUPNet, LATUPNetConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module; registered only while it loads (a dataclass looks its module up)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


# What the tests run: the full network's code paths at base_filters=4.
NARROW = LATUPNetConfig(base_filters=4)
# The next shipped weights' settings: brain statistics, z-scores inside the brain.
BRAIN = replace(NARROW, statistics="brain", normalization="zscore-brain")


def narrow_network(config: LATUPNetConfig = NARROW, seed: int = 1) -> LATUPNet:
    """A random narrow LATUP-Net (eval mode) with zero conv biases: then its argmax follows the input's
    features and it predicts every class somewhere (with biases, a random network predicts one class)."""
    torch.manual_seed(seed)
    model = LATUPNet(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.bias.zero_()
    return model


@pytest.fixture(scope="session")
def two_phantoms(tmp_path_factory) -> Path:
    """Two BraTS 2021-style phantom cases (240x240x155), one folder each."""
    from latup_edge.data.phantom import NARROW as NARROW_RANDOMISATION
    from latup_edge.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(root, n=2, seed=11, naming="2021", randomise=NARROW_RANDOMISATION)
    return root


@pytest.fixture(scope="session")
def float_onnx(tmp_path_factory) -> Path:
    """The narrow network in deploy form, exported to ONNX: what the INT8 engines quantize."""
    from latup_edge.deploy.deploy_form import to_deploy_form
    from latup_edge.deploy.export import export_onnx

    return export_onnx(to_deploy_form(narrow_network()), tmp_path_factory.mktemp("q") / "narrow.onnx")
