"""The catalog stage of a generation run (`reviewgen.generate.pipeline`): from the catalog files to the
shards to generate, with every catalog row inside Ray Data and only file lists and counts on the driver.

Plan one read task per row group from the files' parquet footers (an unreadable file becomes one task that
emits its reject row); read and validate in tasks, hash-partition by product id so that the first (file,
row) of an id wins and --since compares with the previous products, into ``_work/catalog/`` (the tasks
return tallies only); then write ``products/`` and ``rejects/catalog-*.parquet`` one task per work file,
which return the shards in use. The shards a previous attempt finished are done; the rest are pending.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import pyarrow.parquet as pq
import ray

from reviewgen.generate import catalog as cat
from reviewgen.generate.actor import REJECT_SCHEMA
from reviewgen.generate.blocks import PRODUCT_SCHEMA, as_previous, read_pieces, resolve_block, split_rows
from reviewgen.generate.run import RunContext, fs_uri, join, list_files, n_shards_for, shard_stats
from reviewgen.infra.storage import exists, filesystem, write_atomic

ROWS_PER_PARTITION = 100_000  # dedupe shuffle: partitions = rows / this (1..200)


@dataclass(frozen=True)
class ShardPlan:
    """The catalog's tallies after reading, and the shards: all that have products, those a previous
    attempt finished, and those still to generate."""

    n_in: int
    n_valid: int
    n_todo: int
    catalog_reasons: Counter
    n_shards: int
    expected: set[int]
    done: set[int]
    pending: list[int]


def read_plan(inputs: list[dict], log: Callable[[str], None]) -> tuple[list[dict], int]:
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


def read_catalog(run: RunContext, log: Callable[[str], None]) -> tuple[str, Counter]:
    """Read, validate and dedupe (comparing with --since) into _work/catalog/, every row with its final
    status; the tasks return only per-partition tallies. Returns (the work dir, the tally)."""
    cfg, fs, part = run.cfg, run.fs, run.part
    keep = list(cfg.catalog.keep_columns)
    schema = cat.stage_schema(keep)
    opts = dict(
        keep_columns=keep,
        language_column=cfg.catalog.language_column,
        default_language=cfg.catalog.language,
        rating_column=cfg.catalog.rating_column,
    )
    tasks, footer_rows = read_plan(run.inputs, log)
    stage = join(part, "_work", "catalog")
    for d in (stage, join(part, "products")):
        if exists(fs, d):
            fs.delete_dir(d)
    for old in list_files(fs, join(part, "rejects"), "catalog-"):
        fs.delete_file(old)
    tally: Counter = Counter()
    if tasks:
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
            read_pieces, batch_size=1, batch_format="numpy", fn_args=(run.mapping, opts)
        )
        if run.prev_products:
            ds = ds.union(
                ray.data.read_parquet(run.prev_products)
                .select_columns(["product_id", "attr_hash"])
                .map_batches(as_previous, batch_size=None, batch_format="pyarrow", fn_args=(schema,))
            )
        parts = max(1, min(200, footer_rows // ROWS_PER_PARTITION + 1))
        # a hash repartition by key emits each partition as unsplit blocks (what map_groups relies on), so
        # one call of resolve_block sees every row of an id and dedupes it vectorised, not per group
        tallies = ds.repartition(parts, keys=["dkey"]).map_batches(
            resolve_block, batch_size=None, batch_format="pandas", fn_args=(schema, fs_uri(fs, stage))
        )
        for t in tallies.iter_rows():  # a few rows per partition
            tally[(t["status"], t["reason"], bool(t["generate"]))] += int(t["n"])
    return stage, tally


def plan_shards(run: RunContext, stage: str, tally: Counter) -> ShardPlan:
    """Counts from the tally, then products/ (with shards) and rejects/catalog-*.parquet, one task per
    work file; the shards already written by an earlier attempt are done."""
    fs, part = run.fs, run.part
    n_in = sum(tally.values())
    n_valid = sum(n for (s, _, _), n in tally.items() if s == "ok")
    n_todo = sum(n for (s, _, g), n in tally.items() if s == "ok" and g)
    catalog_reasons: Counter = Counter()
    for (s, r, _), n in tally.items():
        if s != "ok":
            catalog_reasons[r] += n
    n_shards = n_shards_for(n_todo, run.cfg.sharding.products_per_shard)
    work_files = list_files(fs, stage, "rows-")
    expected: set[int] = set()
    if work_files:
        split = ray.data.from_items([{"path": fs_uri(fs, p)} for p in work_files], override_num_blocks=len(work_files))
        for r in split.map_batches(
            split_rows, batch_size=1, batch_format="numpy", fn_args=(n_shards, run.run_id, fs_uri(fs, part))
        ).iter_rows():
            expected.add(int(r["shard"]))
    else:  # nothing was read: the tables still exist, empty, with their schemas
        write_atomic(fs, join(part, "products", "products-empty.parquet"), PRODUCT_SCHEMA.empty_table())
        write_atomic(fs, join(part, "rejects", "catalog-empty.parquet"), REJECT_SCHEMA.empty_table())
    done = set(shard_stats(fs, part)) & expected
    return ShardPlan(n_in, n_valid, n_todo, catalog_reasons, n_shards, expected, done, sorted(expected - done))
