"""Shared pieces of the `reviewgen` commands: console output, the one error path, option parsers."""

from __future__ import annotations

from typing import NoReturn

import typer

from reviewgen.core.errors import ReviewgenError
from reviewgen.infra.console import active, echo, log_exception


def log(msg: str) -> None:
    """Print one progress or result line to the console (and the run's log file)."""
    echo(msg)


def fail(e: Exception) -> NoReturn:
    """Print a user-facing error (naming the log file in quiet mode) and exit with code 2."""
    typer.secho(f"error: {e}{active().where()}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def is_user_error(e: BaseException) -> bool:
    """Whether `e` is one of the project's named errors (bad config, bad input, missing file): something the
    user can fix from its message alone, so it prints as one line without a traceback."""
    return isinstance(e, ReviewgenError)


def is_cli_exit(e: BaseException) -> bool:
    """Typer's and Click's own exits and usage errors, which Click reports itself."""
    return isinstance(e, (typer.Exit, typer.Abort)) or type(e).__module__.split(".")[0] in ("typer", "click")


def report_error(e: Exception) -> NoReturn:
    """The one way a command's error reaches the console.

    A named error prints its message as one line (exit code 2). Anything else is a bug: its traceback goes
    to the run's log file and the console gets one line naming that file (exit code 1); with --verbose
    there is no log file, so the exception propagates with its traceback."""
    if is_user_error(e):
        fail(e)
    con = active()
    if con.verbose:
        raise e
    log_exception(e)
    typer.secho(f"error: {type(e).__name__}: {e}{con.where()}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1) from None


def floats(text: str) -> tuple[float, ...]:
    """Comma-separated numbers from an option value."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from e
