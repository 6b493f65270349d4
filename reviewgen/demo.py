"""The end-to-end demo on an embedded local Ray: prepare -> Ray Train -> Ray Data generation -> Ray Serve
scoring -> report. Everything runs on the data the repo carries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from reviewgen.evaluate.fluency import real_word_rate, vocabulary
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

    req = urllib.request.Request(url, data=json.dumps({"reviews": reviews}).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["results"]


def run_demo(out: str | Path, config: str | Path, *, num_workers: int = 1, quick: bool = False,
             port: int = 8123, log: Callable[[str], None] = print) -> Path:
    """Run the whole pipeline and write OUT/report.md; returns its path."""

    from reviewgen.core.config import RunConfig
    from reviewgen.data.corpus import load_split, prepare, review_sources, sample_data_dir
    from reviewgen.infra.console import quiet_ray_loggers
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
    ensure_ray(log=log)

    log(f"== 2/5 train on Ray Train ({num_workers} worker(s)): MLE -> discriminator warm-up -> adversarial")
    t = time.time()
    cfg = RunConfig.from_yaml(config)
    if quick:
        cfg = cfg.override({"train.mle_steps": 40, "train.disc_warmup_steps": 10, "train.adv_steps": 10,
                            "train.eval_every": 20, "train.checkpoint_every": 20, "train.log_every": 10})
    from reviewgen.train.distributed import run_distributed_training
    from reviewgen.train.job import TrainJobConfig

    # one worker gets the machine's cores (and as many torch threads); more workers share them
    job = TrainJobConfig(data_dir=data_dir, out=out / "model", num_workers=num_workers,
                         cpus_per_worker=max(1, (os.cpu_count() or 1) // num_workers),
                         storage_path=str(out / "ray_results"), name="demo")
    model_dir = run_distributed_training(job, cfg, log=log)
    times["train_s"] = time.time() - t

    log("== 3/5 generate on Ray Data for products the model never saw")
    t = time.time()
    from reviewgen.generate.config import load_generate_config
    from reviewgen.generate.pipeline import run_generation

    catalog = _demo_catalog(data_dir, out)
    run_date = time.strftime("%Y-%m-%d", time.gmtime())
    gen_cfg = load_generate_config(None, {"sampling.reviews_per_product": 3, "catalog.language_column": "language",
                                         "sampling.temperature": DEMO_TEMPERATURE})
    summary = run_generation(str(model_dir), [str(catalog)], str(out / "generated"), gen_cfg, run_date=run_date,
                             force=True, log=log)
    times["generate_s"] = time.time() - t
    reviews = pd.read_parquet(out / "generated" / f"run_date={run_date}" / "reviews")
    fluency = real_word_rate(reviews.loc[reviews["language"] == "en", "text"].astype(str).tolist(),
                             vocabulary(load_split(data_dir, "train")["text"].astype(str)))

    log("== 4/5 score through the Ray Serve endpoint")
    t = time.time()
    from ray import serve

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
    payload = ([{"text": r.text, "product_title": r.product_title, "category": r.category,
                 "rating": None if pd.isna(r.rating) else int(r.rating)} for r in real.itertuples()]
               + [{"text": r.text, "product_title": str(titles.get(r.product_id, "")),
                   "category": str(products["category"].get(r.product_id, "")),
                   "rating": None if pd.isna(r.rating) else int(r.rating)} for r in gen_rows.itertuples()])
    scored = _score_over_http(f"http://127.0.0.1:{port}/v1/score", payload)
    serve.shutdown()
    times["serve_s"] = time.time() - t
    times["total_s"] = time.time() - t0

    log("== 5/5 report")
    report = _write_report(out, stats, model_dir, summary, reviews, titles, payload, scored, len(real), times,
                           fluency)
    for lang, grp in reviews.groupby("language"):
        for pid, rows in list(grp.groupby("product_id", sort=False))[:2]:
            log(f"[{lang}] {titles.get(pid, pid)}")
            for r in rows.itertuples():
                log(f"    ★{'' if pd.isna(r.rating) else int(r.rating)} p_human={r.score:.2f}  {r.text}")
    if fluency["real_word_rate"] is not None:
        log(f"real-word rate of the generated English: {fluency['real_word_rate']:.3f} ({fluency['words']} words)")
    log(f"demo finished in {times['total_s'] / 60:.1f} min; report: {report}")
    return report


def _write_report(out: Path, stats: dict, model_dir: Path, summary: dict, reviews: pd.DataFrame,
                  titles: pd.Series, payload: list[dict], scored: list[dict], n_real: int,
                  times: dict[str, float], fluency: dict) -> Path:
    meta = json.loads((Path(model_dir) / "meta.json").read_text())
    rwr = fluency["real_word_rate"]
    lines = ["# reviewgen demo report", "",
             f"Model `{meta.get('version')}`; "
             f"validation NLL {meta.get('metrics', {}).get('val_nll', float('nan')):.3f} "
             f"nats/token. Data hash `{str(stats.get('data_hash', ''))[:12]}`.", "",
             f"Real-word rate of the generated English reviews (share of their `[a-z]+` words found in the "
             f"training text; human reviews: about 0.98): {'–' if rwr is None else f'{rwr:.3f}'} over "
             f"{fluency['words']} words.", "",
             "## Timings (s)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k[:-2]} | {v:.1f} |" for k, v in times.items()]
    lines += ["", "## Generated reviews for products the model never trained on", ""]
    for pid, grp in reviews.groupby("product_id", sort=False):
        lines.append(f"**{titles.get(pid, pid)}** (`{pid}`)")
        for r in grp.itertuples():
            lines.append(f"- ★{'' if pd.isna(r.rating) else int(r.rating)} score={r.score:.2f}: {r.text}")
        lines.append("")
    lines += ["## Scores from the Serve endpoint", "",
              "| source | p_human | rating_pred | text |", "|---|---:|---:|---|"]
    for i, (p, s) in enumerate(zip(payload, scored)):
        src = "human" if i < n_real else "generated"
        text = p["text"].replace("|", "/")[:80]
        lines.append(f"| {src} | {s['p_human']:.3f} | {s.get('rating_pred', '')} | {text} |")
    lines += ["", "## Generation summary", "", "```", json.dumps(summary, indent=2, default=str)[:4000], "```"]
    path = out / "report.md"
    write_local_atomic(path, "\n".join(lines) + "\n")
    return path
