"""Build the small carried sample in data/sample/ from the full files in /work/shared/data.

Deterministic: products and rows are chosen by a SHA-256 hash of stable keys (no RNG), so rerunning
on the same inputs writes the same rows. Files keep the original names and raw schemas, so the same
loaders read the sample and the full data. Usage:

    python scripts/make_sample.py [--src /work/shared/data] [--dst data/sample]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd

SALT = "reviewgen-sample-v1"


def _h(key: object) -> str:
    return hashlib.sha256(f"{SALT}:{key}".encode("utf-8")).hexdigest()


def pick_products(df: pd.DataFrame, key: str, n: int | None, cap: int | None) -> pd.DataFrame:
    """Keep ``n`` whole products (all by default), each capped at ``cap`` rows; original row order kept."""
    df = df[df[key].notna()]
    ids = sorted(df[key].unique(), key=_h)
    if n is not None:
        ids = ids[:n]
    sub = df[df[key].isin(set(ids))]
    if cap is not None:
        # Rank rows inside a product by a hash of (product, original row position).
        h = pd.Series([_h(f"{k}:{i}") for k, i in zip(sub[key], sub.index)], index=sub.index)
        rank = h.groupby(sub[key]).rank(method="first")
        sub = sub[rank <= cap]
    return sub.sort_index()


def pick_rows(df: pd.DataFrame, n: int, group: str | None = None) -> pd.DataFrame:
    """Keep ``n`` rows (per ``group`` value when given), chosen by a hash of the row position."""
    h = pd.Series([_h(i) for i in df.index], index=df.index)
    rank = h.groupby(df[group]).rank(method="first") if group else h.rank(method="first")
    return df[rank <= n].sort_index()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="/work/shared/data")
    ap.add_argument("--dst", default=str(Path(__file__).resolve().parent.parent / "data" / "sample"))
    a = ap.parse_args()
    src, dst = Path(a.src), Path(a.dst)
    dst.mkdir(parents=True, exist_ok=True)
    plans = {
        "reviews_en_datafiniti_amazon_devices.parquet": lambda d: pick_products(d, "id", None, 250),
        "reviews_en_datafiniti_multibrand_sample30.parquet": lambda d: pick_products(d, "id", 40, 200),
        "reviews_en_womens_clothing.parquet": lambda d: pick_products(d, "clothing_id", 150, 200),
        "reviews_zh_online_shopping_10_cats.parquet": lambda d: pick_rows(d, 500, "category"),
        "catalog_bigbasket_products.parquet": lambda d: pick_rows(d, 400),
        "catalog_flipkart_sample_1050.parquet": lambda d: pick_rows(d, 150),
    }
    for name, plan in plans.items():
        full = pd.read_parquet(src / name)
        sub = plan(full).reset_index(drop=True)
        out = dst / name
        sub.to_parquet(out, index=False, compression="zstd")
        print(f"{name}: {len(sub)} of {len(full)} rows, {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
