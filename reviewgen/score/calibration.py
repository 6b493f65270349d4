"""Scorer calibration, the one path used at training time and in evaluation.

A discriminator near GAN equilibrium outputs about 0.5 for everything, so its raw logit is recalibrated with
Platt scaling, p = sigmoid(scale * logit + bias), fitted on real validation reviews against samples from
the generator (and the MLE reference) at several temperatures.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from reviewgen.core.encoding import conditions
from reviewgen.core.metrics import ece
from reviewgen.core.models import unwrap
from reviewgen.core.sampling import generate_texts
from reviewgen.core.tokenizer import ReviewTokenizer
from reviewgen.score.signals import discriminator_outputs

CALIBRATION_TEMPERATURES = (0.7, 1.0, 1.2)


def fit_platt(logits: np.ndarray, labels: np.ndarray, l2: float = 1e-3) -> dict[str, float]:
    """Fit p = sigmoid(scale * logit + bias) by minimising log loss (LBFGS)."""
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = params[0] * x + params[1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + l2 * params[0] ** 2
        loss.backward()
        return loss

    opt.step(closure)
    return {"scale": params[0].item(), "bias": params[1].item()}


def apply_calibration(logits: np.ndarray, calib: dict[str, float] | None) -> np.ndarray:
    """Calibrated probabilities from raw logits (identity sigmoid without calibration)."""
    a, b = (calib["scale"], calib["bias"]) if calib else (1.0, 0.0)
    return 1.0 / (1.0 + np.exp(-(a * np.asarray(logits, dtype=np.float64) + b)))


def fit_calibration(G, D, tok: ReviewTokenizer, val_df: pd.DataFrame, *, ref=None, seed: int = 0,
                        temperatures: Sequence[float] = CALIBRATION_TEMPERATURES, max_rows: int = 384,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit the Platt calibration on real validation reviews vs samples from G (and ref) at several
    temperatures; returns {"scale", "bias", "n", "temperatures", "ece_raw", "ece"}."""
    device = next(unwrap(D).parameters()).device
    df = val_df.sample(n=min(len(val_df), max_rows), random_state=seed) if len(val_df) > max_rows else val_df
    conds = conditions(df)
    real_texts = df["text"].astype(str).tolist()
    gens = [G] + ([ref] if ref is not None else [])
    fake_texts, fake_conds = [], []
    per = max(1, len(conds) // (len(temperatures) * len(gens)))
    for gi, g in enumerate(gens):
        for ti, temp in enumerate(temperatures):
            offs = (gi * len(temperatures) + ti) * per
            c = [conds[(offs + i) % len(conds)] for i in range(per)]
            keys = [f"calib:{gi}:{ti}:{i}" for i in range(per)]
            fake_texts += generate_texts(g, tok, c, keys, seed=seed, temperature=temp, device=device)
            fake_conds += c
    real_logit, _ = discriminator_outputs(D, tok, conds, real_texts, device=device)
    fake_logit, _ = discriminator_outputs(D, tok, fake_conds, fake_texts, device=device)
    logits = np.concatenate([real_logit, fake_logit])
    labels = np.concatenate([np.ones(len(real_logit)), np.zeros(len(fake_logit))])
    calib = fit_platt(logits, labels)
    calib.update(n=int(len(labels)), temperatures=list(temperatures),
                 ece_raw=ece(labels, apply_calibration(logits, None)), ece=ece(labels, apply_calibration(logits, calib)))
    log(f"scorer calibration: scale={calib['scale']:.3f} bias={calib['bias']:.3f} "
        f"ECE {calib['ece_raw']:.3f} -> {calib['ece']:.3f} on {calib['n']} validation reviews")
    return calib
