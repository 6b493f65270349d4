"""Nightly generation at catalog scale: driver peak memory and end-to-end reviews/s of the
streaming Ray Data pipeline, against the in-process rate of the same generate + score + filter + write.

Catalogs of 10^4 and 10^6 rows (10^3 and 10^5 with --quick): `valid` unique products (10^4 by default;
the 10^4-row catalog is all valid), the rest alternating rows without a title and duplicates of the valid
ids. Each catalog runs `reviewgen.generate.pipeline.run_generation` in a fresh driver process (its own
embedded Ray, 4 logical CPUs) that reports its own peak RSS (VmHWM from /proc/self/status): the catalog
must not enter the driver, so the 10^6-row driver should stay within 1.2x of the 10^4-row one.

Overhead = 1 - end-to-end reviews/s / in-process reviews/s on the same cores. In-process runs
`GeneratorActor.write_shard` (the same generate, score, filter and write code) directly in this process with
one torch thread, on the same products; the pipeline runs N actors of one thread each, so the same-cores
in-process rate is N x the one-thread rate (a 2-thread torch process on a loaded 2-core machine spins and
measures nothing useful). The model is the tiny test config (configs/tiny.yaml), 1 review per product.

Run: python -m bench.bench_generate [--quick] [--valid N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CACHE = BENCH_DIR / ".cache"
MODEL_DIR = CACHE / "gen_tiny_model"
DATA_DIR = CACHE / "data"
REVIEWS_PER_PRODUCT = 1
PRODUCTS_PER_SHARD = 256
GOALS = {"driver_rss_ratio_max": 1.2, "overhead_max": 0.15}


def prepared_data() -> Path:
    """The carried sample prepared into bench/.cache/data (made once, then reused)."""
    from reviewgen.data.corpus import prepare, review_sources, sample_data_dir

    if not (DATA_DIR / "train.parquet").is_file():
        prepare(review_sources(sample_data_dir()), DATA_DIR, seed=0, log=lambda *_: None)
    return DATA_DIR


def model_description(model_dir: Path) -> dict[str, Any]:
    """Sizes of a bench model's generator (layers, width, params) from its model directory."""
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.core.models import count_params

    ck = load_checkpoint(model_dir, "cpu")
    g = ck.config.generator
    return {
        "dir": str(model_dir),
        "version": ck.version,
        "n_layer": g.n_layer,
        "d_model": g.d_model,
        "n_head": g.n_head,
        "vocab_size": g.vocab_size,
        "generator_params": count_params(ck.generator),
        "discriminator_params": count_params(ck.discriminator),
        "prefix_len": ck.tokenizer.prefix_len,
        "max_review_len": ck.tokenizer.max_review_len,
    }


def bench_model(log=print) -> Path:
    """The tiny model (configs/tiny.yaml), trained once into bench/.cache/gen_tiny_model."""
    if (MODEL_DIR / "meta.json").is_file():
        return MODEL_DIR
    from reviewgen.core.config import RunConfig
    from reviewgen.train.local import train_local

    tmp = CACHE / "gen_tiny_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    train_local(
        prepared_data(), tmp, RunConfig.from_yaml(BENCH_DIR.parent / "configs" / "tiny.yaml"), log=lambda *_: None
    )
    tmp.rename(MODEL_DIR)
    log(f"bench model trained -> {MODEL_DIR}")
    return MODEL_DIR


def synthetic_catalog(n_rows: int, n_valid: int, path: Path) -> Path:
    """n_valid unique products (BigBasket titles), then rows alternating: no title / a duplicate id."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from reviewgen.data.corpus import sample_data_dir

    titles = pd.read_parquet(sample_data_dir() / "catalog_bigbasket_products.parquet", columns=["product"])
    titles = titles["product"].dropna().astype(str).to_numpy()
    n_valid = min(n_valid, n_rows)
    rest = np.arange(n_rows - n_valid)
    ids = np.concatenate([np.arange(n_valid), rest % n_valid]).astype(str)
    ids = np.char.add("bench-", ids)
    title = np.concatenate(
        [titles[np.arange(n_valid) % len(titles)], np.where(rest % 2 == 0, None, titles[rest % len(titles)])]
    ).astype(object)
    pq.write_table(
        pa.table({"product_id": ids, "title": title, "category": ["Kitchen"] * n_rows}), path, row_group_size=100_000
    )
    return path


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def driver(model: str, catalog: str, out: str) -> None:
    """Child process body: one run on a fresh embedded Ray; prints a JSON line with counts, times, RSS."""
    import ray

    from reviewgen.generate.config import load_generate_config
    from reviewgen.generate.pipeline import run_generation

    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    rss_after_init = _vmhwm_mb()
    cfg = load_generate_config(
        None,
        {
            "sampling.reviews_per_product": REVIEWS_PER_PRODUCT,
            "sharding.products_per_shard": PRODUCTS_PER_SHARD,
            "filter.reject_broken_text": False,
            "allow_empty": True,
        },
    )
    t = time.perf_counter()
    s = run_generation(model, [catalog], out, cfg, run_date="2000-01-01", force=True, log=lambda *_: None)
    wall = time.perf_counter() - t
    print(
        "RESULT "
        + json.dumps(
            {
                "wall_s": wall,
                "summary": s.to_dict(),
                "driver_peak_rss_mb": _vmhwm_mb(),
                "driver_rss_after_ray_init_mb": rss_after_init,
            }
        )
    )
    ray.shutdown()


def pipeline_run(model: Path, catalog: Path, out: Path) -> dict[str, Any]:
    """Run `driver` in a fresh process and return its report."""
    env = dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR.parent), env.get("PYTHONPATH", "")])
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "bench.bench_generate", "--driver", str(model), str(catalog), str(out)],
        env=env,
        cwd=BENCH_DIR.parent,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode or line is None:
        raise RuntimeError(f"driver failed ({p.returncode}): {(p.stdout + p.stderr)[-3000:]}")
    r = json.loads(line[7:])
    r["process_wall_s"] = time.perf_counter() - t
    return r


def in_process_rate(model: Path, catalog: Path, n_products: int) -> dict[str, Any]:
    """reviews/s of GeneratorActor.write_shard (generate, score, filter, write) in this process with one
    torch thread, on the catalog's first n_products valid products in shards of PRODUCTS_PER_SHARD."""
    import pandas as pd
    import torch

    from reviewgen.generate.actor import GeneratorActor, ShardJob
    from reviewgen.generate.config import load_generate_config
    from reviewgen.generate.run import DEFAULT_RATING_DISTRIBUTION

    cfg = load_generate_config(
        None,
        {
            "sampling.reviews_per_product": REVIEWS_PER_PRODUCT,
            "filter.reject_broken_text": False,
            "sharding.cpus_per_actor": 1,
        },
    )
    threads = torch.get_num_threads()
    df = pd.read_parquet(catalog).head(n_products)
    products = [
        {
            "product_id": p,
            "title": t,
            "category": c,
            "language": "en",
            "target_rating": None,
            "source_file": str(catalog),
            "source_row": i,
        }
        for i, (p, t, c) in enumerate(zip(df["product_id"], df["title"], df["category"]))
    ]
    with tempfile.TemporaryDirectory(prefix="bench-gen-inproc-") as tmp:
        actor = GeneratorActor(ShardJob(cfg, "bench", "bench", str(model), tmp, DEFAULT_RATING_DISTRIBUTION))
        actor.write_shard(0, products[:32])  # warm-up
        t = time.perf_counter()
        for k, i in enumerate(range(0, len(products), PRODUCTS_PER_SHARD)):
            actor.write_shard(k, products[i : i + PRODUCTS_PER_SHARD])
        dt = time.perf_counter() - t
    torch.set_num_threads(threads)
    n = len(products) * REVIEWS_PER_PRODUCT
    return {"threads": 1, "reviews": n, "seconds": round(dt, 3), "reviews_per_s": n / dt}


def main(quick: bool = False, valid: int | None = None) -> dict[str, Any]:
    """Driver RSS and end-to-end reviews/s at two catalog sizes, and the pipeline overhead."""
    sizes = (1_000, 100_000) if quick else (10_000, 1_000_000)
    valid = valid or sizes[0]
    model = bench_model()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        for n in sizes:
            catalog = synthetic_catalog(n, valid, Path(tmp) / f"catalog_{n}.parquet")
            r = pipeline_run(model, catalog, Path(tmp) / f"out_{n}")
            c = r["summary"]["counts"]
            runs[n] = {
                "rows": n,
                "valid": min(valid, n),
                "driver_peak_rss_mb": round(r["driver_peak_rss_mb"], 1),
                "driver_rss_after_ray_init_mb": round(r["driver_rss_after_ray_init_mb"], 1),
                "wall_s": round(r["wall_s"], 2),
                "timings_s": r["summary"]["timings_s"],
                "reviews_generated": c["reviews_generated"],
                "reviews_per_s_end_to_end": round(c["reviews_generated"] / r["wall_s"], 2),
                "reviews_per_s_generate_stage": r["summary"]["reviews_per_s"],
                "every_row_accounted": c["products_in"] == n == c["products_valid"] + c["products_rejected"]
                and c["reviews_generated"] == c["reviews_accepted"] + c["reviews_rejected"],
                "catalog_rejects_by_reason": c["catalog_rejects_by_reason"],
            }
        inproc = in_process_rate(model, Path(tmp) / f"catalog_{sizes[0]}.parquet", min(valid, sizes[0], 2000))
    small, big = runs[sizes[0]], runs[sizes[1]]
    ratio = big["driver_peak_rss_mb"] / small["driver_peak_rss_mb"]
    # run_generation's default pool: CPUs // 2 actors (4 logical CPUs at least), at most one per shard
    n_actors = max(1, min(max(4, os.cpu_count() or 1) // 2, -(-min(valid, sizes[0]) // PRODUCTS_PER_SHARD)))
    inproc["pipeline_actors"] = n_actors
    inproc["reviews_per_s_same_cores"] = same = inproc["reviews_per_s"] * n_actors
    overhead = {n: round(1 - r["reviews_per_s_end_to_end"] / same, 4) for n, r in runs.items()}
    overhead_gen = {n: round(1 - r["reviews_per_s_generate_stage"] / same, 4) for n, r in runs.items()}
    return {
        "sizes": list(sizes),
        "valid_products": valid,
        "reviews_per_product": REVIEWS_PER_PRODUCT,
        "runs": runs,
        "in_process": inproc,
        "driver_rss_ratio": round(ratio, 3),
        "driver_rss_goal_met": ratio <= GOALS["driver_rss_ratio_max"]
        and all(r["every_row_accounted"] for r in runs.values()),
        "overhead_end_to_end": overhead,
        "overhead_generate_stage": overhead_gen,
        "overhead_goal_met": overhead[sizes[0]] <= GOALS["overhead_max"],
        "goals": GOALS,
        "note": "end to end = run_generation wall time (Ray already started): read, validate, dedupe shuffle, "
        "products/rejects writes, actor start-up and model load, generate, score, filter, write. "
        "The generate-stage rate counts only the actor pool stage.",
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10^3 and 10^5 rows instead of 10^4 and 10^6")
    ap.add_argument("--valid", type=int, default=None, help="valid products (default: the smaller catalog size)")
    ap.add_argument("--driver", nargs=3, metavar=("MODEL", "CATALOG", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.driver:
        driver(*a.driver)
    else:
        print(json.dumps(main(a.quick, a.valid), indent=2, default=str))
