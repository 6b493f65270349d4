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
    from reviewgen.infra.tracking import Tracker

    cfg = EvalConfig(temperatures=floats(temperatures), n_products=products,
                     samples_per_product=samples_per_product, scorer_reviews=scorer_reviews,
                     seeds=tuple(int(s) for s in floats(seeds)),
                     top_p=top_p, copy_span=copy_span, recalibrate=recalibrate, embeddings=embeddings,
                     fast=fast, device=device, fakes=_fakes_path(fakes, use_fakes))
    compared = parse_compare(compare or [])
    if ood_model is None:
        ood_model = train_ood_model(data, out / "ood_model", model, fast=fast)
    # open the tracking store first: a bad URI or a missing extra fails before the long evaluation
    tracker = Tracker.start(tracking_uri, "reviewgen-evaluate", Path(out).name) if tracking_uri else None
    result = run_evaluation(model, data, out, cfg, baseline_dir=baseline, ood_model_dir=ood_model,
                            compare=compared, log=log)
    if tracker is not None:
        log_evaluation(tracker, model, data, cfg, result, out)
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


def log_evaluation(tracker, model: Path, data: Path, cfg, result: dict, out: Path) -> None:
    """Log an evaluation to its tracking run: settings as params, every numeric metric, the model version
    as a tag, and the report directory (report.md, metrics.json, plots) as artifacts."""
    tracker.log_params({"model": str(model), "data": str(data), "eval": vars(cfg)})
    tracker.log_metrics({k: v for k, v in result.items() if k != "meta"}, step=0)
    tracker.log_artifacts(out, artifact_path="report")
    tracker.set_tags({"model_version": result.get("meta", {}).get("model_version")})
    tracker.finish()


# A generator the scorer never saw: another size, seed and tokenizer, trained on another set of products.
OOD_CONFIG = {"tokenizer": {"vocab_size": 1000, "prefix_len": 24},
              "generator": {"n_layer": 2, "n_head": 2, "d_model": 96, "dropout": 0.0},
              "discriminator": {"n_layer": 1, "n_head": 2, "d_model": 32, "dropout": 0.0, "n_categories": 8},
              "train": {"batch_size": 32, "mle_steps": 400, "disc_warmup_steps": 0, "adv_steps": 0, "seed": 17,
                        "warmup_steps": 20, "eval_every": 100, "checkpoint_every": 400, "val_batches": 2,
                        "log_every": 100}}


def train_ood_model(data: Path, out: Path, model: Path, fast: bool = False, mle_steps: int | None = None) -> Path:
    """Train (or reuse, when OUT/meta.json exists) the out-of-family generator: `OOD_CONFIG` with the
    evaluated model's review length, MLE only (`mle_steps`, default the config's; 30 when `fast`), on a
    random half of the train split's products."""
    import json

    from reviewgen.core.config import RunConfig
    from reviewgen.data.corpus import load_split
    from reviewgen.train.trainer import train_local

    if (out / "meta.json").is_file():
        log(f"out-of-family generator: reusing {out}")
        return out
    doc = json.loads((model / "config.json").read_text())["run"]
    cfg = RunConfig.from_dict({**OOD_CONFIG, "tokenizer": {**OOD_CONFIG["tokenizer"],
                                                           "max_review_len": doc["tokenizer"]["max_review_len"]}},
                              source="OOD_CONFIG")
    steps = mle_steps or (30 if fast else cfg.train.mle_steps)
    cfg = cfg.override({"train.mle_steps": steps, "train.eval_every": steps, "train.checkpoint_every": steps})
    train = load_split(data, "train")
    products = train["product_id"].drop_duplicates().sample(frac=0.5, random_state=17)
    ood_data = out / "data"
    ood_data.mkdir(parents=True, exist_ok=True)
    train[train["product_id"].isin(products)].to_parquet(ood_data / "train.parquet", index=False)
    load_split(data, "val").to_parquet(ood_data / "val.parquet", index=False)
    g = cfg.generator
    log(f"out-of-family generator: training {g.n_layer} layers x {g.d_model} for {steps} MLE steps on "
        f"{products.size} train products -> {out}")
    train_local(ood_data, out, cfg, log=lambda *_: None)
    return out
