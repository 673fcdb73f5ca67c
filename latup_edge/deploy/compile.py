"""Compile a float ONNX model (and an INT8 model) into a verified OpenVINO bundle.

``compile_bundle`` converts the models to OpenVINO IR, checks on this CPU that the INT8 model really
runs INT8 convolution kernels, measures each precision's latency, chooses the default precision and
writes ``manifest.json`` last. It builds in a temporary folder beside the destination and renames
it into place only when complete, so a failed compile leaves no half bundle.

Runs on the base install: imports numpy, openvino and onnxruntime only (no torch, no onnx package); it
writes the bundle that ``latup_edge.runtime.bundle`` reads.

>>> compile_bundle(Path("model.onnx"), Path("int8.xml"), Path("bundle"),
...                extra={"verdicts": {"int8": "pass"}})      # doctest: +SKIP
PosixPath('bundle')
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import openvino as ov

from latup_edge import __version__
from latup_edge.deploy.metadata import read_model_metadata
from latup_edge.errors import LatupError, first_line
from latup_edge.fileio import atomic_write_json, sha256_file
from latup_edge.runtime.bundle import (
    FORMAT,
    MANIFEST,
    REFERENCE_PRECISION,
    BundleError,
    choose_default,
    manifest_checksum,
)
from latup_edge.runtime.normalization import network_normalization
from latup_edge.runtime.openvino_backend import (
    PRECISION_HINTS,
    OpenVINOModel,
    cpu_name,
    cpu_supports_bf16,
    int8_kernel_report,
    measure_latency,
)

# Tools that may have built or run the models; those not installed are left out.
TOOLS = ("openvino", "onnxruntime", "numpy", "torch", "onnx", "nncf", "neural-compressor")
# Where each metadata key lands in the manifest ("config" is the exporter's name for the network).
MANIFEST_FIELDS = {
    "config": "network",
    "preprocessing": "preprocessing",
    "modalities": "modalities",
    "labels": "labels",
}

Progress = Callable[[str], None]


def model_normalization(onnx_path: Path) -> str:
    """The intensity normalisation an exported ONNX model was trained with, from its metadata config.

    A model exported before the config named it means minmax. Raises BundleError (one sentence) for a
    file that is not a readable ONNX model or names an unknown normalisation.
    """
    config = read_model_metadata(onnx_path).get("config")
    try:
        return network_normalization(config)
    except LatupError as error:
        raise BundleError(f"{onnx_path}: {error}") from None


def tool_versions() -> dict[str, str]:
    """Versions of the installed tools that build and run a bundle, read without importing them."""
    versions = {"python": sys.version.split()[0], "latup_edge": __version__}
    for name in TOOLS:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def compile_bundle(
    float_model: Path,
    int8_model: Path | None,
    out_dir: Path,
    metadata: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    include_onnx: bool = False,
    probe_shape: Sequence[int] = (1, 3, 64, 64, 64),
    latency_shape: Sequence[int] | None = None,
    threads: int | None = None,
    repeats: int = 3,
    progress: Progress | None = None,
) -> Path:
    """Build the bundle ``out_dir`` from a float ONNX model and an optional INT8 model; returns out_dir.

    Args:
        float_model: the FP32 ONNX export; its ``latup_edge.*`` metadata_props (config,
            preprocessing, modalities, labels, ...) win over ``metadata``, which fills the gaps.
        int8_model: an OpenVINO INT8 IR (.xml) or a QDQ ONNX model; None builds fp32 (and bf16) only.
        out_dir: the bundle folder; an existing bundle there is replaced, any other non-empty folder
            is refused.
        extra: build provenance copied into the manifest as given (calibration, layers kept in
            float, engine, ...). ``extra["verdicts"]`` (``{"int8": "pass", "bf16": "fail: ..."}``)
            and ``extra["drift"]`` (per precision) are the drift gate's results, computed elsewhere.
        include_onnx: also copy the ONNX inputs into the bundle (``fp32.onnx``, ``int8.onnx``).
        probe_shape: the input shape on which the INT8 kernel check runs.
        latency_shape: the input shape each precision is timed on (default: probe_shape).
        threads: inference threads for the measurements (None: OpenVINO's default).
        repeats: timed runs per precision.
        progress: called with a short message before each stage.

    The default precision is the fastest eligible one (``choose_default``): fp32 always; another
    precision when its verdict is ``pass`` and, for int8, its convolutions ran INT8 kernels on
    this CPU (otherwise it is recorded as ``not_int8`` with the reason). No verdicts: fp32.
    """
    float_model, out_dir = Path(float_model), Path(out_dir)
    int8_model = Path(int8_model) if int8_model is not None else None
    extra = dict(extra or {})
    say = progress or (lambda message: None)
    for source in (float_model, int8_model):
        if source is not None and not source.is_file():
            raise BundleError(f"model file {source} does not exist: export or quantize it first")
    _check_destination(out_dir)
    found = read_model_metadata(float_model) if float_model.suffix == ".onnx" else {}
    model_metadata = {**(metadata or {}), **found}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        core = ov.Core()
        bf16 = cpu_supports_bf16(core)
        sources = {"fp32": float_model} | ({"int8": int8_model} if int8_model else {})
        for name, source in sources.items():
            say(f"converting {source.name} to OpenVINO IR ({name})")
            _save_ir(core, source, work / f"{name}.xml")
            if include_onnx and source.suffix == ".onnx":
                shutil.copyfile(source, work / f"{name}.onnx")
        names = ["fp32", *(["bf16"] if bf16 else []), *(["int8"] if int8_model else [])]
        shape = tuple(latency_shape or probe_shape)
        precisions = {name: _measure(work, name, probe_shape, shape, threads, repeats, extra, say) for name in names}
        default = choose_default(precisions)
        files = {
            file.name: {"sha256": sha256_file(file), "bytes": file.stat().st_size} for file in sorted(work.iterdir())
        }
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": files,
            **{field: model_metadata.get(key) for key, field in MANIFEST_FIELDS.items()},
            "source": {
                "float_model": {"name": float_model.name, "sha256": sha256_file(float_model)},
                "int8_model": {"name": int8_model.name, "sha256": sha256_file(int8_model)} if int8_model else None,
                "metadata": {k: v for k, v in model_metadata.items() if k not in MANIFEST_FIELDS},
            },
            "tools": tool_versions(),
            "cpu": cpu_name(core),
            "cpu_bf16": bf16,
            "latency_shape": list(shape),
            "precisions": precisions,
            "default_precision": default,
            "build": extra,
        }
        write_manifest(work, json.loads(json.dumps(manifest, default=str)))
        _move_into_place(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"bundle {out_dir}: default precision {default}")
    return out_dir


def _check_destination(out_dir: Path) -> None:
    if out_dir.is_file() or (out_dir.is_dir() and not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir())):
        raise BundleError(f"{out_dir} exists and is not a bundle: choose an empty or new folder for the bundle")


def _save_ir(core: ov.Core, source: Path, xml: Path) -> None:
    try:
        model = core.read_model(str(source))
    except RuntimeError as error:
        raise BundleError(f"OpenVINO cannot read {source} ({first_line(error)}): re-export or re-quantize it") from None
    # Keep float weights exact: save_model would otherwise store them as fp16.
    ov.save_model(model, str(xml), compress_to_fp16=False)


def _measure(
    work: Path,
    name: str,
    probe_shape: Sequence[int],
    latency_shape: Sequence[int],
    threads: int | None,
    repeats: int,
    extra: dict[str, Any],
    say: Progress,
) -> dict[str, Any]:
    """One precision's manifest entry: kernels on probe_shape, latency, verdict and eligibility."""
    file = "int8.xml" if name == "int8" else "fp32.xml"
    model = OpenVINOModel(work / file, name, threads=threads)
    say(f"timing {name} at {'x'.join(map(str, latency_shape))}")
    # Latency first: its first inference must be the model's first at that shape.
    latency = measure_latency(model, latency_shape, repeats=repeats)
    kernels = int8_kernel_report(model.compiled, probe_shape)
    verdict = "pass (reference)" if name == REFERENCE_PRECISION else (extra.get("verdicts") or {}).get(name)
    entry: dict[str, Any] = {
        "file": file,
        "hint": PRECISION_HINTS[name],
        "status": "ok",
        "int8_kernels": kernels,
        "load_ms": model.load_ms,
        "latency_ms": latency,
        "resolved": model.resolved(),
        "drift": (extra.get("drift") or {}).get(name),
        "verdict": verdict,
    }
    if name == "int8" and kernels["int8_convolutions"] == 0:
        entry["status"] = "not_int8"
        entry["reason"] = (
            f"none of its {kernels['convolutions']} convolutions ran an INT8 kernel on this CPU "
            f"(kernels: {', '.join(kernels['primitive_types']) or 'none'})"
        )
    entry["eligible"] = entry["status"] == "ok" and verdict_passes(verdict)
    return entry


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """``manifest`` given its checksum and written atomically as ``folder``/manifest.json."""
    manifest["checksum"] = manifest_checksum(manifest)
    atomic_write_json(folder / MANIFEST, manifest)


def verdict_passes(verdict: str | None) -> bool:
    """A drift-gate verdict passes when it is ``pass`` (optionally followed by details)."""
    return isinstance(verdict, str) and verdict.strip().lower().startswith("pass")


def _move_into_place(work: Path, out_dir: Path) -> None:
    """Rename the finished ``work`` folder to ``out_dir``, replacing an older bundle there."""
    if not out_dir.exists():
        work.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
    work.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
