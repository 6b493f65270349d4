"""`reviewgen evaluate`'s settings: `EvalConfig` (frozen), read like every command's, from an EvalConfig YAML
(`--config`), `--set KEY=VALUE` items and the per-field flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from reviewgen.core.config import ConfigError
from reviewgen.core.config_io import load_config
from reviewgen.score.filter import FilterConfig

DEFAULT_TEMPERATURES = (0.6, 0.8, 1.0, 1.2, 1.3)


@dataclass(frozen=True)
class EvalConfig:
    """The settings of one evaluation: an EvalConfig YAML (`--config`), `--set KEY=VALUE` items and the
    `reviewgen evaluate` flags, read by `load_eval_config`. The filter's settings carry the names they
    have in `FilterConfig` and the serve config."""

    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES  # sampling temperatures of the sweep
    n_products: int = 150  # about how many unseen test products to evaluate
    samples_per_product: int = 2  # real reviews (conditions) per product
    # test reviews the scorer section reads at least (the evaluated ones, then others drawn at random): its
    # ECE needs more rows than the quality sweep, as ECE is biased upwards on few rows (`ece_floor`)
    scorer_reviews: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)  # generation seeds; metrics are mean ± sd over them
    top_p: float = 1.0
    # the output filter's copy threshold (copied training tokens that make a copy; None: the model's n-gram
    # size, and below it an error), as the nightly job's default; and its copy and PII checks
    max_copy_span: int | None = 8
    check_copy: bool = True
    check_pii: bool = True
    recalibrate: bool = True  # refit the scorer calibration first (stored in the model)
    embeddings: bool = True  # FED, MAUVE and title relevance (null when off or not installed)
    n_baseline_train: int = 600  # real train reviews of the TF-IDF real-vs-generated baseline
    classifier_rows: int = 6000  # train rows of the TF-IDF condition classifiers
    nll_rows: int | None = None  # test reviews for NLL (None: all)
    fast: bool = False  # smoke-test settings, see `resolved`
    device: str | None = None
    fakes: str | None = None  # labelled reviews of another generator (`reviewgen.evaluate.world`); None: none

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", _numbers(self.temperatures, float, "temperatures"))
        object.__setattr__(self, "seeds", _numbers(self.seeds, int, "seeds"))
        if not self.temperatures or not self.seeds:
            raise ConfigError("evaluate: need at least one temperature and one seed")
        if self.n_products < 1 or self.samples_per_product < 1:
            raise ConfigError("evaluate: n_products and samples_per_product must be >= 1")
        if self.scorer_reviews < 0:
            raise ConfigError("evaluate: scorer_reviews must be >= 0")
        self.filter_config()  # FilterConfig checks max_copy_span

    def filter_config(self) -> FilterConfig:
        """The production filter's default rules with this evaluation's copy and PII settings; resolved
        against the model's n-gram size by `ReviewFilter.from_model`, as in every stage."""
        return FilterConfig(max_copy_span=self.max_copy_span, check_copy=self.check_copy, check_pii=self.check_pii)

    def resolved(self) -> EvalConfig:
        """The settings actually used: with `fast`, one seed, the lowest and highest temperature, <= 16
        products, <= 48 scorer reviews and a small calibration/baseline/classifier/NLL set."""
        c = dataclasses.replace(
            self, temperatures=tuple(float(t) for t in self.temperatures), seeds=tuple(int(s) for s in self.seeds)
        )
        if not c.fast:
            return c
        return dataclasses.replace(
            c,
            seeds=c.seeds[:1],
            n_products=min(c.n_products, 16),
            scorer_reviews=min(c.scorer_reviews, 48),
            temperatures=tuple(sorted({min(c.temperatures), max(c.temperatures)})),
            n_baseline_train=min(c.n_baseline_train, 48),
            classifier_rows=min(c.classifier_rows, 1500),
            nll_rows=min(c.nll_rows or 256, 256),
        )


def _numbers(values: Any, kind: type, name: str) -> tuple:
    """`values` (a sequence, or a comma-separated string as a flag or `--set` gives it) as a tuple of `kind`
    (float, or int for whole numbers); ConfigError naming the setting otherwise."""
    items = values.split(",") if isinstance(values, str) else values
    try:
        out = tuple(float(v) for v in items if str(v).strip())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"evaluate: {name} must be a list of numbers, got {values!r}") from e
    if kind is int and not all(x.is_integer() for x in out):
        raise ConfigError(f"evaluate: {name} must be whole numbers, got {values!r}")
    return tuple(kind(x) for x in out)


def load_eval_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str = "flag",
    *,
    sets: Sequence[str] = (),
) -> EvalConfig:
    """`EvalConfig` from YAML, then `--set`, then the flags (`reviewgen.core.config_io.load_config`)."""
    return load_config(EvalConfig, path, overrides, sets=sets, source=source)
