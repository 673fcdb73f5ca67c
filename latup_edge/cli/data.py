"""Commands that make data: BraTS-like phantom cases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latup_edge.cli.app import command, console, progress_bar


@command("phantom")
def phantom(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the cases into (one folder per case).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of cases.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same bytes.")] = 0,
    naming: Annotated[str, typer.Option(help="BraTS naming: 2020, 2021 or 2023.")] = "2021",
    start: Annotated[int, typer.Option(help="Index of the first case (case ids continue from it).")] = 0,
    preview: Annotated[bool, typer.Option(help="Also write a PNG per case: a slice through the tumour.")] = False,
) -> None:
    """Write BraTS-like cases: MNI152 anatomy, four contrasts, a glioma with NCR, ED and ET."""
    from latup_edge.data.phantom import write_phantoms

    if naming not in ("2020", "2021", "2023"):
        raise typer.BadParameter(f"naming must be 2020, 2021 or 2023, not {naming!r}", param_hint="--naming")
    with progress_bar() as bar:
        task = bar.add_task("phantoms", total=n)
        folders = write_phantoms(
            out_dir,
            n=n,
            seed=seed,
            naming=naming,
            start=start,
            preview=preview,
            progress=lambda done: bar.update(task, completed=done),
        )
    console.print(f"Wrote {len(folders)} case(s) to {out_dir}")
