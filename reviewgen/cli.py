"""`reviewgen` command line: prepare, train, sample, score, evaluate, generate, serve, export, demo.

Heavy imports (torch, ray) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="reviewgen: a conditional review GAN on Ray. Train (Ray Train), generate for catalogs "
                       "(Ray Data), score reviews (Ray Serve).")


def _log(msg: str) -> None:
    typer.echo(msg, err=False)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


_USER_ERRORS: tuple = (ValueError, FileNotFoundError)


@app.command()
def prepare(
    out: Path = typer.Option(..., "--out", help="Output directory for train/val/test parquet splits and stats.json."),
    inputs: Optional[List[Path]] = typer.Option(None, "--input", "-i", help="Review corpus parquet file or directory "
                                                "(repeatable). Default: the sample carried in data/sample."),
    seed: int = typer.Option(0, help="Seed of the product-level split (a product's reviews all land on one side)."),
    val_frac: float = typer.Option(0.1, help="Fraction of products in the validation split."),
    test_frac: float = typer.Option(0.1, help="Fraction of products in the test split (never trained on)."),
    max_reviews_per_product: Optional[int] = typer.Option(None, help="Cap per product (counted as 'product_cap' drops)."),
    max_text_chars: int = typer.Option(4000, help="Longer review texts are dropped (counted as 'text_too_long')."),
):
    """Load review corpora, clean them (HTML, boilerplate, PII), split by product, write parquet splits."""
    from reviewgen.data.corpus import DataError, prepare as _prepare, review_sources, sample_data_dir

    try:
        srcs = list(inputs) if inputs else review_sources(sample_data_dir())
        stats = _prepare(srcs, out, seed=seed, val_frac=val_frac, test_frac=test_frac,
                         max_reviews_per_product=max_reviews_per_product, max_text_chars=max_text_chars, log=_log)
    except (DataError, *_USER_ERRORS) as e:
        _fail(e)
    _log(f"wrote {out} (data_hash {stats.get('data_hash', '?')[:12]})")


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Directory written by `reviewgen prepare`."),
    out: Path = typer.Option(..., "--out", help="Output model directory (final model; mle/ holds the MLE baseline)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (see configs/). Default: built-in defaults."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop after M minutes with a resumable "
                                                "state (in-process mode); rerun the same command to continue."),
    num_workers: int = typer.Option(0, "--num-workers", help="Ray Train data-parallel workers. 0 = train in this "
                                    "process without Ray. The global batch is train.batch_size x num_workers."),
    use_gpu: bool = typer.Option(False, "--use-gpu", help="One GPU per Ray Train worker (bf16 autocast)."),
    storage_path: Optional[str] = typer.Option(None, "--storage-path", help="Ray Train storage for checkpoints: a "
                                               "local/NFS dir, s3:// or gs://. Default: OUT/ray."),
    name: Optional[str] = typer.Option(None, "--name", help="Ray Train run name; rerunning the same name and "
                                       "storage path resumes from its latest checkpoint."),
    max_failures: int = typer.Option(1, "--max-failures", help="Worker-group restarts allowed after a failure."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Ray Train checkpoints kept (last K)."),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Start from this training checkpoint dir "
                                               "(e.g. OUT/mle). Ray Train mode."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="CPUs reserved per Ray Train worker."),
    data_loader: str = typer.Option("ray_data", "--data-loader", help="ray_data: streamed Ray Dataset shards; "
                                    "sharded_memory: in-memory slices of one global batch (exact 1-vs-N worker "
                                    "equivalence; small data only)."),
    stop_after_phase: Optional[str] = typer.Option(None, "--stop-after-phase", help="Ray Train mode: stop "
                                                   "(resumably) after this phase ends: mle, disc or adv."),
    mle_steps: Optional[int] = typer.Option(None, help="Override train.mle_steps."),
    disc_steps: Optional[int] = typer.Option(None, help="Override train.disc_warmup_steps."),
    adv_steps: Optional[int] = typer.Option(None, help="Override train.adv_steps."),
    batch_size: Optional[int] = typer.Option(None, help="Override train.batch_size (per worker)."),
    seed: Optional[int] = typer.Option(None, help="Override train.seed."),
    device: Optional[str] = typer.Option(None, help="In-process mode: cpu or cuda (default: cuda if available)."),
):
    """Train the GAN: MLE pretraining, discriminator warm-up, adversarial training (policy gradient)."""
    from reviewgen.core.checkpoint import CheckpointError
    from reviewgen.core.config import ConfigError, RunConfig
    from reviewgen.data.corpus import DataError
    from reviewgen.train.distributed import TrainJobError

    try:
        cfg = RunConfig.from_yaml(config) if config else RunConfig()
        cfg.override({"train.mle_steps": mle_steps, "train.disc_warmup_steps": disc_steps,
                      "train.adv_steps": adv_steps, "train.batch_size": batch_size, "train.seed": seed})
        cfg.validate()
        if num_workers > 0:
            from reviewgen.train.distributed import run_distributed_training

            final = run_distributed_training(data, out, cfg, num_workers=num_workers, use_gpu=use_gpu,
                                             storage_path=storage_path, name=name, max_failures=max_failures,
                                             keep_checkpoints=keep_checkpoints, resume_from=resume_from,
                                             cpus_per_worker=cpus_per_worker, data_loader=data_loader,
                                             stop_after_phase=stop_after_phase, log=_log)
        else:
            if use_gpu:
                device = device or "cuda"
            from reviewgen.train.trainer import train_local

            if resume_from:
                _fail(ValueError("--resume-from needs --num-workers >= 1; in-process mode resumes from OUT/state"))
            final = train_local(data, out, cfg, max_minutes=max_minutes, device=device, log=_log)
    except (ConfigError, DataError, CheckpointError, TrainJobError, *_USER_ERRORS) as e:
        _fail(e)
    _log(f"done: {final}")


@app.command()
def sample(
    model: Path = typer.Option(..., "--model", help="Model directory (from train or export)."),
    title: str = typer.Option(..., "--title", help="Product title."),
    category: str = typer.Option("", "--category", help="Product category text."),
    rating: Optional[int] = typer.Option(None, "--rating", min=1, max=5, help="Target star rating 1-5."),
    sentiment: Optional[str] = typer.Option(None, help="positive/negative/neutral, when there is no star rating (zh)."),
    language: str = typer.Option("en", help="en or zh."),
    n: int = typer.Option(3, "-n", help="Number of reviews."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature; 0 = greedy."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k cut (0 = off)."),
    seed: int = typer.Option(0, "--seed", help="(title, index, seed) always gives the same review."),
    score: bool = typer.Option(True, help="Also print the calibrated p_human of each review."),
):
    """Write reviews for one product."""
    from reviewgen.core.checkpoint import CheckpointError, load_checkpoint
    from reviewgen.score.scorer import Scorer, generate_texts
    from reviewgen.core.tokenizer import Condition

    try:
        ck = load_checkpoint(model)
    except CheckpointError as e:
        _fail(e)
    cond = Condition(title=title, category=category, rating=rating, sentiment=sentiment, language=language)
    texts = generate_texts(ck.generator, ck.tokenizer, [cond] * n, [f"{title}:{i}" for i in range(n)], seed=seed,
                           temperature=temperature, top_p=top_p, top_k=top_k)
    scores = Scorer(model).score([{"text": t, "product_title": title, "category": category, "rating": rating,
                                   "language": language} for t in texts])["p_human"] if score else [None] * n
    for i, (t, p) in enumerate(zip(texts, scores)):
        _log(f"[{i}]" + (f" p_human={p:.3f}" if p is not None else "") + f" {t}")


@app.command()
def score(
    model: Path = typer.Option(..., "--model", help="Model directory."),
    input: Path = typer.Option(..., "--input", help="Parquet, CSV or JSONL with a text column and optional "
                               "product_title/title, category, rating, language."),
    output: Path = typer.Option(..., "--output", help="Output file (format from its extension): the input plus p_human "
                                "and rating_pred."),
    text_column: str = typer.Option("text", help="Name of the review text column."),
):
    """Score reviews in a file: how likely each is human-written (calibrated)."""
    from reviewgen.core.checkpoint import CheckpointError
    from reviewgen.data.io import read_table, write_table
    from reviewgen.score.scorer import Scorer

    try:
        df = read_table(input)
        out = Scorer(model).score_frame(df, text_column=text_column)
        write_table(out, output)
    except (CheckpointError, *_USER_ERRORS) as e:
        _fail(e)
    _log(f"scored {len(out)} reviews -> {output} (mean p_human {out['p_human'].mean():.3f})")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from e


@app.command()
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
    from reviewgen.data.corpus import DataError
    from reviewgen.evaluate.report import run_evaluation

    try:
        run_evaluation(model, data, out, baseline_dir=baseline, temperatures=_floats(temperatures),
                       n_products=products, samples_per_product=samples_per_product,
                       seeds=tuple(int(s) for s in _floats(seeds)), top_p=top_p, copy_span=copy_span,
                       recalibrate=recalibrate, embeddings=embeddings, fast=fast, device=device, log=_log)
    except (CheckpointError, DataError, *_USER_ERRORS) as e:
        _fail(e)
    _log(f"report written to {out}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def generate(ctx: typer.Context):
    """Nightly catalog-wide generation on Ray Data: validate, generate, score, filter, write partitioned
    parquet under OUT/run_date=YYYY-MM-DD/. Options: `reviewgen generate --help` (--model, --catalog, --out,
    --reviews-per-product, --run-date, --since, --force, --preset/--mapping, --keep-columns, ...)."""
    from reviewgen.generate.pipeline import main as generate_main

    raise typer.Exit(generate_main(list(ctx.args)))


@app.command()
def serve(
    model: Path = typer.Option(..., "--model", help="Exported model directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address. Stays on loopback unless you say otherwise; "
                             "set REVIEWGEN_API_TOKEN before exposing it."),
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    config: Optional[Path] = typer.Option(None, "--config", help="Serve YAML (ServeConfig fields: batching, request "
                                          "limits, autoscaling, CPU/GPU per replica)."),
    detach: bool = typer.Option(False, "--detach", help="Deploy and return instead of serving until Ctrl-C."),
):
    """Serve the calibrated scorer on Ray Serve: POST /v1/score, /healthz, /readyz, /v1/model, /docs."""
    from reviewgen.serve.app import run_server
    from reviewgen.serve.api import ServeConfig

    try:
        cfg = ServeConfig.from_yaml(config) if config else None
        run_server(str(model), host=host, port=port, config=cfg, blocking=not detach, log=_log)
    except _USER_ERRORS as e:
        _fail(e)


@app.command()
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Trained model or checkpoint directory."),
    out: Path = typer.Option(..., "--out", help="Model directory to write (serving files + content-hash version)."),
):
    """Export a checkpoint to a model directory for the generate and serve jobs."""
    from reviewgen.core.checkpoint import CheckpointError, export_model

    try:
        d = export_model(checkpoint, out)
    except (CheckpointError, *_USER_ERRORS) as e:
        _fail(e)
    import json

    _log(f"exported {d} (version {json.loads((d / 'meta.json').read_text())['version']})")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Demo output directory."),
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", help="Training config for the demo model."),
    num_workers: int = typer.Option(1, "--num-workers", help="Ray Train workers for the demo training job."),
    quick: bool = typer.Option(False, "--quick", help="A much shorter schedule (smoke test)."),
):
    """End to end on an embedded local Ray: prepare the carried sample, train (Ray Train), generate for a sample
    catalog (Ray Data), score through the Serve endpoint, and write a report."""
    from reviewgen.demo import run_demo

    run_demo(out, config, num_workers=num_workers, quick=quick, log=_log)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
