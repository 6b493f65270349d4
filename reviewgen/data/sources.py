"""Review corpus loaders: each public corpus's raw file -> the one review table, with cleaning counts.

See docs/ARCHITECTURE.md ("Review table") for the output contract. Every dropped row is counted
under a reason, so ``in == kept + sum(dropped)`` holds for every corpus.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow.parquet as pq

from reviewgen.core.errors import InputError
from reviewgen.core.text import clean_text, mask_pii, strip_promo

REVIEW_COLUMNS: list[str] = [
    "product_id",
    "product_title",
    "category",
    "brand",
    "rating",
    "sentiment",
    "review_title",
    "text",
    "language",
    "source",
]
STR_COLUMNS = [c for c in REVIEW_COLUMNS if c != "rating"]
SPLITS = ("train", "val", "test")
CORPORA = ("amazon_devices", "multibrand", "womens_clothing", "zh_shopping")
DROP_REASONS = (
    "missing_product_id",
    "missing_rating",
    "missing_label",
    "empty_text",
    "text_too_long",
    "duplicate_text",
    "product_cap",
)

# Substrings of file names that identify a corpus, checked before looking at columns.
_NAME_PATTERNS = {
    "amazon_devices": "amazon_devices",
    "multibrand": "multibrand",
    "womens_clothing": "womens_clothing",
    "zh_shopping": "zh_online_shopping",
}
# Required columns per corpus (a missing one is a DataError); optional ones are filled with nulls.
_REQUIRED = {
    "amazon_devices": ["id", "reviews_rating", "reviews_text"],
    "multibrand": ["id", "reviews_rating", "reviews_text"],
    "womens_clothing": ["clothing_id", "rating", "review_text"],
    "zh_shopping": ["category", "label", "review"],
}
_OPTIONAL = {
    "amazon_devices": ["name", "asins", "brand", "categories", "reviews_title"],
    "multibrand": ["name", "brand", "categories", "reviews_title"],
    "womens_clothing": ["title", "division_name", "department_name", "class_name"],
    "zh_shopping": [],
}
_PREFIX = {"amazon_devices": "amz:", "multibrand": "mb:", "womens_clothing": "wc:", "zh_shopping": "zh:"}

# Amazon device categories: (label, keywords) scored over the retailer category keywords.
_AMAZON_CATEGORIES = [
    ("Accessories", ("accessor", "accs", "charger", "adapter", "cable", "cover", "case")),
    ("Smart Speakers", ("echo", "speaker", "smart home", "virtual assistant")),
    ("Streaming Media", ("streaming", "fire tv", "tvs & home theater")),
    ("E-Readers", ("e-reader", "ereader", "ebook reader", "kindle e-readers")),
    ("Tablets", ("tablet",)),
]


class DataError(InputError):
    """A data file is unreadable or does not follow the expected schema (message names file/row/column)."""


@dataclass
class LoadResult:
    """A loaded corpus in the review-table schema plus its cleaning counts."""

    frame: pd.DataFrame
    counts: dict = field(default_factory=dict)


def _read_columns(path: Path) -> list[str]:
    try:
        return list(pq.read_schema(path).names)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet file ({type(e).__name__}: {e})") from e


def detect_corpus(path: str | Path) -> str:
    """Return the corpus name for a review file, from its file name or else its columns."""
    path = Path(path)
    for corpus, pattern in _NAME_PATTERNS.items():
        if pattern in path.name:
            return corpus
    cols = set(_read_columns(path))
    if {"clothing_id", "review_text"} <= cols:
        return "womens_clothing"
    if {"review", "label", "category"} <= cols:
        return "zh_shopping"
    if {"id", "reviews_text", "asins"} <= cols:
        return "amazon_devices"
    if {"id", "reviews_text"} <= cols:
        return "multibrand"
    raise DataError(f"{path}: not a known review corpus (columns: {sorted(cols)})")


def read_parquet(path: Path) -> pd.DataFrame:
    """A parquet file as a frame; DataError naming the file when it is missing or corrupt."""
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet file ({type(e).__name__}: {e})") from e


def _read(path: Path, corpus: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    df = read_parquet(path)
    for col in _REQUIRED[corpus]:
        if col not in df.columns:
            raise DataError(f"{path}: missing required column '{col}' for corpus {corpus}")
    for col in _OPTIONAL[corpus]:
        if col not in df.columns:
            df[col] = None
    return df.reset_index(drop=True)


def _str_or_none(v: object) -> str | None:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    s = clean_text(str(v))
    return s or None


def _integer_column(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Coerce a rating/label column to float; a non-numeric value is a schema error naming the row."""
    s = df[col]
    if pd.api.types.is_bool_dtype(s) or not (
        pd.api.types.is_numeric_dtype(s) or pd.api.types.is_string_dtype(s) or s.dtype == object
    ):
        raise DataError(f"{path}: column '{col}' has type {s.dtype}, expected integers")
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() & s.notna()
    if bad.any():
        row = int(bad.idxmax())
        raise DataError(f"{path}: row {row}, column '{col}': expected an integer, got {s.iloc[row]!r}")
    return num.astype("Float64")


def _check_text_column(df: pd.DataFrame, col: str, path: Path) -> None:
    bad = df[col].map(lambda v: v is not None and not isinstance(v, str) and not pd.isna(v))
    if bad.any():
        row = int(bad.idxmax())
        raise DataError(f"{path}: row {row}, column '{col}': expected text, got {df[col].iloc[row]!r}")


def _first_line(name: object) -> str | None:
    """Datafiniti names repeat after a CRLF and end in ',,,': keep the first clean copy."""
    if not isinstance(name, str):
        return None
    first = re.split(r"[\r\n]+", name.strip())[0]
    return _str_or_none(first.strip().rstrip(", ").strip())


def _amazon_category(categories: object) -> str:
    # Only the retailer keywords: Datafiniti names are often attached to the wrong product id.
    text = categories.lower() if isinstance(categories, str) else ""
    items = [t.strip() for t in text.split(",") if t.strip()]
    scores = {label: sum(any(k in it for k in kws) for it in items) for label, kws in _AMAZON_CATEGORIES}
    best = max(scores.values())
    if best == 0:
        return "Electronics"
    # Accessory keywords are common in device listings too, so they only win when clearly ahead.
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], [c for c, _ in _AMAZON_CATEGORIES].index(kv[0])))
    label = ranked[0][0]
    if label == "Accessories" and len(ranked) > 1 and ranked[1][1] * 2 >= ranked[0][1]:
        label = ranked[1][0]
    return label


def _most_common(values: list) -> str | None:
    vals = [v for v in values if isinstance(v, str) and v]
    return Counter(vals).most_common(1)[0][0] if vals else None


def _amazon_products(df: pd.DataFrame) -> pd.DataFrame:
    names = df["name"].map(_first_line)
    brand = df["brand"].map(_str_or_none)
    by_id = pd.DataFrame({"id": df["id"], "name": names, "asins": df["asins"], "brand": brand, "cat": df["categories"]})
    asin_names: dict[str, list[str]] = {}
    for a, n in zip(by_id["asins"], by_id["name"]):
        if isinstance(a, str) and n:
            for x in a.split(","):
                asin_names.setdefault(x.strip(), []).append(n)
    rows = {}
    for pid, g in by_id.dropna(subset=["id"]).groupby("id", sort=False):
        name = _most_common(list(g["name"]))
        b = _most_common(list(g["brand"]))
        cat_src = _most_common([c for c in g["cat"] if isinstance(c, str)])
        if not name:  # nameless id: borrow the name used for the same ASIN elsewhere
            pool = [n for a in g["asins"].dropna() for x in str(a).split(",") for n in asin_names.get(x.strip(), [])]
            name = _most_common(pool)
        category = _amazon_category(cat_src)
        if not name:
            name = f"{b or 'Amazon'} {category}"
        rows[pid] = (name, category, b)
    return pd.DataFrame.from_dict(rows, orient="index", columns=["product_title", "category", "brand"])


_LATIN1_CODE = re.compile(r"(?<=[A-Za-z'])(?:(19[2-9]|2[0-4]\d|25[0-5])(?=[a-z])|(169|174)(?=[\s,]|$))")


def _fix_entity_loss(s: str | None) -> str | None:
    """'L'or233al' -> 'L'oréal': decimal Latin-1 codes left behind by upstream entity stripping."""
    return _LATIN1_CODE.sub(lambda m: chr(int(m.group(1) or m.group(2))), s) if isinstance(s, str) else None


def _prefixed(ids: pd.Series, corpus: str) -> list[str | None]:
    # A plain list: pandas 3 string columns turn None into NaN, so test for str explicitly.
    return [_PREFIX[corpus] + v if isinstance(v, str) and v else None for v in ids]


def _stage_amazon(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    prod = _amazon_products(df)
    pid = df["id"].map(_str_or_none)
    meta = prod.reindex(df["id"].fillna("").astype(object)).reset_index(drop=True)
    return pd.DataFrame(
        {
            "product_id": _prefixed(pid, "amazon_devices"),
            "product_title": meta["product_title"],
            "category": meta["category"],
            "brand": meta["brand"],
            "rating": _integer_column(df, "reviews_rating", path),
            "review_title": df["reviews_title"].map(_str_or_none),
            "raw_text": df["reviews_text"],
        }
    )


def _stage_multibrand(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    pid = df["id"].map(_str_or_none)
    cat = df["categories"].map(lambda c: _str_or_none(c.split(",")[0]) if isinstance(c, str) else None)
    title = df["name"].map(_str_or_none).map(_fix_entity_loss)
    title = title.where(title.notna(), pid.map(lambda v: f"Product {v}"))
    return pd.DataFrame(
        {
            "product_id": _prefixed(pid, "multibrand"),
            "product_title": title,
            "category": cat.fillna("Other"),
            "brand": df["brand"].map(_str_or_none).map(_fix_entity_loss),
            "rating": _integer_column(df, "reviews_rating", path),
            "review_title": df["reviews_title"].map(_str_or_none),
            "raw_text": df["reviews_text"],
        }
    )


def _stage_womens(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    cid = _integer_column(df, "clothing_id", path)
    pid = cid.map(lambda v: None if pd.isna(v) else str(int(v)))
    div, dep, cls = (df[c].map(_str_or_none) for c in ("division_name", "department_name", "class_name"))
    titles = []
    for d, c, i in zip(div, cls, pid):
        d = "Intimates" if d == "Initmates" else d  # the source's own misspelling
        parts = list(dict.fromkeys(p for p in (d, c) if isinstance(p, str)))
        titles.append(f"{' '.join(parts)} (item {i})" if parts else f"Clothing item {i}")
    return pd.DataFrame(
        {
            "product_id": _prefixed(pid, "womens_clothing"),
            "product_title": titles,
            "category": dep.fillna(cls).fillna("Clothing"),
            "brand": None,
            "rating": _integer_column(df, "rating", path),
            "review_title": df["title"].map(_str_or_none),
            "raw_text": df["review_text"],
        }
    )


def _stage_zh(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    cat = df["category"].map(_str_or_none).fillna("其他")
    return pd.DataFrame(
        {
            "product_id": "zh:",  # completed from the cleaned text in _finish
            "product_title": cat,
            "category": cat,
            "brand": None,
            "label": _integer_column(df, "label", path),
            "review_title": None,
            "raw_text": df["review"],
        }
    )


_STAGERS: dict[str, Callable[[pd.DataFrame, Path], pd.DataFrame]] = {
    "amazon_devices": _stage_amazon,
    "multibrand": _stage_multibrand,
    "womens_clothing": _stage_womens,
    "zh_shopping": _stage_zh,
}
_TEXT_COL = {
    "amazon_devices": "reviews_text",
    "multibrand": "reviews_text",
    "womens_clothing": "review_text",
    "zh_shopping": "review",
}


def _process_text(raw: object) -> str:
    t = strip_promo(clean_text(raw)) if isinstance(raw, str) else ""
    return clean_text(mask_pii(t)[0])


def _stable_hash(s: str, n: int = 16) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()[:n]


def _sentiment_from_rating(r: float) -> str:
    return "positive" if r >= 4 else "negative" if r <= 2 else "neutral"


def _finish(st: pd.DataFrame, corpus: str, max_text_chars: int, cap: int | None) -> tuple[pd.DataFrame, dict]:
    """Apply the drop rules in a fixed order; each row is counted under its first failing reason."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    keep = pd.Series(True, index=st.index)

    def drop(mask: pd.Series, reason: str) -> None:
        mask = mask & keep
        dropped[reason] += int(mask.sum())
        keep[mask] = False

    st = st.copy()
    st["text"] = st["raw_text"].map(_process_text)
    if corpus == "zh_shopping":
        drop(st["label"].isna() | ~st["label"].isin([0, 1]), "missing_label")
        st["rating"] = pd.NA
        st["sentiment"] = st["label"].map(lambda v: None if pd.isna(v) else "positive" if v == 1 else "negative")
        st["product_id"] = st["text"].map(lambda t: _PREFIX[corpus] + _stable_hash(t, 12))
    else:
        drop(st["product_id"].isna() | (st["product_id"] == ""), "missing_product_id")
        r = st["rating"]
        usable = r.notna() & r.between(1, 5) & (r == r.round())
        drop(~usable.fillna(False).astype(bool), "missing_rating")
        st["sentiment"] = r.map(lambda v: None if pd.isna(v) else _sentiment_from_rating(float(v)))
    drop(st["text"] == "", "empty_text")
    drop(st["text"].str.len() > max_text_chars, "text_too_long")
    dup = st["text"].where(keep).duplicated(keep="first") & st["text"].notna()
    drop(dup, "duplicate_text")
    if cap is not None:
        # Keep the N reviews with the smallest text hash: stable under row order, no RNG state.
        cand = st[keep]
        rank = cand.assign(_h=cand["text"].map(_stable_hash)).groupby("product_id")["_h"].rank(method="first")
        over = pd.Series(False, index=st.index)
        over[rank.index] = rank > cap
        drop(over, "product_cap")
    out = st[keep].copy()
    out["language"] = "zh" if corpus == "zh_shopping" else "en"
    out["source"] = corpus
    out["rating"] = pd.array([pd.NA if pd.isna(v) else int(v) for v in out["rating"]], dtype="Int64")
    out = out[REVIEW_COLUMNS].reset_index(drop=True)
    for c in STR_COLUMNS:
        out[c] = out[c].astype("string")
    return out, dropped


def load_corpus(
    path: str | Path,
    corpus: str | None = None,
    *,
    max_text_chars: int = 4000,
    max_reviews_per_product: int | None = None,
) -> LoadResult:
    """Load one raw review file into the review table; raises DataError for unreadable/invalid files."""
    path = Path(path)
    corpus = corpus or detect_corpus(path)
    if corpus not in _STAGERS:
        raise DataError(f"{path}: unknown corpus {corpus!r} (known: {', '.join(CORPORA)})")
    if max_reviews_per_product is not None and max_reviews_per_product < 1:
        raise InputError("max_reviews_per_product must be >= 1 or None")
    df = _read(path, corpus)
    _check_text_column(df, _TEXT_COL[corpus], path)
    staged = _STAGERS[corpus](df, path)
    frame, dropped = _finish(staged, corpus, max_text_chars, max_reviews_per_product)
    counts = {"source": corpus, "file": path.name, "in": len(df), "kept": len(frame), "dropped": dropped}
    assert counts["in"] == counts["kept"] + sum(dropped.values()), counts
    return LoadResult(frame=frame, counts=counts)
