"""`reviewgen generate` (and `python jobs/generate.py`): the nightly Ray Data job.

Settings come from `--config FILE` (a `GenerateConfig` YAML; unknown keys are errors), then `--set KEY=VALUE`,
then the flags given; a flag left out keeps the earlier value or the default named in its help.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from reviewgen.cli.common import floats, log


class CatalogsCommand(typer.core.TyperCommand):
    """`--catalog a b --catalog c`: click takes one value per flag, so every value that follows a
    --catalog flag is given its own flag before parsing; input order (which decides the first occurrence
    of a duplicate id) is kept."""

    def parse_args(self, ctx, args):  # noqa: D102 - click API
        out, greedy = [], False
        for a in args:
            if a.startswith("-"):
                greedy = a.split("=", 1)[0] == "--catalog"
            elif greedy and out[-1] != "--catalog":
                out.append("--catalog")
            out.append(a)
        return super().parse_args(ctx, out)


COMMAND_SETTINGS = {"cls": CatalogsCommand}


def generate(
    model: Path = typer.Option(..., "--model", help="exported model directory (reviewgen export)"),
    catalog: List[str] = typer.Option(..., "--catalog", metavar="PATH", help="catalog parquet file(s) or "
                                      "directory(ies) (local, NFS, s3://, gs://); several after one flag, or the "
                                      "flag repeated"),
    out: str = typer.Option(..., "--out", help="output root; the run writes OUT/run_date=YYYY-MM-DD/"),
    config: Optional[Path] = typer.Option(None, "--config", help="GenerateConfig YAML (sampling, filter, catalog, "
                                          "sharding, allow_empty); --set and the flags below override it"),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override one GenerateConfig field, "
                                   "repeatable, e.g. --set sampling.seed=7 --set filter.check_pii=false (after "
                                   "--config, before the other flags)."),
    reviews_per_product: Optional[int] = typer.Option(None, "--reviews-per-product",
                                                      help="reviews generated per product (K) (default: 3)"),
    run_date: Optional[str] = typer.Option(None, "--run-date", help="partition date YYYY-MM-DD (default: today, UTC)"),
    since: Optional[str] = typer.Option(None, "--since", help="previous run date or partition dir: only "
                                        "new/changed products"),
    force: bool = typer.Option(False, "--force", help="regenerate even if this date's partition is complete"),
    mapping: Optional[str] = typer.Option(None, "--mapping", help="column-mapping YAML file (see configs/catalogs/)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="bundled column mapping (bigbasket, flipkart)"),
    keep_columns: Optional[str] = typer.Option(None, "--keep-columns", help="comma-separated catalog columns "
                                               "passed through to reviews"),
    seed: Optional[int] = typer.Option(None, "--seed", help="generation seed (same seed + inputs + model = same "
                                       "reviews) (default: 0)"),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="reject reviews with calibrated p_human "
                                              "below this (default: 0.0)"),
    max_copy_span: Optional[int] = typer.Option(None, "--max-copy-span", help="reject reviews copying this many "
                                                "training tokens (default: 8)"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="sampling temperature (default: 1.0)"),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="nucleus sampling mass (default: 0.95)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="reviews per sampler batch inside an actor "
                                             "[default: 64]"),
    compile_decode: bool = typer.Option(False, "--compile-decode", help="torch.compile each actor's per-token "
                                        "decode step: a compile per actor, then faster sampling; the reviews "
                                        "differ from eager ones (part of the run's identity)"),
    num_actors: Optional[int] = typer.Option(None, "--num-actors", help="generator actors (default: GPUs, else "
                                             "CPUs/2)"),
    language_column: Optional[str] = typer.Option(None, "--language-column", help="catalog column holding each "
                                                  "product's language"),
    language: Optional[str] = typer.Option(None, "--language", help="language when there is no language column "
                                           "(en|zh) (default: en)"),
    rating_column: Optional[str] = typer.Option(None, "--rating-column", help="catalog column with the target "
                                                "rating (1..5) per row"),
    rating_dist: Optional[str] = typer.Option(None, "--rating-dist", help="5 comma-separated weights for 1..5 stars "
                                              "(default: the model's training distribution, else the sample en "
                                              "distribution)"),
    min_tokens: Optional[int] = typer.Option(None, "--min-tokens", help="reject reviews shorter than this many "
                                             "tokens (default: 3)"),
    max_chars: Optional[int] = typer.Option(None, "--max-chars", help="reject reviews longer than this many "
                                            "characters"),
    keep_broken_text: bool = typer.Option(False, "--keep-broken-text", help="accept reviews containing U+FFFD (a "
                                          "review cut mid-character); rejected as broken_text by default"),
    products_per_shard: Optional[int] = typer.Option(None, "--products-per-shard", help="products per resumable "
                                                     "output shard (default: 256)"),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="finish with _SUCCESS even when no product is "
                                     "valid or no review passes the filter (default: exit 2 without _SUCCESS)"),
    watermark_key_file: Optional[Path] = typer.Option(None, "--watermark-key-file", help="file of secret watermark "
                                                      "keys, one per line, the first signing (default: "
                                                      "$REVIEWGEN_WATERMARK_KEY_FILE, else the key in "
                                                      "$REVIEWGEN_WATERMARK_KEY). Every review is signed and only "
                                                      "reviews detectable at the threshold are accepted (reject "
                                                      "reason watermark_weak); the manifest records the key id, "
                                                      "never the key"),
    no_watermark: bool = typer.Option(False, "--no-watermark", help="run without a watermark key (recorded in the "
                                      "manifest and the run id); without a key and without this flag the job "
                                      "refuses to run"),
):
    """Nightly catalog-wide generation on Ray Data: validate, generate, score, filter, write partitioned
    parquet under OUT/run_date=YYYY-MM-DD/."""
    from reviewgen.core.config import ConfigError
    from reviewgen.core.watermark import Watermark
    from reviewgen.generate.config import load_generate_config

    if mapping and preset:
        raise ConfigError("--mapping and --preset are mutually exclusive")
    overrides = {
        "sampling.reviews_per_product": reviews_per_product, "sampling.seed": seed,
        "sampling.temperature": temperature, "sampling.top_p": top_p, "sampling.batch_size": batch_size,
        "sampling.compile_decode": True if compile_decode else None,
        "sampling.rating_distribution": floats(rating_dist) if rating_dist else None,
        "filter.min_score": min_score, "filter.max_copy_span": max_copy_span, "filter.min_tokens": min_tokens,
        "filter.max_chars": max_chars, "filter.reject_broken_text": False if keep_broken_text else None,
        "catalog.mapping": mapping or preset, "catalog.keep_columns": keep_columns,
        "catalog.language_column": language_column, "catalog.language": language,
        "catalog.rating_column": rating_column, "sharding.products_per_shard": products_per_shard,
        "sharding.num_actors": num_actors, "allow_empty": True if allow_empty else None}
    cfg = load_generate_config(config, overrides, sets=set_)
    if no_watermark and watermark_key_file:
        raise ConfigError("--no-watermark and --watermark-key-file are mutually exclusive")
    wm = None if no_watermark else Watermark.from_env(watermark_key_file)
    if wm is None and not no_watermark:
        raise ConfigError("no watermark key: set REVIEWGEN_WATERMARK_KEY or REVIEWGEN_WATERMARK_KEY_FILE, or pass "
                          "--watermark-key-file (or --no-watermark to generate unwatermarked reviews)")
    log(f"watermark: signing key id {wm.key_id}" if wm else "watermark: off (--no-watermark)")
    from reviewgen.generate.pipeline import run_generation

    run_generation(str(model), list(catalog), out, cfg, run_date=run_date, since=since, force=force, log=log,
                   watermark=wm)
