"""The end-to-end demo on an embedded local Ray: prepare -> Ray Train -> Ray Data generation -> Ray Serve
scoring -> report. Everything runs on the data the repo carries."""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from reviewgen.core.watermark import KEY_FILE_ENV, Watermark
from reviewgen.evaluate.fluency import real_word_rate, vocabulary
from reviewgen.generate.results import RunSummary
from reviewgen.infra.storage import write_local_atomic

# The demo model's sampling temperature (top-p 0.95, the nightly job's default): a little below 1.0, where the
# small demo model writes more real English words.
DEMO_TEMPERATURE = 0.9


def _demo_catalog(data_dir: Path, out: Path, n_en: int = 12, n_zh: int = 4) -> Path:
    """A catalog of test-split products (never trained on), English and Chinese, in the catalog contract."""
    from reviewgen.data.corpus import load_split

    test = load_split(data_dir, "test")
    prods = test.drop_duplicates("product_id")
    en = prods[prods["language"] == "en"].sort_values("product_id").head(n_en)
    zh = prods[prods["language"] == "zh"].drop_duplicates("category").sort_values("product_id").head(n_zh)
    cat = pd.concat([en, zh])[["product_id", "product_title", "category", "brand", "language"]]
    cat = cat.rename(columns={"product_title": "title"})
    path = out / "catalog_unseen.parquet"
    cat.to_parquet(path, index=False)
    return path


def _score_over_http(url: str, reviews: list[dict], token: str | None = None) -> list[dict]:
    import urllib.request

    req = urllib.request.Request(
        url,
        data=json.dumps({"reviews": reviews}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["results"]


@dataclass(frozen=True)
class _DemoResults:
    """What the demo report shows: data and model, generated reviews, Serve's scores and stage timings."""

    stats: dict
    model_dir: Path
    summary: RunSummary
    reviews: pd.DataFrame
    titles: pd.Series
    payload: list[dict]
    scored: list[dict]
    n_real: int
    times: dict[str, float]
    fluency: dict


def run_demo(
    out: str | Path,
    config: str | Path,
    *,
    num_workers: int = 1,
    quick: bool = False,
    port: int = 8123,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the whole pipeline and write OUT/report.md; returns its path."""

    from reviewgen.data.corpus import prepare, review_sources, sample_data_dir
    from reviewgen.infra.runtime import ensure_ray

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.time()

    log("== 1/5 prepare: clean and split the carried sample by product")
    data_dir = out / "data"
    stats = prepare(review_sources(sample_data_dir()), data_dir, seed=0, log=log)
    times["prepare_s"] = time.time() - t0

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    watermark = _demo_watermark(out, log)  # before Ray starts, so that its processes see the key file
    ensure_ray(log=log)

    log(f"== 2/5 train on Ray Train ({num_workers} worker(s)): MLE -> discriminator warm-up -> adversarial")
    t = time.time()
    model_dir = _train(out, data_dir, config, num_workers=num_workers, quick=quick, log=log)
    times["train_s"] = time.time() - t

    log("== 3/5 generate on Ray Data for products the model never saw")
    t = time.time()
    catalog, summary, run_date = _generate(out, data_dir, model_dir, watermark, log)
    times["generate_s"] = time.time() - t
    reviews = pd.read_parquet(out / "generated" / f"run_date={run_date}" / "reviews")
    fluency = _english_fluency(reviews, data_dir)

    log("== 4/5 score through the Ray Serve endpoint")
    t = time.time()
    titles, payload, scored, n_real = _score_through_serve(data_dir, model_dir, catalog, reviews, port)
    times["serve_s"] = time.time() - t
    times["total_s"] = time.time() - t0

    log("== 5/5 report")
    report = _write_report(
        out, _DemoResults(stats, model_dir, summary, reviews, titles, payload, scored, n_real, times, fluency)
    )
    _log_samples(reviews, titles, fluency, log)
    log(f"demo finished in {times['total_s'] / 60:.1f} min; report: {report}")
    return report


def _train(
    out: Path, data_dir: Path, config: str | Path, *, num_workers: int, quick: bool, log: Callable[[str], None]
) -> Path:
    """Train the demo model on Ray Train from `config` (`quick`: a few steps of each phase); returns its
    model directory."""
    from reviewgen.core.config import RunConfig

    cfg = RunConfig.from_yaml(config)
    if quick:
        cfg = cfg.override(
            {
                "train.mle_steps": 40,
                "train.disc_warmup_steps": 10,
                "train.adv_steps": 10,
                "train.eval_every": 20,
                "train.checkpoint_every": 20,
                "train.log_every": 10,
            }
        )
    from reviewgen.train.distributed import run_distributed_training
    from reviewgen.train.job import TrainJobConfig

    # one worker gets the machine's cores (and as many torch threads); more workers share them
    job = TrainJobConfig(
        data_dir=data_dir,
        out=out / "model",
        num_workers=num_workers,
        cpus_per_worker=max(1, (os.cpu_count() or 1) // num_workers),
        storage_path=str(out / "ray_results"),
        name="demo",
    )
    return run_distributed_training(job, cfg, log=log)


def _demo_watermark(out: Path, log: Callable[[str], None]) -> Watermark:
    """The watermark the demo signs with: the configured key (REVIEWGEN_WATERMARK_KEY or a key file), else a
    fresh demo key in OUT/demo-watermark.key (mode 0600, outside the model directory), named to the process
    environment so that the Ray processes started next (the Serve replicas) detect it. Logged by id only."""
    wm = Watermark.from_env()
    if wm is None:
        path = out / "demo-watermark.key"
        if not path.is_file():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        os.environ[KEY_FILE_ENV] = str(path)
        wm = Watermark.from_env()
        log(f"watermark: a demo key, id {wm.key_id} (set REVIEWGEN_WATERMARK_KEY or a key file to use your own)")
    else:
        log(f"watermark: the configured key, id {wm.key_id}")
    return wm


def _generate(
    out: Path, data_dir: Path, model_dir: Path, watermark: Watermark, log: Callable[[str], None]
) -> tuple[Path, RunSummary, str]:
    """Generate three reviews for each product of the unseen demo catalog on Ray Data, signed with
    `watermark`. Returns the catalog, the run summary and the run date (the output partition)."""
    from reviewgen.generate.config import load_generate_config
    from reviewgen.generate.pipeline import run_generation

    catalog = _demo_catalog(data_dir, out)
    run_date = time.strftime("%Y-%m-%d", time.gmtime())
    gen_cfg = load_generate_config(
        None,
        {
            "sampling.reviews_per_product": 3,
            "catalog.language_column": "language",
            "sampling.temperature": DEMO_TEMPERATURE,
        },
    )
    summary = run_generation(
        str(model_dir),
        [str(catalog)],
        str(out / "generated"),
        gen_cfg,
        run_date=run_date,
        force=True,
        log=log,
        watermark=watermark,
    )
    return catalog, summary, run_date


def _english_fluency(reviews: pd.DataFrame, data_dir: Path) -> dict:
    """The real-word rate of the generated English reviews against the training text's vocabulary."""
    from reviewgen.data.corpus import load_split

    return real_word_rate(
        reviews.loc[reviews["language"] == "en", "text"].astype(str).tolist(),
        vocabulary(load_split(data_dir, "train")["text"].astype(str)),
    )


def _score_through_serve(
    data_dir: Path, model_dir: Path, catalog: Path, reviews: pd.DataFrame, port: int
) -> tuple[pd.Series, list[dict], list[dict], int]:
    """Start Ray Serve with the scorer and score a few real test reviews, then a few generated ones, over
    HTTP. Returns the catalog titles by product, the payload, its scores and how many rows are real."""
    from ray import serve

    from reviewgen.data.corpus import load_split
    from reviewgen.infra.console import quiet_ray_loggers
    from reviewgen.serve.app import build_app

    quiet_ray_loggers()  # importing ray.serve attaches Serve's own console handler
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(str(model_dir)), name="scorer", route_prefix="/")
    quiet_ray_loggers()  # and starting it may again
    test = load_split(data_dir, "test")
    real = test.groupby("language").head(4)
    products = pd.read_parquet(catalog).set_index("product_id")
    titles = products["title"]
    gen_rows = reviews.head(8)
    payload = [
        {
            "text": r.text,
            "product_title": r.product_title,
            "category": r.category,
            "rating": None if pd.isna(r.rating) else int(r.rating),
        }
        for r in real.itertuples()
    ] + [
        {
            "text": r.text,
            "product_title": str(titles.get(r.product_id, "")),
            "category": str(products["category"].get(r.product_id, "")),
            "rating": None if pd.isna(r.rating) else int(r.rating),
        }
        for r in gen_rows.itertuples()
    ]
    scored = _score_over_http(f"http://127.0.0.1:{port}/v1/score", payload)
    serve.shutdown()
    return titles, payload, scored, len(real)


def _log_samples(reviews: pd.DataFrame, titles: pd.Series, fluency: dict, log: Callable[[str], None]) -> None:
    """Log the generated reviews of two products per language, and the real-word rate of the English ones."""
    for lang, grp in reviews.groupby("language"):
        for pid, rows in list(grp.groupby("product_id", sort=False))[:2]:
            log(f"[{lang}] {titles.get(pid, pid)}")
            for r in rows.itertuples():
                log(f"    ★{'' if pd.isna(r.rating) else int(r.rating)} p_human={r.score:.2f}  {r.text}")
    if fluency["real_word_rate"] is not None:
        log(f"real-word rate of the generated English: {fluency['real_word_rate']:.3f} ({fluency['words']} words)")


def _write_report(out: Path, d: _DemoResults) -> Path:
    """OUT/report.md: the model, the real-word rate, stage timings, the generated reviews, Serve's scores and
    the generation summary."""
    from reviewgen.core.model_dir import read_meta

    meta = read_meta(d.model_dir)
    rwr = d.fluency["real_word_rate"]
    lines = [
        "# reviewgen demo report",
        "",
        f"Model `{meta.version}`; "
        f"validation NLL {meta.metrics.get('val_nll', float('nan')):.3f} "
        f"nats/token. Data hash `{str(d.stats.get('data_hash', ''))[:12]}`.",
        "",
        f"Real-word rate of the generated English reviews (share of their `[a-z]+` words found in the "
        f"training text; human reviews: about 0.98): {'–' if rwr is None else f'{rwr:.3f}'} over "
        f"{d.fluency['words']} words.",
        "",
        "## Timings (s)",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {k[:-2]} | {v:.1f} |" for k, v in d.times.items()]
    lines += ["", "## Generated reviews for products the model never trained on", ""]
    for pid, grp in d.reviews.groupby("product_id", sort=False):
        lines.append(f"**{d.titles.get(pid, pid)}** (`{pid}`)")
        for r in grp.itertuples():
            lines.append(f"- ★{'' if pd.isna(r.rating) else int(r.rating)} score={r.score:.2f}: {r.text}")
        lines.append("")
    lines += [
        "## Scores from the Serve endpoint",
        "",
        "`ours`: the endpoint found the demo's watermark (`flags.ours`, z = `signals.watermark_z`).",
        "",
        "| source | p_human | rating_pred | ours (z) | text |",
        "|---|---:|---:|---|---|",
    ]
    for i, (p, s) in enumerate(zip(d.payload, d.scored)):
        src = "human" if i < d.n_real else "generated"
        text = p["text"].replace("|", "/")[:80]
        z = (s.get("signals") or {}).get("watermark_z")
        mark = f"{(s.get('flags') or {}).get('ours')} ({'-' if z is None else f'{z:.1f}'})"
        lines.append(f"| {src} | {s['p_human']:.3f} | {s.get('rating_pred', '')} | {mark} | {text} |")
    summary = json.dumps(d.summary.to_dict(), indent=2, default=str)[:4000]
    lines += ["", "## Generation summary", "", "```", summary, "```"]
    path = out / "report.md"
    write_local_atomic(path, "\n".join(lines) + "\n")
    return path
