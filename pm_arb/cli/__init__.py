"""The command line (LAYOUT.md layer 4): options, exit codes, progress. `main` is the console
script; `cli` the click group behind it."""

from pm_arb.cli.main import cli, main

__all__ = ["cli", "main"]
