"""Ray Data nightly catalog-wide review generation (`reviewgen generate`, `jobs/generate.py`).

Every catalog row stays inside Ray Data; the driver holds file lists and counts, never rows (the read and
shard planning stages are in `reviewgen.generate.catalog_stage`)::

    probe each file's parquet footer (driver: row groups, or the file is unreadable)
      -> read row groups + validate (tasks) -> hash-partition by product id: first (file, row) wins,
         --since compares with the previous products -> _work/catalog/ (tasks return counts only)
      -> products/, rejects/catalog-*.parquet (one task per work file; returns the shards in use)
      -> groupby(shard).map_groups(GeneratorActor) (actor pool: generate, score, filter, write a shard)
      -> manifest.json, _SUCCESS (last)

Output under ``OUT/run_date=YYYY-MM-DD/``: ``reviews/part-NNNNN.parquet`` (one per shard),
``rejects/catalog-*.parquet`` and ``rejects/filter-part-NNNNN.parquet``, ``products/`` (per-product
attribute hash and shard, for ``--since`` and resume), ``run.json`` (the run's identity, written first),
``manifest.json`` then ``_SUCCESS``.

Why per-shard files and not Ray Data checkpointing: a product's shard is a hash of its id; an actor
writes a whole shard's rejects then its reviews file, each to a temp name then renamed, so a reviews file
exists only for a finished shard. A resumed run (after an actor or a driver kill) skips those shards;
generation is a pure function of (product, index, seed), so a shard rewritten by a retried task is the
same rows. This needs nothing but rename and keeps the output a plain table; Ray Data checkpointing needs
an id store and an extra filter actor that competes for CPUs on small clusters.

Accounting: every catalog row is valid or rejected (``products_in == products_valid + products_rejected``);
a file that cannot be read counts as one input row, rejected ``unreadable_file``; every generated review
is accepted or rejected with a reason. A run with no valid product or no accepted review writes its
rejects and manifest but no ``_SUCCESS`` and fails, unless ``allow_empty``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import ray
from ray.data.context import DataContext, ShuffleStrategy

from reviewgen.core.watermark import Watermark
from reviewgen.generate.actor import REVIEW_FIELDS, GeneratorActor, ShardJob, review_schema
from reviewgen.generate.blocks import todo_block
from reviewgen.generate.catalog_stage import ShardPlan, plan_shards, read_catalog
from reviewgen.generate.config import GenerateConfig
from reviewgen.generate.mapping import resolve_mapping
from reviewgen.generate.results import RunCounts, RunSummary, RunTimings
from reviewgen.generate.run import (
    GenerationError,
    RunContext,
    fs_uri,
    identity_settings,
    join,
    list_inputs,
    model_info,
    rating_distribution,
    remove_stale_temps,
    resolve_run_date,
    resolve_since,
    run_identity,
    shard_stats,
    since_run,
    start_state,
    summary_table,
)
from reviewgen.infra.runtime import ensure_ray
from reviewgen.infra.storage import filesystem, write_atomic

# -- driver helpers -----------------------------------------------------------------------------------


def _scoped_context() -> DataContext:
    """A copy of the current DataContext for this run's datasets (the caller's stays untouched): the
    dedupe relies on a hash shuffle co-locating every row of an id, as `map_groups` does."""
    with warnings.catch_warnings():  # copy() reads every deprecated alias, each of which warns
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = DataContext.get_current().copy()
    if ctx.shuffle_strategy not in (ShuffleStrategy.HASH_SHUFFLE, ShuffleStrategy.SHUFFLE_V2):
        ctx.shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE
    return ctx


def _num_actors(cfg: GenerateConfig, pending: int) -> tuple[int, dict[str, Any]]:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = cfg.sharding.num_actors or (gpus if gpus else int(ray.cluster_resources().get("CPU", 1) // 2))
    res = {"num_gpus": 1} if gpus else {"num_cpus": cfg.sharding.cpus_per_actor}
    return max(1, min(n, pending)), res


# -- the run ------------------------------------------------------------------------------------------


def run_generation(
    model_dir: str | Path,
    catalogs: Sequence[str],
    out: str | Path,
    config: GenerateConfig | None = None,
    *,
    run_date: str | None = None,
    since: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    watermark: Watermark | None = None,
) -> RunSummary:
    """Generate `config.sampling.reviews_per_product` reviews for every valid catalog product into
    OUT/run_date=DATE/.

    `watermark`: sign every review with its first key and accept only reviews whose watermark is detectable
    at its threshold (filter rule `watermark_weak`); the run's settings (run.json, manifest.json, run id)
    record its key id, never the key. None: an unwatermarked run, recorded as such (the `reviewgen
    generate` command refuses that unless --no-watermark is given).

    Idempotent (a finished identical run is a no-op; `force` regenerates), resumable (finished shards
    are kept), incremental (`since` = a previous run date or partition dir: only new/changed products).
    Returns its `RunSummary` (`to_dict()` is manifest.json's "summary"; a no-op: the finished run's, `noop` set).
    GenerationError when the run cannot proceed, or (unless `config.allow_empty`) when it read no valid product
    or accepted no review; ConfigError when max_copy_span is below the model's n-gram size (`FilterConfig.resolved`)."""
    t_start = time.perf_counter()
    run = _resolve_run(
        model_dir, catalogs, out, config or GenerateConfig(), run_date=run_date, since=since, watermark=watermark
    )
    state, manifest = start_state(run.fs, run.part, run.run_id, force)
    if state == "noop":
        log(
            f"{run.part}: already generated by run {run.run_id} with the same inputs, model and settings; "
            "nothing to do (--force regenerates)"
        )
        return dataclasses.replace(RunSummary.from_dict(manifest["summary"]), noop=True)
    if state == "fresh":
        log(f"{run.part}: starting afresh ({'--force' if force else 'replacing an unfinished different run'})")

    doc = {"run_id": run.run_id, "run_date": run.run_date, "model_version": run.model_version, "settings": run.settings}
    write_atomic(run.fs, join(run.part, "run.json"), json.dumps(doc, indent=2, default=str).encode())
    ensure_ray(log=log)
    with DataContext.current(_scoped_context()):
        summary = _execute(run, log, t_start)
    summary_doc = _manifest(run, summary)
    remove_stale_temps(run.fs, run.part)
    write_atomic(run.fs, join(run.part, "manifest.json"), json.dumps(summary_doc, indent=2, default=str).encode())
    log(summary_table(summary))
    _finish(run, summary)
    return summary


def _resolve_run(
    model_dir: str | Path,
    catalogs: Sequence[str],
    out: str | Path,
    cfg: GenerateConfig,
    *,
    run_date: str | None,
    since: str | None,
    watermark: Watermark | None,
) -> RunContext:
    """Everything a run is decided by, before any work: its date, model, mapping, inputs, output
    partition, --since's previous run and, from those, its settings and run id. Fails early on a bad option
    (a kept column clashing with the output, max_copy_span below the model's n-gram size, ...)."""
    run_date = resolve_run_date(run_date)
    _check_keep_columns(cfg)
    meta, model_cfg, ngram_n = model_info(model_dir)
    cfg.filter.resolved(ngram_n)  # fail before any work when max_copy_span is below the index's n
    dist, dist_src = rating_distribution(meta, cfg.sampling.rating_distribution)
    mapping = resolve_mapping(cfg.catalog.mapping)
    inputs = list_inputs([str(c) for c in catalogs])
    fs, out_path = filesystem(str(out))
    since_uri = resolve_since(str(out), since) if since else None
    prev_products, prev_run = since_run(since_uri) if since_uri else (None, None)
    settings = identity_settings(cfg, mapping, dist, prev_run, watermark.lineage() if watermark else None)
    model = {
        "dir": str(Path(model_dir).resolve()),
        "version": meta.version,
        "data_hash": meta.data_hash,
        "rating_distribution_source": dist_src,
        "config": model_cfg.to_dict(),
    }
    return RunContext(
        cfg=cfg,
        model_dir=model_dir,
        model_version=meta.version,
        fs=fs,
        part=join(out_path, f"run_date={run_date}"),
        run_id=run_identity(run_date, meta.version, settings, inputs),
        run_date=run_date,
        inputs=inputs,
        mapping=mapping,
        dist=dist,
        prev_products=prev_products,
        watermark=watermark,
        settings=settings,
        since=since_uri,
        model=model,
    )


def _manifest(run: RunContext, summary: RunSummary) -> dict[str, Any]:
    """manifest.json's document: the run's identity, inputs, model and settings, and its summary."""
    return {
        "run_id": run.run_id,
        "run_date": run.run_date,
        "inputs": run.inputs,
        "model": run.model,
        "settings": run.settings,
        "since": run.since,
        "summary": summary.to_dict(),
        "finished_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _check_keep_columns(cfg: GenerateConfig) -> None:
    """GenerationError when a kept catalog column would overwrite a column of the output reviews."""
    clash = set(cfg.catalog.keep_columns) & {n for n, _ in REVIEW_FIELDS}
    if clash:
        raise GenerationError(f"--keep-columns {sorted(clash)} clash with output columns")


def _finish(run: RunContext, summary: RunSummary) -> None:
    """Write _SUCCESS, last; GenerationError instead when the run is empty (no valid product, or no review
    passed the filter) and the config does not allow that."""
    c = summary.counts
    empty = c.products_valid == 0 or (c.reviews_generated > 0 and c.reviews_accepted == 0)
    if empty and not run.cfg.allow_empty:
        why = "no valid product in the catalog" if c.products_valid == 0 else "no review passed the filter"
        raise GenerationError(
            f"{run.part}: {why}"
            f" ({c.products_in} rows in, {c.reviews_generated} reviews generated); rejects and manifest.json "
            "are written, _SUCCESS is not (--allow-empty accepts an empty run)"
        )
    write_atomic(run.fs, join(run.part, "_SUCCESS"), b"")


def _execute(run: RunContext, log: Callable[[str], None], t_start: float) -> RunSummary:
    """The stages of a run that is not a no-op, timed: read and dedupe, plan the shards, generate, count."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    stage, tally = read_catalog(run, log)
    timings["read_validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = plan_shards(run, stage, tally)
    timings["plan"] = time.perf_counter() - t0
    log(
        f"catalog: {plan.n_in} rows -> {plan.n_valid} valid, {plan.n_in - plan.n_valid} rejected; {plan.n_todo} "
        f"products to generate in {plan.n_shards} shards ({len(plan.done)} already done, {len(plan.pending)} pending)"
    )
    t0 = time.perf_counter()
    stage_t = _generate_shards(run, plan, stage, log)
    timings["generate_stage"] = time.perf_counter() - t0
    for k in ("generate", "score", "filter", "write"):
        timings[f"actor_{k}"] = float(stage_t.get(f"t_{k}", 0.0))
    t0 = time.perf_counter()
    counts = _final_counts(run, plan, stage_t)
    timings["finalize"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    gen_t = timings["generate_stage"]
    return RunSummary(
        run_id=run.run_id,
        run_date=run.run_date,
        partition=run.part,
        noop=False,
        model_version=run.model_version,
        counts=counts,
        timings_s=RunTimings(**{k: round(v, 3) for k, v in timings.items()}),
        reviews_per_s=round(counts.reviews_generated_this_invocation / gen_t, 2) if gen_t > 0 else 0.0,
    )


def _generate_shards(run: RunContext, plan: ShardPlan, stage: str, log: Callable[[str], None]) -> Counter:
    """One map_groups call per pending shard on the actor pool; returns the actors' summed stage timings
    and review counts."""
    stage_t: Counter = Counter()
    if not plan.pending:
        return stage_t
    keep = list(run.cfg.catalog.keep_columns)
    num_actors, res = _num_actors(run.cfg, len(plan.pending))
    job = ShardJob(
        run.cfg,
        run.run_id,
        run.model_version,
        str(Path(run.model_dir).resolve()),
        fs_uri(run.fs, run.part),
        tuple(run.dist),
        run.watermark,
    )
    columns = list(
        dict.fromkeys(
            ["product_id", "title", "category", "language", "target_rating", "source_file", "source_row", *keep]
        )
    )
    todo = ray.data.read_parquet(fs_uri(run.fs, stage)).map_batches(
        todo_block, batch_size=None, batch_format="pandas", fn_args=(plan.n_shards, frozenset(plan.done), columns)
    )
    stats = todo.groupby("shard", num_partitions=max(1, min(len(plan.pending), 4 * num_actors))).map_groups(
        GeneratorActor,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        fn_constructor_args=(job,),
        batch_format="pandas",
        **res,
    )
    log(f"generating: {len(plan.pending)} shards on {num_actors} actor(s) ({'GPU' if 'num_gpus' in res else 'CPU'})")
    for row in stats.iter_rows():  # one small stats row per shard
        stage_t.update({k: row[k] for k in ("generated", "t_generate", "t_score", "t_filter", "t_write")})
    return stage_t


def _final_counts(run: RunContext, plan: ShardPlan, stage_t: Counter) -> RunCounts:
    """The run's counts from the shard files' footers; GenerationError when a shard has no output or the
    rows do not add up. Removes the work dir."""
    fs, part = run.fs, run.part
    per_shard = shard_stats(fs, part)
    missing = sorted(plan.expected - set(per_shard))
    if missing:
        raise GenerationError(f"shards {missing[:10]} have no output after the generation stage; rerun to resume")
    reasons = Counter()
    for s in plan.expected:
        reasons.update(per_shard[s].get("rejects_by_reason", {}))
    accepted = sum(per_shard[s]["accepted"] for s in plan.expected)
    fs.delete_dir(join(part, "_work"))
    if not plan.expected:  # no shard: an empty reviews table still gives readers the directory and its schema
        write_atomic(
            fs, join(part, "reviews", "empty.parquet"), review_schema(list(run.cfg.catalog.keep_columns)).empty_table()
        )
    n_in, n_valid, n_todo = plan.n_in, plan.n_valid, plan.n_todo
    counts = RunCounts(
        products_in=n_in,
        products_valid=n_valid,
        products_rejected=n_in - n_valid,
        products_unchanged=n_valid - n_todo,
        products_to_generate=n_todo,
        shards=plan.n_shards,
        shards_resumed=len(plan.done),
        files_unreadable=plan.catalog_reasons.get("unreadable_file", 0),
        reviews_generated=accepted + sum(reasons.values()),
        reviews_accepted=accepted,
        reviews_rejected=sum(reasons.values()),
        reviews_generated_this_invocation=int(stage_t.get("generated", 0)),
        catalog_rejects_by_reason=plan.catalog_reasons,
        review_rejects_by_reason=reasons,
    )
    if counts.products_in != counts.products_valid + counts.products_rejected:
        raise GenerationError(f"row accounting failed: {counts.to_dict()}")
    return counts
