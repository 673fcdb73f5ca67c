"""``python -m latup_edge.cli``: the command line from a source tree, with no installed entry point."""

from latup_edge.cli import main

main()
