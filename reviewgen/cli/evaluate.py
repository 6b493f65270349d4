"""`reviewgen evaluate`: the evaluation report on unseen products."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from reviewgen.cli.common import floats, log

# Each option declared once, as the type of its parameter below.
Model = Annotated[
    Path,
    typer.Option(
        "--model",
        help="Model directory to evaluate (GAN; needs ngrams.npy; the MLE baseline is expected at MODEL/mle).",
    ),
]
Data = Annotated[
    Path, typer.Option("--data", help="Prepared data directory; only the test split's unseen products are evaluated.")
]
Out = Annotated[Path, typer.Option("--out", help="Report directory: metrics.json, report.md, PNG plots.")]
Baseline = Annotated[
    Optional[Path], typer.Option("--baseline", help="MLE-only checkpoint to compare against (default: MODEL/mle).")
]
Compare = Annotated[
    Optional[List[str]],
    typer.Option(
        "--compare",
        help="NAME=DIR: another model directory to "
        "compare at matched diversity on the same unseen products, e.g. "
        "an ablation (a GAN trained with the realness reward only). "
        "Repeatable; shown beside MLE and GAN in the report's matched-"
        "diversity table (not in the scorer or fluency sections).",
    ),
]
Config = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        help="EvalConfig YAML (temperatures, n_products, "
        "samples_per_product, scorer_reviews, seeds, top_p, max_copy_span, "
        "check_copy, check_pii, recalibrate, embeddings, fast, device, fakes, "
        "...); unknown keys are errors. --set and the flags below override "
        "it.",
    ),
]
Sets = Annotated[
    List[str],
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override one EvalConfig field, "
        "repeatable, e.g. --set n_products=40 --set check_pii=false (after --config, "
        "before the other flags).",
    ),
]
Temperatures = Annotated[
    Optional[str],
    typer.Option("--temperatures", help="Sampling temperatures of the sweep (default: 0.6,0.8,1.0,1.2,1.3)."),
]
Products = Annotated[
    Optional[int], typer.Option("--products", help="About how many unseen test products to evaluate (default: 150).")
]
SamplesPerProduct = Annotated[
    Optional[int], typer.Option("--samples-per-product", help="Real reviews (conditions) per product (default: 2).")
]
ScorerReviews = Annotated[
    Optional[int],
    typer.Option(
        "--scorer-reviews",
        help="Test reviews the scorer section "
        "reads at least: the evaluated ones, then other unseen test "
        "reviews at random (its ECE needs more rows than the quality "
        "metrics; at most 48 in --fast) (default: 1000).",
    ),
]
Seeds = Annotated[
    Optional[str], typer.Option("--seeds", help="Generation seeds; metrics are reported as mean ± sd (default: 0,1,2).")
]
TopP = Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling mass for the sweep (default: 1.0).")]
CopySpan = Annotated[
    Optional[int],
    typer.Option(
        "--copy-span",
        help="Minimum copied training span (tokens) "
        "counted as a copy, the filter's max_copy_span; not below the model's "
        "n-gram size (default: 8).",
    ),
]
Recalibrate = Annotated[
    Optional[bool],
    typer.Option(
        "--recalibrate/--no-recalibrate",
        help="Refit the scorer "
        "calibration on real val reviews vs several checkpoints and "
        "temperatures first (stored in the model) (default: on).",
    ),
]
Embeddings = Annotated[
    Optional[bool],
    typer.Option(
        "--embeddings/--no-embeddings",
        help="FED, MAUVE and title "
        "relevance from the offline MiniLM package (reported null when off "
        "or not installed) (default: on).",
    ),
]
Fast = Annotated[bool, typer.Option("--fast", help="Smoke-test settings: 1 seed, 2 temperatures, few products.")]
OodModel = Annotated[
    Optional[Path],
    typer.Option(
        "--ood-model",
        help="Model directory of a different generator "
        "for the scorer's out-of-family check (default: a small one trained "
        "here on half the train products, cached in OUT/ood_model).",
    ),
]
Fakes = Annotated[
    Optional[Path],
    typer.Option(
        "--fakes",
        help="Labelled reviews of a generator the scorer never "
        "saw (parquet/CSV/JSONL: text, is_generated 0/1, optional language and "
        "hotel_name/product_title): the scorer is judged on it per language and "
        "per length bin, and its verdict is the worst source (default: the "
        "config's fakes, else ../shared/data/fakes_maideup_gpt4_hotels.parquet "
        "when present).",
    ),
]
UseFakes = Annotated[
    Optional[bool],
    typer.Option(
        "--fakes-check/--no-fakes-check", help="Read the fakes file (on by default when one is given or found)."
    ),
]
Device = Annotated[Optional[str], typer.Option("--device", help="torch device (default: cuda if available).")]
TrackingUri = Annotated[
    Optional[str],
    typer.Option(
        "--tracking-uri",
        help="Log the metrics to MLflow at this URI "
        "(e.g. file:./mlruns) and attach the report and plots as "
        "artifacts. Needs `pip install 'reviewgen[track]'`. Off by "
        "default.",
    ),
]


def evaluate(
    *,
    model: Model,
    data: Data,
    out: Out,
    baseline: Baseline = None,
    compare: Compare = None,
    config: Config = None,
    set_: Sets = [],
    temperatures: Temperatures = None,
    products: Products = None,
    samples_per_product: SamplesPerProduct = None,
    scorer_reviews: ScorerReviews = None,
    seeds: Seeds = None,
    top_p: TopP = None,
    copy_span: CopySpan = None,
    recalibrate: Recalibrate = None,
    embeddings: Embeddings = None,
    fast: Fast = False,
    ood_model: OodModel = None,
    fakes: Fakes = None,
    use_fakes: UseFakes = None,
    device: Device = None,
    tracking_uri: TrackingUri = None,
):
    """Evaluate the GAN against its MLE baseline (and any --compare models) at matched diversity on unseen
    products, the scorer, copying and PII; write a report.

    Settings are read in order: the --config YAML (or the defaults), each --set KEY=VALUE, the flags given."""
    options = dict(locals())  # just the options, by parameter name: nothing else is defined yet
    from reviewgen.evaluate.run import run_evaluation

    cfg = _eval_config(config, set_, options)
    compared = parse_compare(compare or [])
    if ood_model is None:
        ood_model = _train_ood_model(data, out, model, cfg)
    # open the tracking store first: a bad URI or a missing extra fails before the long evaluation
    tracker = _start_tracking(tracking_uri, out)
    result = run_evaluation(
        model, data, out, cfg, baseline_dir=baseline, ood_model_dir=ood_model, compare=compared, log=log
    )
    _log_to_tracking(tracker, result, cfg, out)
    log(f"report written to {out}")


def _eval_config(config: Path | None, sets: list[str], options: dict):
    """The EvalConfig: --config (or the defaults), then each --set, then the options given; with the fakes file
    resolved (None when the check is off)."""
    from reviewgen.evaluate.config import load_eval_config

    cfg = load_eval_config(config, _overrides(options), sets=sets)
    return dataclasses.replace(cfg, fakes=_fakes_path(cfg.fakes, options["use_fakes"] is not False))


def _overrides(options: dict) -> dict:
    """The EvalConfig fields the options give (None = not given)."""
    return {
        "temperatures": floats(options["temperatures"]) if options["temperatures"] else None,
        "n_products": options["products"],
        "samples_per_product": options["samples_per_product"],
        "scorer_reviews": options["scorer_reviews"],
        "seeds": floats(options["seeds"]) if options["seeds"] else None,
        "top_p": options["top_p"],
        "max_copy_span": options["copy_span"],
        "recalibrate": options["recalibrate"],
        "embeddings": options["embeddings"],
        "fast": True if options["fast"] else None,
        "device": options["device"],
        "fakes": str(options["fakes"]) if options["fakes"] else None,
    }


def _train_ood_model(data: Path, out: Path, model: Path, cfg) -> Path:
    """Without --ood-model: a small generator of a different family for the scorer's out-of-family check,
    trained on half the train products and cached in OUT/ood_model."""
    from reviewgen.train.twin import train_ood_model

    return train_ood_model(data, out / "ood_model", model, fast=cfg.fast, log=log)


def _start_tracking(tracking_uri: str | None, out: Path):
    """An MLflow run for this evaluation (None without --tracking-uri)."""
    from reviewgen.infra.tracking import Tracker

    return Tracker.start(tracking_uri, "reviewgen-evaluate", Path(out).name) if tracking_uri else None


def _log_to_tracking(tracker, result, cfg, out: Path) -> None:
    """The metrics, report and plots into the MLflow run, if there is one."""
    from reviewgen.evaluate.tracking import log_evaluation

    if tracker is not None:
        log_evaluation(tracker, result, cfg, out)


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


def _fakes_path(fakes: str | None, enabled: bool) -> str | None:
    """The fakes file the evaluation reads: the configured one, else the default file when present; None when
    the check is off."""
    from reviewgen.evaluate.world import resolve_fakes

    path = resolve_fakes(Path(fakes) if fakes else None, enabled)
    if path is None and enabled:
        log("no fakes file given or found: the scorer is judged on our own generators only")
    return None if path is None else str(path)
