"""The Typer app and what every command shares: error handling, consoles, table and JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="latup-edge",
    help="LATUP-Net brain-tumour segmentation on plain CPUs: train, build an INT8 bundle, segment.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Human output goes to stdout; progress and logs to stderr so that --json output stays clean.
console = Console()
err_console = Console(stderr=True)
_verbose = False

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")] = False,
) -> None:
    global _verbose
    _verbose = verbose


class UserError(Exception):
    """A failure the user can fix: printed as one sentence, without a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from latup_edge.data.cases import CaseError

    return (UserError, CaseError, ValueError, OSError)


def command(name: str, **kwargs: Any) -> Callable[[F], F]:
    """Register a command whose user-facing failures print one sentence and exit 1."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return func(*args, **kw)
            except _user_errors() as error:
                if _verbose:
                    err_console.print_exception()
                err_console.print(f"[bold red]Error:[/] {error}", highlight=False)
                if not _verbose:
                    err_console.print("[dim](run with --verbose for the traceback)[/]")
                raise typer.Exit(1) from None

        app.command(name, **kwargs)(wrapper)
        return func

    return register


def print_json(result: Any) -> None:
    """Print only the JSON result on stdout."""
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> None:
    table = Table(title=title, caption=caption or None)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


JsonOption = Annotated[bool, typer.Option("--json", help="Print only the JSON result on stdout.")]


def progress_bar(*extra_columns: Any):
    """A rich progress bar on stderr with elapsed time and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
    )
