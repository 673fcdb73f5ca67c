"""Options that several commands share, with one help text."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

TilingOption = Annotated[
    Literal["whole", "sliding"],
    typer.Option(
        help="Sliding windows shaped to the brain box (the default: under 1.5 GB on a 240x240x155 case, with the "
        "shipped bundle's two networks too; about as "
        "fast, the better mean Dice on all six independent test sets, though 3 of their 120 cases scored WT under "
        "0.7 against 1 on whole boxes), or one pass over the whole box (3.3-3.6 GB; what the shipped bundle's INT8 "
        "gate measured). docs/RUNTIME.md."
    ),
]
MirrorOption = Annotated[
    str,
    typer.Option(
        help="Test-time mirroring: also run each box mirrored along these axes and average the logits (x: "
        "left-right, 2 passes; xyz: 8 passes; none). Each pass costs a network run; benchmarks/mirroring.py "
        "measures what it buys (docs/RUNTIME.md).",
    ),
]

ScoredLabelsOption = Annotated[
    bool,
    typer.Option(
        "--postprocess/--no-postprocess",
        help="Score the labels segment writes (post-processed, the default); --no-postprocess scores the "
        "network's argmax.",
    ),
]
