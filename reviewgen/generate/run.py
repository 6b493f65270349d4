"""Run identity, resume state and the manifest of a nightly generation run: pure functions over the
filesystem, no Ray, so every decision here is testable on its own.

Identity: ``run_id`` hashes the run date, model version, the settings that shape the output and the input
checksums, so a resume of the same run keeps its review ids and a finished partition with the same
``run_id`` makes a rerun a no-op. ``review_id = sha256(run_id, product_id, index)``; the shard of a product
is a hash of its id, so a shard's rows are a pure function of (product ids, seed).

Resume: a shard's reviews file (``reviews/part-NNNNN.parquet``) is written last and atomically (temp name,
then rename) and carries the shard's counts in its parquet footer, so the finished shards and every count
are read from file footers, never from rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reviewgen.core.config import RunConfig
from reviewgen.core.errors import ReviewgenError
from reviewgen.core.model_dir import CheckpointError, Meta, is_model_dir, ngram_order, read_meta, read_run_config
from reviewgen.core.sampling import row_seed
from reviewgen.core.watermark import Watermark
from reviewgen.generate.config import GenerateConfig
from reviewgen.generate.results import RunSummary
from reviewgen.infra.storage import TMP_PREFIX, exists, filesystem

# Rating distribution (1..5 stars) of the carried sample's English reviews (data/sample, 6,858 reviews),
# used when the model directory does not carry its training corpus's distribution.
DEFAULT_RATING_DISTRIBUTION = (0.033, 0.031, 0.059, 0.220, 0.657)
STATS_KEY = b"reviewgen.shard_stats"  # parquet footer key of a shard's counts


class GenerationError(ReviewgenError, RuntimeError):
    """The run cannot proceed (bad option, conflicting partition, missing input); the message says why."""


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every stage of one run reads: its settings, model, output partition and identity, its inputs
    with the catalog mapping and rating distribution, the previous run's products (for --since) and the
    watermark; with what manifest.json records of them (the identity settings, --since's partition, the
    model)."""

    cfg: GenerateConfig
    model_dir: str | Path
    model_version: str
    fs: Any
    part: str
    run_id: str
    run_date: str
    inputs: list[dict]
    mapping: dict
    dist: list[float]
    prev_products: str | None
    watermark: Watermark | None
    settings: dict[str, Any]
    since: str | None
    model: dict[str, Any]


# -- identities --------------------------------------------------------------------------------------


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
    u = row_seed(f"rating\x1f{product_id}", index, seed) / 2.0**64
    return int(np.searchsorted(cdf, u, side="right")) + 1


def n_shards_for(n_products: int, products_per_shard: int) -> int:
    """Shard count for `n_products` products to generate (0 when there are none)."""
    return max(1, math.ceil(n_products / products_per_shard)) if n_products else 0


def identity_settings(
    cfg: GenerateConfig,
    mapping: dict,
    distribution: Sequence[float],
    since_run: str | None,
    watermark: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings that shape a run's output (batch size and the actor pool do not). `watermark`: the
    watermark's lineage (scheme, settings, signing key id; never the key), or None for an unwatermarked run,
    recorded as "off" so that it shows in the manifest and gives another run id."""
    s = cfg.sampling
    return {
        "reviews_per_product": s.reviews_per_product,
        "seed": s.seed,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "rating_distribution": list(distribution),
        "filter": dataclasses.asdict(cfg.filter),
        "mapping": mapping,
        "keep_columns": list(cfg.catalog.keep_columns),
        "language_column": cfg.catalog.language_column,
        "default_language": cfg.catalog.language,
        "rating_column": cfg.catalog.rating_column,
        "products_per_shard": cfg.sharding.products_per_shard,
        "since_run": since_run,
        "watermark": watermark or "off",
        # only when on, so that the ids of runs made before the setting existed stay the same
        **({"compile_decode": True} if s.compile_decode else {}),
    }


def run_identity(run_date: str, model_version: str, settings: dict[str, Any], inputs: list[dict]) -> str:
    """The run id: same date, model, settings and input checksums give the same id."""
    return _h(
        run_date,
        model_version,
        json.dumps(settings, sort_keys=True, default=str),
        json.dumps([(f["path"], f.get("checksum")) for f in inputs]),
    )[:16]


def resolve_run_date(run_date: str | None) -> str:
    """The partition date (default: today, UTC); GenerationError when not YYYY-MM-DD."""
    run_date = run_date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    try:
        dt.date.fromisoformat(run_date)
    except ValueError as e:
        raise GenerationError(f"--run-date must be YYYY-MM-DD, got {run_date!r}") from e
    return run_date


# -- inputs and model --------------------------------------------------------------------------------


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


def list_inputs(catalogs: Sequence[str]) -> list[dict[str, Any]]:
    """Catalog paths/URIs (files or directories) as input records {path, size, checksum}, in order; an
    empty directory is recorded as {path, empty_directory: True}."""
    out: list[dict[str, Any]] = []
    for uri in map(str, catalogs):
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise GenerationError(f"catalog input not found: {uri}")
        prefix = uri.split("://", 1)[0] + "://" if "://" in uri else ""
        if info.type == pafs.FileType.Directory:
            infos = sorted(
                (
                    i
                    for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                    if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))
                ),
                key=lambda i: i.path,
            )
            out += [{"path": prefix + i.path, "size": i.size, "checksum": _checksum(fs, i)} for i in infos]
            if not infos:
                out.append({"path": uri, "empty_directory": True})
        else:
            out.append({"path": prefix + info.path, "size": info.size, "checksum": _checksum(fs, info)})
    return out


def model_info(model_dir: str | Path) -> tuple[Meta, RunConfig, int | None]:
    """(meta, run config, n-gram size or None) of an exported model directory; GenerationError naming the
    directory and the file when it is not one."""
    p = Path(model_dir)
    if not is_model_dir(p):
        raise GenerationError(f"model directory {p}: not found or incomplete (no config.json or meta.json)")
    try:
        return read_meta(p), read_run_config(p), ngram_order(p)
    except CheckpointError as e:
        raise GenerationError(f"model directory {p}: {e}") from e


def rating_distribution(meta: Meta, override: Sequence[float] | None) -> tuple[list[float], str]:
    """(normalised 1..5 star weights, where they came from): the option, else the model's, else the default."""
    if override is not None:
        src, dist = "option", list(override)
    elif meta.rating_distribution is not None:
        src, dist = "model", list(meta.rating_distribution)
    else:
        src, dist = "default (sample en corpus)", list(DEFAULT_RATING_DISTRIBUTION)
    if len(dist) != 5 or any(not math.isfinite(x) or x < 0 for x in dist) or sum(dist) <= 0:
        raise GenerationError(f"rating distribution must be 5 non-negative weights for 1..5 stars, got {dist}")
    s = sum(dist)
    return [x / s for x in dist], src


# -- partition files ----------------------------------------------------------------------------------


def join(base: str, *parts: str) -> str:
    """Join URI/path parts with '/'."""
    return "/".join([base.rstrip("/"), *parts])


def fs_uri(fs: pafs.FileSystem, path: str) -> str:
    """`path` of filesystem `fs` as a URI that a Ray task can open (a local path stays a path)."""
    return path if fs.type_name == "local" else f"{fs.type_name}://{path}"


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    """A JSON file's object, or None when it is missing or unreadable."""
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


def list_files(fs: pafs.FileSystem, directory: str, prefix: str = "") -> list[str]:
    """Sorted paths of the plain files in `directory` whose names start with `prefix` (none if absent)."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(prefix))


def remove_stale_temps(fs: pafs.FileSystem, part: str) -> None:
    """Delete temp files that a killed earlier attempt left mid-write (every shard is done by now, so no
    writer of this run still owns one): a finished partition holds only its real files."""
    for sub in ("reviews", "rejects", "products"):
        for p in list_files(fs, join(part, sub), TMP_PREFIX):
            fs.delete_file(p)


def shard_file(part: str, kind: str, shard: int) -> str:
    """Path of a shard's reviews file (kind "reviews") or filter-rejects file (kind "rejects")."""
    return join(part, kind, f"{'filter-' if kind == 'rejects' else ''}part-{shard:05d}.parquet")


def shard_stats(fs: pafs.FileSystem, part: str) -> dict[int, dict[str, Any]]:
    """{shard: its counts} for every finished shard, read from the reviews files' footers."""
    out = {}
    for p in list_files(fs, join(part, "reviews"), "part-"):
        meta = pq.ParquetFile(p, filesystem=fs).schema_arrow.metadata or {}
        out[int(p.rsplit("/", 1)[1][5:10])] = json.loads(meta.get(STATS_KEY, b"{}"))
    return out


def start_state(fs: pafs.FileSystem, part: str, run_id: str, force: bool) -> tuple[str, dict | None]:
    """What to do with an existing partition: ("noop", manifest) when this run already finished;
    ("fresh", None) after removing a --force'd or different unfinished run; ("resume", None) otherwise.
    GenerationError when a different run finished there and --force is not given."""
    manifest = read_json(fs, join(part, "manifest.json"))
    if exists(fs, join(part, "_SUCCESS")) and not force:
        if manifest and manifest.get("run_id") == run_id:
            return "noop", manifest
        raise GenerationError(
            f"{part} holds a finished run {manifest.get('run_id') if manifest else '?'} with "
            f"different inputs, model or settings (this run: {run_id}); pass --force to overwrite"
        )
    started = read_json(fs, join(part, "run.json"))
    if force or (started and started.get("run_id") != run_id):
        if exists(fs, part):
            fs.delete_dir(part)
        return "fresh", None
    return "resume", None


def resolve_since(out: str, since: str) -> str:
    """A previous run date (YYYY-MM-DD) under `out`, or a partition path/URI as given."""
    if len(since) == 10 and since[4] == "-" and since[7] == "-":
        return join(out, f"run_date={since}")
    return since


def since_run(since_uri: str) -> tuple[str, str]:
    """(products directory, run id) of a finished previous partition; GenerationError when unfinished."""
    fs, path = filesystem(since_uri)
    if not exists(fs, join(path, "_SUCCESS")):
        raise GenerationError(f"--since {since_uri}: not a finished run (no _SUCCESS)")
    man = read_json(fs, join(path, "manifest.json")) or {}
    prefix = since_uri.split("://", 1)[0] + "://" if "://" in since_uri else ""
    return prefix + join(path, "products"), man.get("run_id", "")


def summary_table(summary: RunSummary) -> str:
    """The run's counts and timings as aligned text lines for the log."""
    c = summary.counts
    lines = [f"run {summary.run_id} ({summary.run_date}) -> {summary.partition}"]
    rows = {
        "products_in": c.products_in,
        "products_valid": c.products_valid,
        "products_rejected": c.products_rejected,
        "products_unchanged": c.products_unchanged,
        "products_to_generate": c.products_to_generate,
        "shards": c.shards,
        "shards_resumed": c.shards_resumed,
        "reviews_generated": c.reviews_generated,
        "reviews_accepted": c.reviews_accepted,
        "reviews_rejected": c.reviews_rejected,
    }
    lines += [f"  {k:<24}{v:>10}" for k, v in rows.items()]
    for k, v in c.catalog_rejects_by_reason.items():
        lines.append(f"    catalog:{k:<22}{v:>8}")
    for k, v in c.review_rejects_by_reason.items():
        lines.append(f"    filter:{k:<23}{v:>8}")
    for k, v in summary.timings_s.to_dict().items():  # every stage, in stage order
        lines.append(f"  time {k:<19}{v:>10.2f}s")
    lines.append(f"  {'reviews/s':<24}{summary.reviews_per_s:>10.1f}")
    return "\n".join(lines)
