"""`reviewgen prepare`: review corpora to cleaned, product-split parquet."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from reviewgen.cli.common import log


def prepare(
    *,
    out: Path = typer.Option(..., "--out", help="Output directory for train/val/test parquet splits and stats.json."),
    inputs: Optional[List[Path]] = typer.Option(
        None,
        "--input",
        "-i",
        help="Review corpus parquet file or directory (repeatable). Default: the sample carried in data/sample.",
    ),
    seed: int = typer.Option(0, help="Seed of the product-level split (a product's reviews all land on one side)."),
    val_frac: float = typer.Option(0.1, help="Fraction of products in the validation split."),
    test_frac: float = typer.Option(0.1, help="Fraction of products in the test split (never trained on)."),
    max_reviews_per_product: Optional[int] = typer.Option(
        None, help="Cap per product (counted as 'product_cap' drops)."
    ),
    max_text_chars: int = typer.Option(4000, help="Longer review texts are dropped (counted as 'text_too_long')."),
):
    """Load review corpora, clean them (HTML, boilerplate, PII), split by product, write parquet splits."""
    from reviewgen.data.corpus import prepare as _prepare
    from reviewgen.data.corpus import review_sources, sample_data_dir

    srcs = list(inputs) if inputs else review_sources(sample_data_dir())
    stats = _prepare(
        srcs,
        out,
        seed=seed,
        val_frac=val_frac,
        test_frac=test_frac,
        max_reviews_per_product=max_reviews_per_product,
        max_text_chars=max_text_chars,
        log=log,
    )
    log(f"wrote {out} (data_hash {stats.get('data_hash', '?')[:12]})")
