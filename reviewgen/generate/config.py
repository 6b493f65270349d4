"""Typed settings of the nightly generation job: one frozen `GenerateConfig`, loaded from YAML
(`--config FILE`, unknown keys rejected) and overridden by command-line flags.

A config file mirrors the dataclasses::

    sampling: {reviews_per_product: 3, seed: 0, temperature: 1.0, top_p: 0.95, batch_size: 64}
    filter: {min_score: 0.2, max_copy_span: 8, min_tokens: 3, reject_broken_text: true}
    catalog: {mapping: bigbasket, keep_columns: [brand], language_column: null, language: en}
    sharding: {products_per_shard: 256, num_actors: null, cpus_per_actor: 0.5}
    allow_empty: false
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from reviewgen.core.config import ConfigError
from reviewgen.core.config_io import load_config
from reviewgen.score.filter import FilterConfig

# contract columns the reviews table already carries: a pass-through of them would clash
_CONTRACT = ("product_id", "title", "category", "language")


@dataclass(frozen=True)
class SamplingSettings:
    """How reviews are drawn; everything but batch_size is part of the run's identity."""

    reviews_per_product: int = 3
    seed: int = 0
    temperature: float = 1.0
    top_p: float = 0.95
    batch_size: int = 64  # reviews per sampler batch inside an actor (does not change the reviews)
    # torch.compile each actor's per-token decode step (reviewgen.core.sampling.SamplingParams.compile_decode):
    # a compile per actor, then faster steps; its fused kernels round differently, so the reviews differ from
    # eager ones and the setting is part of the run's identity
    compile_decode: bool = False
    rating_distribution: tuple[float, ...] | None = None  # 1..5 star weights; None: the model's, else default

    def __post_init__(self) -> None:
        if self.reviews_per_product < 1:
            raise ConfigError("sampling.reviews_per_product (--reviews-per-product) must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("sampling.batch_size (--batch-size) must be >= 1")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p must be within (0, 1], got {self.top_p}")
        if self.rating_distribution is not None:
            d = tuple(float(x) for x in self.rating_distribution)
            if len(d) != 5 or any(not math.isfinite(x) or x < 0 for x in d) or sum(d) <= 0:
                raise ConfigError(f"rating distribution must be 5 non-negative weights for 1..5 stars, got {d}")
            object.__setattr__(self, "rating_distribution", d)


@dataclass(frozen=True)
class CatalogSettings:
    """How catalog columns map onto the contract (see reviewgen.generate.catalog)."""

    mapping: Any = None  # a preset name, a mapping YAML path, or an inline {columns: ...} mapping
    keep_columns: tuple[str, ...] = ()  # catalog columns passed through to the reviews table
    language_column: str | None = None
    language: str = "en"  # the language when there is no language column
    rating_column: str | None = None

    def __post_init__(self) -> None:
        cols = self.keep_columns
        if isinstance(cols, str):
            cols = cols.split(",")
        cols = tuple(c.strip() for c in dict.fromkeys(cols) if c and c.strip() and c.strip() not in _CONTRACT)
        object.__setattr__(self, "keep_columns", cols)
        if self.mapping is not None and not isinstance(self.mapping, (str, Mapping)):
            raise ConfigError(f"catalog.mapping must be a preset name, a YAML path or a mapping, got {self.mapping!r}")


@dataclass(frozen=True)
class ShardingSettings:
    """Resumable output shards and the generating actor pool."""

    products_per_shard: int = 256
    num_actors: int | None = None  # default: one per GPU, else CPUs / 2
    cpus_per_actor: float = 0.5  # fractional, so a 2-core machine does not starve the read tasks

    def __post_init__(self) -> None:
        if self.products_per_shard < 1:
            raise ConfigError("sharding.products_per_shard (--products-per-shard) must be >= 1")
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError("sharding.num_actors (--num-actors) must be >= 1")
        if self.cpus_per_actor <= 0:
            raise ConfigError("sharding.cpus_per_actor must be > 0")


@dataclass(frozen=True)
class GenerateConfig:
    """Everything `reviewgen generate` needs besides paths and the run date."""

    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    filter: FilterConfig = field(default_factory=FilterConfig)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)
    sharding: ShardingSettings = field(default_factory=ShardingSettings)
    allow_empty: bool = False  # finish (with _SUCCESS) even when nothing valid was read or accepted


def load_generate_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str = "flag",
    *,
    sets: Sequence[str] = (),
) -> GenerateConfig:
    """`GenerateConfig` from YAML, then `--set`, then the flags (`reviewgen.core.config_io.load_config`)."""
    return load_config(GenerateConfig, path, overrides, sets=sets, source=source)
