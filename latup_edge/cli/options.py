"""Options that several commands share, with one help text."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

TilingOption = Annotated[
    Literal["whole", "sliding"],
    typer.Option(
        help="One pass over the brain box (the default, what the bundle's INT8 gate measured; 3.3-3.6 GB on a "
        "240x240x155 case), or sliding windows shaped to the box (the lower-memory mode: under 1.5 GB, about "
        "as fast, better on average but 2 of 80 independent test cases scored WT ~0.6 where the whole box "
        "scored 0.71-0.92; docs/RUNTIME.md)."
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
