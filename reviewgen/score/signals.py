"""Per-review signals computed from a model directory: the discriminator's outputs, the language-model
statistics of `reviewgen.score.detect` under G and the MLE reference, and the word n-gram statistics of
`reviewgen.score.wordlm` (the training reviews' own language model)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from reviewgen.core.losses import autocast_for
from reviewgen.core.models import unwrap
from reviewgen.core.tokenizer import Condition, ReviewTokenizer
from reviewgen.score.detect import STATISTICS, review_lm_statistics
from reviewgen.score.wordlm import STATISTICS as WORD_STATISTICS, WordNgramLM

# The names `review_signals` returns, besides rating_pred: D's sequence logit, the LM statistics under G
# (the Binoculars ratio against the reference), length (log review tokens, incl. <eos>), and the word n-gram
# statistics.
SIGNALS = ("d_logit", *STATISTICS, "log_tokens", *WORD_STATISTICS)


@torch.inference_mode()
def discriminator_outputs(D, tok: ReviewTokenizer, conds: Sequence[Condition], texts: Sequence[str],
                          batch_size: int = 64, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sequence logits [N], predicted rating 1..5 [N]) for texts under their conditions (bf16 autocast on CUDA)."""
    D = unwrap(D).eval()
    dev = torch.device(device)
    logits, ratings = [], []
    for s in range(0, len(texts), batch_size):
        ids = tok.encode_examples(conds[s:s + batch_size], texts[s:s + batch_size]).to(dev)
        with autocast_for(dev):
            out = D(ids)
        logits.append(out.seq_logits.float().cpu())
        ratings.append(out.rating_logits.argmax(-1).cpu() + 1)
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(logits).numpy(), torch.cat(ratings).numpy()


def review_signals(D, G, tok: ReviewTokenizer, conds: Sequence[Condition], texts: Sequence[str], *, ref=None,
                   wordlm: WordNgramLM | None = None, batch_size: int = 64, device="cpu") -> dict[str, np.ndarray]:
    """Every scorer signal (`SIGNALS`) plus rating_pred, one array [N] each: one forward of D, G and the
    reference `ref` per batch, and the word n-gram statistics under `wordlm`. What is not computed is NaN:
    the LM statistics and length without G, the word statistics without `wordlm`. ref None: the
    Binoculars ratio and the Fast-DetectGPT discrepancy use G alone."""
    d_logit, rating = discriminator_outputs(D, tok, conds, texts, batch_size=batch_size, device=device)
    out: dict[str, np.ndarray] = {k: np.full(len(texts), np.nan) for k in SIGNALS}
    out.update(d_logit=d_logit.astype(np.float64), rating_pred=rating)
    if G is not None:
        lm = review_lm_statistics(G, tok, conds, texts, ref=ref, batch_size=batch_size, device=device).as_dict()
        out["log_tokens"] = np.log(np.maximum(lm.pop("n_tokens"), 1).astype(np.float64))
        out.update(lm)
    if wordlm is not None:
        out.update(wordlm.statistics(texts))
    return out
