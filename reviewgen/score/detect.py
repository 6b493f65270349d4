"""Zero-shot language-model statistics that tell machine-written reviews from human ones.

Machine text is more predictable to a language model than human text, whatever generator wrote it. Each
statistic below is computed per review from one forward pass of the generator G (the observer) and one of
the frozen MLE reference (a second, related model), with the KV-free batched forward training uses
(`batch_lm_statistics` projects to the vocabulary only at review tokens, a chunk at a time):

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

The same arithmetic applies to any pair of models with one vocabulary; `token_statistics` and `per_review`
are pure tensor math, shared by `lm_statistics` (from whole logits, tested on hand-built distributions)
and `batch_lm_statistics` (from the models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from reviewgen.core.device import autocast, inference_dtype
from reviewgen.core.models import unwrap
from reviewgen.core.tokenizer import ReviewTokenizer, review_mask

STATISTICS = ("mean_logprob", "mean_log_rank", "top1_share", "top10_share", "mean_entropy", "binoculars", "fast_detect")


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
        return LMStatistics(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in (*STATISTICS, "n_tokens")})


# positions x vocabulary entries per chunk of the statistics: 8 MB of fp32 logits stays in a CPU's cache
# through the dozen passes below, where the whole batch's logits would stream from memory each time
CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 26}


def token_statistics(
    logits: torch.Tensor, targets: torch.Tensor, ref_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-position statistics [5, n] from G's logits [n, V] for `targets` [n] (and the reference's
    logits [n, V]): log p(target), the target's rank (tokens strictly more likely), G's entropy, the
    cross-entropy E_q[-log p] and the variance Var_q[log p], with q the reference's distribution (G's own
    without one). Works in place on both logit tensors (fp32, which it then owns) to make few passes."""
    x = logits
    x.sub_(x.amax(-1, keepdim=True))  # log p = x - log Z after this shift, and exp(x) cannot overflow
    xt = x.gather(1, targets.unsqueeze(1))
    rank = (x > xt).sum(-1).to(x.dtype)
    e = x.exp()
    z = e.sum(-1)
    log_z = z.log()
    entropy = log_z - e.mul_(x).sum(-1) / z
    if ref_logits is None:
        q, zq = x.exp(), z
    else:
        q = ref_logits
        q.sub_(q.amax(-1, keepdim=True)).exp_()
        zq = q.sum(-1)
    ex = q.mul_(x).sum(-1) / zq  # E_q[x]; the variance of log p = x - log Z under q is that of x
    ex2 = q.mul_(x).sum(-1) / zq
    return torch.stack([xt.squeeze(1) - log_z, rank, entropy, log_z - ex, (ex2 - ex * ex).clamp_min(0.0)])


def per_review(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> LMStatistics:
    """Aggregate `token_statistics` columns [5, M] of review tokens belonging to `rows` [M] (0..n_rows-1)
    into per-review `LMStatistics`; rows with no token give NaN."""
    values = values.double()

    def total(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_rows, dtype=torch.float64, device=x.device).index_add_(0, rows, x)

    logp, rank, entropy, cross, var = values
    n = total(torch.ones_like(logp))
    nan = torch.full_like(n, float("nan"))

    def mean(x: torch.Tensor) -> np.ndarray:
        return torch.where(n > 0, total(x) / n.clamp_min(1.0), nan).cpu().numpy()

    log_ppl, x_ent = -mean(logp), mean(cross)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = log_ppl / np.maximum(x_ent, 1e-6)
    fast = (total(logp) + total(cross)) / total(var).clamp_min(1e-6).sqrt()
    return LMStatistics(
        mean_logprob=-log_ppl,
        mean_log_rank=mean(torch.log1p(rank)),
        top1_share=mean((rank < 1).double()),
        top10_share=mean((rank < 10).double()),
        mean_entropy=mean(entropy),
        binoculars=ratio,
        fast_detect=torch.where(n > 0, fast, nan).cpu().numpy(),
        n_tokens=n.long().cpu().numpy(),
    )


def _chunk_rows(device: torch.device, vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"]) // vocab)


def lm_statistics(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, ref_logits: torch.Tensor | None = None
) -> LMStatistics:
    """The statistics from G's logits [B, R, V] predicting `targets` [B, R] where `mask` [B, R] is true.

    `ref_logits` (same shape) gives the second model of the Binoculars ratio and the sampling model of the
    Fast-DetectGPT discrepancy; without it both use G alone (log-perplexity over G's own entropy; samples
    from G). Rows with no token give NaN."""
    rows = mask.nonzero()[:, 0]
    x, t = logits[mask].float(), targets[mask]
    r = ref_logits[mask].float() if ref_logits is not None else None
    step = _chunk_rows(x.device, x.shape[-1])
    parts = [
        token_statistics(x[s : s + step], t[s : s + step], None if r is None else r[s : s + step])
        for s in range(0, len(t), step)
    ]
    values = torch.cat(parts, 1) if parts else torch.zeros(5, 0)
    return per_review(values, rows, mask.shape[0])


def head_weights(G, ref, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """G's and `ref`'s LM-head weights cast to `dtype` (a copy when they differ), for `batch_lm_statistics`:
    a tied head stays fp32 for the embedding lookup, so without these each batch casts it again (for a
    small model, a noticeable share of a one-review scoring call)."""
    G = unwrap(G)
    return G.lm_head.weight.to(dtype), (unwrap(ref).lm_head.weight.to(dtype) if ref is not None else None)


@torch.inference_mode()
def batch_lm_statistics(
    G, tok: ReviewTokenizer, ids: torch.Tensor, ref=None, heads: tuple[torch.Tensor, torch.Tensor | None] | None = None
) -> LMStatistics:
    """`lm_statistics` for one encoded batch of (condition, review) rows `ids` [B, T] on G's device.
    `heads`: G's and ref's LM-head weights already in the inference dtype (`head_weights`), for a caller
    scoring many batches with the same networks; otherwise they are cast here.

    One forward of G's trunk (and of `ref`'s) under `autocast` to the inference dtype; the vocabulary projection then
    runs only at review tokens, a cache-sized chunk at a time, so the [B, R, V] logits never exist whole.
    The statistics are fp32. Under bf16 each target's own logit is recomputed in fp32, so that rounding
    cannot tie it with its neighbours and flatter its rank."""
    P = tok.prefix_len
    targets = ids[:, P:]
    mask = review_mask(targets, tok.eos_id, tok.pad_id)
    G = unwrap(G)
    ref = unwrap(ref) if ref is not None else None
    dev = ids.device
    with autocast(dev, inference_dtype(dev)):
        hg = G.features(ids[:, :-1], start=P - 1)[mask]
        hr = ref.features(ids[:, :-1], start=P - 1)[mask] if ref is not None else None
    dtype = inference_dtype(dev)
    w = G.lm_head.weight
    wg, wr = heads if heads is not None else head_weights(G, ref, dtype)
    t = targets[mask]
    step = _chunk_rows(dev, w.shape[0])
    parts = []
    for s in range(0, len(t), step):
        h, tt = hg[s : s + step], t[s : s + step]
        x = (h.to(dtype) @ wg.T).float()
        r = (hr[s : s + step].to(dtype) @ wr.T).float() if ref is not None else None
        exact = (h.float() * w[tt].float()).sum(-1)
        x.scatter_(1, tt.unsqueeze(1), exact.unsqueeze(1))
        parts.append(token_statistics(x, tt, r))
    values = torch.cat(parts, 1) if parts else torch.zeros(5, 0, device=ids.device)
    return per_review(values, mask.nonzero()[:, 0], ids.shape[0])
