"""`reviewgen evaluate`: the evaluation report on unseen products."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from reviewgen.cli.common import floats, log


def evaluate(
    model: Path = typer.Option(..., "--model", help="Model directory to evaluate (GAN; needs ngrams.npy; the MLE "
                               "baseline is expected at MODEL/mle)."),
    data: Path = typer.Option(..., "--data", help="Prepared data directory; only the test split's unseen products "
                              "are evaluated."),
    out: Path = typer.Option(..., "--out", help="Report directory: metrics.json, report.md, PNG plots."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="MLE-only checkpoint to compare against "
                                            "[default: MODEL/mle]."),
    compare: Optional[List[str]] = typer.Option(None, "--compare", help="NAME=DIR: another model directory to "
                                                "compare at matched diversity on the same unseen products, e.g. "
                                                "an ablation (a GAN trained with the realness reward only). "
                                                "Repeatable; shown beside MLE and GAN in the report's matched-"
                                                "diversity table (not in the scorer or fluency sections)."),
    temperatures: str = typer.Option("0.6,0.8,1.0,1.2,1.3", "--temperatures",
                                     help="Sampling temperatures of the sweep."),
    products: int = typer.Option(150, "--products", help="About how many unseen test products to evaluate."),
    samples_per_product: int = typer.Option(2, "--samples-per-product", help="Real reviews (conditions) per product."),
    scorer_reviews: int = typer.Option(1000, "--scorer-reviews", help="Test reviews the scorer section reads at "
                                       "least: the evaluated ones, then other unseen test reviews at random "
                                       "(its ECE needs more rows than the quality metrics; at most 48 in --fast)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Generation seeds; metrics are reported as mean ± sd."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass for the sweep."),
    copy_span: int = typer.Option(8, "--copy-span", help="Minimum copied training span (tokens) counted as a copy."),
    recalibrate: bool = typer.Option(True, "--recalibrate/--no-recalibrate", help="Refit the scorer calibration on "
                                     "real val reviews vs several checkpoints and temperatures first "
                                     "(stored in the model)."),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="FED, MAUVE and title relevance from "
                                    "the offline MiniLM package (reported null when off or not installed)."),
    fast: bool = typer.Option(False, "--fast", help="Smoke-test settings: 1 seed, 2 temperatures, few products."),
    ood_model: Optional[Path] = typer.Option(None, "--ood-model", help="Model directory of a different generator "
                                             "for the scorer's out-of-family check [default: a small one trained "
                                             "here on half the train products, cached in OUT/ood_model]."),
    fakes: Optional[Path] = typer.Option(None, "--fakes", help="Labelled reviews of a generator the scorer never "
                                         "saw (parquet/CSV/JSONL: text, is_generated 0/1, optional language and "
                                         "hotel_name/product_title): the scorer is judged on it per language and "
                                         "per length bin, and its verdict is the worst source [default: "
                                         "../shared/data/fakes_maideup_gpt4_hotels.parquet when present]."),
    use_fakes: bool = typer.Option(True, "--fakes-check/--no-fakes-check", help="Read the fakes file (on by "
                                   "default when one is given or found)."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda if available)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Log the metrics to MLflow at this URI "
                                               "(e.g. file:./mlruns) and attach the report and plots as artifacts. "
                                               "Needs `pip install 'reviewgen[track]'`. Off by default."),
):
    """Evaluate the GAN against its MLE baseline (and any --compare models) at matched diversity on unseen
    products, the scorer, copying and PII; write a report."""
    from reviewgen.evaluate.run import EvalConfig, run_evaluation
    from reviewgen.evaluate.tracking import log_evaluation
    from reviewgen.infra.tracking import Tracker

    cfg = EvalConfig(temperatures=floats(temperatures), n_products=products,
                     samples_per_product=samples_per_product, scorer_reviews=scorer_reviews,
                     seeds=tuple(int(s) for s in floats(seeds)),
                     top_p=top_p, copy_span=copy_span, recalibrate=recalibrate, embeddings=embeddings,
                     fast=fast, device=device, fakes=_fakes_path(fakes, use_fakes))
    compared = parse_compare(compare or [])
    if ood_model is None:
        from reviewgen.train.twin import train_ood_model

        ood_model = train_ood_model(data, out / "ood_model", model, fast=fast, log=log)
    # open the tracking store first: a bad URI or a missing extra fails before the long evaluation
    tracker = Tracker.start(tracking_uri, "reviewgen-evaluate", Path(out).name) if tracking_uri else None
    result = run_evaluation(model, data, out, cfg, baseline_dir=baseline, ood_model_dir=ood_model,
                            compare=compared, log=log)
    if tracker is not None:
        log_evaluation(tracker, result, cfg, out)
    log(f"report written to {out}")


def parse_compare(items: list[str]) -> dict[str, Path]:
    """`--compare NAME=DIR` values as {name: directory}; a repeated name or a value without "=" is an error."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise typer.BadParameter(f"--compare expects NAME=DIR, got {item!r}")
        if name.strip() in out:
            raise typer.BadParameter(f"--compare: name {name.strip()!r} given twice")
        out[name.strip()] = Path(path.strip())
    return out


def _fakes_path(fakes: Path | None, enabled: bool) -> str | None:
    from reviewgen.evaluate.world import resolve_fakes

    path = resolve_fakes(fakes, enabled)
    if path is None and enabled:
        log("no fakes file given or found: the scorer is judged on our own generators only")
    return None if path is None else str(path)
