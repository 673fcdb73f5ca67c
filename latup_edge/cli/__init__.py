"""The ``latup-edge`` command line: thin commands over the library."""

# Importing the command modules registers their commands on the app.
from latup_edge.cli import bundle, calibrate, data, export, model, quantize, report, segment  # noqa: F401
from latup_edge.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
