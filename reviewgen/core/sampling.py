"""Batched autoregressive sampling with a KV cache.

Randomness is counter-based: each row draws its step-t uniform from splitmix64(row_seed, t), and a token is
picked by inverse CDF over the filtered distribution. So (product, index, seed) gives the same review
whatever else shares its batch, on the same hardware.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from reviewgen.core.models import Generator, unwrap
from reviewgen.core.tokenizer import Condition, ReviewTokenizer

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def row_seed(product_id: str, index: int, seed: int) -> int:
    """A stable 64-bit seed for one review: same (product, index, seed) -> same seed."""
    h = hashlib.blake2b(f"{product_id}\x1f{index}\x1f{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def counter_uniforms(seeds: Sequence[int], n_steps: int) -> torch.Tensor:
    """[B, n_steps] uniforms in [0, 1), a pure function of each row's seed and the step."""
    s = np.asarray([int(x) & 0xFFFFFFFFFFFFFFFF for x in seeds], dtype=np.uint64)[:, None]
    t = _splitmix64(np.arange(n_steps, dtype=np.uint64))[None, :]
    z = _splitmix64(s ^ t)
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)))


def pick_tokens(logits: torch.Tensor, u: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Choose one token per row from `logits` [B, V] with uniforms `u` [B]."""
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_k <= 0 and params.top_p >= 1.0:
        # plain sampling needs no sort: inverse CDF over the vocabulary order is just as exact
        cdf = torch.cumsum(probs, dim=-1)
        k = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1), right=True)
        return k.clamp_max(cdf.shape[-1] - 1).squeeze(-1)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    if params.top_k > 0:
        sorted_p[:, params.top_k:] = 0.0
    if params.top_p < 1.0:
        # keep the smallest head of the distribution whose mass reaches top_p (always the top token)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        sorted_p = torch.where(before < params.top_p, sorted_p, torch.zeros_like(sorted_p))
    cdf = torch.cumsum(sorted_p, dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    k = torch.searchsorted(cdf, target, right=True).clamp_max(cdf.shape[-1] - 1)
    return order.gather(-1, k).squeeze(-1)


@torch.no_grad()
def sample(model: Generator, prefixes: torch.Tensor, params: SamplingParams, *, eos_id: int, pad_id: int,
           uniforms: torch.Tensor | None = None, generator: torch.Generator | None = None,
           use_cache: bool = True) -> torch.Tensor:
    """Sample reviews for `prefixes` [B, P]. Returns [B, max_new_tokens] ids, <pad> after <eos>.

    `uniforms` [B, max_new_tokens] fixes the randomness per row (see counter_uniforms); otherwise they are
    drawn from `generator`. Rows that finished are dropped from the batch (and the cache), so a batch
    costs what its live rows cost.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = prefixes.device
    B, P = prefixes.shape
    R = params.max_new_tokens
    if P + R > model.cfg.block_size:
        raise ValueError(f"prefix {P} + max_new_tokens {R} exceeds block_size {model.cfg.block_size}")
    if uniforms is None:
        uniforms = torch.rand(B, R, generator=generator, dtype=torch.float64)
    uniforms = uniforms.to(device)
    out = torch.full((B, R), pad_id, dtype=torch.long, device=device)
    active = torch.arange(B, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    with autocast:
        if use_cache:
            cache = model.new_cache(B, device, dtype=torch.bfloat16 if device.type == "cuda" else None)
            logits = model(prefixes, logits_from=P - 1, cache=cache, pos=0)[:, -1]
        seq = prefixes
        for t in range(R):
            if not use_cache:
                logits = model(seq[active], logits_from=seq.shape[1] - 1)[:, -1]
            tok = pick_tokens(logits, uniforms[active, t], params)
            out[active, t] = tok
            alive = tok != eos_id
            if not use_cache:
                seq = torch.cat([seq, out[:, t:t + 1]], dim=1)
            if t == R - 1:
                break
            if not bool(alive.all()):
                active, tok = active[alive], tok[alive]
                if active.numel() == 0:
                    break
                if use_cache:
                    cache.select(alive.nonzero().squeeze(-1))
            if use_cache:
                logits = model(tok[:, None], cache=cache, pos=P + t)[:, -1]
    model.train(was_training)
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


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
