"""The calibrated combiner: one small logistic model over the scorer's signals gives p_human.

Features are standardised with the fit set's mean and spread, then combined by an L2-regularised logistic
regression fitted with LBFGS; the result is plain JSON (`detector.json` in a model directory), loaded without
pickle. A logistic model fitted by log loss is calibrated on its own fit distribution, and the strong L2
keeps it from leaning on any one signal that only separates our own generator's artifacts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

FORMAT = "reviewgen-detector/1"


class CombinerError(ValueError):
    """A detector file is missing a field or does not match the signals offered to it."""


@dataclass(frozen=True)
class Combiner:
    """p_human = sigmoid(bias + sum_i weight_i * (x_i - mean_i) / scale_i) over the named features."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    info: Mapping[str, Any] = field(default_factory=dict)  # how it was fitted (counts, sources, metrics)

    def matrix(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """The [N, F] feature matrix in this combiner's order; a missing signal is an error naming it."""
        missing = [f for f in self.features if f not in signals]
        if missing:
            raise CombinerError(f"detector needs signals {missing}; got {sorted(signals)}")
        return np.stack([np.asarray(signals[f], dtype=np.float64) for f in self.features], axis=1)

    def logit(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """The combined logit per review (NaN where any feature is NaN, e.g. a review with no tokens)."""
        x = (self.matrix(signals) - np.asarray(self.mean)) / np.asarray(self.scale)
        return x @ np.asarray(self.weights) + self.bias

    def predict(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """p_human per review."""
        return 1.0 / (1.0 + np.exp(-self.logit(signals)))

    def to_json(self) -> str:
        """Plain JSON with a format tag."""
        d = asdict(self)
        d["format"] = FORMAT
        return json.dumps(d, indent=2, sort_keys=True, default=float)

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
        if d.get("format") != FORMAT:
            raise CombinerError(f"{p}: format {d.get('format')!r} is not {FORMAT!r}")
        try:
            c = cls(tuple(d["features"]), tuple(map(float, d["mean"])), tuple(map(float, d["scale"])),
                    tuple(map(float, d["weights"])), float(d["bias"]), d.get("info", {}))
        except KeyError as e:
            raise CombinerError(f"{p}: missing field {e.args[0]!r}") from e
        if not len(c.features) == len(c.mean) == len(c.scale) == len(c.weights):
            raise CombinerError(f"{p}: features, mean, scale and weights differ in length")
        return c


def fit_combiner(signals: Mapping[str, np.ndarray], labels: np.ndarray, features: Sequence[str], *,
                 l2: float = 1e-2, info: Mapping[str, Any] | None = None) -> Combiner:
    """Fit on rows with every feature finite. `labels`: 1 = human, 0 = machine-written."""
    probe = Combiner(tuple(features), (0.0,) * len(features), (1.0,) * len(features), (0.0,) * len(features), 0.0)
    x = probe.matrix(signals)
    y = np.asarray(labels, dtype=np.float64)
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
    meta = {"n": int(len(y)), "n_human": int(y.sum()), "l2": l2, **dict(info or {})}
    return Combiner(tuple(features), tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, w[1:])),
                    float(w[0]), meta)
