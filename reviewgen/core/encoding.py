"""Review tables to model inputs: conditions, the category vocabulary, the tokenizer fit and encoded arrays.

Shared by training, scoring, generation and evaluation, so none of them imports the trainer.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from reviewgen.core.config import RunConfig
from reviewgen.core.tokenizer import Condition, ReviewTokenizer

OTHER_CATEGORY = "<other>"


def build_categories(train: pd.DataFrame, n: int) -> list[str]:
    """The category vocabulary for D's category head: the n-1 most frequent, plus <other> at 0."""
    counts = Counter(train["category"].fillna("").astype(str))
    return [OTHER_CATEGORY] + [c for c, _ in counts.most_common(n - 1)]


def conditions(df: pd.DataFrame) -> list[Condition]:
    """Conditions (title, category, rating/sentiment, language) for each row of a review table."""
    ratings = df["rating"].astype("Int64") if "rating" in df else pd.Series([pd.NA] * len(df))
    out = []
    for title, cat, r, s, lang in zip(
        df["product_title"],
        df["category"],
        ratings,
        df.get("sentiment", pd.Series([None] * len(df))),
        df.get("language", pd.Series(["en"] * len(df))),
    ):
        out.append(
            Condition(
                title=str(title or ""),
                category=str(cat or ""),
                rating=None if pd.isna(r) else int(r),
                sentiment=s if isinstance(s, str) else None,
                language=lang if isinstance(lang, str) else "en",
            )
        )
    return out


def encode_frame(df: pd.DataFrame, tok: ReviewTokenizer, categories: list[str]) -> dict[str, np.ndarray]:
    """Review table -> {"ids" [N, P+R], "rating" [N] (0..4 or -100), "category" [N] (-100 unknown)}.

    Plain numpy so it can run inside a Ray Data `map_batches`."""
    ids = tok.encode_examples(conditions(df), df["text"].astype(str).tolist()).numpy()
    rating = df["rating"].astype("Int64").fillna(0).to_numpy(dtype=np.int64) - 1
    rating[rating < 0] = -100
    index = {c: i for i, c in enumerate(categories)}
    category = np.array([index.get(str(c), 0) for c in df["category"].fillna("")], dtype=np.int64)
    return {"ids": ids, "rating": rating, "category": category}


def fixed_batches(data: dict[str, np.ndarray], batch_size: int, limit: int, device="cpu") -> list[dict]:
    """The first `limit` batches in order (validation)."""
    n = len(data["ids"])
    out = []
    for s in range(0, min(n, batch_size * limit), batch_size):
        out.append({k: to_tensor(v[s : s + batch_size]).to(device) for k, v in data.items()})
    return out


def fit_tokenizer(train: pd.DataFrame, cfg: RunConfig, max_texts: int = 200_000) -> ReviewTokenizer:
    """Train BPE on the training split's reviews, titles and categories."""
    texts = train["text"].astype(str).tolist()[:max_texts]
    extra = pd.concat([train["product_title"], train["category"]]).dropna().astype(str).unique().tolist()
    return ReviewTokenizer.train(
        texts + extra,
        cfg.tokenizer.vocab_size,
        cfg.tokenizer.prefix_len,
        cfg.tokenizer.max_review_len,
        cfg.tokenizer.min_frequency,
    )


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor over `a`, copying only when `a` is read-only (arrays that come out of Ray's object store
    are; torch would otherwise share memory it must not write and warn about it)."""
    return torch.as_tensor(a if a.flags.writeable else a.copy())


def length_batches(
    tok: ReviewTokenizer, conds: Sequence[Condition], texts: Sequence[str], batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(row indices, ids [b, T_b]) batches of (condition, review) pairs, shortest first, each cut after its
    longest row's last non-pad token. Scoring the same pairs costs what their tokens cost, not what the
    longest possible review costs; a causal LM and D (which masks pads) give the same outputs either way.
    Rows come back in length order: place results with the indices."""
    if not len(texts):
        return
    ids = torch.cat([tok.encode_examples(conds[s : s + 1024], texts[s : s + 1024]) for s in range(0, len(texts), 1024)])
    real = ids != tok.pad_id
    # one past the last non-pad position, and at least one review position
    lengths = torch.where(real.any(1), ids.shape[1] - real.flip(1).int().argmax(1), 0).clamp_min(tok.prefix_len + 1)
    order = torch.argsort(lengths, stable=True)
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        yield rows.numpy(), ids[rows, : int(lengths[rows].max())]
