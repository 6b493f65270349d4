"""The calibrated scorer: p_human for (product, review) pairs.

A discriminator near GAN equilibrium outputs ~0.5 for everything, so its raw logit is recalibrated with
Platt scaling, p = sigmoid(scale * logit + bias), fitted on real validation reviews against samples from
the generator (and the MLE reference) at several temperatures.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from reviewgen.core.metrics import ece
from reviewgen.core.models import unwrap
from reviewgen.core.sampling import SamplingParams, counter_uniforms, row_seed, sample
from reviewgen.core.tokenizer import Condition, ReviewTokenizer

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
CALIBRATION_TEMPERATURES = (0.7, 1.0, 1.2)


def detect_language(text: str) -> str:
    """'zh' when CJK characters make up at least 30% of the non-space characters, else 'en'."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return "en"
    return "zh" if len(_CJK.findall(text)) / len(chars) >= 0.3 else "en"


def review_conditions(reviews: Sequence[dict[str, Any]]) -> list[Condition]:
    """Conditions from API-style review dicts (text, product_title?, category?, rating?, language?)."""
    out = []
    for r in reviews:
        rating = r.get("rating")
        rating = int(rating) if rating is not None and not pd.isna(rating) and 1 <= int(rating) <= 5 else None
        lang = r.get("language") or detect_language(str(r.get("text", "")))
        out.append(Condition(title=str(r.get("product_title") or ""), category=str(r.get("category") or ""),
                             rating=rating, sentiment=None if rating else "neutral", language=lang))
    return out


@torch.no_grad()
def discriminator_outputs(D, tok: ReviewTokenizer, conds: Sequence[Condition], texts: Sequence[str],
                          batch_size: int = 64, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sequence logits [N], predicted rating 1..5 [N]) for texts under their conditions."""
    D = unwrap(D).eval()
    logits, ratings = [], []
    for s in range(0, len(texts), batch_size):
        ids = tok.encode_examples(conds[s:s + batch_size], texts[s:s + batch_size]).to(device)
        out = D(ids)
        logits.append(out.seq_logits.float().cpu())
        ratings.append(out.rating_logits.argmax(-1).cpu() + 1)
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(logits).numpy(), torch.cat(ratings).numpy()


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


def generate_texts(G, tok: ReviewTokenizer, conds: Sequence[Condition], keys: Sequence[str] | None = None, *,
                   seed: int = 0, row_seeds: Sequence[int] | None = None, temperature: float, top_p: float = 1.0,
                   top_k: int = 0, batch_size: int = 64, device="cpu",
                   max_new_tokens: int | None = None) -> list[str]:
    """Sample one review per condition. Each row's randomness is fixed by `row_seeds[i]`, or else by
    `keys[i]` (e.g. product_id:index) with `seed`."""
    if row_seeds is None:
        if keys is None:
            raise ValueError("generate_texts needs keys or row_seeds")
        row_seeds = [row_seed(k, 0, seed) for k in keys]
    G = unwrap(G)
    params = SamplingParams(max_new_tokens or tok.max_review_len, temperature, top_k, top_p)
    texts: list[str] = []
    for s in range(0, len(conds), batch_size):
        pre = tok.encode_prefixes(conds[s:s + batch_size]).to(device)
        ids = sample(G, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id,
                     uniforms=counter_uniforms(row_seeds[s:s + batch_size], params.max_new_tokens))
        texts.extend(tok.decode_reviews(ids.cpu()))
    return texts


def fit_calibration_for(G, D, tok: ReviewTokenizer, val_df: pd.DataFrame, *, ref=None, seed: int = 0,
                        temperatures: Sequence[float] = CALIBRATION_TEMPERATURES, max_rows: int = 384,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit the Platt calibration on real validation reviews vs samples from G (and ref) at several
    temperatures; returns {"scale", "bias", "n", "temperatures", "ece_raw", "ece"}."""
    from reviewgen.core.encoding import conditions

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


class Scorer:
    """Loads a model directory once; scores batches of reviews."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        from reviewgen.core.checkpoint import load_checkpoint
        from reviewgen.core.device import pick_device

        self.device = pick_device(device)
        self.ckpt = load_checkpoint(model_dir, self.device)
        self.tok, self.D = self.ckpt.tokenizer, self.ckpt.discriminator
        self.calibration = self.ckpt.calibration
        self.version = self.ckpt.version

    def score(self, reviews: Sequence[dict[str, Any]], batch_size: int = 64) -> dict[str, np.ndarray]:
        """{"p_human": calibrated [N], "logit": raw [N], "rating_pred": [N]} for review dicts."""
        texts = [str(r.get("text", "")) for r in reviews]
        logits, rating = discriminator_outputs(self.D, self.tok, review_conditions(reviews), texts,
                                               batch_size=batch_size, device=self.device)
        return {"p_human": apply_calibration(logits, self.calibration), "logit": logits, "rating_pred": rating}

    def score_frame(self, df: pd.DataFrame, text_column: str = "text") -> pd.DataFrame:
        """The input frame plus p_human and rating_pred columns."""
        if text_column not in df.columns:
            raise ValueError(f"input has no {text_column!r} column (columns: {list(df.columns)})")
        rows = []
        for rec in df.to_dict("records"):
            rows.append({"text": rec.get(text_column), "product_title": rec.get("product_title", rec.get("title")),
                         "category": rec.get("category"), "rating": rec.get("rating"),
                         "language": rec.get("language")})
        res = self.score(rows)
        out = df.copy()
        out["p_human"] = res["p_human"]
        out["rating_pred"] = res["rating_pred"]
        return out
