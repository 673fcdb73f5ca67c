"""Which intensity normalisation a model expects, read from the config that travels with it.

A network's config names the normalisation its weights were trained with (``normalization``, one of
``latup_edge.data.preprocess.NORMALIZATIONS``). The ONNX metadata (``latup_edge.config``) and a
bundle's manifest (``network``) carry that config; one written before the field existed means
``minmax``, the paper's. Part of the runtime: no torch.

>>> network_normalization({"base_filters": 32})
'minmax'
>>> network_normalization({"normalization": "zscore-brain"})
'zscore-brain'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latup_edge.data.preprocess import NORMALIZATIONS
from latup_edge.errors import LatupError

# What a config without the field was trained with: every model before the field existed used it.
LEGACY_NORMALIZATION = "minmax"
DESCRIPTIONS: dict[str, str] = {
    "minmax": "minmax: min-max to [0, 1] per modality over the whole volume (a constant modality -> 0)",
    "zscore-brain": "zscore-brain: per modality, the brain voxels (non-zero in any modality) clipped to their "
    "0.5-99.5th percentiles and z-scored over the brain; exact zeros outside it",
}


def network_normalization(config: Mapping[str, Any] | None) -> str:
    """The normalisation a network config (a dict, as in ONNX metadata or a manifest) names.

    Raises LatupError for a name this version does not know.
    """
    method = (config or {}).get("normalization", LEGACY_NORMALIZATION)
    if method not in NORMALIZATIONS:
        raise LatupError(
            f"the model was trained with normalisation {method!r}, which this version of latup-edge does not know "
            f"(it knows {', '.join(NORMALIZATIONS)}): upgrade latup-edge"
        )
    return method


def describe_normalization(method: str) -> str:
    """One line saying what ``method`` does, for manifests and metadata that people read."""
    return DESCRIPTIONS[method]
