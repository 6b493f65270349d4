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
from reviewgen.core.tokenizer import Condition, ReviewTokenizer
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


def sample_fakes(generators: Sequence[Any], tok: ReviewTokenizer, conds: Sequence[Condition],
                 temperatures: Sequence[float], seed: int, key_prefix: str,
                 n: int | None = None) -> tuple[list[str], list[Condition]]:
    """`n` generated reviews (default: one per condition) spread evenly over every (generator, temperature)
    pair, each for a condition taken in turn from `conds`: the negatives of the scorer's calibration and
    of evaluation's TF-IDF baseline. Sample i of pair (g, t) is keyed `{key_prefix}:{g}:{t}:{i}`, so the
    same call gives the same texts. Each generator samples on its own device."""
    if not conds or not generators or not temperatures:
        raise ValueError("sample_fakes: need at least one condition, generator and temperature")
    n = len(conds) if n is None else n
    slots = [(gi, ti) for gi in range(len(generators)) for ti in range(len(temperatures))]
    texts: list[str] = []
    fake_conds: list[Condition] = []
    for (gi, ti), idx in zip(slots, np.array_split(np.arange(n), len(slots))):
        if not len(idx):
            continue
        g = generators[gi]
        c = [conds[i % len(conds)] for i in idx]
        keys = [f"{key_prefix}:{gi}:{ti}:{i}" for i in idx]
        texts += generate_texts(g, tok, c, keys, seed=seed, temperature=temperatures[ti],
                                device=next(unwrap(g).parameters()).device)
        fake_conds += c
    return texts, fake_conds


def calibrate(D, tok: ReviewTokenizer, val_df: pd.DataFrame, generators: Sequence[Any], *, seed: int = 0,
              temperatures: Sequence[float] = CALIBRATION_TEMPERATURES, max_rows: int | None = 384,
              key_prefix: str = "calib") -> dict[str, Any]:
    """Fit the Platt calibration of discriminator D on real validation reviews (up to `max_rows`; None:
    all) against as many samples from `generators` (`sample_fakes`): balanced classes, since the scorer
    assumes a 1:1 prior. Returns {"scale", "bias", "n", "temperatures", "ece_raw", "ece"}."""
    df = val_df.sample(n=max_rows, random_state=seed) if max_rows is not None and len(val_df) > max_rows else val_df
    if df.empty:
        raise ValueError("calibrate: no validation reviews to calibrate on")
    conds = conditions(df)
    real_texts = df["text"].astype(str).tolist()
    fake_texts, fake_conds = sample_fakes(generators, tok, conds, temperatures, seed, key_prefix)
    device = next(unwrap(D).parameters()).device
    real_logit, _ = discriminator_outputs(D, tok, conds, real_texts, device=device)
    fake_logit, _ = discriminator_outputs(D, tok, fake_conds, fake_texts, device=device)
    logits = np.concatenate([real_logit, fake_logit])
    labels = np.concatenate([np.ones(len(real_logit)), np.zeros(len(fake_logit))])
    calib: dict[str, Any] = fit_platt(logits, labels)
    calib.update(n=int(len(labels)), temperatures=[float(t) for t in temperatures],
                 ece_raw=ece(labels, apply_calibration(logits, None)), ece=ece(labels, apply_calibration(logits, calib)))
    return calib


def fit_calibration(G, D, tok: ReviewTokenizer, val_df: pd.DataFrame, *, ref=None, seed: int = 0,
                    temperatures: Sequence[float] = CALIBRATION_TEMPERATURES, max_rows: int | None = 384,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """The training-end calibration: `calibrate` against samples from G (and the MLE reference `ref`)."""
    calib = calibrate(D, tok, val_df, [G] + ([ref] if ref is not None else []), seed=seed,
                      temperatures=temperatures, max_rows=max_rows)
    log(f"scorer calibration: scale={calib['scale']:.3f} bias={calib['bias']:.3f} "
        f"ECE {calib['ece_raw']:.3f} -> {calib['ece']:.3f} on {calib['n']} validation reviews")
    return calib
