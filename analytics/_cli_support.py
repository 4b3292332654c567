"""What every `quietwire` subcommand shares: how a bad input ends the command."""

from __future__ import annotations

import typer

__all__ = ["fail"]


def fail(message: str) -> typer.Exit:
    """One line on stderr and exit code 2 (bad input), never a traceback."""
    typer.echo(f"quietwire: error: {message}", err=True)
    return typer.Exit(code=2)
