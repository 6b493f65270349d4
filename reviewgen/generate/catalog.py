"""Catalog contract and per-row validation for `reviewgen generate`.

Contract (after mapping): ``product_id`` (required, unique in a run) and ``title`` (required);
``category``, ``brand``, ``description``, ``price`` optional; named extra columns pass through as strings.
The column mapping (presets, YAML files, dicts) is resolved in ``reviewgen.generate.mapping``; its names
stay importable from here.

Validation decisions (every rejected row gets exactly one reason):
- ``missing_id`` null/empty id; ``invalid_type:product_id`` for lists/dicts/bools; ``id_too_long`` > 256 chars.
- ``missing_title`` null or empty after cleaning; ``invalid_type:title`` when the title is not text
  (a numeric title is almost always a mapping error, so it is rejected rather than stringified).
- ``title_too_long``: a title over ``MAX_TITLE_CHARS`` after cleaning is *rejected*, not truncated: such a
  row is scraped junk and a review of its first words would be a review of the wrong thing.
- Control characters, HTML entities, zero-width characters: *cleaned* (``reviewgen.core.text.clean_text``).
- Invalid UTF-8 (a binary column): ``invalid_utf8:<field>`` for id and title (we never guess an
  encoding for the key fields); optional text fields are decoded with replacement characters.
- ``invalid_price``: a price that is not a finite number >= 0 (numeric strings like "1,299.00" or
  "Rs 899" are parsed).
- ``unsupported_language`` (language column value not in the tokenizer's languages),
  ``invalid_rating`` (rating column value not in 1..5).
- ``missing_column:<field>``: the file lacks the mapped column of a required field.
- ``duplicate_id`` (decided over the whole run among otherwise valid rows: the first by (file, row) wins).
- ``unreadable_file``: a file (or the rest of a row group) that cannot be read: one rejected row.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reviewgen.core.text import clean_text
from reviewgen.core.tokenizer import LANGS
from reviewgen.generate.mapping import REQUIRED, category_tree_first
from reviewgen.infra.storage import filesystem

MAX_TITLE_CHARS = 1000
MAX_ID_CHARS = 256
MAX_OPTIONAL_CHARS = {"category": 200, "brand": 200, "description": 4000}
MAX_RAW_FIELD_CHARS = 500
_PRICE_RE = re.compile(r"^[^\d\-+]*([-+]?\d[\d,]*(?:\.\d+)?)\s*[^\d]*$")


# -- per-value coercion ------------------------------------------------------------------------------


def _is_null(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return v is pd.NA or v is pd.NaT


def _key_text(v: Any, field: str) -> tuple[str | None, str | None]:
    """(cleaned text, reject reason) for product_id/title."""
    if _is_null(v):
        return None, f"missing_{'id' if field == 'product_id' else field}"
    if isinstance(v, (bytes, bytearray)):
        try:
            v = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return None, f"invalid_utf8:{field}"
    if field == "product_id" and isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        v = str(int(v))
    elif field == "product_id" and isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = str(int(v))
    if not isinstance(v, str):
        return None, f"invalid_type:{field}"
    s = clean_text(v)
    if not s:
        return None, f"missing_{'id' if field == 'product_id' else field}"
    limit = MAX_ID_CHARS if field == "product_id" else MAX_TITLE_CHARS
    if len(s) > limit:
        return None, "id_too_long" if field == "product_id" else "title_too_long"
    return s, None


def _optional_text(v: Any, field: str) -> str | None:
    if _is_null(v):
        return None
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).decode("utf-8", errors="replace")
    if not isinstance(v, str):
        v = str(v)
    s = clean_text(v)[: MAX_OPTIONAL_CHARS.get(field, 1000)]
    return s or None


def _price(v: Any) -> tuple[float | None, str | None]:
    if _is_null(v):
        return None, None
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).decode("utf-8", errors="replace")
    if isinstance(v, str):
        m = _PRICE_RE.match(v.strip())
        if not v.strip():
            return None, None
        if not m:
            return None, "invalid_price"
        v = m.group(1).replace(",", "")
    if isinstance(v, (bool, np.bool_)):
        return None, "invalid_price"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None, "invalid_price"
    if not math.isfinite(f) or f < 0:
        return None, "invalid_price"
    return f, None


def _rating(v: Any) -> tuple[int | None, str | None]:
    if _is_null(v):
        return None, None
    try:
        f = float(v.decode() if isinstance(v, (bytes, bytearray)) else v)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None, "invalid_rating"
    r = int(round(f)) if math.isfinite(f) else 0
    return (r, None) if 1 <= r <= 5 else (None, "invalid_rating")


def raw_json(row: Mapping[str, Any]) -> str:
    """The raw catalog row as JSON (long values cut, bytes shown with escapes) for the rejects table."""

    def conv(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            v = bytes(v).decode("utf-8", errors="backslashreplace")
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, (np.floating, float)):
            return None if math.isnan(float(v)) else float(v)
        if _is_null(v) if not isinstance(v, (list, dict, np.ndarray)) else False:
            return None
        if isinstance(v, str) and len(v) > MAX_RAW_FIELD_CHARS:
            return v[:MAX_RAW_FIELD_CHARS] + f"...[{len(v)} chars]"
        return v

    return json.dumps({str(k): conv(v) for k, v in row.items()}, default=str, ensure_ascii=False)


# -- batch validation ---------------------------------------------------------------------------------


def output_schema(keep_columns: Sequence[str]) -> pa.Schema:
    """Schema of the validated catalog table (one row per input row)."""
    fields = [
        ("product_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("brand", pa.string()),
        ("description", pa.string()),
        ("price", pa.float64()),
        ("language", pa.string()),
        ("target_rating", pa.int64()),
    ]
    taken = {n for n, _ in fields}
    fields += [(c, pa.string()) for c in keep_columns if c not in taken]
    fields += [
        ("status", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("source_file", pa.string()),
        ("attr_hash", pa.string()),
    ]
    return pa.schema(fields)


def _source_value(row: Mapping[str, Any], srcs: list[dict[str, Any]]) -> tuple[Any, bool]:
    """(first non-null value among the sources, whether any source column exists)."""
    present = False
    for s in srcs:
        if s["column"] not in row:
            continue
        present = True
        v = row[s["column"]]
        if s["transform"] == "category_tree_first":
            v = category_tree_first(v)
        if not _is_null(v):
            return v, True
    return None, present


def attr_hash(rec: Mapping[str, Any], keep_columns: Sequence[str]) -> str:
    """Hash of everything that shapes a product's reviews: --since regenerates when it changes."""
    vals = [rec.get(k) for k in ("title", "category", "brand", "description", "price", "language", "target_rating")]
    vals += [rec.get(c) for c in keep_columns]
    return hashlib.sha256(json.dumps(vals, default=str).encode()).hexdigest()[:16]


def validate_records(
    rows: Sequence[Mapping[str, Any]],
    mapping: Mapping[str, list[dict[str, Any]]],
    *,
    keep_columns: Sequence[str] = (),
    language_column: str | None = None,
    default_language: str = "en",
    rating_column: str | None = None,
    source_file: str | None = None,
) -> list[dict[str, Any]]:
    """Map and validate raw catalog rows; one output record per input row with status ok|rejected."""
    out = []
    for row in rows:
        src = row.get("path") if source_file is None else source_file
        rec: dict[str, Any] = {"source_file": None if _is_null(src) else str(src)}
        reason = None
        for field in REQUIRED:
            v, present = _source_value(row, mapping[field])
            if not present:
                reason = reason or f"missing_column:{field}"
                continue
            s, why = _key_text(v, field)
            rec[field] = s
            reason = reason or why
        for field in ("category", "brand", "description"):
            v, _ = _source_value(row, mapping[field])
            rec[field] = _optional_text(v, field)
        rec["price"], why = _price(_source_value(row, mapping["price"])[0])
        reason = reason or why
        lang = row.get(language_column) if language_column else default_language
        lang = _optional_text(lang, "language")
        lang = (lang or default_language).lower()
        rec["language"] = lang
        if lang not in LANGS:
            reason = reason or "unsupported_language"
        rec["target_rating"] = None
        if rating_column:
            rec["target_rating"], why = _rating(row.get(rating_column))
            reason = reason or why
        for c in keep_columns:
            if c not in rec:  # a contract field (e.g. brand) passes through as its mapped value
                rec[c] = _optional_text(row.get(c), c)
        rec["status"] = "rejected" if reason else "ok"
        rec["reason"] = reason
        rec["raw"] = raw_json({k: v for k, v in row.items() if k != "path"}) if reason else None
        rec["attr_hash"] = None if reason else attr_hash(rec, keep_columns)
        out.append(rec)
    return out


def mark_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Reject every later occurrence of a product_id among the ok rows. Input order is (file_index,
    source_row) when those columns are present, else the frame's order."""
    df = df.reset_index(drop=True)
    if {"file_index", "source_row"} <= set(df.columns):
        df = df.sort_values(["file_index", "source_row"], kind="stable").reset_index(drop=True)
    ok = df["status"] == "ok"
    dup = ok & df["product_id"].where(ok).duplicated(keep="first") & df["product_id"].notna()
    if dup.any():
        df = df.copy()
        df.loc[dup, "status"] = "rejected"
        df.loc[dup, "reason"] = "duplicate_id"
        df.loc[dup, "attr_hash"] = None
        df.loc[dup, "raw"] = [
            json.dumps({"product_id": p, "title": t}, ensure_ascii=False)
            for p, t in zip(df.loc[dup, "product_id"], df.loc[dup, "title"])
        ]
    return df


# -- streaming read (Ray Data tasks; no driver involvement) -------------------------------------------

READ_ERRORS = (pa.ArrowInvalid, OSError)  # real I/O and format errors: the file is rejected, not the run
REJECT_BUCKET_ROWS = 4096  # rejected rows are spread over shuffle partitions in runs of this many


def stage_schema(keep_columns: Sequence[str]) -> pa.Schema:
    """Validated rows plus their position (file_index, source_row), the dedupe key and the --since flag."""
    return (
        output_schema(keep_columns)
        .append(pa.field("source_row", pa.int64()))
        .append(pa.field("file_index", pa.int64()))
        .append(pa.field("dkey", pa.string()))
        .append(pa.field("generate", pa.bool_()))
    )


def _keyed(recs: list[dict[str, Any]], file_index: int, first_row: int) -> None:
    for j, r in enumerate(recs):
        row = first_row + j
        r["source_row"], r["file_index"] = row, file_index
        # ok rows meet their duplicates by id; rejected rows only need spreading over partitions
        r["dkey"] = r["product_id"] if r["status"] == "ok" else f"\x00{file_index}:{row // REJECT_BUCKET_ROWS}"
        r["generate"] = None


def read_piece(
    path: str,
    file_index: int,
    row_group: int,
    first_row: int,
    error: str | None,
    mapping: Mapping[str, list[dict[str, Any]]],
    *,
    keep_columns: Sequence[str] = (),
    language_column: str | None = None,
    default_language: str = "en",
    rating_column: str | None = None,
    batch_rows: int = 8192,
):
    """Read and validate one row group of one catalog file; yields validated tables (`stage_schema`).

    `error` set (the driver's metadata probe failed) or a read error mid-group: the file (or the rest of
    the group) becomes one `unreadable_file` row. A bug in validation raises."""
    schema = stage_schema(keep_columns)
    row = first_row
    if error is None:
        fs, p = filesystem(path)
        batches = pq.ParquetFile(p, filesystem=fs).iter_batches(batch_size=batch_rows, row_groups=[row_group])
        while True:
            try:
                rb = next(batches, None)
            except READ_ERRORS as e:
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                break
            if rb is None:
                break
            recs = validate_records(
                rb.to_pylist(),
                mapping,
                keep_columns=keep_columns,
                language_column=language_column,
                default_language=default_language,
                rating_column=rating_column,
                source_file=path,
            )
            _keyed(recs, file_index, row)
            row += len(recs)
            yield pa.Table.from_pylist(recs, schema=schema)
    if error is not None:
        rec = {
            "status": "rejected",
            "reason": "unreadable_file",
            "source_file": path,
            "raw": json.dumps({"error": error}),
        }
        _keyed([rec], file_index, row)
        yield pa.Table.from_pylist([rec], schema=schema)
