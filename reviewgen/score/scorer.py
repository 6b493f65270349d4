"""The calibrated scorer: p_human for (product, review) pairs (calibration: `reviewgen.score.calibration`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.device import pick_device
from reviewgen.core.text import detect_language
from reviewgen.core.tokenizer import Condition
from reviewgen.score.calibration import apply_calibration
from reviewgen.score.signals import discriminator_outputs


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


class Scorer:
    """Loads a model directory once; scores batches of reviews. Exposes the model's tokenizer (`tok`), version,
    calibration and n-gram index path (`ngram_path`, for the output filter's copy check)."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        self.device = pick_device(device)
        self.ckpt = load_checkpoint(model_dir, self.device)
        self.tok, self.D = self.ckpt.tokenizer, self.ckpt.discriminator
        self.calibration = self.ckpt.calibration
        self.version = self.ckpt.version
        self.ngram_path = self.ckpt.ngram_path

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
