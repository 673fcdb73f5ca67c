"""A model opened once, with everything needed to run it: the ``Predictor`` (after nnU-Net's nnUNetPredictor).

``Predictor.from_bundle`` reads and verifies a bundle once, compiles one precision once, and keeps
the bundle's normalisation and network config; every ``predict`` and ``segment`` after that reuses
them. ``Predictor(backend)`` wraps any ``Backend`` (onnxruntime, torch) the same way. The shape
policy is resolved here, once, from the network config (see ``resolve_shape_policy``).

>>> predictor = Predictor.from_bundle(Path("bundle"), threads=2)                  # doctest: +SKIP
>>> predictor.describe()                                                          # doctest: +SKIP
'openvino int8, 2 threads, sliding windows of at most 96^3 voxels, shape policy bucket32, zscore-brain'
>>> labels = predictor.predict(images).classes                                    # doctest: +SKIP
>>> log = predictor.segment([Path("BraTS2021")], Path("out"))                     # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latup_edge.data.labels import LabelConvention
from latup_edge.errors import LatupError
from latup_edge.runtime.backends import Backend, BackendName, open_backend
from latup_edge.runtime.bundle import Bundle, load_bundle, resolve_bundle
from latup_edge.runtime.openvino_backend import PerformanceHint, Precision
from latup_edge.runtime.postprocess import DEFAULT_POSTPROCESSING, Postprocessing, delivered_classes
from latup_edge.runtime.volume import (
    BUCKETS,
    DEFAULT_OVERLAP,
    DEFAULT_TILING,
    DEFAULT_WINDOW,
    SHAPE_POLICIES,
    BoxForward,
    Prediction,
    ShapePolicy,
    Tiling,
    box_forward,
    bucket_shape,
    mirror_axes,
    mirror_name,
    network_scores,
    predict_volume,
)

if TYPE_CHECKING:
    from latup_edge.runtime.segment import Report

# What a brain-statistics network runs by default: padding its box changes nothing but the shape.
BRAIN_DEFAULT_POLICY: ShapePolicy = "bucket32"


class PredictorError(LatupError):
    """A predictor that cannot run as asked; the message is one sentence saying what to do."""


def resolve_shape_policy(requested: ShapePolicy | None, network: Mapping[str, Any] | None, source: str) -> ShapePolicy:
    """The shape policy a network runs with: ``requested``, or None for its default.

    Brain-statistics networks default to ``bucket32``; volume-statistics networks (and configs
    without ``statistics``: old bundles) always run ``exact``, and an explicit bucket is refused.
    ``source`` names the model in that sentence (e.g. ``bundle path/to/bundle``).
    """
    if requested is not None and requested not in SHAPE_POLICIES:
        raise PredictorError(f"unknown shape policy {requested!r}: choose {' or '.join(SHAPE_POLICIES)}")
    statistics = (network or {}).get("statistics", "volume")
    if statistics == "brain":
        return requested or BRAIN_DEFAULT_POLICY
    if requested not in (None, "exact"):
        raise PredictorError(
            f"{source} has a network with {statistics} statistics, whose labels change when its brain box is "
            "padded: run it with shape policy exact (--shape-policy exact)"
        )
    return "exact"


class Predictor:
    """One open model and how to run it: backend, normalisation, network config, tiling, shape policy.

    Args:
        backend: any ``Backend`` (``open_backend``, or ``Predictor.from_bundle`` / ``Predictor.open``).
        normalization: the model's intensity normalisation (None: the backend's own).
        network: the model's network config (None: the backend's ``network``, if it has one); its
            ``statistics`` decides the shape policy.
        tiling, window, overlap: as in ``latup_edge.runtime.volume.predict_volume``.
        shape_policy: ``exact`` or ``bucket32``; None picks the network's default (``resolve_shape_policy``).
        bundle: the bundle the backend runs, if any (its manifest names the modalities).
        postprocessing: the label rules after the network (``latup_edge.runtime.postprocess``).
        mirror: test-time mirroring, axis letters (``""``: none; ``"x"``: left-right, 2 passes; ``"xyz"``: 8).
        core: a second backend that labels the parts of this one's whole tumour (a bundle's core network,
            ``Bundle.core``; ``postprocess.compose_regions``), run on each box as this one is; None: one network.
    """

    def __init__(
        self,
        backend: Backend,
        normalization: str | None = None,
        network: Mapping[str, Any] | None = None,
        tiling: Tiling = DEFAULT_TILING,
        window: int = DEFAULT_WINDOW,
        overlap: float = DEFAULT_OVERLAP,
        shape_policy: ShapePolicy | None = None,
        bundle: Bundle | None = None,
        postprocessing: Postprocessing = DEFAULT_POSTPROCESSING,
        mirror: str = "",
        core: Backend | None = None,
    ) -> None:
        self.backend = backend
        self.core = core
        self.postprocessing = postprocessing
        self.mirror_axes = mirror_axes(mirror)
        self.normalization = normalization or backend.normalization
        self.network = dict(network if network is not None else getattr(backend, "network", None) or {})
        self.tiling = tiling
        self.window = window
        self.overlap = overlap
        self.bundle = bundle
        source = f"bundle {bundle.path}" if bundle is not None else f"the {backend.name} model"
        self.shape_policy = resolve_shape_policy(shape_policy, self.network, source)
        self.requested_shape_policy = shape_policy

    @classmethod
    def from_bundle(
        cls,
        bundle: Path | Bundle,
        precision: Precision | None = None,
        threads: int | None = None,
        tiling: Tiling = DEFAULT_TILING,
        window: int = DEFAULT_WINDOW,
        overlap: float = DEFAULT_OVERLAP,
        cache_dir: Path | None = None,
        *,
        backend: BackendName = "openvino",
        shape_policy: ShapePolicy | None = None,
        hint: PerformanceHint = "LATENCY",
        allow_failed: bool = False,
        postprocessing: Postprocessing = DEFAULT_POSTPROCESSING,
        mirror: str = "",
        use_core: bool = True,
    ) -> Predictor:
        """Open a bundle (a path: read and verified here; a ``Bundle``: as loaded) and compile ``precision``.

        ``precision`` None runs the bundle's default (each network's own, with a core network); ``backend`` may
        also be ``onnxruntime`` (fp32.onnx).
        """
        return cls.open(
            backend, precision, bundle, None, threads, tiling, window, overlap, shape_policy=shape_policy,
            hint=hint, cache_dir=cache_dir, allow_failed=allow_failed, postprocessing=postprocessing, mirror=mirror,
            use_core=use_core,
        )  # fmt: skip

    @classmethod
    def open(
        cls,
        backend: BackendName,
        precision: Precision | None = None,
        bundle: Path | Bundle | None = None,
        weights: Path | None = None,
        threads: int | None = None,
        tiling: Tiling = DEFAULT_TILING,
        window: int = DEFAULT_WINDOW,
        overlap: float = DEFAULT_OVERLAP,
        *,
        shape_policy: ShapePolicy | None = None,
        hint: PerformanceHint = "LATENCY",
        cache_dir: Path | None = None,
        allow_failed: bool = False,
        postprocessing: Postprocessing = DEFAULT_POSTPROCESSING,
        mirror: str = "",
        use_core: bool = True,
    ) -> Predictor:
        """Any backend, as ``open_backend`` opens it: openvino and onnxruntime run ``bundle`` (None: the bundle
        shipped in the package, built from the shipped weights), torch runs
        ``weights`` (None: the shipped ones). A bundle path is read and verified here, once; a bundle
        given with torch only names the modalities. A bundle with a core network (``Bundle.core``) opens it
        too, unless ``use_core`` is False (then its whole-tumour network labels every region, alone)."""
        if bundle is None and backend != "torch":  # the bundle shipped inside the package
            bundle = resolve_bundle(None)
        loaded = bundle if bundle is None or isinstance(bundle, Bundle) else load_bundle(Path(bundle))
        runs_bundle = backend != "torch" and loaded is not None
        network = loaded.manifest.get("network") if runs_bundle else None
        if runs_bundle:  # refuse a shape policy before compiling anything
            resolve_shape_policy(shape_policy, network, f"bundle {loaded.path}")
        mirror_axes(mirror)  # ... and an unknown mirroring
        opened = open_backend(
            backend, precision, loaded if runs_bundle else None, weights, threads, hint, cache_dir, allow_failed
        )
        core = None
        if runs_bundle and loaded.core is not None and use_core:  # each network at its own default, or as asked
            core = open_backend(backend, precision, loaded.core, None, threads, hint, cache_dir, allow_failed)
            gate = loaded.manifest["core"].get("gate") or {}
            if not gate.get("passed"):
                warnings.warn(
                    f"bundle {loaded.path}: its two networks' composition "
                    f"{'failed its gate (' + gate['verdict'] + ')' if gate else 'was never gated'}",
                    stacklevel=2,
                )
        return cls(opened, None, network, tiling, window, overlap, shape_policy, loaded, postprocessing, mirror, core)

    def with_precision(self, precision: Precision, threads: int | None = None) -> Predictor:
        """The same bundle, tiling, shape policy and post-processing at another precision (the audit's fp32)."""
        return Predictor.open(
            self.backend.name, precision, self.bundle, None, threads, self.tiling, self.window, self.overlap,
            shape_policy=self.requested_shape_policy, allow_failed=True, postprocessing=self.postprocessing,
            mirror=self.mirror, use_core=self.core is not None,
        )  # fmt: skip

    @property
    def mirror(self) -> str:
        """The test-time mirroring as canonical axis letters (``""``: none)."""
        return mirror_name(self.mirror_axes)

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def modalities(self) -> tuple[str, ...] | None:
        """The bundle's modality order, or None (the model's default order) without a bundle."""
        names = self.bundle.manifest.get("modalities") if self.bundle is not None else None
        return tuple(names) if names else None

    @property
    def bucket(self) -> int | None:
        """The multiple brain boxes are padded to (whole tiling), or None for exact shapes."""
        return BUCKETS[self.shape_policy] if self.tiling == "whole" else None

    @property
    def forward(self) -> BoxForward:
        """The backend as the predictor feeds it a normalised brain box: its tiling, windows or bucket."""
        return box_forward(self.backend, self.tiling, self.window, self.overlap, self.bucket, self.mirror_axes)

    def box_scores(self, box: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Each network's scores for a normalised ``(1, C, D, H, W)`` brain box, as ``predict`` runs them: the
        network's, and the core network's (None with one network), exact inside the network's raw tumour only
        (``volume.network_scores``)."""
        return network_scores(
            box, self.backend, self.core, self.tiling, self.window, self.overlap, self.bucket, self.mirror_axes
        )

    def box_labels(self, box: np.ndarray) -> np.ndarray:
        """The labels ``predict`` writes for a normalised ``(1, C, D, H, W)`` brain box, on the box's grid."""
        scores, core_scores = self.box_scores(box)
        core = np.argmax(core_scores[0], axis=0).astype(np.uint8) if core_scores is not None else None
        return delivered_classes(np.argmax(scores[0], axis=0).astype(np.uint8), self.postprocessing, box[0], core)

    def input_shape(self, box_shape: Sequence[int]) -> tuple[int, ...]:
        """The network input's spatial shape for a brain box of ``box_shape`` (whole tiling)."""
        return bucket_shape(box_shape, self.bucket) if self.bucket else tuple(box_shape)

    def predict(self, images: np.ndarray, probabilities: bool = False) -> Prediction:
        """Raw (C, X, Y, Z) modality images, in the model's modality order -> classes (and probabilities)."""
        return predict_volume(
            images, self.backend, self.tiling, self.window, self.overlap, probabilities,
            normalization=self.normalization, bucket=self.bucket, postprocessing=self.postprocessing,
            mirror=self.mirror_axes, core=self.core,
        )  # fmt: skip

    def segment(
        self,
        inputs: Sequence[Path],
        out_dir: Path,
        labels: LabelConvention | None = None,
        probabilities: bool = False,
        skip_existing: bool = False,
        log: Path | None = None,
        report: Report = lambda event: None,
    ) -> dict[str, Any]:
        """Case folders (or folders of cases) -> ``<case_id>.nii.gz`` in ``out_dir``; returns the run log.

        What ``latup_edge.runtime.segment.segment_cases`` does, with this predictor's model.
        """
        from latup_edge.runtime.segment import SegmentSettings, segment_cases

        settings = SegmentSettings(
            backend=self.backend.name, precision=self.precision,
            bundle=self.bundle.path if self.bundle is not None else None, labels=labels, probabilities=probabilities,
            skip_existing=skip_existing, tiling=self.tiling, window=self.window, overlap=self.overlap,
            shape_policy=self.requested_shape_policy, log=log,
        )  # fmt: skip
        return segment_cases(inputs, out_dir, settings, report, predictor=self)

    def resolved(self) -> dict[str, Any]:
        """What was resolved: the backend's settings (threads, streams, precision) and how boxes are run."""
        return {
            **self.backend.resolved(),
            "normalization": self.normalization,
            "statistics": self.network.get("statistics", "volume"),
            "tiling": self.tiling,
            "window": self.window if self.tiling == "sliding" else None,
            "overlap": self.overlap if self.tiling == "sliding" else None,
            "shape_policy": self.shape_policy,
            "shape_policy_requested": self.requested_shape_policy,
            "mirror": self.mirror or None,
            "core": self.core.resolved() if self.core is not None else None,
        }

    def describe(self) -> str:
        """One line for logs: backend, precision, threads, tiling, shape policy, normalisation."""
        threads = self.backend.resolved().get("threads")
        tiling = "whole box" if self.tiling == "whole" else f"sliding windows of at most {self.window}^3 voxels"
        mirror = f", mirrored along {self.mirror} ({2 ** len(self.mirror)} passes)" if self.mirror else ""
        core = f", core network {self.core.precision}" if self.core is not None else ""
        return (
            f"{self.backend.name} {self.precision}, {threads or 'default'} threads, {tiling}, "
            f"shape policy {self.shape_policy}, {self.normalization}{mirror}{core}"
        )
