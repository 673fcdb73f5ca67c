"""`latup-edge compile`: OpenVINO IR per precision and a verified bundle; `latup-edge compose`: a bundle with
a core network; `latup-edge bundle-info`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from latup_edge.cli.app import JsonOption, command, console, err_console, print_json, print_table


@command("compile")
def compile_command(
    model: Annotated[Path, typer.Argument(help="The FP32 ONNX model (from `latup-edge export`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The bundle folder to write.")],
    int8: Annotated[Path | None, typer.Option("--int8", help="INT8 model: OpenVINO IR (.xml) or QDQ ONNX.")] = None,
    size: Annotated[tuple[int, int, int], typer.Option(help="Input size D H W for the INT8 check and the timing.")] = (
        64,
        64,
        64,
    ),
    threads: Annotated[int, typer.Option(help="Inference threads when timing (0: OpenVINO's default).")] = 0,
    include_onnx: Annotated[bool, typer.Option(help="Also copy the ONNX models into the bundle.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Compile MODEL (and --int8) for OpenVINO on this CPU into a bundle with a verified manifest."""
    from latup_edge.deploy.compile import compile_bundle
    from latup_edge.runtime.bundle import load_bundle

    shape = (1, 3, *size)
    path = compile_bundle(
        model,
        int8,
        output,
        include_onnx=include_onnx,
        probe_shape=shape,
        threads=threads or None,
        progress=lambda message: err_console.print(f"[dim]{message}[/]"),
    )
    show_bundle(load_bundle(path).manifest, path, as_json)


@command("compose")
def compose_command(
    whole: Annotated[Path, typer.Argument(help="The bundle whose network finds the whole tumour.")],
    core: Annotated[Path, typer.Argument(help="The bundle whose network labels the tumour's parts (NCR, ED, ET).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The two-network bundle folder to write.")],
    gate_data: Annotated[
        Path,
        typer.Option(help="Labelled cases for the composition's INT8 gate (those the core build held out are used)."),
    ],
    allow_failed_gate: Annotated[
        bool, typer.Option(help="Write the bundle even when the composition fails its gate (the manifest says so).")
    ] = False,
    threads: Annotated[int, typer.Option(help="Inference threads (0: OpenVINO's default).")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Put CORE's network into a copy of WHOLE, as its core network: WHOLE finds the tumour and its ET, CORE its core.

    The composition is gated as a build is: its labels at both networks' default precisions against both at fp32.
    """
    from latup_edge.deploy.compose import compose_bundle
    from latup_edge.runtime.bundle import load_bundle

    gate = compose_bundle(
        whole, core, output, gate_data, allow_failed_gate, threads or None,
        progress=lambda message: err_console.print(f"[dim]{message}[/]"),
    )  # fmt: skip
    if not as_json:
        console.print(
            f"composition gate ({', '.join(f'{k} {v}' for k, v in gate['precisions'].items())}): {gate['verdict']}"
        )
    show_bundle(load_bundle(output).manifest, output, as_json)


@command("bundle-info")
def bundle_info(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (from `latup-edge compile`).")],
    as_json: JsonOption = False,
) -> None:
    """Verify a bundle's files against its manifest and summarise it."""
    from latup_edge.runtime.bundle import load_bundle

    show_bundle(load_bundle(bundle).manifest, bundle, as_json)


def show_bundle(manifest: dict[str, Any], path: Path, as_json: bool) -> None:
    """Print a verified bundle's manifest: as JSON, or as a table of its precisions."""
    from latup_edge.runtime.bundle import precision_size_mb
    from latup_edge.runtime.normalization import network_normalization

    if as_json:
        print_json({"bundle": str(path), "verified": True, **manifest})
        return
    rows = []
    for name, entry in manifest["precisions"].items():
        size_mb = precision_size_mb(manifest, name)
        kernels = entry["int8_kernels"]
        latency = entry["latency_ms"]
        rows.append(
            (
                name,
                f"{size_mb:.1f}",
                f"{kernels['int8_convolutions']}/{kernels['convolutions']}",
                f"{latency['median_ms']:.0f}",
                entry["verdict"] or "-",
                "yes" if name == manifest["default_precision"] else "",
            )
        )
    shape = "x".join(map(str, manifest["latency_shape"]))
    print_table(
        f"Bundle {path} (verified)",
        ("precision", "IR size (MB)", "INT8 convs", f"median ms at {shape}", "verdict", "default"),
        rows,
        caption=f"built on {manifest['cpu']}, {manifest['created']}",
    )
    if manifest.get("modalities"):
        console.print(f"modalities, in order: {', '.join(manifest['modalities'])}")
    network = manifest.get("network") or {}
    # A manifest from before these fields existed: the network used the paper's statistics and min-max.
    console.print(
        f"normalisation: {network_normalization(network)}; "
        f"InstanceNorm/SE statistics: {network.get('statistics', 'volume')}"
    )
    core = manifest.get("core")
    if core:
        gate = (core.get("gate") or {}).get("verdict", "not gated")
        console.print(f"core network: {core['path']}/ ({core['rule']}); composition gate: {gate}")
