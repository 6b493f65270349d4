"""The block functions of the generation pipeline (`reviewgen.generate.pipeline`): each runs in a Ray Data
task on one block or batch, reads and writes files by URI, and returns only small tallies or shard ids."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reviewgen.generate import catalog as cat
from reviewgen.generate.actor import REJECT_SCHEMA
from reviewgen.generate.run import join, shard_of
from reviewgen.infra.storage import filesystem, write_atomic

PRODUCT_SCHEMA = pa.schema(
    [
        ("product_id", pa.string()),
        ("attr_hash", pa.string()),
        ("shard", pa.int64()),
        ("generate", pa.bool_()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
    ]
)
TALLY_DTYPES = {"status": "object", "reason": "object", "generate": "bool", "n": "int64"}


def read_pieces(batch: dict, mapping: dict, opts: dict):
    """The validated rows of each read task in `batch` (one row group of a file, or an unreadable file's
    reject row), through `catalog.read_piece`."""
    for i in range(len(batch["path"])):
        err = batch["error"][i]
        yield from cat.read_piece(
            str(batch["path"][i]),
            int(batch["file_index"][i]),
            int(batch["row_group"][i]),
            int(batch["first_row"][i]),
            None if err is None or err == "" else str(err),
            mapping,
            **opts,
        )


def as_previous(prev: pa.Table, schema: pa.Schema) -> pa.Table:
    """A previous run's (product_id, attr_hash) rows in the stage schema, marked status "previous"."""
    n = prev.num_rows
    cols = {f.name: pa.nulls(n, f.type) for f in schema}
    cols.update(
        product_id=prev["product_id"],
        attr_hash=prev["attr_hash"],
        dkey=prev["product_id"],
        status=pa.array(["previous"] * n, pa.string()),
    )
    return pa.table(cols, schema=schema)


def resolve_block(df: pd.DataFrame, schema: pa.Schema, stage_uri: str) -> pd.DataFrame:
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
    cur["generate"] = ok & pd.Series(
        [prev_hash.get(p) != h for p, h in zip(cur["product_id"], cur["attr_hash"])], index=cur.index, dtype=bool
    )
    cur["target_rating"] = cur["target_rating"].astype("Int64")
    name = hashlib.sha256(cur[["file_index", "source_row"]].to_numpy(dtype="int64").tobytes()).hexdigest()[:20]
    fs, stage = filesystem(stage_uri)
    write_atomic(
        fs,
        join(stage, f"rows-{name}.parquet"),
        pa.Table.from_pandas(cur[schema.names], schema=schema, preserve_index=False),
    )
    t = cur.assign(reason=cur["reason"].fillna("")).groupby(["status", "reason", "generate"]).size()
    return t.reset_index(name="n").astype(TALLY_DTYPES)


def split_rows(batch: dict, n_shards: int, run_id: str, part_uri: str) -> pd.DataFrame:
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
        write_atomic(
            fs,
            join(part, "products", f"products-{stem}.parquet"),
            pa.Table.from_pandas(
                ok.assign(shard=shard)[PRODUCT_SCHEMA.names], schema=PRODUCT_SCHEMA, preserve_index=False
            ),
        )
        bad = df[df["status"] != "ok"]
        rej = pd.DataFrame(
            {
                "stage": ["read" if r == "unreadable_file" else "catalog" for r in bad["reason"]],
                "reason": bad["reason"],
                "product_id": bad["product_id"],
                "review_id": None,
                "review_index": None,
                "source_file": bad["source_file"],
                "text": None,
                "score": None,
                "raw": bad["raw"],
                "run_id": run_id,
                "source_row": bad["source_row"],
            }
        )
        write_atomic(
            fs,
            join(part, "rejects", f"catalog-{stem}.parquet"),
            pa.Table.from_pandas(rej, schema=REJECT_SCHEMA, preserve_index=False),
        )
    return pd.DataFrame({"shard": sorted(shards - {-1})}, dtype="int64")


def todo_block(df: pd.DataFrame, n_shards: int, skip: frozenset, columns: list[str]) -> pd.DataFrame:
    """The rows of a work file still to generate, with their shard, leaving out the shards in `skip`."""
    todo = df[(df["status"] == "ok") & df["generate"].fillna(False).astype(bool)]
    todo = todo.assign(shard=[shard_of(p, n_shards) for p in todo["product_id"]])
    return todo[~todo["shard"].isin(skip)][[*columns, "shard"]]
