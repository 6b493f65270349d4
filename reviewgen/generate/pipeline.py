"""Ray Data nightly catalog-wide review generation (`reviewgen generate`, `jobs/generate.py`).

Pipeline::

    catalogs --read_parquet--> validate (map_batches) --> dedupe, shard (driver)
      --> shards --map_batches(GeneratorActor, ActorPoolStrategy)--> generate K reviews/product,
          score (calibrated D), filter (score, copy guard, PII, length, language), write part files
      --> manifest.json, _SUCCESS

Output under ``OUT/run_date=YYYY-MM-DD/``: ``reviews/part-NNNNN.parquet``, ``rejects/catalog.parquet`` and
``rejects/filter-part-NNNNN.parquet``, ``products/products.parquet`` (per-product attribute hash, for
``--since``), ``run.json`` (the run's identity, written first), ``manifest.json`` then ``_SUCCESS`` (last).

Why per-shard markers and not Ray Data checkpointing: valid products are split into shards by a hash of
their id; an actor writes a shard's rejects then its reviews file, each to a temp name and renamed, so a
``reviews/part-<shard>.parquet`` exists only for a finished shard. A resumed run skips those shards and
regenerates the rest; generation is a pure function of (product, index, seed), so a shard regenerated
after a crash is byte-for-byte the same rows, and a shard can never be half-present. This needs nothing
but rename, works the same for an actor crash (Ray retries the task) and a driver kill, and keeps the
output a plain table. Ray Data checkpointing tracks rows by an id column in a separate store and needs
an extra filter actor (1 CPU, 1 GiB, see RAY_NOTES), which competes for CPUs on small clusters.

Identity: ``run_id`` hashes the run date, model version, seed, generation settings, mapping and input
checksums, so a resume of the same run keeps its review ids, and a finished partition with the same
``run_id`` makes a rerun a no-op. ``review_id = sha256(run_id, product_id, index)``.

Accounting: every catalog row is either valid or rejected (``products_in == products_valid +
products_rejected``). A file that cannot be read counts as one input row, rejected with reason
``unreadable_file`` and its name (its row count is unknown); the other files still process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reviewgen.generate import catalog as cat
from reviewgen.infra.runtime import ensure_ray
from reviewgen.infra.storage import exists, filesystem

# Rating distribution (1..5 stars) of the carried sample's English reviews (data/sample, 6,858 reviews),
# used when the model directory does not carry its training corpus's distribution.
DEFAULT_RATING_DISTRIBUTION = (0.033, 0.031, 0.059, 0.220, 0.657)
PII_PLACEHOLDERS = ("<email>", "<url>", "<phone>", "<handle>")
REVIEW_FIELDS = [("product_id", pa.string()), ("review_id", pa.string()), ("review_index", pa.int64()),
                 ("rating", pa.int64()), ("text", pa.string()), ("score", pa.float64()),
                 ("model_version", pa.string()), ("run_id", pa.string()), ("seed", pa.int64()),
                 ("generated_at", pa.string()), ("language", pa.string()), ("title", pa.string()),
                 ("category", pa.string())]
REJECT_SCHEMA = pa.schema([("stage", pa.string()), ("reason", pa.string()), ("product_id", pa.string()),
                           ("review_id", pa.string()), ("review_index", pa.int64()), ("source_file", pa.string()),
                           ("text", pa.string()), ("score", pa.float64()), ("raw", pa.string()),
                           ("run_id", pa.string())])


class GenerationError(RuntimeError):
    """The run cannot proceed (bad option, conflicting partition, missing input); the message says why."""


class InjectedStop(RuntimeError):
    """Raised by the `_stop_after_shards` test hook to simulate a driver dying mid-run."""


# -- filesystem helpers -------------------------------------------------------------------------------

def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _write_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Table) -> None:
    """Write to a temp name beside the target, then rename (atomic on local/NFS; object stores PUT whole)."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"
    if isinstance(data, pa.Table):
        pq.write_table(data, tmp, filesystem=fs)
    else:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
    fs.move(tmp, path)


def _remove_stale_temps(fs: pafs.FileSystem, part: str) -> None:
    """Delete temp files that a killed earlier attempt left mid-write (every shard is done by now, so no
    writer of this run still owns one): a finished partition holds only its real files."""
    for sub in ("reviews", "rejects", "products"):
        sel = pafs.FileSelector(_join(part, sub), allow_not_found=True)
        for info in fs.get_file_info(sel):
            if info.base_name.startswith(".tmp-"):
                fs.delete_file(info.path)


def _read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


@dataclass
class InputUnit:
    """One read: a catalog file, or a directory of parquet files read together by read_parquet."""
    uri: str
    files: list[dict[str, Any]]  # {"path", "size", "checksum"}
    is_dir: bool


def _checksum(fs: pafs.FileSystem, info: pafs.FileInfo) -> str:
    if isinstance(fs, pafs.LocalFileSystem):
        h = hashlib.sha256()
        with open(info.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()
    # object stores: hashing would download the catalog; size + mtime changes when the object does
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    return f"size-mtime:{info.size}:{mtime}"


def list_inputs(catalogs: Sequence[str]) -> list[InputUnit]:
    """Resolve catalog paths/URIs (files or directories) into read units with sizes and checksums."""
    units = []
    for uri in catalogs:
        fs, path = filesystem(str(uri))
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise GenerationError(f"catalog input not found: {uri}")
        prefix = uri.split("://", 1)[0] + "://" if "://" in str(uri) else ""
        if info.type == pafs.FileType.Directory:
            infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                     if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))]
            infos.sort(key=lambda i: i.path)
            files = [{"path": prefix + i.path, "size": i.size, "checksum": _checksum(fs, i)} for i in infos]
            units.append(InputUnit(str(uri), files, True))
        else:
            units.append(InputUnit(str(uri), [{"path": prefix + info.path, "size": info.size,
                                               "checksum": _checksum(fs, info)}], False))
    return units


# -- catalog stage ------------------------------------------------------------------------------------

def _read_unit(paths: list[str], mapping: dict, opts: dict) -> pd.DataFrame:
    import ray

    ds = ray.data.read_parquet(paths if len(paths) > 1 else paths[0], include_paths=True)
    ds = ds.map_batches(cat.validate_batch, batch_format="pandas", fn_args=(mapping,), fn_kwargs=opts,
                        batch_size=4096)
    return ds.to_pandas()


def read_catalog(units: list[InputUnit], mapping: dict, *, keep_columns: Sequence[str] = (),
                 language_column: str | None = None, default_language: str = "en",
                 rating_column: str | None = None, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Read and validate every input with Ray Data; one row per catalog row (plus one per unreadable
    file), in input order, duplicates marked. A failing directory is retried file by file."""
    import ray

    opts = dict(keep_columns=list(keep_columns), language_column=language_column,
                default_language=default_language, rating_column=rating_column)
    ctx = ray.data.DataContext.get_current()
    old_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # "first occurrence" of a duplicate id must be stable
    frames = []
    try:
        for unit in units:
            groups = [[f["path"] for f in unit.files]] if unit.files else []
            while groups:
                paths = groups.pop(0)
                try:
                    frames.append(_read_unit(paths, mapping, opts))
                except Exception as e:  # noqa: BLE001 - any read error rejects that file, not the run
                    if len(paths) > 1:
                        groups = [[p] for p in paths] + groups
                        continue
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                    log(f"catalog {paths[0]}: unreadable ({msg}); counted as one rejected input row")
                    frames.append(pd.DataFrame([{"status": "rejected", "reason": "unreadable_file",
                                                 "source_file": paths[0], "raw": json.dumps({"error": msg})}]))
    finally:
        ctx.execution_options.preserve_order = old_order
    cols = cat.output_schema(keep_columns).names
    df = pd.concat([f.reindex(columns=cols) for f in frames], ignore_index=True) if frames else \
        pd.DataFrame(columns=cols)
    df["source_row"] = df.groupby("source_file", sort=False, dropna=False).cumcount()
    df["source_file"] = df["source_file"].map(lambda p: p[7:] if isinstance(p, str) and p.startswith("file://") else p)
    return cat.mark_duplicates(df)


# -- generation actor ---------------------------------------------------------------------------------

def _h(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def review_id(run_id: str, product_id: str, index: int) -> str:
    """Deterministic review id from (run, product, index)."""
    return _h("review", run_id, product_id, index)[:24]


def shard_of(product_id: str, n_shards: int) -> int:
    """Stable shard of a product (independent of input order)."""
    return int(_h("shard", product_id)[:15], 16) % n_shards


def draw_rating(product_id: str, index: int, seed: int, cdf: np.ndarray) -> int:
    """Target rating 1..5 from a distribution's CDF, a pure function of (product, index, seed)."""
    from reviewgen.core.sampling import row_seed

    u = row_seed(f"rating\x1f{product_id}", index, seed) / 2.0 ** 64
    return int(np.searchsorted(cdf, u, side="right")) + 1


class GeneratorActor:
    """Loads the exported model once; per call, generates, scores, filters and writes whole shards."""

    def __init__(self, model_dir: str, out: str, params: dict[str, Any]):
        import torch

        from reviewgen.core.checkpoint import load_checkpoint
        from reviewgen.core.memorization import NGramIndex
        from reviewgen.core.device import pick_device

        torch.set_num_threads(max(1, int(params.get("threads", 1))))
        self.device = pick_device(None)
        self.ckpt = load_checkpoint(model_dir, self.device)
        self.tok = self.ckpt.tokenizer
        p = self.ckpt.ngram_path
        self.ngrams = NGramIndex.load(p) if p is not None else None
        self.fs, self.out = filesystem(out)
        self.p = params
        self.cdf = np.cumsum(np.asarray(params["rating_distribution"], dtype=np.float64))
        self.cdf /= self.cdf[-1]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame([self._shard(int(s), json.loads(pl)) for s, pl in zip(batch["shard"], batch["payload"])])

    def _generate(self, conds, seeds) -> list[str]:
        from reviewgen.core.sampling import generate_texts

        p = self.p
        return generate_texts(self.ckpt.generator, self.tok, conds, row_seeds=seeds, temperature=p["temperature"],
                              top_p=p["top_p"], batch_size=p["batch_size"], device=self.device)

    def _reason(self, text: str, lang: str, score: float, ids: list[int]) -> str | None:
        from reviewgen.core.text import detect_language
        from reviewgen.core.text import find_pii

        p = self.p
        if not text.strip():
            return "empty"
        if p["reject_broken_text"] and "\ufffd" in text:
            # byte-level BPE can stop mid-character; U+FFFD in a review is visible garbage
            return "broken_text"
        if len(ids) < p["min_tokens"] or len(text) < p["min_chars"]:
            return "too_short"
        if (p["max_tokens"] and len(ids) > p["max_tokens"]) or (p["max_chars"] and len(text) > p["max_chars"]):
            return "too_long"
        if any(find_pii(text).values()) or any(t in text for t in PII_PLACEHOLDERS):
            return "pii"
        if detect_language(text) != lang:
            return "language_mismatch"
        if self.ngrams is not None and self.ngrams.longest_copy(ids) >= p["max_copy_span"]:
            return "memorized"
        if score < p["min_score"]:
            return "low_score"
        return None

    def _shard(self, shard: int, products: list[dict[str, Any]]) -> dict[str, Any]:
        from reviewgen.core.sampling import row_seed
        from reviewgen.score.calibration import apply_calibration
        from reviewgen.score.signals import discriminator_outputs
        from reviewgen.core.tokenizer import Condition

        p, k, seed, run_id = self.p, self.p["reviews_per_product"], self.p["seed"], self.p["run_id"]
        t0 = time.perf_counter()
        rows = [(pr, i) for pr in products for i in range(k)]
        ratings = [pr["target_rating"] if pr.get("target_rating") else draw_rating(pr["product_id"], i, seed, self.cdf)
                   for pr, i in rows]
        conds = [Condition(title=pr["title"], category=pr.get("category") or "", rating=r, language=pr["language"])
                 for (pr, _), r in zip(rows, ratings)]
        seeds = [row_seed(pr["product_id"], i, seed) for pr, i in rows]
        texts = self._generate(conds, seeds)
        t1 = time.perf_counter()
        logits, _ = discriminator_outputs(self.ckpt.discriminator, self.tok, conds, texts,
                                          batch_size=p["batch_size"], device=self.device)
        scores = apply_calibration(logits, self.ckpt.calibration)
        t2 = time.perf_counter()
        token_lists = self.tok.review_token_lists(texts) if texts else []
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        keep, rejects = [], []
        for (pr, i), r, text, sc, ids in zip(rows, ratings, texts, scores, token_lists):
            rid = review_id(run_id, pr["product_id"], i)
            why = self._reason(text, pr["language"], float(sc), ids)
            if why:
                rejects.append({"stage": "filter", "reason": why, "product_id": pr["product_id"], "review_id": rid,
                                "review_index": i, "source_file": pr.get("source_file"), "text": text,
                                "score": float(sc), "raw": None, "run_id": run_id})
                continue
            rec = {"product_id": pr["product_id"], "review_id": rid, "review_index": i, "rating": int(r),
                   "text": text, "score": float(sc), "model_version": p["model_version"], "run_id": run_id,
                   "seed": seed, "generated_at": now, "language": pr["language"], "title": pr["title"],
                   "category": pr.get("category")}
            rec.update({c: None if pr.get(c) is None else str(pr.get(c)) for c in p["keep_columns"]})
            keep.append(rec)
        t3 = time.perf_counter()
        name = f"part-{shard:05d}.parquet"
        # rejects first, reviews last: the reviews file is the shard's completion marker
        _write_atomic(self.fs, _join(self.out, "rejects", f"filter-{name}"),
                      pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA))
        _write_atomic(self.fs, _join(self.out, "reviews", name),
                      pa.Table.from_pylist(keep, schema=review_schema(p["keep_columns"])))
        t4 = time.perf_counter()
        return {"shard": shard, "products": len(products), "generated": len(rows), "accepted": len(keep),
                "t_generate": t1 - t0, "t_score": t2 - t1, "t_filter": t3 - t2, "t_write": t4 - t3}


def review_schema(keep_columns: Sequence[str]) -> pa.Schema:
    """Schema of the reviews table (pass-through columns as strings)."""
    return pa.schema(REVIEW_FIELDS + [(c, pa.string()) for c in keep_columns])


# -- the run ------------------------------------------------------------------------------------------

def _model_info(model_dir: str | Path) -> tuple[str, dict[str, Any], int | None]:
    p = Path(model_dir)
    try:
        meta = json.loads((p / "meta.json").read_text())
        config = json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenerationError(f"model directory {p}: cannot read meta.json/config.json ({e})") from e
    n = None
    if (p / "ngrams.npy").is_file():
        arr = np.load(p / "ngrams.npy", mmap_mode="r", allow_pickle=False)
        n = int(arr[0]) if arr.size else None
    return str(meta.get("version", "unknown")), {"meta": meta, "config": config}, n


def _rating_distribution(model: dict[str, Any], override: Sequence[float] | None) -> tuple[list[float], str]:
    if override is not None:
        src, dist = "option", list(override)
    elif isinstance(model["meta"].get("rating_distribution"), (list, dict)):
        d = model["meta"]["rating_distribution"]
        src, dist = "model", [float(d.get(str(k), d.get(k, 0))) for k in range(1, 6)] if isinstance(d, dict) else list(d)
    else:
        src, dist = "default (sample en corpus)", list(DEFAULT_RATING_DISTRIBUTION)
    if len(dist) != 5 or any(not math.isfinite(x) or x < 0 for x in dist) or sum(dist) <= 0:
        raise GenerationError(f"rating distribution must be 5 non-negative weights for 1..5 stars, got {dist}")
    s = sum(dist)
    return [x / s for x in dist], src


def _resolve_since(out: str, since: str) -> str:
    if len(since) == 10 and since[4] == "-" and since[7] == "-":
        return _join(out, f"run_date={since}")
    return since


def _previous_hashes(since_uri: str) -> tuple[dict[str, str], str]:
    fs, path = filesystem(since_uri)
    if not exists(fs, _join(path, "_SUCCESS")):
        raise GenerationError(f"--since {since_uri}: not a finished run (no _SUCCESS)")
    man = _read_json(fs, _join(path, "manifest.json")) or {}
    t = pq.read_table(_join(path, "products", "products.parquet"), filesystem=fs, columns=["product_id", "attr_hash"])
    return dict(zip(t.column("product_id").to_pylist(), t.column("attr_hash").to_pylist())), man.get("run_id", "")


def _counts_from_output(fs: pafs.FileSystem, part: str) -> tuple[int, Counter, set[int]]:
    """(accepted reviews, filter rejects by reason, finished shards) read back from the partition."""
    accepted, reasons, done = 0, Counter(), set()
    rev_dir = _join(part, "reviews")
    if exists(fs, rev_dir):
        for i in fs.get_file_info(pafs.FileSelector(rev_dir)):
            if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"):
                done.add(int(i.base_name[5:10]))
                accepted += pq.ParquetFile(i.path, filesystem=fs).metadata.num_rows
    rej_dir = _join(part, "rejects")
    for s in sorted(done):
        f = _join(rej_dir, f"filter-part-{s:05d}.parquet")
        if exists(fs, f):
            reasons.update(pq.read_table(f, filesystem=fs, columns=["reason"]).column("reason").to_pylist())
    return accepted, reasons, done


def _table(summary: dict[str, Any]) -> str:
    c, t = summary["counts"], summary["timings_s"]
    lines = [f"run {summary['run_id']} ({summary['run_date']}) -> {summary['partition']}"]
    for k in ("products_in", "products_valid", "products_rejected", "products_unchanged", "products_to_generate",
              "shards", "shards_resumed", "reviews_generated", "reviews_accepted", "reviews_rejected"):
        lines.append(f"  {k:<24}{c.get(k, 0):>10}")
    for k, v in sorted(c.get("catalog_rejects_by_reason", {}).items()):
        lines.append(f"    catalog:{k:<22}{v:>8}")
    for k, v in sorted(c.get("review_rejects_by_reason", {}).items()):
        lines.append(f"    filter:{k:<23}{v:>8}")
    for k, v in t.items():
        lines.append(f"  time {k:<19}{v:>10.2f}s")
    lines.append(f"  {'reviews/s':<24}{summary['reviews_per_s']:>10.1f}")
    return "\n".join(lines)


def run_generation(model_dir: str | Path, catalogs: Sequence[str], out: str | Path, *, reviews_per_product: int = 3,
                   run_date: str | None = None, since: str | None = None, force: bool = False,
                   mapping: None | str | Mapping[str, Any] = None, keep_columns: Sequence[str] = (), seed: int = 0,
                   min_score: float = 0.0, max_copy_span: int = 8, temperature: float = 1.0, top_p: float = 0.95,
                   batch_size: int = 64, num_actors: int | None = None, language_column: str | None = None,
                   default_language: str = "en", rating_column: str | None = None,
                   rating_distribution: Sequence[float] | None = None, min_tokens: int = 3, max_tokens: int | None = None,
                   min_chars: int = 1, max_chars: int | None = None, products_per_shard: int = 256,
                   cpus_per_actor: float = 0.5, reject_broken_text: bool = True, log: Callable[[str], None] = print,
                   _stop_after_shards: int | None = None) -> dict[str, Any]:
    """Generate `reviews_per_product` reviews for every valid catalog product into OUT/run_date=DATE/.

    Idempotent (a finished identical run is a no-op; `force` regenerates), resumable (finished shards
    are kept), incremental (`since` = a previous run date or partition dir: only new/changed products).
    Returns the summary dict (also written into manifest.json).
    """
    t_start = time.perf_counter()
    if reviews_per_product < 1:
        raise GenerationError("--reviews-per-product must be >= 1")
    if not 0 <= min_score <= 1:
        raise GenerationError("--min-score must be within [0, 1] (it thresholds the calibrated p_human)")
    if batch_size < 1 or products_per_shard < 1:
        raise GenerationError("--batch-size and products_per_shard must be >= 1")
    run_date = run_date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    try:
        dt.date.fromisoformat(run_date)
    except ValueError as e:
        raise GenerationError(f"--run-date must be YYYY-MM-DD, got {run_date!r}") from e
    # contract fields already in the reviews table need no pass-through
    keep_columns = [c for c in dict.fromkeys(keep_columns) if c and c not in ("product_id", "title", "category", "language")]
    clash = set(keep_columns) & {n for n, _ in REVIEW_FIELDS}
    if clash:
        raise GenerationError(f"--keep-columns {sorted(clash)} clash with output columns")
    model_version, model, ngram_n = _model_info(model_dir)
    if ngram_n is not None and max_copy_span < ngram_n:
        raise GenerationError(f"--max-copy-span {max_copy_span} is below the model's n-gram size {ngram_n}")
    dist, dist_src = _rating_distribution(model, rating_distribution)
    resolved_mapping = cat.resolve_mapping(mapping)
    units = list_inputs([str(c) for c in catalogs])
    out_fs, out_path = filesystem(str(out))
    part = _join(out_path, f"run_date={run_date}")
    since_uri = _resolve_since(out_path, since) if since else None
    prev_hashes, prev_run = _previous_hashes(since_uri) if since_uri else ({}, None)

    settings = {"reviews_per_product": reviews_per_product, "seed": seed, "min_score": min_score,
                "max_copy_span": max_copy_span, "temperature": temperature, "top_p": top_p,
                "mapping": resolved_mapping, "keep_columns": keep_columns, "language_column": language_column,
                "default_language": default_language, "rating_column": rating_column,
                "rating_distribution": dist, "min_tokens": min_tokens, "max_tokens": max_tokens,
                "min_chars": min_chars, "max_chars": max_chars, "products_per_shard": products_per_shard,
                "reject_broken_text": reject_broken_text, "since_run": prev_run}
    inputs = [f for u in units for f in u.files] + [{"path": u.uri, "empty_directory": True}
                                                   for u in units if not u.files]
    run_id = _h(run_date, model_version, json.dumps(settings, sort_keys=True, default=str),
                json.dumps([(f["path"], f.get("checksum")) for f in inputs]))[:16]

    manifest = _read_json(out_fs, _join(part, "manifest.json"))
    if exists(out_fs, _join(part, "_SUCCESS")) and not force:
        if manifest and manifest.get("run_id") == run_id:
            log(f"{part}: already generated by run {run_id} with the same inputs, model and settings; "
                "nothing to do (--force regenerates)")
            return dict(manifest["summary"], noop=True)
        raise GenerationError(f"{part} holds a finished run {manifest.get('run_id') if manifest else '?'} with "
                              f"different inputs, model or settings (this run: {run_id}); pass --force to overwrite")
    started = _read_json(out_fs, _join(part, "run.json"))
    if force or (started and started.get("run_id") != run_id):
        if exists(out_fs, part):
            log(f"{part}: removing {'previous output (--force)' if force else 'an unfinished different run'}")
            out_fs.delete_dir(part)
    _write_atomic(out_fs, _join(part, "run.json"), json.dumps(
        {"run_id": run_id, "run_date": run_date, "model_version": model_version, "settings": settings},
        indent=2, default=str).encode())

    ensure_ray(log=log)
    import ray

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    table = read_catalog(units, resolved_mapping, keep_columns=keep_columns, language_column=language_column,
                         default_language=default_language, rating_column=rating_column, log=log)
    timings["read_validate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ok = table[table["status"] == "ok"].copy()
    bad = table[table["status"] != "ok"]
    ok["generate"] = [prev_hashes.get(p) != h for p, h in zip(ok["product_id"], ok["attr_hash"])]
    todo = ok[ok["generate"]].sort_values("product_id", kind="stable")
    n_shards = max(1, math.ceil(len(todo) / products_per_shard)) if len(todo) else 0
    ok["shard"] = [shard_of(p, n_shards) if g else -1 for p, g in zip(ok["product_id"], ok["generate"])]
    todo = todo.assign(shard=[shard_of(p, n_shards) for p in todo["product_id"]]) if n_shards else todo
    _write_atomic(out_fs, _join(part, "products", "products.parquet"), pa.Table.from_pandas(
        ok[["product_id", "attr_hash", "shard", "generate", "source_file", "source_row"]].reset_index(drop=True),
        preserve_index=False))
    rej = pd.DataFrame({"stage": ["read" if r == "unreadable_file" else "catalog" for r in bad["reason"]],
                        "reason": bad["reason"].astype(object), "product_id": bad["product_id"].astype(object),
                        "review_id": None, "review_index": None, "source_file": bad["source_file"].astype(object),
                        "text": None, "score": None, "raw": bad["raw"].astype(object), "run_id": run_id})
    rej = rej.assign(source_row=bad["source_row"].to_numpy())
    _write_atomic(out_fs, _join(part, "rejects", "catalog.parquet"),
                  pa.Table.from_pandas(rej, schema=REJECT_SCHEMA.append(pa.field("source_row", pa.int64())),
                                       preserve_index=False))
    _, _, done = _counts_from_output(out_fs, part)
    prod_cols = list(dict.fromkeys(["product_id", "title", "category", "language", "target_rating", "source_file",
                                    *keep_columns]))
    pending = []
    for s, g in todo.groupby("shard", sort=True):
        if int(s) not in done:
            recs = g[prod_cols].astype(object).where(g[prod_cols].notna(), None).to_dict("records")
            pending.append({"shard": int(s), "payload": json.dumps(recs, default=str)})
    timings["plan"] = time.perf_counter() - t0
    log(f"catalog: {len(table)} rows -> {len(ok)} valid, {len(bad)} rejected; {len(todo)} products to generate "
        f"in {n_shards} shards ({len(done)} already done, {len(pending)} pending)")

    t0 = time.perf_counter()
    stage: Counter = Counter()
    if pending:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if num_actors is None:
            num_actors = gpus if gpus else max(1, min(len(pending), int(ray.cluster_resources().get("CPU", 1) // 2)))
        num_actors = max(1, min(num_actors, len(pending)))
        params = {"reviews_per_product": reviews_per_product, "seed": seed, "run_id": run_id,
                  "model_version": model_version, "temperature": temperature, "top_p": top_p,
                  "batch_size": batch_size, "min_score": min_score, "max_copy_span": max_copy_span,
                  "min_tokens": min_tokens, "max_tokens": max_tokens, "min_chars": min_chars,
                  "max_chars": max_chars, "keep_columns": keep_columns, "rating_distribution": dist,
                  "reject_broken_text": reject_broken_text,
                  "threads": max(1, round(cpus_per_actor))}
        res = {"num_gpus": 1} if gpus else {"num_cpus": cpus_per_actor}
        ds = ray.data.from_items(pending, override_num_blocks=len(pending))
        ds = ds.map_batches(GeneratorActor, fn_constructor_args=(str(Path(model_dir).resolve()), part, params),
                            compute=ray.data.ActorPoolStrategy(size=num_actors), batch_size=1,
                            batch_format="pandas", **res)
        log(f"generating: {len(pending)} shards on {num_actors} actor(s) ({'GPU' if gpus else 'CPU'})")
        n_done = 0
        for row in ds.iter_rows():
            n_done += 1
            stage.update({k: row[k] for k in ("generated", "accepted", "t_generate", "t_score", "t_filter", "t_write")})
            if _stop_after_shards is not None and n_done >= _stop_after_shards:
                raise InjectedStop(f"test hook: stopped after {n_done} shards")
    timings["generate_stage"] = time.perf_counter() - t0
    for k in ("t_generate", "t_score", "t_filter", "t_write"):
        timings[f"actor_{k[2:]}"] = float(stage.get(k, 0.0))

    t0 = time.perf_counter()
    accepted, reasons, done_after = _counts_from_output(out_fs, part)
    missing = sorted(set(int(s) for s in todo["shard"].unique()) - done_after) if n_shards else []
    if missing:
        raise GenerationError(f"shards {missing[:10]} have no output after the generation stage; rerun to resume")
    catalog_reasons = Counter(bad["reason"].tolist())
    counts = {"products_in": int(len(table)), "products_valid": int(len(ok)), "products_rejected": int(len(bad)),
              "products_unchanged": int((~ok["generate"]).sum()), "products_to_generate": int(len(todo)),
              "shards": n_shards, "shards_resumed": len(done), "files_unreadable": catalog_reasons.get("unreadable_file", 0),
              "reviews_generated": accepted + sum(reasons.values()), "reviews_accepted": accepted,
              "reviews_rejected": sum(reasons.values()), "reviews_generated_this_invocation": int(stage.get("generated", 0)),
              "catalog_rejects_by_reason": dict(sorted(catalog_reasons.items())),
              "review_rejects_by_reason": dict(sorted(reasons.items()))}
    assert counts["products_in"] == counts["products_valid"] + counts["products_rejected"], counts
    timings["finalize"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    gen_t = timings["generate_stage"]
    summary = {"run_id": run_id, "run_date": run_date, "partition": part, "noop": False, "model_version": model_version,
               "counts": counts, "timings_s": {k: round(v, 3) for k, v in timings.items()},
               "reviews_per_s": round(counts["reviews_generated_this_invocation"] / gen_t, 2) if gen_t > 0 else 0.0}
    manifest = {"run_id": run_id, "run_date": run_date, "inputs": inputs,
                "model": {"dir": str(Path(model_dir).resolve()), "version": model_version,
                          "data_hash": model["meta"].get("data_hash"), "rating_distribution_source": dist_src,
                          "config": model["config"].get("run")},
                "settings": settings, "since": since_uri, "summary": summary,
                "finished_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    _remove_stale_temps(out_fs, part)
    _write_atomic(out_fs, _join(part, "manifest.json"), json.dumps(manifest, indent=2, default=str).encode())
    _write_atomic(out_fs, _join(part, "_SUCCESS"), b"")
    log(_table(summary))
    return summary


# -- command line (shared by jobs/generate.py; the Typer CLI mirrors these options) ------------------

def build_parser() -> argparse.ArgumentParser:
    """argparse parser for `python jobs/generate.py` (same options as `reviewgen generate`)."""
    a = argparse.ArgumentParser(prog="generate", description="Nightly catalog-wide review generation on Ray Data.")
    a.add_argument("--model", required=True, help="exported model directory (reviewgen export)")
    a.add_argument("--catalog", required=True, action="extend", nargs="+", metavar="PATH",
                   help="catalog parquet file(s) or directory(ies) (local, NFS, s3://, gs://); "
                        "several after one flag, or the flag repeated")
    a.add_argument("--out", required=True, help="output root; the run writes OUT/run_date=YYYY-MM-DD/")
    a.add_argument("--reviews-per-product", type=int, default=3, help="reviews generated per product (K)")
    a.add_argument("--run-date", default=None, help="partition date YYYY-MM-DD (default: today, UTC)")
    a.add_argument("--since", default=None, help="previous run date or partition dir: only new/changed products")
    a.add_argument("--force", action="store_true", help="regenerate even if this date's partition is complete")
    m = a.add_mutually_exclusive_group()
    m.add_argument("--mapping", default=None, help="column-mapping YAML file (see configs/catalogs/)")
    m.add_argument("--preset", default=None, help=f"bundled column mapping: {', '.join(cat.presets())}")
    a.add_argument("--keep-columns", default="", help="comma-separated catalog columns passed through to reviews")
    a.add_argument("--seed", type=int, default=0, help="generation seed (same seed + inputs + model = same reviews)")
    a.add_argument("--min-score", type=float, default=0.0, help="reject reviews with calibrated p_human below this")
    a.add_argument("--max-copy-span", type=int, default=8, help="reject reviews copying this many training tokens")
    a.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    a.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    a.add_argument("--batch-size", type=int, default=64, help="reviews per sampler batch inside an actor")
    a.add_argument("--num-actors", type=int, default=None, help="generator actors (default: GPUs, else CPUs/2)")
    a.add_argument("--language-column", default=None, help="catalog column holding each product's language")
    a.add_argument("--language", default="en", help="language when there is no language column (en|zh)")
    a.add_argument("--rating-column", default=None, help="catalog column with the target rating (1..5) per row")
    a.add_argument("--rating-dist", default=None, help="5 comma-separated weights for 1..5 stars "
                   "(default: the model's training distribution, else the sample en distribution)")
    a.add_argument("--min-tokens", type=int, default=3, help="reject reviews shorter than this many tokens")
    a.add_argument("--max-chars", type=int, default=None, help="reject reviews longer than this many characters")
    a.add_argument("--keep-broken-text", action="store_true", help="accept reviews containing U+FFFD "
                   "(a review cut mid-character); rejected as broken_text by default")
    a.add_argument("--products-per-shard", type=int, default=256, help="products per resumable output shard")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python jobs/generate.py ...`; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        run_generation(args.model, args.catalog, args.out, reviews_per_product=args.reviews_per_product,
                       run_date=args.run_date, since=args.since, force=args.force,
                       mapping=args.mapping or args.preset, seed=args.seed,
                       keep_columns=[c.strip() for c in args.keep_columns.split(",") if c.strip()],
                       min_score=args.min_score, max_copy_span=args.max_copy_span, temperature=args.temperature,
                       top_p=args.top_p, batch_size=args.batch_size, num_actors=args.num_actors,
                       language_column=args.language_column, default_language=args.language,
                       rating_column=args.rating_column,
                       rating_distribution=[float(x) for x in args.rating_dist.split(",")] if args.rating_dist else None,
                       min_tokens=args.min_tokens, max_chars=args.max_chars,
                       products_per_shard=args.products_per_shard, reject_broken_text=not args.keep_broken_text)
    except (GenerationError, cat.CatalogError) as e:
        print(f"error: {e}")
        return 2
    return 0
