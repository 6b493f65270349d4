"""`reviewgen` command line: prepare, train, sample, score, evaluate, generate, serve, export, demo.

One module per command group; each holds plain functions that this module registers on the Typer app.
Heavy imports (torch, ray) happen inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import typer

from reviewgen.cli import data, demo, evaluate, generate, model, serve, train

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="reviewgen: a conditional review GAN on Ray. Train (Ray Train), generate for catalogs "
                       "(Ray Data), score reviews (Ray Serve).")

app.command()(data.prepare)
app.command()(train.train)
app.command()(model.sample)
app.command()(model.score)
app.command()(model.export)
app.command()(evaluate.evaluate)
app.command(**generate.COMMAND_SETTINGS)(generate.generate)
app.command()(serve.serve)
app.command()(demo.demo)


def main() -> None:  # pragma: no cover
    """Console entry point."""
    app()
