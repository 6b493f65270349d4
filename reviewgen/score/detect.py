"""Zero-shot language-model statistics that tell machine-written reviews from human ones.

Machine text is more predictable to a language model than human text, whatever generator wrote it. Each
statistic below is computed per review from one forward pass of the generator G (the observer) and one of
the frozen MLE reference (a second, related model), with the same KV-free batched forward training uses:

- mean token log-probability under G: sampled text sits in high-likelihood regions (the log-likelihood
  baseline of GLTR, Gehrmann et al. 2019, and of DetectGPT, Mitchell et al. 2023);
- mean log(1 + rank) of each actual token among G's predictions, and the share of tokens that are G's
  top-1 and top-10 choices: GLTR's rank histograms, which are robust to a flat or peaked distribution;
- mean entropy of G's next-token distribution: how uncertain the model is where the text continues;
- a Binoculars-style ratio (Hans et al. 2024): the log-perplexity of the text under G divided by the
  cross-entropy between the reference's and G's next-token distributions at the same positions. The
  denominator says how surprising *any* model-written continuation would be here, so the ratio normalises
  away prompts that are simply hard (low for machine text, near or above 1 for human text);
- Fast-DetectGPT's analytic sampling discrepancy (Bao et al. 2024): how much more probable the text is
  under G than a continuation the reference would sample, summed over positions and divided by that
  sample's standard deviation, (sum_t log p(x_t) - mu_t) / sqrt(sum_t var_t), with mu_t and var_t the mean
  and variance of log p under the reference's next-token distribution. It needs no perturbation model:
  the expectation over samples is exact. High for machine text sampled at T < 1 or truncated, negative
  for text more surprising than the model expects.

The same arithmetic applies to any pair of models with one vocabulary; `lm_statistics` is pure tensor math,
so it is tested on hand-built distributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reviewgen.core.losses import autocast_for, review_logits
from reviewgen.core.models import unwrap
from reviewgen.core.tokenizer import ReviewTokenizer, review_mask

STATISTICS = ("mean_logprob", "mean_log_rank", "top1_share", "top10_share", "mean_entropy", "binoculars",
              "fast_detect")


@dataclass(frozen=True)
class LMStatistics:
    """Per-review statistics, each an array [N]; `n_tokens` counts the scored review tokens (incl. <eos>)."""

    mean_logprob: np.ndarray
    mean_log_rank: np.ndarray
    top1_share: np.ndarray
    top10_share: np.ndarray
    mean_entropy: np.ndarray
    binoculars: np.ndarray
    fast_detect: np.ndarray
    n_tokens: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """Name -> array, in `STATISTICS` order plus n_tokens."""
        return {k: getattr(self, k) for k in (*STATISTICS, "n_tokens")}

    @staticmethod
    def concat(parts: Sequence["LMStatistics"]) -> "LMStatistics":
        """Join batches in order."""
        if not parts:
            empty = np.zeros(0, dtype=np.float64)
            return LMStatistics(*([empty] * len(STATISTICS)), n_tokens=np.zeros(0, dtype=np.int64))
        return LMStatistics(**{k: np.concatenate([getattr(p, k) for p in parts])
                               for k in (*STATISTICS, "n_tokens")})


def lm_statistics(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                  ref_logits: torch.Tensor | None = None) -> LMStatistics:
    """The statistics from G's logits [B, R, V] predicting `targets` [B, R] where `mask` [B, R] is true.

    `ref_logits` (same shape) gives the second model of the Binoculars ratio and the sampling model of the
    Fast-DetectGPT discrepancy; without it both use G alone (log-perplexity over G's own entropy; samples
    from G). Rows with no token give NaN."""
    logp = F.log_softmax(logits.float(), dim=-1)
    tgt = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, R]
    rank = (logp > tgt.unsqueeze(-1)).sum(-1).to(torch.float32)  # tokens strictly more likely than the target
    entropy = -(logp.exp() * logp).sum(-1)
    q = logp.exp() if ref_logits is None else F.softmax(ref_logits.float(), dim=-1)
    # expected surprise under G of what the reference would write next, and its variance
    cross = -(q * logp).sum(-1)
    var = ((q * logp * logp).sum(-1) - cross * cross).clamp_min(0.0)
    m = mask.to(torch.float32)
    n = m.sum(1)
    denom = n.clamp_min(1.0)

    def mean(x: torch.Tensor) -> np.ndarray:
        out = ((x * m).sum(1) / denom).double()
        return torch.where(n > 0, out, torch.full_like(out, float("nan"))).cpu().numpy()

    log_ppl = -mean(tgt)
    x_ent = mean(cross)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = log_ppl / np.maximum(x_ent, 1e-6)
    discrepancy = ((tgt + cross) * m).sum(1) / (var * m).sum(1).clamp_min(1e-6).sqrt()
    fast = torch.where(n > 0, discrepancy, torch.full_like(discrepancy, float("nan"))).double().cpu().numpy()
    return LMStatistics(mean_logprob=-log_ppl, mean_log_rank=mean(torch.log1p(rank)),
                        top1_share=mean((rank < 1).float()), top10_share=mean((rank < 10).float()),
                        mean_entropy=mean(entropy), binoculars=ratio, fast_detect=fast,
                        n_tokens=n.long().cpu().numpy())


@torch.inference_mode()
def batch_lm_statistics(G, tok: ReviewTokenizer, ids: torch.Tensor, ref=None) -> LMStatistics:
    """`lm_statistics` for one encoded batch of (condition, review) rows `ids` [B, T] on G's device: one
    forward of G (and of `ref`), bf16 autocast on CUDA; the statistics themselves in fp32."""
    P = tok.prefix_len
    targets = ids[:, P:]
    mask = review_mask(targets, tok.eos_id, tok.pad_id)
    with autocast_for(ids.device):
        g = review_logits(unwrap(G), ids, P)
        r = review_logits(unwrap(ref), ids, P) if ref is not None else None
    return lm_statistics(g, targets, mask, r)
