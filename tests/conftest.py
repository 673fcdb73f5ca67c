"""Fixtures shared across test files: a few phantom cases, generated once per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def two_phantoms(tmp_path_factory) -> Path:
    """Two BraTS 2021-style phantom cases (240x240x155), one folder each."""
    from latup_edge.data.phantom import NARROW, write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(root, n=2, seed=11, naming="2021", randomise=NARROW)
    return root
