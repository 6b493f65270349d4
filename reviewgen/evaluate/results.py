"""The evaluation's results as typed values: one frozen dataclass per section, gathered in `EvalResult`.

`run_evaluation` builds them, the targets and the report read their fields, and `EvalResult.to_dict` is the
one place they become metrics.json (its keys and their order are those the report's readers rely on). The
scorer section stays the dict `reviewgen.evaluate.scorer_eval` returns, wrapped in `ScorerResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from reviewgen.core.model_dir import Calibration
from reviewgen.evaluate.fluency import Fluency
from reviewgen.evaluate.matching import MatchedDiversity
from reviewgen.evaluate.quality import mean_of
from reviewgen.evaluate.world import FakesSection

CLASSIFIERS_NOTE = "TF-IDF char 1-3-gram + logistic regression trained on real train reviews"


def as_json(value: Any) -> Any:
    """`value` in its JSON form: its `to_dict()` when it has one (a typed value of another layer, such as a
    checkpoint's calibration), else itself."""
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


@dataclass(frozen=True)
class QualityPoint:
    """One model's text metrics at one sampled temperature, each aggregated over the seeds
    ({"mean", "sd", "values"}, `reviewgen.evaluate.quality.aggregate`)."""

    model: str
    temperature: str  # the temperature as metrics.json keys it ("0.7")
    metrics: Mapping[str, Mapping[str, Any]]

    def mean(self, key: str) -> float | None:
        """The mean over seeds of metric `key` (None when missing or never finite)."""
        return mean_of(self.metrics.get(key))


@dataclass(frozen=True)
class Sweep:
    """Every model's `QualityPoint`s by temperature key, models and temperatures in sampling order."""

    points: Mapping[str, Mapping[str, QualityPoint]]

    def of(self, model: str) -> list[QualityPoint]:
        """One model's points, in temperature order."""
        return list(self.points[model].values())

    def to_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """JSON-ready form (metrics.json's "sweep"): {model: {temperature: {metric: {mean, sd, values}}}}."""
        return {name: {t: dict(p.metrics) for t, p in by_t.items()} for name, by_t in self.points.items()}


@dataclass(frozen=True)
class OutOfFamily:
    """The out-of-family generator the scorer never saw: where it is, its version, size, config, seed and the
    data it was trained on."""

    model_dir: str
    version: str
    generator_params: int
    generator_config: Mapping[str, Any]
    seed: int
    trained_on: Any


@dataclass(frozen=True)
class RunMeta:
    """Compute budget and settings of one evaluation (metrics.json's "meta", in this field order): what was
    evaluated against what, model sizes and training budget, data sizes, the protocol's settings, the compared
    models and the out-of-family one, and the evaluation's own wall time (None until it is known)."""

    model_dir: str
    baseline_dir: str
    data_dir: str
    model_version: str
    baseline_version: str
    device: str
    generator_params: int
    discriminator_params: int
    generator_config: dict[str, Any]
    discriminator_config: dict[str, Any]
    tokenizer: dict[str, int]
    train_steps: dict[str, Any]
    batch_size: int
    train_wall_time_s: float | None
    data: dict[str, Any]
    temperatures: list[float]
    seeds: list[int]
    top_p: float
    max_copy_span: int | None  # the copy threshold the filter applied (None: no copy check)
    fast: bool
    embeddings_available: bool
    mauve_available: bool
    reference_pools: str
    nll_reviews: int
    compared: dict[str, dict[str, str]]
    out_of_family: OutOfFamily | None
    wall_time_s: float | None = None


@dataclass(frozen=True)
class ScorerResult:
    """The scorer section: `scorer_eval.scorer_section`'s dict (calibration, mode, n_human, settings) and the
    fakes file's section when one was read."""

    section: Mapping[str, Any]
    fakes: FakesSection | None = None

    @property
    def settings(self) -> Mapping[str, Mapping[str, Any]]:
        """Per sampling-setting label, its source, decoding and metrics (scorer_eval's shape)."""
        return self.section["settings"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (metrics.json's "scorer"), with "fakes" last when a fakes file was read."""
        return {
            **{k: as_json(v) for k, v in self.section.items()},
            **({"fakes": self.fakes.to_dict()} if self.fakes is not None else {}),
        }


@dataclass(frozen=True)
class Target:
    """One target's verdict: MET, NOT MET or N/A, why, and the verdict of each sub-check when it has them."""

    status: str
    detail: str
    checks: Mapping[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: "checks" only for a target that has sub-checks."""
        out: dict[str, Any] = {"status": self.status, "detail": self.detail}
        if self.checks is not None:
            out["checks"] = dict(self.checks)
        return out


@dataclass(frozen=True)
class EvalResult:
    """Everything one evaluation found. `targets` and `plots` are filled last (`dataclasses.replace`): the
    targets read the other sections, and the plot names are known once the report directory is written."""

    meta: RunMeta
    calibration: Calibration | None  # the scorer calibration in force (refit, or the model's own)
    nll: Mapping[str, float]  # teacher-forced test NLL per model, nats/token
    human: Mapping[str, Any]  # the text metrics of the real reviews of the evaluated rows
    sweep: Sweep
    matched: MatchedDiversity
    scorer: ScorerResult
    fluency: Fluency
    targets: Mapping[str, Target] = field(default_factory=dict)
    plots: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: metrics.json, the key order its readers know."""
        return {
            "meta": dataclasses.asdict(self.meta),
            "calibration": as_json(self.calibration),
            "nll": dict(self.nll),
            "human": dict(self.human),
            "sweep": self.sweep.to_dict(),
            "matched": self.matched.to_dict(),
            "scorer": self.scorer.to_dict(),
            "classifiers": {"note": CLASSIFIERS_NOTE},
            "fluency": self.fluency.to_dict(),
            "targets": {k: t.to_dict() for k, t in self.targets.items()},
            "plots": list(self.plots),
        }
