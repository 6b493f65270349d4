"""`reviewgen` command line: prepare, train, sample, score, calibrate, evaluate, generate, serve, export, demo.

One module per command group; each holds plain functions that this module registers on the Typer app.
Heavy imports (torch, ray) happen inside the commands so that `--help` stays fast.

The console is quiet by default (reviewgen.infra.console): our own lines on the console, Ray's chatter and
Python warnings in runs/logs/<command>-<time>.log (or $RG_LOG_DIR). `--verbose` anywhere on the command line,
or RG_VERBOSE=1, shows everything.
"""

from __future__ import annotations

import os

import typer

from reviewgen.cli import calibrate, data, demo, evaluate, generate, model, serve, train
from reviewgen.cli.common import is_cli_exit, report_error
from reviewgen.infra import console

LOG_DIR_ENV = "RG_LOG_DIR"


class _Group(typer.core.TyperGroup):
    """Accepts `--verbose`/`-v` after the command name too (`reviewgen demo --verbose`), and sends every
    command's errors through `common.report_error`: a named error is one line, anything else one line naming
    the log file that holds its traceback."""

    def parse_args(self, ctx, args):  # noqa: D102 - click API
        if "--" in args:
            head, tail = args[: args.index("--")], args[args.index("--") :]
        else:
            head, tail = args, []
        if any(a in ("--verbose", "-v") for a in head[1:]) and head and not head[0].startswith("-"):
            head = ["--verbose", *[a for a in head if a not in ("--verbose", "-v")]]
        return super().parse_args(ctx, head + tail)

    def invoke(self, ctx):  # noqa: D102 - click API
        try:
            return super().invoke(ctx)
        except Exception as e:  # noqa: BLE001 - every command's errors take the one path in common.report_error
            if is_cli_exit(e):
                raise
            report_error(e)


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="reviewgen: a conditional review GAN on Ray. Train (Ray Train), generate for catalogs "
    "(Ray Data), score reviews (Ray Serve).",
)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Show Ray's own log lines, worker output "
        "and Python warnings on the console (also RG_VERBOSE=1). By default they "
        "go to runs/logs/<command>-<time>.log (or $RG_LOG_DIR).",
    ),
) -> None:
    """reviewgen: a conditional review GAN on Ray."""
    name = ctx.invoked_subcommand or "reviewgen"
    ctx.obj = console.setup(verbose, os.environ.get(LOG_DIR_ENV) or os.path.join("runs", "logs"), name)


app.command()(data.prepare)
app.command()(train.train)
app.command()(model.sample)
app.command()(model.score)
app.command()(model.export)
app.command()(calibrate.calibrate)
app.command()(evaluate.evaluate)
app.command(**generate.COMMAND_SETTINGS)(generate.generate)
app.command()(serve.serve)
app.command()(demo.demo)


def main() -> None:  # pragma: no cover
    """Console entry point."""
    app()
