"""Batched autoregressive sampling with a KV cache.

Randomness is counter-based: each row draws its step-t uniform from splitmix64(row_seed, t), and a token is
picked by inverse CDF over the filtered distribution. So (product, index, seed) gives the same review
whatever else shares its batch, on the same hardware.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from reviewgen.core.config import ConfigError
from reviewgen.core.device import autocast, inference_dtype
from reviewgen.core.models import Generator, unwrap
from reviewgen.core.tokenizer import Condition, ReviewTokenizer
from reviewgen.core.utf8 import Utf8Guard
from reviewgen.core.watermark import Watermark

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
PRECISIONS = ("auto", "fp32")


@dataclass(frozen=True)
class SamplingParams:
    """What to sample (length, temperature, top-k, top-p) and how to run the per-token step.

    `compile_decode` runs each single-token decode step through `torch.compile(..., dynamic=True,
    fullgraph=True)`; the prefill stays eager. Off by default: on CPU its gain is small next to the compile
    it costs each process, and its tokens differ from eager's, since inductor's fused kernels round
    differently; the per-row-seed guarantee then holds among compiled runs only.

    `precision`: "auto" runs the forwards under `reviewgen.core.device.autocast` to `inference_dtype` (bf16 on
    CUDA and on CPUs with native bf16, fp32 elsewhere); "fp32" always in fp32. The per-row-seed guarantee holds within
    one precision on one kind of hardware."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    compile_decode: bool = False
    precision: str = "auto"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


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


# Top-k / top-p read a head of the distribution from torch.topk; a row falls back to sorting the whole
# vocabulary only when the head cannot decide it exactly (see _pick_from_head).
HEAD = 64
# the head decides top-p only when its mass clears top_p by more than cumsum's rounding can move a boundary
_MASS_MARGIN = 1e-4


def _pick_reference(probs: torch.Tensor, u: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The rule: stable sort of the whole vocabulary (probability desc, then index asc), top-k and top-p
    masks, inverse CDF in that order. What every other path reproduces exactly; run as is off CPU."""
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    return order.gather(-1, _sorted_position(sorted_p, u, params)).squeeze(-1)


def _sorted_position(sorted_p: torch.Tensor, u: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[B, 1]: the position in each row of `sorted_p` (probabilities, descending) that the rule picks."""
    if params.top_k > 0:
        sorted_p = sorted_p.clone()
        sorted_p[:, params.top_k :] = 0.0
    if params.top_p < 1.0:
        # keep the smallest head of the distribution whose mass reaches top_p (always the top token)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        sorted_p = torch.where(before < params.top_p, sorted_p, 0.0)
    cdf = torch.cumsum(sorted_p, dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).clamp_max(cdf.shape[-1] - 1)


def _pick_sorted(probs: torch.Tensor, u: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """`_pick_reference`'s tokens on CPU, from a sort of the values alone.

    Ties do not change the sorted values, so every sum the rule reads is the same. The picked position k
    names a value v, and the token is the (k - #{p > v})-th index, in index order, among the entries equal
    to v (usually the only one); both counts are binary searches in the sorted values. NumPy's SIMD sort of
    float32 (x86-simd-sort) is much faster than sorting (value, index) keys, and the sort is most of a
    step's sampling cost where the head cannot decide (flat distributions: high temperature, top-p)."""
    if probs.device.type != "cpu" or probs.dtype != torch.float32 or probs.dim() != 2:
        return _pick_reference(probs, u, params)
    neg_sorted = torch.from_numpy(np.sort(probs.neg().numpy(), axis=-1))  # ascending -p: descending p
    k = _sorted_position(neg_sorted.neg(), u, params)
    neg_v = neg_sorted.gather(-1, k)
    first = torch.searchsorted(neg_sorted, neg_v)  # entries strictly more likely than v
    n_equal = torch.searchsorted(neg_sorted, neg_v, right=True) - first
    equal = probs == neg_v.neg()
    tok = equal.view(torch.uint8).argmax(-1)
    tied = (n_equal > 1).squeeze(-1).nonzero().squeeze(-1)
    if len(tied):
        eq = equal[tied]
        tok[tied] = ((eq.cumsum(-1) == k[tied] - first[tied] + 1) & eq).view(torch.uint8).argmax(-1)
    return tok


def _pick_from_head(probs: torch.Tensor, u: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The same tokens as _pick_sorted, from the top `HEAD` (or top_k) entries of each row.

    The head, reordered by (probability desc, index asc), is the full stable sort's prefix, and the CPU's
    sequential cumsum gives the same prefix sums, so every quantity the reference reads is reproduced
    exactly, provided (a) no tie straddles the head's edge, (b) every entry past the head is masked out
    (top-k within the head, or the head's mass clears top_p), and (c) the pick lands inside the head.
    Rows failing any of these go through _pick_sorted."""
    V = probs.shape[-1]
    n = min(params.top_k, HEAD) if 0 < params.top_k <= HEAD else HEAD
    if n + 1 >= V or probs.device.type != "cpu":
        return _pick_sorted(probs, u, params)
    if (
        params.top_p < 1.0
        and not (0 < params.top_k <= n)
        and bool((probs.amax(dim=-1) * n < params.top_p + _MASS_MARGIN).all())
    ):
        return _pick_sorted(probs, u, params)  # a flat distribution: no row's head can reach top_p
    vals, idx = torch.topk(probs, n + 1, dim=-1, sorted=True)
    edge_tie = vals[:, n - 1] == vals[:, n]
    vals, idx = vals[:, :n], idx[:, :n]
    # topk leaves ties in any order: index order first, then a stable sort by value, as the full sort does
    idx, perm = idx.sort(dim=-1)
    vals = vals.gather(-1, perm)
    vals, perm = vals.sort(dim=-1, descending=True, stable=True)
    idx = idx.gather(-1, perm)
    masked = vals
    undecided = edge_tie
    if params.top_p < 1.0:
        csum = torch.cumsum(vals, dim=-1)
        masked = torch.where(csum - vals < params.top_p, vals, torch.zeros_like(vals))
        if not (0 < params.top_k <= n):
            undecided = undecided | (csum[:, -1] < params.top_p + _MASS_MARGIN)
    elif not (0 < params.top_k <= n):
        return _pick_sorted(probs, u, params)  # top_k beyond the head and no top_p: the head cannot decide
    cdf = torch.cumsum(masked, dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    k = torch.searchsorted(cdf, target, right=True)
    undecided = undecided | (k.squeeze(-1) >= n)
    tok = idx.gather(-1, k.clamp_max(n - 1)).squeeze(-1)
    if bool(undecided.any()):
        rows = undecided.nonzero().squeeze(-1)
        tok[rows] = _pick_sorted(probs[rows], u[rows], params)
    return tok


def pick_tokens(
    logits: torch.Tensor,
    u: torch.Tensor,
    params: SamplingParams,
    watermark: Watermark | None = None,
    prev: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose one token per row from `logits` [B, V] with uniforms `u` [B]. A `watermark` adds its green-list
    bias after each row's previous token `prev` [B]: after the temperature, before top-k and top-p (so the
    bias means the same at every temperature, and the cuts see the biased distribution)."""
    if params.temperature <= 0:
        return (logits if watermark is None else watermark.bias_logits(logits.float(), prev)).argmax(dim=-1)
    scaled = logits.float() / params.temperature
    if watermark is not None:
        scaled = watermark.bias_logits(scaled, prev)
    probs = torch.softmax(scaled, dim=-1)
    if params.top_k <= 0 and params.top_p >= 1.0:
        # plain sampling needs no sort: inverse CDF over the vocabulary order is just as exact
        cdf = torch.cumsum(probs, dim=-1)
        k = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1), right=True)
        return k.clamp_max(cdf.shape[-1] - 1).squeeze(-1)
    return _pick_from_head(probs, u, params)


# Finished rows stay in the batch (their tokens are ignored) until the live share falls below this; then the
# cache is compacted once. Copying the cache at every finish costs more than a few idle rows.
COMPACT_BELOW = 0.75


def _step_uniforms(
    model: Generator, prefixes: torch.Tensor, R: int, uniforms: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """The uniforms [R, B] of `R` decode steps, step-major so each step reads one contiguous row: the given
    per-row `uniforms` [B, R], or else drawn from `generator`. ValueError when prefix and review overrun the
    model's block."""
    B, P = prefixes.shape
    if P + R > model.cfg.block_size:
        raise ValueError(f"prefix {P} + max_new_tokens {R} exceeds block_size {model.cfg.block_size}")
    if uniforms is None:
        uniforms = torch.rand(B, R, generator=generator, dtype=torch.float64)
    return uniforms.to(prefixes.device).t().contiguous()


def _decoder(model: Generator, params: SamplingParams):
    """The callable of the cached decode steps: the model, or its forward compiled when `compile_decode`.
    A fresh wrapper per call, not a cached one: Dynamo keys its compiled code on Generator.forward's code
    object and guards, so later calls reuse it, and nothing is stored on the model or the module."""
    return torch.compile(model.forward, dynamic=True, fullgraph=True) if params.compile_decode else model


class EosHold:
    """The sampler's running tally of each row's green review tokens under the signing key, and the <eos> it
    withholds from rows whose tally would not yet be detected at `hold_eos_z` (see WatermarkConfig). The
    first review token is scored after the prompt's last token `prev`, as `Watermark.detect_texts` scores it."""

    def __init__(self, watermark: Watermark, prev: torch.Tensor, max_len: int, eos_id: int):
        z = watermark.config.hold_eos_z
        if z is None:
            raise ValueError("EosHold needs a watermark whose config sets hold_eos_z")
        self.watermark, self.eos_id, self.prev = watermark, eos_id, prev
        self.need = watermark.green_needed(max_len, z).to(prev.device)
        self.green = torch.zeros_like(prev)
        self.scored = torch.zeros_like(prev)

    @classmethod
    def maybe(cls, watermark: Watermark | None, prev: torch.Tensor, max_len: int, eos_id: int) -> "EosHold | None":
        """An EosHold when `watermark` holds <eos>, else None (also when `eos_id` < 0: no end token)."""
        if watermark is None or watermark.config.hold_eos_z is None or eos_id < 0:
            return None
        return cls(watermark, prev.long(), max_len, eos_id)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [B, V] with <eos> at -inf in the rows still held (in place)."""
        held = self.green < self.need[self.scored]
        logits[:, self.eos_id] = logits[:, self.eos_id].masked_fill(held, -math.inf)
        return logits

    def update(self, tok: torch.Tensor) -> None:
        """Count this step's tokens `tok` [B] (<eos> is not scored)."""
        scored = tok != self.eos_id
        self.green += (self.watermark.green(self.prev, tok) & scored).long()
        self.scored += scored.long()
        self.prev = tok

    def select(self, keep: torch.Tensor) -> None:
        """Keep the rows `keep` (the sampler's batch compaction)."""
        self.green, self.scored, self.prev = self.green[keep], self.scored[keep], self.prev[keep]


@contextlib.contextmanager
def _eval_mode(model: Generator):
    """`model` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# no_grad, not inference_mode: autocast keeps its low-precision copy of a weight (one that requires grad)
# for the whole call only outside inference mode; inside it, every decode step would cast every weight again
@torch.no_grad()
def sample(
    model: Generator,
    prefixes: torch.Tensor,
    params: SamplingParams,
    *,
    eos_id: int,
    pad_id: int,
    uniforms: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    watermark: Watermark | None = None,
    guard: Utf8Guard | None = None,
) -> torch.Tensor:
    """[B, max_new_tokens] review ids for `prefixes` [B, P], <pad> after <eos>. `uniforms` [B, max_new_tokens]
    fix each row's randomness (counter_uniforms), else drawn from `generator`. Finished rows are dropped from
    the batch and the cache once fewer than COMPACT_BELOW are live. `watermark`: see pick_tokens (the first
    token's previous one is <sep>); with `hold_eos_z` set, <eos> waits until the mark is detectable (EosHold).
    `guard`, a fresh `Utf8Guard` over the B rows: whole UTF-8 characters, none of a row's forbidden tokens."""
    model = unwrap(model)
    device = prefixes.device
    B, P = prefixes.shape
    R = params.max_new_tokens
    uniforms = _step_uniforms(model, prefixes, R, uniforms, generator)
    out = torch.full((B, R), pad_id, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)  # batch row -> output row
    live = torch.ones(B, dtype=torch.bool, device=device)
    n_live = B
    decode = _decoder(model, params)
    auto = params.precision == "auto"
    with _eval_mode(model), autocast(device, inference_dtype(device)) if auto else contextlib.nullcontext():
        # the cache holds keys and values in the dtype the projections produce
        cache = model.new_cache(B, device, dtype=inference_dtype(device) if auto else None, max_len=P + R)
        logits = model(prefixes, logits_from=P - 1, cache=cache, pos=0)[:, -1]
        prev = prefixes[:, -1]
        # per-row masks on the next token, each with apply(logits) / update(tok) / select(keep)
        trackers = [x for x in (EosHold.maybe(watermark, prev, R, eos_id), guard) if x is not None]
        for t in range(R):
            u = uniforms[t] if rows.shape[0] == B else uniforms[t, rows]
            for x in trackers:
                logits = x.apply(logits)
            tok = pick_tokens(logits, u, params, watermark, prev)
            for x in trackers:
                x.update(tok)
            all_live = n_live == rows.shape[0]
            out[rows if all_live else rows[live], t] = tok if all_live else tok[live]
            if t == R - 1:
                break
            live &= tok != eos_id
            n_live = int(live.sum())
            if n_live == 0:
                break
            if n_live < COMPACT_BELOW * rows.shape[0]:
                keep = live.nonzero().squeeze(-1)
                rows, tok, live = rows[keep], tok[keep], live[keep]
                for x in (cache, *trackers):
                    x.select(keep)
            prev = tok
            logits = decode(tok[:, None], cache=cache, pos=P + t)[:, -1]
    return out


def text_guard(tok: ReviewTokenizer, conds: Sequence[Condition], device="cpu") -> Utf8Guard:
    """The guard `generate_texts` samples with: whole UTF-8 characters, and no CJK token in a row whose
    language is not Chinese."""
    latin = torch.tensor([c.language != "zh" for c in conds], dtype=torch.bool)
    return Utf8Guard(tok.utf8_table(), len(conds), device, forbid=latin[:, None] & tok.cjk_tokens()[None, :])


def generate_texts(
    G,
    tok: ReviewTokenizer,
    conds: Sequence[Condition],
    keys: Sequence[str] | None = None,
    *,
    seed: int = 0,
    row_seeds: Sequence[int] | None = None,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 64,
    device="cpu",
    max_new_tokens: int | None = None,
    compile_decode: bool = False,
    watermark: Watermark | None = None,
    whole_chars: bool = True,
) -> list[str]:
    """Sample one review per condition. Each row's randomness is fixed by `row_seeds[i]`, or else by
    `keys[i]` (e.g. product_id:index) with `seed`. `compile_decode`: see SamplingParams. `watermark`: bias
    every step with its signing key (None: the unwatermarked sampler, token for token). `whole_chars`: never
    write a broken UTF-8 character, nor a Chinese one in an English review (see reviewgen.core.utf8)."""
    if row_seeds is None:
        if keys is None:
            raise ValueError("generate_texts needs keys or row_seeds")
        row_seeds = [row_seed(k, 0, seed) for k in keys]
    G = unwrap(G)
    params = SamplingParams(max_new_tokens or tok.max_review_len, temperature, top_k, top_p, compile_decode)
    texts: list[str] = []
    for s in range(0, len(conds), batch_size):
        pre = tok.encode_prefixes(conds[s : s + batch_size]).to(device)
        ids = sample(
            G,
            pre,
            params,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            uniforms=counter_uniforms(row_seeds[s : s + batch_size], params.max_new_tokens),
            watermark=watermark,
            guard=text_guard(tok, conds[s : s + batch_size], device) if whole_chars else None,
        )
        texts.extend(tok.decode_reviews(ids.cpu()))
    return texts
