"""The bundle: the folder a clinic PC receives, and the checks that make it safe to run.

A bundle holds OpenVINO IR per precision (``fp32.xml/.bin``, ``int8.xml/.bin``; bf16 is
``fp32.xml`` compiled with the bf16 hint), optionally the ONNX files, and ``manifest.json``: the
sha256 and size of every file, the network config, preprocessing, modalities, label convention,
tool versions, build provenance, and per precision its kernels, latency, drift verdict and whether
it may be the default. ``compile_bundle`` (``latup_edge.deploy.compile``) writes it;
``load_bundle`` refuses any bundle whose files do not match the manifest.

A bundle may hold a second network in ``core/``, itself a complete bundle (``compose_bundle`` in
``latup_edge.deploy.compose`` puts it there): the bundle's own network gives the whole tumour and the core
network labels its parts (``latup_edge.runtime.postprocess.compose_regions``). The manifest's ``core`` entry
names it, with its manifest's checksum and the composition's own INT8 gate; both manifests are verified.

Part of the runtime: imports only numpy and openvino (no torch, no onnx package).

>>> bundle = load_bundle(Path("bundle"))       # doctest: +SKIP
>>> bundle.default_precision                   # doctest: +SKIP
'int8'
>>> logits = bundle.model(threads=2)(x)        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from latup_edge.errors import LatupError
from latup_edge.fileio import sha256_file
from latup_edge.runtime.normalization import network_normalization
from latup_edge.runtime.openvino_backend import (
    OpenVINOModel,
    PerformanceHint,
    Precision,
    cpu_supports_bf16,
    int8_kernel_report,
)

FORMAT = "latup-edge-bundle/1"
MANIFEST = "manifest.json"
REFERENCE_PRECISION = "fp32"
FIX = "rebuild or re-copy the bundle"
SHIPPED_BUNDLE = "bundle"  # in latup_edge.shipped (the repository's models/): built from the shipped weights
MAKE_BUNDLE = "make one with `latup-edge build` or `latup-edge demo`"
# The probe that proves, on this CPU, that an int8 model runs INT8 kernels (a small input: ~0.1 s).
INT8_PROBE = (32, 32, 32)


def shipped_bundle() -> Path | None:
    """The bundle built from the shipped weights, installed inside the package; None if this install has none."""
    path = Path(str(resources.files("latup_edge.shipped") / SHIPPED_BUNDLE))
    return path if (path / MANIFEST).is_file() else None


def resolve_bundle(path: Path | None) -> Path:
    """``path``, or the shipped bundle when None; BundleError when neither exists."""
    if path is not None:
        return Path(path)
    shipped = shipped_bundle()
    if shipped is None:
        raise BundleError(f"this install has no shipped bundle: pass --bundle DIR ({MAKE_BUNDLE})")
    return shipped


class BundleError(LatupError):
    """A bundle that cannot be used as asked; the message names the bundle, the file and what to do."""


def choose_default(precisions: dict[str, dict[str, Any]]) -> str:
    """The default precision of a bundle: the fastest eligible one, else fp32.

    The rule: a precision is eligible when its entry says ``eligible`` (set at compile time: its
    drift-gate verdict passed, and for int8 the CPU really ran INT8 convolution kernels). fp32 is the
    reference the gate compares against, so it is always eligible; precisions without a verdict are
    not. Among the eligible ones the lowest ``latency_ms["median_ms"]`` wins (a missing latency
    counts as infinitely slow; ties keep the order given). With no verdicts at all only fp32 is
    eligible, so the default is fp32.

    >>> choose_default({"fp32": {"eligible": True, "latency_ms": {"median_ms": 900}},
    ...                 "int8": {"eligible": True, "latency_ms": {"median_ms": 300}}})
    'int8'
    """

    def median_ms(name: str) -> float:
        latency = precisions[name].get("latency_ms") or {}
        return float(latency.get("median_ms", math.inf))

    eligible = [name for name, entry in precisions.items() if entry.get("eligible") or name == REFERENCE_PRECISION]
    return min(eligible, key=median_ms) if eligible else REFERENCE_PRECISION


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's content without its own ``checksum`` field (canonical JSON)."""
    content = {key: value for key, value in manifest.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, by default, verified) bundle; ``model()`` compiles one of its precisions."""

    path: Path
    manifest: dict[str, Any]
    core: Bundle | None = None  # the network that labels the parts of the whole tumour, when there is one

    @property
    def precisions(self) -> dict[str, dict[str, Any]]:
        """Per precision: file, hint, kernels, latency, drift, verdict and eligibility."""
        return self.manifest["precisions"]

    @property
    def normalization(self) -> str:
        """The intensity normalisation the bundle's network was trained with (an old manifest: minmax)."""
        try:
            return network_normalization(self.manifest.get("network"))
        except LatupError as error:
            raise BundleError(f"bundle {self.path}: {error}") from None

    @property
    def default_precision(self) -> str:
        """The manifest's default: the fastest precision that passed the drift gate on the build CPU."""
        return self.manifest["default_precision"]

    def model(
        self,
        precision: Precision | None = None,
        threads: int | None = None,
        hint: PerformanceHint = "LATENCY",
        cache_dir: Path | None = None,
        allow_failed: bool = False,
    ) -> OpenVINOModel:
        """Compile ``precision`` (None: the default one) for this CPU.

        A precision that is not eligible (failed or missing drift verdict, or int8 that did not run
        INT8 kernels) raises BundleError; ``allow_failed=True`` runs it anyway with a warning. When
        the default is bf16 and this CPU has no bf16 units, the fastest other eligible precision
        runs instead, with a warning.
        """
        requested = precision
        if precision is None:
            precision = self._runnable_default()
        entry = self.precisions.get(precision)
        if entry is None:
            raise BundleError(
                f"bundle {self.path} has no {precision} model (it has {', '.join(self.precisions)}): "
                "choose one of those or rebuild the bundle with it"
            )
        if not entry.get("eligible") and precision != REFERENCE_PRECISION:
            reason = ineligible_reason(entry)
            if not allow_failed:
                raise BundleError(
                    f"bundle {self.path}: {precision} is not approved ({reason}); use another precision, "
                    "or allow_failed=True to run it anyway"
                )
            warnings.warn(f"running {precision} from bundle {self.path} although {reason}", stacklevel=2)
        model = OpenVINOModel(self.path / entry["file"], precision, threads, hint, cache_dir)
        if precision == "int8" and not self._runs_int8_kernels(model):
            reason = (
                f"this CPU runs no INT8 convolution kernels for it ({', '.join(model.int8_check['primitive_types'])})"
            )
            fallback = choose_default({k: v for k, v in self.precisions.items() if k != "int8"})
            if requested is None:  # the default did not hold on this CPU: the next eligible one runs
                warnings.warn(f"bundle {self.path}: int8 is its default but {reason}: running {fallback}", stacklevel=2)
                return self.model(fallback, threads, hint, cache_dir, allow_failed)
            if not allow_failed:
                raise BundleError(
                    f"bundle {self.path}: int8 is not approved on this CPU ({reason}); run --precision {fallback}, "
                    "or allow_failed=True to run it anyway"
                )
            warnings.warn(f"running int8 from bundle {self.path} although {reason}", stacklevel=2)
        return model

    def _runs_int8_kernels(self, model: OpenVINOModel) -> bool:
        """INT8 was approved on the build CPU; whether this CPU runs INT8 kernels for it too (a small probe)."""
        channels = len(self.manifest.get("modalities") or (0, 0, 0))
        model.int8_check = int8_kernel_report(model.compiled, (1, channels, *INT8_PROBE))
        model.release()  # the probe's activations are not needed again
        return model.int8_check["int8_convolutions"] > 0

    def _runnable_default(self) -> str:
        default = self.default_precision
        if default != "bf16" or cpu_supports_bf16():
            return default
        fallback = choose_default({k: v for k, v in self.precisions.items() if k != "bf16"})
        warnings.warn(
            f"bundle {self.path} defaults to bf16 but this CPU has no bf16 units: running {fallback}",
            stacklevel=3,
        )
        return fallback


def ineligible_reason(entry: dict[str, Any]) -> str:
    """Why a precision entry may not be the default, in a few words."""
    if entry.get("status") == "not_int8":
        return f"it does not run INT8 kernels on the build CPU: {entry.get('reason', 'no reason recorded')}"
    verdict = entry.get("verdict")
    return f"its drift verdict is {verdict!r}" if verdict else "it has no drift verdict"


def load_bundle(path: Path, verify: bool = True) -> Bundle:
    """Read ``path``/manifest.json and, with ``verify``, check every listed file's size and sha256.

    Raises BundleError (one sentence naming the bundle, the file and what to do) when the manifest is
    missing or invalid, or a listed file is missing, resized or changed.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a latup-edge bundle (no {MANIFEST}): {FIX}, e.g. with `latup-edge compile`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"bundle {path}: {MANIFEST} is not valid JSON ({error}): {FIX}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {path}: {MANIFEST} is not a {FORMAT} manifest: {FIX}")
    if verify:
        _verify(path, manifest)
    core = _load_core(path, manifest, verify) if manifest.get("core") else None
    return Bundle(path=path, manifest=manifest, core=core)


def _load_core(path: Path, manifest: dict[str, Any], verify: bool) -> Bundle:
    """The core network's bundle inside ``path``, checked against the ``core`` entry of ``manifest``."""
    entry = manifest["core"]
    core = load_bundle(path / entry["path"], verify)
    if core.manifest.get("checksum") != entry.get("checksum"):
        raise BundleError(
            f"bundle {path}: its core network ({entry['path']}/) is not the one it was composed with "
            f"(its manifest's checksum differs): {FIX}"
        )
    if core.core is not None:
        raise BundleError(f"bundle {path}: its core network ({entry['path']}/) has a core network of its own: {FIX}")
    return core


def _verify(path: Path, manifest: dict[str, Any]) -> None:
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise BundleError(f"bundle {path}: {MANIFEST} was changed after the bundle was built: {FIX}")
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {path}: {name} is missing: {FIX}")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise BundleError(f"bundle {path}: {name} has {size} bytes, the manifest says {expected['bytes']}: {FIX}")
        if sha256_file(file) != expected["sha256"]:
            raise BundleError(f"bundle {path}: {name} does not match its sha256 in the manifest: {FIX}")


def precision_size_mb(manifest: dict[str, Any], name: str) -> float:
    """Size on disk (MB) of the IR files (.xml + .bin) a precision runs."""
    stem = Path(manifest["precisions"][name]["file"]).stem
    return sum(manifest["files"].get(f"{stem}{suffix}", {}).get("bytes", 0) for suffix in (".xml", ".bin")) / 1e6
