"""Ray Data nightly catalog-wide review generation (`reviewgen generate`, `jobs/generate.py`).

Every catalog row stays inside Ray Data; the driver holds file lists and counts, never rows::

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

import datetime as dt
import hashlib
import json
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.context import DataContext, ShuffleStrategy

from reviewgen.core.watermark import Watermark
from reviewgen.generate import catalog as cat
from reviewgen.generate.actor import REJECT_SCHEMA, REVIEW_FIELDS, GeneratorActor, ShardJob, review_schema
from reviewgen.generate.config import GenerateConfig
from reviewgen.generate.run import (
    GenerationError,
    identity_settings,
    join,
    list_files,
    list_inputs,
    model_info,
    n_shards_for,
    rating_distribution,
    remove_stale_temps,
    resolve_run_date,
    resolve_since,
    run_identity,
    shard_of,
    shard_stats,
    since_run,
    start_state,
    summary_table,
)
from reviewgen.infra.runtime import ensure_ray
from reviewgen.infra.storage import exists, filesystem, write_atomic

PRODUCT_SCHEMA = pa.schema([("product_id", pa.string()), ("attr_hash", pa.string()), ("shard", pa.int64()),
                            ("generate", pa.bool_()), ("source_file", pa.string()), ("source_row", pa.int64())])
TALLY_DTYPES = {"status": "object", "reason": "object", "generate": "bool", "n": "int64"}
ROWS_PER_PARTITION = 100_000  # dedupe shuffle: partitions = rows / this (1..200)


# -- block functions (run in Ray tasks) ---------------------------------------------------------------

def _read_pieces(batch: dict, mapping: dict, opts: dict):
    for i in range(len(batch["path"])):
        err = batch["error"][i]
        yield from cat.read_piece(str(batch["path"][i]), int(batch["file_index"][i]), int(batch["row_group"][i]),
                                  int(batch["first_row"][i]), None if err is None or err == "" else str(err),
                                  mapping, **opts)


def _as_previous(prev: pa.Table, schema: pa.Schema) -> pa.Table:
    """A previous run's (product_id, attr_hash) rows in the stage schema, marked status "previous"."""
    n = prev.num_rows
    cols = {f.name: pa.nulls(n, f.type) for f in schema}
    cols.update(product_id=prev["product_id"], attr_hash=prev["attr_hash"], dkey=prev["product_id"],
                status=pa.array(["previous"] * n, pa.string()))
    return pa.table(cols, schema=schema)


def _resolve_block(df: pd.DataFrame, schema: pa.Schema, stage_uri: str) -> pd.DataFrame:
    """One hash partition (every row of an id is here): duplicates rejected, first (file, row) wins;
    `generate` = valid and new or changed since the previous run. Writes the partition's rows to the
    work dir under a name fixed by its content (a retried task rewrites the same file) and returns its
    tally of (status, reason, generate) counts."""
    previous = df["status"] == "previous"
    prev_hash = dict(zip(df.loc[previous, "product_id"], df.loc[previous, "attr_hash"]))
    cur = cat.mark_duplicates(df[~previous])
    if cur.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in TALLY_DTYPES.items()})
    ok = cur["status"] == "ok"
    cur["generate"] = ok & pd.Series([prev_hash.get(p) != h for p, h in zip(cur["product_id"], cur["attr_hash"])],
                                     index=cur.index, dtype=bool)
    cur["target_rating"] = cur["target_rating"].astype("Int64")
    name = hashlib.sha256(cur[["file_index", "source_row"]].to_numpy(dtype="int64").tobytes()).hexdigest()[:20]
    fs, stage = filesystem(stage_uri)
    write_atomic(fs, join(stage, f"rows-{name}.parquet"),
                 pa.Table.from_pandas(cur[schema.names], schema=schema, preserve_index=False))
    t = cur.assign(reason=cur["reason"].fillna("")).groupby(["status", "reason", "generate"]).size()
    return t.reset_index(name="n").astype(TALLY_DTYPES)


def _split_rows(batch: dict, n_shards: int, run_id: str, part_uri: str) -> pd.DataFrame:
    """Per work-dir file: valid rows (with their shard) -> products/, rejected rows -> rejects/, each
    written atomically under the file's name; returns the distinct shards that have products."""
    fs, part = filesystem(part_uri)
    shards: set[int] = set()
    for path in batch["path"]:
        path = str(path)
        src_fs, src = filesystem(path)
        df = pq.read_table(src, filesystem=src_fs).to_pandas()
        stem = path.rsplit("/", 1)[1][5:-8]
        ok = df[df["status"] == "ok"]
        shard = [shard_of(p, n_shards) if g else -1 for p, g in zip(ok["product_id"], ok["generate"])]
        shards.update(shard)
        write_atomic(fs, join(part, "products", f"products-{stem}.parquet"), pa.Table.from_pandas(
            ok.assign(shard=shard)[PRODUCT_SCHEMA.names], schema=PRODUCT_SCHEMA, preserve_index=False))
        bad = df[df["status"] != "ok"]
        rej = pd.DataFrame({"stage": ["read" if r == "unreadable_file" else "catalog" for r in bad["reason"]],
                            "reason": bad["reason"], "product_id": bad["product_id"], "review_id": None,
                            "review_index": None, "source_file": bad["source_file"], "text": None, "score": None,
                            "raw": bad["raw"], "run_id": run_id, "source_row": bad["source_row"]})
        write_atomic(fs, join(part, "rejects", f"catalog-{stem}.parquet"),
                     pa.Table.from_pandas(rej, schema=REJECT_SCHEMA, preserve_index=False))
    return pd.DataFrame({"shard": sorted(shards - {-1})}, dtype="int64")


def _todo_block(df: pd.DataFrame, n_shards: int, skip: frozenset, columns: list[str]) -> pd.DataFrame:
    todo = df[(df["status"] == "ok") & df["generate"].fillna(False).astype(bool)]
    todo = todo.assign(shard=[shard_of(p, n_shards) for p in todo["product_id"]])
    return todo[~todo["shard"].isin(skip)][[*columns, "shard"]]


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


def _read_plan(inputs: list[dict], log: Callable[[str], None]) -> tuple[list[dict], int]:
    """One read task per row group, from each file's footer; an unreadable file becomes one task that
    emits its reject row. Returns (tasks, catalog rows known from footers)."""
    tasks, rows = [], 0
    for idx, f in enumerate(x for x in inputs if not x.get("empty_directory")):
        base = {"path": f["path"], "file_index": idx, "row_group": -1, "first_row": 0, "error": ""}
        try:
            fs, p = filesystem(f["path"])
            md = pq.ParquetFile(p, filesystem=fs).metadata
        except cat.READ_ERRORS as e:
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            log(f"catalog {f['path']}: unreadable ({msg}); counted as one rejected input row")
            tasks.append(dict(base, error=msg))
            continue
        offset = 0
        for rg in range(md.num_row_groups):
            tasks.append(dict(base, row_group=rg, first_row=offset))
            offset += md.row_group(rg).num_rows
        rows += offset
    return tasks, rows


def _uri(fs, path: str) -> str:
    return path if fs.type_name == "local" else f"{fs.type_name}://{path}"


def _num_actors(cfg: GenerateConfig, pending: int) -> tuple[int, dict[str, Any]]:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = cfg.sharding.num_actors or (gpus if gpus else int(ray.cluster_resources().get("CPU", 1) // 2))
    res = {"num_gpus": 1} if gpus else {"num_cpus": cfg.sharding.cpus_per_actor}
    return max(1, min(n, pending)), res


# -- the run ------------------------------------------------------------------------------------------

def run_generation(model_dir: str | Path, catalogs: Sequence[str], out: str | Path,
                   config: GenerateConfig | None = None, *, run_date: str | None = None, since: str | None = None,
                   force: bool = False, log: Callable[[str], None] = print,
                   watermark: Watermark | None = None) -> dict[str, Any]:
    """Generate `config.sampling.reviews_per_product` reviews for every valid catalog product into
    OUT/run_date=DATE/.

    `watermark`: sign every review with its first key and accept only reviews whose watermark is detectable
    at its threshold (filter rule `watermark_weak`); the run's settings (run.json, manifest.json, run id)
    record its key id, never the key. None: an unwatermarked run, recorded as such (the `reviewgen
    generate` command refuses that unless --no-watermark is given).

    Idempotent (a finished identical run is a no-op; `force` regenerates), resumable (finished shards
    are kept), incremental (`since` = a previous run date or partition dir: only new/changed products).
    Returns the summary dict (also written into manifest.json). GenerationError when the run cannot
    proceed, or (unless `config.allow_empty`) when it read no valid product or accepted no review.
    """
    t_start = time.perf_counter()
    cfg = config or GenerateConfig()
    run_date = resolve_run_date(run_date)
    keep = list(cfg.catalog.keep_columns)
    clash = set(keep) & {n for n, _ in REVIEW_FIELDS}
    if clash:
        raise GenerationError(f"--keep-columns {sorted(clash)} clash with output columns")
    model_version, model, ngram_n = model_info(model_dir)
    span = cfg.filter.max_copy_span
    if ngram_n is not None and span is not None and cfg.filter.check_copy and span < ngram_n:
        raise GenerationError(f"--max-copy-span {span} is below the model's n-gram size {ngram_n}")
    dist, dist_src = rating_distribution(model, cfg.sampling.rating_distribution)
    mapping = cat.resolve_mapping(cfg.catalog.mapping)
    inputs = list_inputs([str(c) for c in catalogs])
    fs, out_path = filesystem(str(out))
    part = join(out_path, f"run_date={run_date}")
    since_uri = resolve_since(str(out), since) if since else None
    prev_products, prev_run = since_run(since_uri) if since_uri else (None, None)
    settings = identity_settings(cfg, mapping, dist, prev_run, watermark.lineage() if watermark else None)
    run_id = run_identity(run_date, model_version, settings, inputs)

    state, manifest = start_state(fs, part, run_id, force)
    if state == "noop":
        log(f"{part}: already generated by run {run_id} with the same inputs, model and settings; "
            "nothing to do (--force regenerates)")
        return dict(manifest["summary"], noop=True)
    if state == "fresh":
        log(f"{part}: starting afresh ({'--force' if force else 'replacing an unfinished different run'})")

    write_atomic(fs, join(part, "run.json"), json.dumps(
        {"run_id": run_id, "run_date": run_date, "model_version": model_version, "settings": settings},
        indent=2, default=str).encode())
    ensure_ray(log=log)
    with DataContext.current(_scoped_context()):
        summary = _execute(cfg, model_dir, model_version, fs, part, run_id, run_date, inputs, mapping, dist,
                           prev_products, log, t_start, watermark)
    summary_doc = {"run_id": run_id, "run_date": run_date, "inputs": inputs,
                   "model": {"dir": str(Path(model_dir).resolve()), "version": model_version,
                             "data_hash": model["meta"].get("data_hash"), "rating_distribution_source": dist_src,
                             "config": model["config"].get("run")},
                   "settings": settings, "since": since_uri, "summary": summary,
                   "finished_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    remove_stale_temps(fs, part)
    write_atomic(fs, join(part, "manifest.json"), json.dumps(summary_doc, indent=2, default=str).encode())
    c = summary["counts"]
    empty = c["products_valid"] == 0 or (c["reviews_generated"] > 0 and c["reviews_accepted"] == 0)
    log(summary_table(summary))
    if empty and not cfg.allow_empty:
        why = "no valid product in the catalog" if c["products_valid"] == 0 else "no review passed the filter"
        raise GenerationError(
            f"{part}: {why}"
            f" ({c['products_in']} rows in, {c['reviews_generated']} reviews generated); rejects and manifest.json "
            "are written, _SUCCESS is not (--allow-empty accepts an empty run)")
    write_atomic(fs, join(part, "_SUCCESS"), b"")
    return summary


def _execute(cfg: GenerateConfig, model_dir, model_version: str, fs, part: str, run_id: str, run_date: str,
             inputs: list[dict], mapping: dict, dist: list[float], prev_products: str | None,
             log: Callable[[str], None], t_start: float, watermark: Watermark | None = None) -> dict[str, Any]:
    keep = list(cfg.catalog.keep_columns)
    schema = cat.stage_schema(keep)
    opts = dict(keep_columns=keep, language_column=cfg.catalog.language_column,
                default_language=cfg.catalog.language, rating_column=cfg.catalog.rating_column)
    timings: dict[str, float] = {}

    # 1. read, validate, dedupe (and compare with --since) -> _work/catalog/, every row with its final status;
    #    the tasks return only per-partition tallies
    t0 = time.perf_counter()
    tasks, footer_rows = _read_plan(inputs, log)
    stage = join(part, "_work", "catalog")
    for d in (stage, join(part, "products")):
        if exists(fs, d):
            fs.delete_dir(d)
    for old in list_files(fs, join(part, "rejects"), "catalog-"):
        fs.delete_file(old)
    tally: Counter = Counter()
    if tasks:
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
            _read_pieces, batch_size=1, batch_format="numpy", fn_args=(mapping, opts))
        if prev_products:
            ds = ds.union(ray.data.read_parquet(prev_products).select_columns(["product_id", "attr_hash"]).map_batches(
                _as_previous, batch_size=None, batch_format="pyarrow", fn_args=(schema,)))
        parts = max(1, min(200, footer_rows // ROWS_PER_PARTITION + 1))
        # a hash repartition by key emits each partition as unsplit blocks (what map_groups relies on), so
        # one call of _resolve_block sees every row of an id and dedupes it vectorised, not per group
        tallies = ds.repartition(parts, keys=["dkey"]).map_batches(
            _resolve_block, batch_size=None, batch_format="pandas", fn_args=(schema, _uri(fs, stage)))
        for t in tallies.iter_rows():  # a few rows per partition
            tally[(t["status"], t["reason"], bool(t["generate"]))] += int(t["n"])
    timings["read_validate"] = time.perf_counter() - t0

    # 2. counts, then products/ (with shards) and rejects/catalog-*.parquet, one task per work file
    t0 = time.perf_counter()
    n_in = sum(tally.values())
    n_valid = sum(n for (s, _, _), n in tally.items() if s == "ok")
    n_todo = sum(n for (s, _, g), n in tally.items() if s == "ok" and g)
    catalog_reasons: Counter = Counter()
    for (s, r, _), n in tally.items():
        if s != "ok":
            catalog_reasons[r] += n
    n_shards = n_shards_for(n_todo, cfg.sharding.products_per_shard)
    work_files = list_files(fs, stage, "rows-")
    expected: set[int] = set()
    if work_files:
        split = ray.data.from_items([{"path": _uri(fs, p)} for p in work_files], override_num_blocks=len(work_files))
        for r in split.map_batches(_split_rows, batch_size=1, batch_format="numpy",
                                   fn_args=(n_shards, run_id, _uri(fs, part))).iter_rows():
            expected.add(int(r["shard"]))
    else:  # nothing was read: the tables still exist, empty, with their schemas
        write_atomic(fs, join(part, "products", "products-empty.parquet"), PRODUCT_SCHEMA.empty_table())
        write_atomic(fs, join(part, "rejects", "catalog-empty.parquet"), REJECT_SCHEMA.empty_table())
    done = set(shard_stats(fs, part)) & expected
    pending = sorted(expected - done)
    timings["plan"] = time.perf_counter() - t0
    log(f"catalog: {n_in} rows -> {n_valid} valid, {n_in - n_valid} rejected; {n_todo} products to generate "
        f"in {n_shards} shards ({len(done)} already done, {len(pending)} pending)")

    # 3. generate: one map_groups call per shard on the actor pool
    t0 = time.perf_counter()
    stage_t: Counter = Counter()
    if pending:
        num_actors, res = _num_actors(cfg, len(pending))
        job = ShardJob(cfg, run_id, model_version, str(Path(model_dir).resolve()), _uri(fs, part), tuple(dist),
                       watermark)
        columns = list(dict.fromkeys(["product_id", "title", "category", "language", "target_rating",
                                      "source_file", "source_row", *keep]))
        todo = ray.data.read_parquet(_uri(fs, stage)).map_batches(_todo_block, batch_size=None, batch_format="pandas",
                                fn_args=(n_shards, frozenset(done), columns))
        stats = todo.groupby("shard", num_partitions=max(1, min(len(pending), 4 * num_actors))).map_groups(
            GeneratorActor, compute=ray.data.ActorPoolStrategy(size=num_actors), fn_constructor_args=(job,),
            batch_format="pandas", **res)
        log(f"generating: {len(pending)} shards on {num_actors} actor(s) ({'GPU' if 'num_gpus' in res else 'CPU'})")
        for row in stats.iter_rows():  # one small stats row per shard
            stage_t.update({k: row[k] for k in ("generated", "t_generate", "t_score", "t_filter", "t_write")})
    timings["generate_stage"] = time.perf_counter() - t0
    for k in ("generate", "score", "filter", "write"):
        timings[f"actor_{k}"] = float(stage_t.get(f"t_{k}", 0.0))

    # 4. counts from the shard files' footers
    t0 = time.perf_counter()
    per_shard = shard_stats(fs, part)
    missing = sorted(expected - set(per_shard))
    if missing:
        raise GenerationError(f"shards {missing[:10]} have no output after the generation stage; rerun to resume")
    reasons = Counter()
    for s in expected:
        reasons.update(per_shard[s].get("rejects_by_reason", {}))
    accepted = sum(per_shard[s]["accepted"] for s in expected)
    fs.delete_dir(join(part, "_work"))
    if not expected:  # no shard: an empty reviews table still gives readers the directory and its schema
        write_atomic(fs, join(part, "reviews", "empty.parquet"), review_schema(keep).empty_table())
    counts = {"products_in": n_in, "products_valid": n_valid, "products_rejected": n_in - n_valid,
              "products_unchanged": n_valid - n_todo, "products_to_generate": n_todo, "shards": n_shards,
              "shards_resumed": len(done), "files_unreadable": catalog_reasons.get("unreadable_file", 0),
              "reviews_generated": accepted + sum(reasons.values()), "reviews_accepted": accepted,
              "reviews_rejected": sum(reasons.values()),
              "reviews_generated_this_invocation": int(stage_t.get("generated", 0)),
              "catalog_rejects_by_reason": dict(sorted(catalog_reasons.items())),
              "review_rejects_by_reason": dict(sorted(reasons.items()))}
    if counts["products_in"] != counts["products_valid"] + counts["products_rejected"]:
        raise GenerationError(f"row accounting failed: {counts}")
    timings["finalize"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    gen_t = timings["generate_stage"]
    return {"run_id": run_id, "run_date": run_date, "partition": part, "noop": False, "model_version": model_version,
            "counts": counts, "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "reviews_per_s": round(counts["reviews_generated_this_invocation"] / gen_t, 2) if gen_t > 0 else 0.0}
