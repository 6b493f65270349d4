"""Per-review signals computed from a model directory: the discriminator's outputs, the language-model
statistics of `reviewgen.score.detect` under G and the MLE reference, and the word n-gram statistics of
`reviewgen.score.wordlm` (the training reviews' own language model)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from reviewgen.core.device import autocast, inference_dtype
from reviewgen.core.encoding import length_batches
from reviewgen.core.losses import Tokens, review_only
from reviewgen.core.models import unwrap
from reviewgen.core.tokenizer import Condition, ReviewTokenizer
from reviewgen.score.detect import STATISTICS, LMStatistics, batch_lm_statistics
from reviewgen.score.wordlm import STATISTICS as WORD_STATISTICS
from reviewgen.score.wordlm import WordNgramLM

# The names `review_signals` returns, besides rating_pred: D's sequence logit, the LM statistics under G
# (the Binoculars ratio against the reference), length (log review tokens, incl. <eos>), and the word n-gram
# statistics.
SIGNALS = ("d_logit", *STATISTICS, "log_tokens", *WORD_STATISTICS)


def _eval(net):
    """`net` unwrapped, in eval mode. One already in it (a scorer's) is left alone: Module.eval walks
    every submodule, and for three networks of a small model that walk is a noticeable share of a one-review
    scoring call."""
    net = unwrap(net)
    if net.training:
        net.eval()
    return net


def _d_outputs(D, ids: torch.Tensor, tk: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """D's sequence logit on (product, review) and its predicted rating 1..5 from the review alone (the
    prompt would name the asked-for rating), in one forward."""
    n = ids.shape[0]
    with autocast(ids.device, inference_dtype(ids.device)):
        out = D(torch.cat([ids, review_only(ids, tk)]))
    return out.seq_logits[:n].float().cpu(), out.rating_logits[n:].argmax(-1).cpu() + 1


@torch.inference_mode()
def review_signals(
    D,
    G,
    tok: ReviewTokenizer,
    conds: Sequence[Condition],
    texts: Sequence[str],
    *,
    ref=None,
    wordlm: WordNgramLM | None = None,
    batch_size: int = 64,
    device="cpu",
    heads: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> dict[str, np.ndarray]:
    """Every scorer signal (`SIGNALS`) plus rating_pred, one array [N] each: the texts are encoded once and
    each batch of similar length (`reviewgen.core.encoding.length_batches`) goes through D, G and the
    reference `ref` once; the word n-gram statistics come from `wordlm`. What is not computed is NaN: the
    LM statistics and length without G, the word statistics without `wordlm`. ref None: the Binoculars
    ratio and the Fast-DetectGPT discrepancy use G alone. `heads`: see `batch_lm_statistics`."""
    n = len(texts)
    out: dict[str, np.ndarray] = {k: np.full(n, np.nan) for k in SIGNALS}
    out["rating_pred"] = np.zeros(n, dtype=np.int64)
    D = _eval(D)
    G = _eval(G) if G is not None else None
    ref = _eval(ref) if ref is not None else None
    dev = torch.device(device)
    tk_ids = Tokens.of(tok)
    rows, d_parts, r_parts, lm_parts = [], [], [], []
    for idx, ids in length_batches(tok, conds, texts, batch_size):
        ids = ids.to(dev)
        rows.append(idx)
        d, r = _d_outputs(D, ids, tk_ids)
        d_parts.append(d)
        r_parts.append(r)
        if G is not None:
            lm_parts.append(batch_lm_statistics(G, tok, ids, ref, heads))
    if not rows:
        return out
    order = np.concatenate(rows)
    out["d_logit"][order] = torch.cat(d_parts).double().numpy()
    out["rating_pred"][order] = torch.cat(r_parts).numpy()
    if G is not None:
        lm = LMStatistics.concat(lm_parts).as_dict()
        out["log_tokens"][order] = np.log(np.maximum(lm.pop("n_tokens"), 1).astype(np.float64))
        for k, v in lm.items():
            out[k][order] = v
    if wordlm is not None:
        out.update(wordlm.statistics(texts))
    return out
