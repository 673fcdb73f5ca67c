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
    randomise: Annotated[
        str,
        typer.Option(
            help="Families drawn widely: all (default), none (the narrow generator), or a comma list of "
            "contrast, acquisition, anatomy, lesion, core, mimics, faint_core, which all may lead (contrast,"
            "acquisition,anatomy,lesion: what the shipped weights' stages 1-4 trained on; mimics: normal structures "
            "that enhance on T1ce; faint_core: a core without enhancement as faint as the oedema; these two are not "
            "in the default until weights trained with them are judged)."
        ),
    ] = "all",
    generator: Annotated[
        str,
        typer.Option(
            help="phantom (the training generator), independent (a test-only generator with its own "
            "contrast and lesion models) or blind (a test-only generator written without reading the other two); "
            "never train or calibrate on the test-only ones."
        ),
    ] = "phantom",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes making cases side by side (the same files with any number); the training generator only.",
        ),
    ] = 1,
    non_enhancing: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of tumour foci without ET (default 0.1; 1: every case non-enhancing, e.g. to test that "
            "failure mode). Needs the lesion family randomised; the training generator only.",
        ),
    ] = None,
) -> None:
    """Write BraTS-like cases: MNI152 anatomy, four contrasts, a glioma with NCR, ED and ET."""
    from latup_edge.data.phantom import NON_ENHANCING_SHARE, Randomisation, write_phantoms

    if naming not in ("2020", "2021", "2023"):
        raise typer.BadParameter(f"naming must be 2020, 2021 or 2023, not {naming!r}", param_hint="--naming")
    try:
        families = Randomisation.parse(randomise)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--randomise") from None
    if generator not in ("phantom", "independent", "blind"):
        raise typer.BadParameter(
            f"generator must be phantom, independent or blind, not {generator!r}", param_hint="--generator"
        )
    if non_enhancing is not None and (generator != "phantom" or not families.lesion):
        raise typer.BadParameter(
            "applies to the training generator with the lesion family randomised (the narrow lesions always "
            "enhance; the test-only generators keep their own share)",
            param_hint="--non-enhancing",
        )
    if generator == "independent":
        from latup_edge.data.independent import write_independent_cases

        with progress_bar() as bar:
            task = bar.add_task("independent cases", total=n)
            folders = write_independent_cases(
                out_dir, n=n, seed=seed, start=start, progress=lambda done: bar.update(task, completed=done)
            )
        console.print(f"Wrote {len(folders)} independent case(s) (BraTS 2023 naming) to {out_dir}")
        return
    if generator == "blind":
        from latup_edge.data.blind import write_blind_cases

        with progress_bar() as bar:
            task = bar.add_task("blind cases", total=n)
            folders = []
            for index in range(start, start + n):  # one at a time for the bar: a case depends only on (seed, index)
                folders += write_blind_cases(out_dir, n=1, seed=seed, start=index)
                bar.update(task, advance=1)
        console.print(f"Wrote {len(folders)} blind case(s) (BraTS 2021 naming) to {out_dir}")
        return
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
            randomise=families,
            non_enhancing=NON_ENHANCING_SHARE if non_enhancing is None else non_enhancing,
            workers=workers,
        )
    console.print(f"Wrote {len(folders)} case(s) to {out_dir}")
