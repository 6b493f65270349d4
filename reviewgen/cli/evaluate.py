"""`reviewgen evaluate`: the evaluation report on unseen products."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from reviewgen.cli.common import log, fail, USER_ERRORS, floats


def evaluate(
    model: Path = typer.Option(..., "--model", help="Model directory to evaluate (GAN; needs ngrams.npy; the MLE "
                               "baseline is expected at MODEL/mle)."),
    data: Path = typer.Option(..., "--data", help="Prepared data directory; only the test split's unseen products "
                              "are evaluated."),
    out: Path = typer.Option(..., "--out", help="Report directory: metrics.json, report.md, PNG plots."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="MLE-only checkpoint to compare against "
                                            "[default: MODEL/mle]."),
    temperatures: str = typer.Option("0.6,0.8,1.0,1.2,1.3", "--temperatures", help="Sampling temperatures of the sweep."),
    products: int = typer.Option(150, "--products", help="About how many unseen test products to evaluate."),
    samples_per_product: int = typer.Option(2, "--samples-per-product", help="Real reviews (conditions) per product."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Generation seeds; metrics are reported as mean ± sd."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass for the sweep."),
    copy_span: int = typer.Option(8, "--copy-span", help="Minimum copied training span (tokens) counted as a copy."),
    recalibrate: bool = typer.Option(True, "--recalibrate/--no-recalibrate", help="Refit the scorer calibration on "
                                     "real val reviews vs several checkpoints and temperatures first (stored in the model)."),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="FED, MAUVE and title relevance from "
                                    "the offline MiniLM package (reported null when off or not installed)."),
    fast: bool = typer.Option(False, "--fast", help="Smoke-test settings: 1 seed, 2 temperatures, few products."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda if available)."),
):
    """Evaluate the GAN against its MLE baseline on unseen products, the scorer, copying and PII; write a report."""
    from reviewgen.core.checkpoint import CheckpointError
    from reviewgen.data.sources import DataError
    from reviewgen.evaluate.run import EvalConfig, run_evaluation

    try:
        cfg = EvalConfig(temperatures=floats(temperatures), n_products=products,
                         samples_per_product=samples_per_product, seeds=tuple(int(s) for s in floats(seeds)),
                         top_p=top_p, copy_span=copy_span, recalibrate=recalibrate, embeddings=embeddings,
                         fast=fast, device=device)
        run_evaluation(model, data, out, cfg, baseline_dir=baseline, log=log)
    except (CheckpointError, DataError, *USER_ERRORS) as e:
        fail(e)
    log(f"report written to {out}")
