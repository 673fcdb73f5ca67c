"""`latup-edge calibrate`: calibration sets of BraTS crops and brain boxes (3-D) for INT8 quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latup_edge.cli.app import JsonOption, command, console, print_json, print_table, progress_bar


@command("calibrate")
def calibrate(
    data_dir: Annotated[Path, typer.Argument(help="A BraTS-format folder (real or phantom).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder for the calibration set.")],
    cases: Annotated[int, typer.Option(min=1, help="Number of cases, in seeded random order.")] = 40,
    per_case: Annotated[int, typer.Option(min=1, help="Crops per case (crop and mixed kinds).")] = 1,
    kind: Annotated[
        str, typer.Option(help="crop (crop-size^3 crops), brainbox (whole brain boxes) or mixed (both).")
    ] = "crop",
    crop_size: Annotated[int, typer.Option(help="Side of the crops (multiple of 8).")] = 128,
    tumour_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of crops centred on a tumour voxel.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same set.")] = 0,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Case id to keep out (e.g. held-out cases); repeatable.")
    ] = None,
    case: Annotated[
        list[str] | None,
        typer.Option(help="Use exactly these case ids (not a random choice); repeatable."),
    ] = None,
    normalization: Annotated[
        str,
        typer.Option(
            help="The normalisation of the model to calibrate (its config's; `bundle-info` shows it): "
            "minmax or zscore-brain."
        ),
    ] = "minmax",
    as_json: JsonOption = False,
) -> None:
    """Build a calibration set: preprocessed model inputs plus a manifest that can rebuild and verify it."""
    from latup_edge.calibration.calibration_set import KINDS, build_calibration_set
    from latup_edge.data.preprocess import NORMALIZATIONS

    if kind not in KINDS:
        raise typer.BadParameter(f"must be one of {', '.join(KINDS)}", param_hint="--kind")
    if normalization not in NORMALIZATIONS:
        raise typer.BadParameter(f"must be one of {', '.join(NORMALIZATIONS)}", param_hint="--normalization")
    with progress_bar() as bar:
        task = bar.add_task("calibration set", total=None)
        calibration = build_calibration_set(
            data_dir,
            output,
            cases=cases,
            per_case=per_case,
            kind=kind,
            crop_size=crop_size,
            tumour_share=tumour_share,
            seed=seed,
            exclude=exclude or (),
            case_ids=case or (),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            normalization=normalization,
        )
    summary = calibration.summary()
    if as_json:
        print_json({"path": str(output), **summary})
        return
    rows = [
        (s["file"], s["case_id"], "x".join(map(str, s["shape"][2:])), "yes" if s["tumour_centred"] else "no")
        for s in calibration.manifest["samples"]
    ]
    print_table(f"Calibration set {output}", ("sample", "case", "size", "tumour-centred"), rows)
    console.print(
        f"{len(rows)} samples from {len(summary['cases'])} cases (seed {seed}, kind {kind}, "
        f"normalisation {normalization})"
    )
