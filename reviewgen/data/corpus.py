"""Review corpora -> the product-level train/val/test split and ``prepare()``; reading the splits back.

The loaders of each corpus are in `reviewgen.data.sources`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import pandas as pd

from reviewgen.core.errors import InputError
from reviewgen.data.sources import (
    REVIEW_COLUMNS,
    SPLITS,
    STR_COLUMNS,
    DataError,
    detect_corpus,
    load_corpus,
    read_parquet,
)


def _bucket(product_id: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{product_id}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_by_product(
    df: pd.DataFrame, *, seed: int = 0, val_frac: float = 0.1, test_frac: float = 0.1
) -> dict[str, pd.DataFrame]:
    """Split rows into train/val/test by a hash of (seed, product_id): each product on one side,
    independent of row order and of which other products are present."""
    if not (0 <= val_frac and 0 <= test_frac and val_frac + test_frac < 1):
        raise InputError(f"bad split fractions val={val_frac} test={test_frac}")
    u = df["product_id"].map(lambda p: _bucket(str(p), seed))
    side = u.map(lambda x: "test" if x < test_frac else "val" if x < test_frac + val_frac else "train")
    return {s: df[side == s].reset_index(drop=True) for s in SPLITS}


def review_sources(data_dir: str | Path) -> list[Path]:
    """The review corpus parquet files in a directory (catalogs and unknown files are skipped)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory")
    out = []
    for p in sorted(d.glob("*.parquet")):
        if p.name.startswith("catalog_"):
            continue
        try:
            detect_corpus(p)
        except DataError:
            continue
        out.append(p)
    return out


def _frame_hash(splits: dict[str, pd.DataFrame]) -> str:
    h = hashlib.sha256()
    for name in SPLITS:
        h.update(name.encode())
        h.update(pd.util.hash_pandas_object(splits[name][REVIEW_COLUMNS], index=False).values.tobytes())
    return h.hexdigest()


def prepare(
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    seed: int = 0,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    max_reviews_per_product: int | None = None,
    max_text_chars: int = 4000,
    log: Callable[[str], object] = print,
) -> dict:
    """Load every input (file or directory), split by product, write {train,val,test}.parquet and
    stats.json into ``out_dir``; return the stats dict."""
    files: list[Path] = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            found = review_sources(p)
            if not found:
                raise DataError(f"{p}: no review corpus files found")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    if not files:
        raise DataError("prepare: no input files given")
    frames, per_file = [], []
    for f in files:
        res = load_corpus(f, max_text_chars=max_text_chars, max_reviews_per_product=max_reviews_per_product)
        c = res.counts
        drops = {k: v for k, v in c["dropped"].items() if v}
        log(f"{c['source']}: {c['file']}: in={c['in']} kept={c['kept']} dropped={drops}")
        frames.append(res.frame)
        per_file.append(c)
    df = pd.concat(frames, ignore_index=True)
    splits = split_by_product(df, seed=seed, val_frac=val_frac, test_frac=test_frac)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        part.to_parquet(out / f"{name}.parquet", index=False)
    stats = {
        "seed": seed,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "max_reviews_per_product": max_reviews_per_product,
        "max_text_chars": max_text_chars,
        "files": per_file,
        "splits": {n: {"rows": len(p), "products": int(p["product_id"].nunique())} for n, p in splits.items()},
        "rows": len(df),
        "data_hash": _frame_hash(splits),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return stats


def load_split(data_dir: str | Path, split: str) -> pd.DataFrame:
    """Read a split written by ``prepare``; DataError if the directory, file or a column is missing."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: prepared data directory not found (run `reviewgen prepare` first)")
    path = d / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"{path}: split file not found (run `reviewgen prepare` first)")
    df = read_parquet(path)
    missing = [c for c in REVIEW_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    df = df[REVIEW_COLUMNS].copy()
    df["rating"] = df["rating"].astype("Int64")
    for c in STR_COLUMNS:
        df[c] = df[c].astype("string")
    return df


def sample_data_dir() -> Path:
    """The repository's carried sample ``data/sample`` (found relative to this package file)."""
    d = Path(__file__).resolve().parents[2] / "data" / "sample"
    if not d.is_dir():
        raise DataError(
            f"{d}: sample data not found; it ships with the source checkout (use an editable install "
            "`pip install -e .` or pass a data directory explicitly)"
        )
    return d
