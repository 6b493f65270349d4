"""`reviewgen generate` (and `python jobs/generate.py`): the nightly Ray Data job.

Settings come from `--config FILE` (a `GenerateConfig` YAML; unknown keys are errors), then `--set KEY=VALUE`,
then the flags given; a flag left out keeps the earlier value or the default named in its help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

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


# Each option declared once, as the type of its parameter below.
Model = Annotated[Path, typer.Option("--model", help="exported model directory (reviewgen export)")]
Catalogs = Annotated[
    List[str],
    typer.Option(
        "--catalog",
        metavar="PATH",
        help="catalog parquet file(s) or "
        "directory(ies) (local, NFS, s3://, gs://); several after one flag, or "
        "the flag repeated",
    ),
]
Out = Annotated[str, typer.Option("--out", help="output root; the run writes OUT/run_date=YYYY-MM-DD/")]
Config = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        help="GenerateConfig YAML (sampling, filter, catalog, "
        "sharding, allow_empty); --set and the flags below override it",
    ),
]
Sets = Annotated[
    List[str],
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override one GenerateConfig field, "
        "repeatable, e.g. --set sampling.seed=7 --set filter.check_pii=false (after "
        "--config, before the other flags).",
    ),
]
ReviewsPerProduct = Annotated[
    Optional[int], typer.Option("--reviews-per-product", help="reviews generated per product (K) (default: 3)")
]
RunDate = Annotated[Optional[str], typer.Option("--run-date", help="partition date YYYY-MM-DD (default: today, UTC)")]
Since = Annotated[
    Optional[str], typer.Option("--since", help="previous run date or partition dir: only new/changed products")
]
Force = Annotated[bool, typer.Option("--force", help="regenerate even if this date's partition is complete")]
ColumnMapping = Annotated[
    Optional[str], typer.Option("--mapping", help="column-mapping YAML file (see configs/catalogs/)")
]
Preset = Annotated[Optional[str], typer.Option("--preset", help="bundled column mapping (bigbasket, flipkart)")]
KeepColumns = Annotated[
    Optional[str], typer.Option("--keep-columns", help="comma-separated catalog columns passed through to reviews")
]
Seed = Annotated[
    Optional[int],
    typer.Option("--seed", help="generation seed (same seed + inputs + model = same reviews) (default: 0)"),
]
MinScore = Annotated[
    Optional[float],
    typer.Option("--min-score", help="reject reviews with calibrated p_human below this (default: 0.0)"),
]
MaxCopySpan = Annotated[
    Optional[int], typer.Option("--max-copy-span", help="reject reviews copying this many training tokens (default: 8)")
]
Temperature = Annotated[Optional[float], typer.Option("--temperature", help="sampling temperature (default: 1.0)")]
TopP = Annotated[Optional[float], typer.Option("--top-p", help="nucleus sampling mass (default: 0.95)")]
BatchSize = Annotated[
    Optional[int], typer.Option("--batch-size", help="reviews per sampler batch inside an actor [default: 64]")
]
CompileDecode = Annotated[
    bool,
    typer.Option(
        "--compile-decode",
        help="torch.compile each actor's per-token decode "
        "step: a compile per actor, then faster sampling; the reviews differ "
        "from eager ones (part of the run's identity)",
    ),
]
NumActors = Annotated[Optional[int], typer.Option("--num-actors", help="generator actors (default: GPUs, else CPUs/2)")]
LanguageColumn = Annotated[
    Optional[str], typer.Option("--language-column", help="catalog column holding each product's language")
]
Language = Annotated[
    Optional[str], typer.Option("--language", help="language when there is no language column (en|zh) (default: en)")
]
RatingColumn = Annotated[
    Optional[str], typer.Option("--rating-column", help="catalog column with the target rating (1..5) per row")
]
RatingDist = Annotated[
    Optional[str],
    typer.Option(
        "--rating-dist",
        help="5 comma-separated weights for 1..5 stars "
        "(default: the model's training distribution, else the sample en "
        "distribution)",
    ),
]
MinTokens = Annotated[
    Optional[int], typer.Option("--min-tokens", help="reject reviews shorter than this many tokens (default: 3)")
]
MaxChars = Annotated[Optional[int], typer.Option("--max-chars", help="reject reviews longer than this many characters")]
KeepBrokenText = Annotated[
    bool,
    typer.Option(
        "--keep-broken-text",
        help="accept reviews containing U+FFFD (a review cut mid-character); rejected as broken_text by default",
    ),
]
ProductsPerShard = Annotated[
    Optional[int], typer.Option("--products-per-shard", help="products per resumable output shard (default: 256)")
]
AllowEmpty = Annotated[
    bool,
    typer.Option(
        "--allow-empty",
        help="finish with _SUCCESS even when no product is valid "
        "or no review passes the filter (default: exit 2 without _SUCCESS)",
    ),
]
WatermarkKeyFile = Annotated[
    Optional[Path],
    typer.Option(
        "--watermark-key-file",
        help="file of secret watermark keys, one per line, the first signing (default: "
        "$REVIEWGEN_WATERMARK_KEY_FILE, else the key in $REVIEWGEN_WATERMARK_KEY). Every review is signed, its end "
        "held until the mark is detectable, and only reviews detectable at the threshold are accepted (reject reason "
        "watermark_weak); the manifest records the key id, never the key",
    ),
]
NoWatermark = Annotated[
    bool,
    typer.Option(
        "--no-watermark",
        help="run without a watermark key (recorded in the "
        "manifest and the run id); without a key and without this flag the job "
        "refuses to run",
    ),
]


def generate(
    *,
    model: Model,
    catalog: Catalogs,
    out: Out,
    config: Config = None,
    set_: Sets = [],
    reviews_per_product: ReviewsPerProduct = None,
    run_date: RunDate = None,
    since: Since = None,
    force: Force = False,
    mapping: ColumnMapping = None,
    preset: Preset = None,
    keep_columns: KeepColumns = None,
    seed: Seed = None,
    min_score: MinScore = None,
    max_copy_span: MaxCopySpan = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    batch_size: BatchSize = None,
    compile_decode: CompileDecode = False,
    num_actors: NumActors = None,
    language_column: LanguageColumn = None,
    language: Language = None,
    rating_column: RatingColumn = None,
    rating_dist: RatingDist = None,
    min_tokens: MinTokens = None,
    max_chars: MaxChars = None,
    keep_broken_text: KeepBrokenText = False,
    products_per_shard: ProductsPerShard = None,
    allow_empty: AllowEmpty = False,
    watermark_key_file: WatermarkKeyFile = None,
    no_watermark: NoWatermark = False,
):
    """Nightly catalog-wide generation on Ray Data: validate, generate, score, filter, write partitioned
    parquet under OUT/run_date=YYYY-MM-DD/."""
    options = dict(locals())  # just the options, by parameter name: nothing else is defined yet
    from reviewgen.generate.config import load_generate_config

    cfg = load_generate_config(config, _overrides(options), sets=set_)
    wm = _watermark(watermark_key_file, no_watermark)
    from reviewgen.generate.pipeline import run_generation  # imports Ray: only after the checks above pass

    run_generation(
        str(model), list(catalog), out, cfg, run_date=run_date, since=since, force=force, log=log, watermark=wm
    )


def _overrides(options: dict) -> dict:
    """The GenerateConfig fields the options give, by dotted key (None = not given); --mapping and --preset
    both name the column mapping, so at most one may be given."""
    from reviewgen.core.config import ConfigError

    if options["mapping"] and options["preset"]:
        raise ConfigError("--mapping and --preset are mutually exclusive")
    return {
        "sampling.reviews_per_product": options["reviews_per_product"],
        "sampling.seed": options["seed"],
        "sampling.temperature": options["temperature"],
        "sampling.top_p": options["top_p"],
        "sampling.batch_size": options["batch_size"],
        "sampling.compile_decode": True if options["compile_decode"] else None,
        "sampling.rating_distribution": floats(options["rating_dist"]) if options["rating_dist"] else None,
        "filter.min_score": options["min_score"],
        "filter.max_copy_span": options["max_copy_span"],
        "filter.min_tokens": options["min_tokens"],
        "filter.max_chars": options["max_chars"],
        "filter.reject_broken_text": False if options["keep_broken_text"] else None,
        "catalog.mapping": options["mapping"] or options["preset"],
        "catalog.keep_columns": options["keep_columns"],
        "catalog.language_column": options["language_column"],
        "catalog.language": options["language"],
        "catalog.rating_column": options["rating_column"],
        "sharding.products_per_shard": options["products_per_shard"],
        "sharding.num_actors": options["num_actors"],
        "allow_empty": True if options["allow_empty"] else None,
    }


def _watermark(key_file: Path | None, off: bool):
    """The signing watermark (None with --no-watermark), logged by key id. A run without a key must say so with
    --no-watermark, so that unwatermarked reviews are never written by accident."""
    from reviewgen.core.config import ConfigError
    from reviewgen.core.watermark import Watermark

    if off and key_file:
        raise ConfigError("--no-watermark and --watermark-key-file are mutually exclusive")
    wm = None if off else Watermark.from_env(key_file)
    if wm is None and not off:
        raise ConfigError(
            "no watermark key: set REVIEWGEN_WATERMARK_KEY or REVIEWGEN_WATERMARK_KEY_FILE, or pass "
            "--watermark-key-file (or --no-watermark to generate unwatermarked reviews)"
        )
    log(f"watermark: signing key id {wm.key_id}" if wm else "watermark: off (--no-watermark)")
    return wm
