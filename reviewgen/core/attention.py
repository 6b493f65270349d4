"""The attention's arithmetic, apart from the modules that hold weights (`reviewgen.core.models`): rotary
position tables, the explicit attention of short CPU inference, and the generator's KV cache."""

from __future__ import annotations

import math

import torch


def rope_tables(
    n_pos: int, head_dim: int, theta: float, scaling: tuple[float, float, float, float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [n_pos, head_dim] for rotary positions, laid out as Hugging Face Llama/Qwen2 checkpoints
    expect (the two halves of each head rotate together). `scaling`: Llama 3's (factor, low_freq_factor,
    high_freq_factor, original_max_position_embeddings)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is not None:
        # Llama 3: long wavelengths slow down by `factor`, short ones stay, the band between is interpolated
        factor, low, high, old_len = scaling
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    freqs = torch.outer(torch.arange(n_pos, dtype=torch.int64).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, head_dim] by the tables' rows for its T positions."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# Inference on CPU over at most this many positions uses `explicit_attention`: at a review's scoring length
# (prefix + review) it is faster than scaled_dot_product_attention's CPU kernel, which is tiled for long
# queries, and its [T, T] scores are small.
SHORT_ATTENTION = 128


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """scaled_dot_product_attention without dropout, as two batched matmuls: q [B, H, Tq, hd], k and v
    [B, H_kv, Tk, hd]; `attn_mask` None or boolean (True = attend) of shape [B or 1, 1, Tq or 1, Tk], the
    same for every head (the discriminator's key-padding mask). On CPU, the SDPA kernel is tiled for long
    queries and costs more than these both in a decode step (one query over the cache) and at scoring
    lengths. The query heads sharing a key/value head are folded into the matmul's rows, as enable_gqa
    groups them (head h reads kv head h // (H / H_kv))."""
    B, H, Tq, hd = q.shape
    kv, Tk = k.shape[1], k.shape[2]
    g = H // kv
    scores = torch.matmul(q.reshape(B, kv, g * Tq, hd), k.transpose(-1, -2)).float().mul_(hd**-0.5)
    if causal or attn_mask is not None:
        s5 = scores.view(B, kv, g, Tq, Tk)
        if causal:
            s5.masked_fill_(~torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        if attn_mask is not None:
            s5.masked_fill_(~attn_mask.unsqueeze(1), float("-inf"))
    y = torch.matmul(scores.softmax(-1).to(v.dtype), v)  # [B, kv, g * Tq, hd]: heads in order
    return y.reshape(B, H, Tq, hd)


class KVCache:
    """Preallocated keys/values, one zeroed [B, n_kv_head, max_len, head_dim] tensor per layer (per-layer
    tensors, not one stacked buffer: torch.compile copies the whole stacked buffer at each in-place write
    into a view of it, which makes a compiled decode step far slower than eager)."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, *, device, dtype):
        shape = (batch, n_head, max_len, head_dim)
        # zeroed, not empty: a one-token step reads the unfilled tail too (masked out; see `append`), and
        # its values must stay finite, since a weight of 0 times NaN is NaN
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: int):
        """Write k, v [B, H_kv, T, head_dim] at `pos`; return the keys and values to attend over, and a key
        mask (True = attend) or None. A prefill gets the filled slice and None. A one-token step gets the
        whole buffer and a [1, 1, 1, max_len] mask of the filled positions: the buffer is contiguous, while a
        batched matmul over a slice of it copies the slice first, so the masked whole buffer costs no more
        than the slice, and its shapes stay fixed from step to step."""
        T = k.shape[2]
        keys, values = self.k[layer], self.v[layer]
        keys[:, :, pos : pos + T] = k
        values[:, :, pos : pos + T] = v
        if T != 1:
            return keys[:, :, : pos + T], values[:, :, : pos + T], None
        n = keys.shape[2]
        return keys, values, (torch.arange(n, device=keys.device) <= pos).view(1, 1, 1, n)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only some batch rows (finished rows are dropped to save compute)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]
