"""Shared pieces of the `reviewgen` commands: console output, error exit, option parsers."""

from __future__ import annotations

import typer

from reviewgen.infra.console import active, echo


def log(msg: str) -> None:
    """Print one progress or result line to the console (and the run's log file)."""
    echo(msg)


def fail(e: Exception) -> None:
    """Print a user-facing error (naming the log file in quiet mode) and exit with code 2."""
    typer.secho(f"error: {e}{active().where()}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


USER_ERRORS: tuple = (ValueError, FileNotFoundError)


def floats(text: str) -> tuple[float, ...]:
    """Comma-separated numbers from an option value."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from e
