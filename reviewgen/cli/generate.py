"""`reviewgen generate`: the nightly Ray Data job."""

from __future__ import annotations



import typer



def generate(ctx: typer.Context):
    """Nightly catalog-wide generation on Ray Data: validate, generate, score, filter, write partitioned
    parquet under OUT/run_date=YYYY-MM-DD/. Options: `reviewgen generate --help` (--model, --catalog, --out,
    --reviews-per-product, --run-date, --since, --force, --preset/--mapping, --keep-columns, ...)."""
    from reviewgen.generate.pipeline import main as generate_main

    raise typer.Exit(generate_main(list(ctx.args)))
