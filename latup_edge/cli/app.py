"""The Typer app and what every command shares: error handling, consoles, table and JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from latup_edge.errors import first_line, user_errors

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


def command(name: str, **kwargs: Any) -> Callable[[F], F]:
    """Register a command whose failures print one line and exit 1.

    A user-facing failure (``user_errors``: a LatupError, a file the system refuses, a checkpoint
    that cannot be read) prints its own sentence. Anything else is a bug: it prints its type and
    first line, and says where the traceback is.
    """

    def register(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return func(*args, **kw)
            except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own exits and usage errors
                raise
            except user_errors() as error:
                _fail(str(error), "run with --verbose for the traceback")
            except Exception as error:
                _fail(
                    f"unexpected {type(error).__name__}: {first_line(error)}",
                    "not a user error: run with --verbose for the traceback, and report it",
                )

        app.command(name, **kwargs)(wrapper)
        return func

    return register


def _fail(message: str, hint: str) -> NoReturn:
    if _verbose:
        err_console.print_exception()
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False)  # "[x]" in a message is text
    if not _verbose:
        err_console.print(f"[dim]({hint})[/]")
    raise typer.Exit(1) from None


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
