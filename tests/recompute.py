"""A reference sampler for tests: every step recomputes the whole sequence (no KV cache, no row compaction),
so the library's cached sampler can be checked against it token for token."""

from __future__ import annotations

import torch

from reviewgen.core.sampling import EosHold, SamplingParams, pick_tokens
from reviewgen.core.utf8 import Utf8Guard
from reviewgen.core.watermark import Watermark


@torch.no_grad()
def sample_recompute(
    model,
    prefixes: torch.Tensor,
    params: SamplingParams,
    *,
    eos_id: int,
    pad_id: int,
    uniforms: torch.Tensor | None = None,
    watermark: Watermark | None = None,
    guard: Utf8Guard | None = None,
) -> torch.Tensor:
    """[B, max_new_tokens] ids like `reviewgen.core.sampling.sample`, <pad> after <eos>; fp32 only."""
    model.eval()
    B, R = prefixes.shape[0], params.max_new_tokens
    u = uniforms if uniforms is not None else torch.zeros(B, R, dtype=torch.float64)
    out = torch.full((B, R), pad_id, dtype=torch.long)
    seq, live = prefixes, torch.ones(B, dtype=torch.bool)
    hold = EosHold.maybe(watermark, prefixes[:, -1], R, eos_id)
    for t in range(R):
        logits = model(seq, logits_from=seq.shape[1] - 1)[:, -1]
        if hold is not None:
            logits = hold.apply(logits)
        if guard is not None:
            logits = guard.apply(logits)
        tok = pick_tokens(logits, u[:, t].to(logits.device), params, watermark, seq[:, -1])
        if hold is not None:
            hold.update(tok)
        if guard is not None:
            guard.update(tok)
        out[live, t] = tok[live].cpu()
        live &= tok.cpu() != eos_id
        if not live.any():
            break
        seq = torch.cat([seq, tok[:, None]], dim=1)
    return out
