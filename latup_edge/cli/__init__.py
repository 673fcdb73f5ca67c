"""The ``latup-edge`` command line: thin commands over the library."""

from latup_edge.cli import data, model  # noqa: F401  (registers the commands)
from latup_edge.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
