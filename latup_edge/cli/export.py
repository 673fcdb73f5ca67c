"""`latup-edge export`: the network to ONNX, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latup_edge.cli.app import JsonOption, command, console, err_console, print_json


@command("export")
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The ONNX file to write, e.g. model.onnx.")],
    weights: Annotated[Path | None, typer.Option(help="Checkpoint (default: the shipped demo weights).")] = None,
    check_data: Annotated[
        Path | None,
        typer.Option(help="BraTS folder whose first case checks the export (default: a generated phantom)."),
    ] = None,
    check_size: Annotated[
        int, typer.Option(help="Side of the centred check crop (multiple of 8; the paper's is 128).")
    ] = 128,
    as_json: JsonOption = False,
) -> None:
    """Export LATUP-Net to ONNX (opset 17, dynamic batch and size) and check it against PyTorch FP32."""
    from latup_edge.deploy.export import export_for_deploy

    if not as_json:
        err_console.print(f"Exporting and checking on a {check_size}^3 crop (PyTorch and ONNX Runtime)...")
    report = export_for_deploy(weights, output, check_data, check_size)
    if as_json:
        print_json(report)
        return
    check = report["check"]
    console.print(
        f"Wrote {report['onnx']} (opset {report['opset']}): max |logit difference| "
        f"{check['max_abs_diff']:.3g} (tolerance {check['tolerance']:.3g}), argmax agreement "
        f"{check['agreement']:.6f} on {'x'.join(map(str, check['input_shape']))}"
    )
