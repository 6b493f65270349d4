"""The calibrated combiner: one small logistic model over the scorer's signals gives p_human.

Features are standardised with the fit set's mean and spread, then combined by an L2-regularised logistic
regression fitted with LBFGS; the result is plain data (the "detector" entry of a model directory's
calibration.json), loaded without pickle. A logistic model fitted by log loss is calibrated on its own fit
distribution; strong L2, sign-fixed weights (`fit_combiner(signs=)`) and a choice of features made on
held-out sources (`select_combiner`) keep it from leaning on a signal that only separates our own
generator's artifacts. Which features and why: `reviewgen.score.detector_fit`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from reviewgen.core.errors import ReviewgenError
from reviewgen.core.metrics import auroc

# the tag of one combiner's document (a detector's per-language entry, an adapted model's combiner); a
# document of another version is refused, not read with fields missing
COMBINER_FORMAT = "reviewgen-combiner/3"
DETECTOR_FORMAT = "reviewgen-detector/2"
ANY_LANGUAGE = "*"


class CombinerError(ReviewgenError, ValueError):
    """A detector file is missing a field or does not match the signals offered to it."""


def base_signal(feature: str) -> str:
    """The signal a feature is computed from ("sq:binoculars" -> "binoculars")."""
    return feature[3:] if feature.startswith("sq:") else feature


@dataclass(frozen=True)
class Combiner:
    """p_human = sigmoid(bias + sum_i weight_i * (x_i - mean_i) / scale_i) over the named features.

    A `floor` f and a `ceiling` c make that probability q into f + (c - f) q: some reviews' signals say
    nothing about who wrote them (a short, generic human review reads exactly like a machine's), so no
    review is scored with more certainty than the fit set showed. `offset` is then added to the logit of
    the result (a prior shift, see `reviewgen.score.platt.prior_shift`).

    A feature named "sq:NAME" is two-sided: ((NAME - c) / s)^2, the squared distance of signal NAME from
    the centre c (spread s) of the fit set's human rows, stored in `centers[NAME]`. It lets a linear model
    flag text that is too predictable *or* too unpredictable for human writing."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    info: Mapping[str, Any] = field(default_factory=dict)  # how it was fitted (counts, sources, metrics)
    centers: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # for "sq:" features
    floor: float = 0.0
    ceiling: float = 1.0
    offset: float = 0.0
    # signal -> (centre, spread) of the fit set's human rows, and the RMS z-distance from that centre that
    # `domain_quantile` of them stay within (see `out_of_domain`); empty: no domain check
    domain: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    domain_radius: float = 0.0

    def matrix(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """The [N, F] feature matrix in this combiner's order; a missing signal is an error naming it."""
        missing = sorted({base_signal(f) for f in self.features} - set(signals))
        if missing:
            raise CombinerError(f"detector needs signals {missing}; got {sorted(signals)}")
        cols = []
        for f in self.features:
            x = np.asarray(signals[base_signal(f)], dtype=np.float64)
            if f.startswith("sq:"):
                c, sd = self.centers[base_signal(f)]
                x = ((x - c) / sd) ** 2
            cols.append(x)
        return np.stack(cols, axis=1)

    def logit(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """The combined logit per review (NaN where any feature is NaN, e.g. a review with no tokens)."""
        x = (self.matrix(signals) - np.asarray(self.mean)) / np.asarray(self.scale)
        z = x @ np.asarray(self.weights) + self.bias
        if self.floor > 0 or self.ceiling < 1:
            # logit(f + (c - f) sigmoid(z)) in log space; 1 minus that is (1 - c) + (c - f) sigmoid(-z)
            fin = np.isfinite(z)  # NaN stays NaN, without numpy's invalid-value warning
            zf = z[fin]
            with np.errstate(divide="ignore"):  # log(0) = -inf for a floor of 0 or a ceiling of 1
                log_f, log_c, log_span = np.log(self.floor), np.log1p(-self.ceiling), np.log(self.ceiling - self.floor)
            z[fin] = np.logaddexp(log_f, log_span - np.logaddexp(0.0, -zf)) - np.logaddexp(
                log_c, log_span - np.logaddexp(0.0, zf)
            )
        z = z + self.offset
        if self.domain:
            # a claim of human authorship needs human-like signals: outside the fit set's human rows it moves
            # toward the 1:1 prior (logit 0); a machine verdict stands, as the fit set's machine rows lie there
            z = np.where(z > 0, z * (1.0 - self.out_of_domain(signals)), z)
        return z

    def out_of_domain(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """How far each review's signals lie outside the fit set's human rows, in [0, 1]: 0 within
        `domain_radius` (the RMS z-distance most human fit rows stay within), rising linearly to 1 at twice
        it. NaN where a signal is; zeros without a domain."""
        n = len(next(iter(signals.values()))) if signals else 0
        if not self.domain:
            return np.zeros(n)
        z2 = np.stack([((np.asarray(signals[k], dtype=np.float64) - c) / s) ** 2 for k, (c, s) in self.domain.items()])
        d = np.sqrt(z2.mean(0))
        return np.clip(d / self.domain_radius - 1.0, 0.0, 1.0)

    def predict(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """p_human per review."""
        return 1.0 / (1.0 + np.exp(-self.logit(signals)))

    def to_dict(self) -> dict[str, Any]:
        """Plain data with a format tag (what `to_json` writes and `from_dict` reads)."""
        d = asdict(self)
        d["features"], d["mean"], d["scale"], d["weights"] = (
            list(d[k]) for k in ("features", "mean", "scale", "weights")
        )
        d["centers"] = {k: [float(v[0]), float(v[1])] for k, v in d["centers"].items()}
        d["domain"] = {k: [float(v[0]), float(v[1])] for k, v in d["domain"].items()}
        d["info"] = json.loads(json.dumps(d["info"], default=float))
        d["format"] = COMBINER_FORMAT
        return d

    def to_json(self) -> str:
        """Plain JSON with a format tag."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=float)

    def save(self, path: str | Path) -> None:
        """Write `to_json()` to `path`."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Combiner":
        """Read a detector file; errors name the file and the field."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CombinerError(f"{p}: not a readable detector file: {e}") from e
        return cls.from_dict(d, source=str(p))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "detector") -> "Combiner":
        """The combiner `to_dict` wrote; errors name `source` and the field."""
        if not isinstance(d, Mapping) or d.get("format") != COMBINER_FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise CombinerError(f"{source}: format {got!r} is not {COMBINER_FORMAT!r}")
        try:
            c = cls(
                tuple(d["features"]),
                tuple(map(float, d["mean"])),
                tuple(map(float, d["scale"])),
                tuple(map(float, d["weights"])),
                float(d["bias"]),
                d.get("info", {}),
                {k: (float(v[0]), float(v[1])) for k, v in d.get("centers", {}).items()},
                float(d.get("floor", 0.0)),
                float(d.get("ceiling", 1.0)),
                float(d.get("offset", 0.0)),
                {k: (float(v[0]), float(v[1])) for k, v in d.get("domain", {}).items()},
                float(d.get("domain_radius", 0.0)),
            )
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise CombinerError(f"{source}: missing or malformed field ({e!r})") from e
        if not (0.0 <= c.floor < 0.5 < c.ceiling <= 1.0 and np.isfinite(c.offset)):
            raise CombinerError(
                f"{source}: need 0 <= floor < 0.5 < ceiling <= 1 and a finite offset, got floor "
                f"{c.floor}, ceiling {c.ceiling}, offset {c.offset}"
            )
        if not len(c.features) == len(c.mean) == len(c.scale) == len(c.weights):
            raise CombinerError(f"{source}: features, mean, scale and weights differ in length")
        if c.domain and not (c.domain_radius > 0 and all(v[1] > 0 for v in c.domain.values())):
            raise CombinerError(f"{source}: a domain needs a positive radius and positive spreads")
        if {base_signal(f) for f in c.features if f.startswith("sq:")} - set(c.centers):
            raise CombinerError(f"{source}: a two-sided 'sq:' feature has no centre")
        return c


@dataclass(frozen=True)
class Detector:
    """One combiner per review language, and one (`ANY_LANGUAGE`) for the rest: the signals of a Chinese and
    an English review live on different scales (a word n-gram is a character pair in Chinese), so one
    shared boundary fits neither well. calibration.json's "detector" entry."""

    combiners: Mapping[str, Combiner]
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> tuple[str, ...]:
        """Every feature any of the combiners reads, in first-seen order."""
        return tuple(dict.fromkeys(f for c in self.combiners.values() for f in c.features))

    @property
    def signals(self) -> frozenset[str]:
        """The signals the features are computed from."""
        return frozenset(base_signal(f) for f in self.features)

    def logit(self, signals: Mapping[str, np.ndarray], languages: Sequence[str | None]) -> np.ndarray:
        """The combined logit per review, each from its language's combiner."""
        return self._per_language(Combiner.logit, signals, languages)

    def out_of_domain(self, signals: Mapping[str, np.ndarray], languages: Sequence[str | None]) -> np.ndarray:
        """`Combiner.out_of_domain` per review, each from its language's combiner."""
        return self._per_language(Combiner.out_of_domain, signals, languages)

    def _per_language(self, fn, signals: Mapping[str, np.ndarray], languages: Sequence[str | None]) -> np.ndarray:
        langs = np.asarray([lang if lang in self.combiners else ANY_LANGUAGE for lang in languages], dtype=object)
        out = np.full(len(langs), np.nan)
        for lang in set(langs):
            rows = langs == lang
            out[rows] = fn(self.combiners[lang], {k: np.asarray(v)[rows] for k, v in signals.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data with a format tag."""
        return {
            "format": DETECTOR_FORMAT,
            "by_language": {k: c.to_dict() for k, c in self.combiners.items()},
            "info": json.loads(json.dumps(self.info, default=float)),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "detector") -> "Detector":
        """The detector `to_dict` wrote; errors name `source` (a document of another format included)."""
        if not isinstance(d, Mapping) or d.get("format") != DETECTOR_FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise CombinerError(f"{source}: format {got!r} is not {DETECTOR_FORMAT!r}")
        by = d.get("by_language")
        if not isinstance(by, Mapping) or ANY_LANGUAGE not in by:
            raise CombinerError(f"{source}: 'by_language' must map languages to combiners, {ANY_LANGUAGE!r} included")
        return cls({str(k): Combiner.from_dict(v, f"{source} [{k}]") for k, v in by.items()}, d.get("info", {}))


def fit_domain(
    signals: Mapping[str, np.ndarray], labels: np.ndarray, names: Sequence[str], quantile: float = 0.99
) -> tuple[dict[str, tuple[float, float]], float]:
    """The human rows' centre and spread of each signal in `names` (median and 1.4826 MAD, robust to the
    odd outlier; the standard deviation where most rows share one value, as `mixed_script` does) and the
    `quantile` of their RMS z-distance from it: `Combiner.domain` and `domain_radius`."""
    y = np.asarray(labels)
    x = np.stack([np.asarray(signals[k], dtype=np.float64) for k in names], 1)[y == 1]
    x = x[np.isfinite(x).all(1)]
    if len(x) < 10:
        raise CombinerError(f"fit_domain: {len(x)} human rows with finite signals; need at least 10")
    c = np.median(x, 0)
    mad = 1.4826 * np.median(np.abs(x - c), 0)
    s = np.maximum(np.where(mad > 1e-6, mad, x.std(0)), 1e-6)
    d = np.sqrt((((x - c) / s) ** 2).mean(1))
    return {k: (float(ci), float(si)) for k, ci, si in zip(names, c, s)}, float(max(np.quantile(d, quantile), 1e-6))


def fit_combiner(
    signals: Mapping[str, np.ndarray],
    labels: np.ndarray,
    features: Sequence[str],
    *,
    l2: float = 1e-2,
    signs: Mapping[str, int] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Combiner:
    """Fit on rows with every feature finite. `labels`: 1 = human, 0 = machine-written.

    `signs` fixes the direction of features whose meaning is known (+1: larger means more human): a
    feature that the fit gives the opposite sign is dropped and the rest refitted, so the model never
    relies on a reversed relation that only holds for the fit set's generators."""
    features = list(features)
    dropped: list[str] = []
    while True:
        c = _fit(signals, labels, features, l2)
        wrong = [f for f, w in zip(c.features, c.weights) if signs and signs.get(f, 0) * w < 0]
        if not wrong or len(features) == 1:
            break
        worst = min(wrong, key=lambda f: signs[f] * c.weights[c.features.index(f)])
        features.remove(worst)
        dropped.append(worst)
    meta = {**c.info, **({"dropped_for_sign": dropped} if signs else {}), **dict(info or {})}
    return Combiner(c.features, c.mean, c.scale, c.weights, c.bias, meta, c.centers)


def _fit(signals: Mapping[str, np.ndarray], labels: np.ndarray, features: Sequence[str], l2: float) -> Combiner:
    y = np.asarray(labels, dtype=np.float64)
    centers = {}
    for f in features:
        if f.startswith("sq:") and base_signal(f) in signals:
            h = np.asarray(signals[base_signal(f)], dtype=np.float64)[y == 1]
            h = h[np.isfinite(h)]
            if len(h) < 2:
                raise CombinerError(f"fit_combiner: too few human rows with a finite {base_signal(f)}")
            centers[base_signal(f)] = (float(h.mean()), float(max(h.std(), 1e-8)))
    probe = Combiner(
        tuple(features), (0.0,) * len(features), (1.0,) * len(features), (0.0,) * len(features), 0.0, centers=centers
    )
    x = probe.matrix(signals)
    ok = np.isfinite(x).all(axis=1)
    x, y = x[ok], y[ok]
    if len(np.unique(y)) < 2:
        raise CombinerError("fit_combiner needs both human and machine-written rows with finite signals")
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-8] = 1.0
    xt = torch.as_tensor((x - mean) / scale)
    yt = torch.as_tensor(y)
    params = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = xt @ params[1:] + params[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt) + l2 * (params[1:] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = params.detach().numpy()
    meta = {"n": int(len(y)), "n_human": int(y.sum()), "l2": l2}
    return Combiner(
        tuple(features),
        tuple(map(float, mean)),
        tuple(map(float, scale)),
        tuple(map(float, w[1:])),
        float(w[0]),
        meta,
        centers,
    )


@dataclass(frozen=True)
class Candidate:
    """One combiner to try: a feature set (in order of preference) and its L2 strength, either fixed or,
    with `per_row`, `l2 / rows` of the fit set: a prior of fixed strength, so a small fit set (a language
    with few validation reviews) is held closer to zero weights than a big one instead of separating its
    rows perfectly with overconfident weights."""

    name: str
    features: tuple[str, ...]
    l2: float
    per_row: bool = False

    def l2_for(self, rows: int) -> float:
        """The L2 strength for a fit on `rows` rows."""
        return self.l2 / max(rows, 1) if self.per_row else self.l2


def select_combiner(
    signals: Mapping[str, np.ndarray],
    labels: np.ndarray,
    groups: Sequence[str],
    candidates: Sequence[Candidate],
    splits: Sequence[tuple[set[str], set[str]]],
    *,
    signs: Mapping[str, int] | None = None,
    tolerance: float = 0.01,
    seed: int = 0,
    info: Mapping[str, Any] | None = None,
) -> Combiner:
    """The candidate that best separates machine text it was not fitted on, refitted on every row.

    `groups[i]` names the source of machine-written row i (e.g. "G:plain"; ignored for human rows). Each
    split (fit_groups, check_groups) fits on half the human rows and the machine rows of `fit_groups`, and
    measures AUROC on the other half of the human rows against the machine rows of `check_groups`. A
    candidate's score is its worst split; the first candidate within `tolerance` of the best score wins, so
    the list's order states the preference between near-equal ones."""
    y = np.asarray(labels, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    human = np.flatnonzero(y == 1)
    half = np.zeros(len(y), dtype=bool)
    half[np.random.default_rng(seed).permutation(human)[: len(human) // 2]] = True
    scores: dict[str, dict[str, float]] = {}
    for cand in candidates:
        per = {}
        for fit_g, check_g in splits:
            fit_rows = (half & (y == 1)) | ((y == 0) & np.isin(g, list(fit_g)))
            check_rows = (~half & (y == 1)) | ((y == 0) & np.isin(g, list(check_g)))
            if len(np.unique(y[fit_rows])) < 2 or len(np.unique(y[check_rows])) < 2:
                continue
            sub = {k: np.asarray(v)[fit_rows] for k, v in signals.items()}
            c = fit_combiner(sub, y[fit_rows], cand.features, l2=cand.l2_for(int(fit_rows.sum())), signs=signs)
            p = c.predict({k: np.asarray(v)[check_rows] for k, v in signals.items()})
            ok = np.isfinite(p)
            per["/".join(sorted(fit_g)) + "->" + "/".join(sorted(check_g))] = auroc(y[check_rows][ok], p[ok])
        scores[cand.name] = per
    worst = {n: min(per.values()) if per else float("nan") for n, per in scores.items()}
    best = max((v for v in worst.values() if np.isfinite(v)), default=float("nan"))
    chosen = next((c for c in candidates if np.isfinite(best) and worst[c.name] >= best - tolerance), candidates[0])
    return fit_combiner(
        signals,
        y,
        chosen.features,
        l2=chosen.l2_for(len(y)),
        signs=signs,
        info={"candidate": chosen.name, "held_out_auroc": scores, "worst_held_out_auroc": worst, **dict(info or {})},
    )
