"""Platt scaling: a logistic map from a raw score to a calibrated probability, optionally within a fitted
floor and ceiling. The scorer applies it to D's logit (its fallback without the language models) and to the
detector's combined logit; `reviewgen.score.calibration` fits both. A fit set's prior shift (`prior_shift`)
takes either back to the scorer's 1:1 prior."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from reviewgen.core.model_dir import Calibration

# the largest floor (and 1 - ceiling) the detector's Platt step may fit (`fit_platt(floor=True)`): the share
# of reviews whose signals carry no evidence is a few percent, and a floor near 0.5 would flatten every score
MAX_FLOOR = 0.1


def fit_platt(
    logits: np.ndarray, labels: np.ndarray, l2: float = 1e-3, smooth_targets: bool = False, floor: bool = False
) -> dict[str, float]:
    """Fit p = sigmoid(scale * logit + bias) by minimising log loss (LBFGS). `smooth_targets`: Platt's own
    targets, (n_pos + 1) / (n_pos + 2) and 1 / (n_neg + 2) instead of 1 and 0, which keep the scale finite
    when the logits separate the classes perfectly (as a small fit set can), so p never claims certainty.
    `floor`: fit p = f + (c - f) * sigmoid(scale * logit + bias) with a floor f in [0, MAX_FLOOR] and a
    ceiling c in [1 - MAX_FLOOR, 1] as well (returned as "floor" and "ceiling"): a logistic model robust to
    a share of rows of one class that look like the other, e.g. human reviews too short and generic to
    tell from machine text, which a plain fit scores with near certainty as machine-written."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    if smooth_targets:
        n_pos, n_neg = float(y.sum()), float((1 - y).sum())
        y = torch.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1.0 / (n_neg + 2))
    # scale, bias[, the floor and 1 - ceiling as MAX_FLOOR * sigmoid(theta), starting near 0.5%]
    params = torch.tensor([1.0, 0.0] + ([-3.0, -3.0] if floor else []), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = params[0] * x + params[1]
        if floor:
            f, c = MAX_FLOOR * torch.sigmoid(params[2]), 1 - MAX_FLOOR * torch.sigmoid(params[3])
            p = (f + (c - f) * torch.sigmoid(z)).clamp(1e-12, 1 - 1e-12)
            fit = -(y * p.log() + (1 - y) * (-p).log1p()).mean()
        else:
            fit = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
        loss = fit + l2 * params[0] ** 2
        loss.backward()
        return loss

    opt.step(closure)
    out = {"scale": params[0].item(), "bias": params[1].item()}
    if floor:
        out["floor"] = MAX_FLOOR * torch.sigmoid(params[2]).item()
        out["ceiling"] = 1.0 - MAX_FLOOR * torch.sigmoid(params[3]).item()
    return out


def apply_calibration(logits: np.ndarray, calib: Mapping[str, float] | Calibration | None) -> np.ndarray:
    """Calibrated probabilities from raw logits (identity sigmoid without calibration): `calib` is what
    `fit_platt` returns, within its "floor" and "ceiling" where it has them (`fit_platt(floor=True)`), or a
    model directory's `Calibration`, whose D Platt scaling has neither."""
    if isinstance(calib, Calibration):
        a, b, f, c = calib.scale, calib.bias, 0.0, 1.0
    else:
        a, b = (calib["scale"], calib["bias"]) if calib else (1.0, 0.0)
        f, c = (calib.get("floor", 0.0), calib.get("ceiling", 1.0)) if calib else (0.0, 1.0)
    return f + (c - f) / (1.0 + np.exp(-(a * np.asarray(logits, dtype=np.float64) + b)))


def prior_shift(labels: np.ndarray) -> float:
    """log(machine rows / human rows) of a fit set (labels: 1 human, 0 machine): what a logistic fit on it
    subtracts from every logit, and what adding back gives the logit under the scorer's 1:1 prior."""
    y = np.asarray(labels)
    n_human, n_machine = int((y == 1).sum()), int((y == 0).sum())
    return float(np.log(n_machine / n_human)) if n_human and n_machine else 0.0
