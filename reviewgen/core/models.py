"""The generator (causal pre-norm transformer with a KV cache) and the discriminator (bidirectional
encoder with per-token, sequence, rating and category heads)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reviewgen.core.config import DiscriminatorConfig, GeneratorConfig


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, *, causal: bool, attn_mask: torch.Tensor | None = None,
                cache: "KVCache | None" = None, layer: int = 0, pos: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is not None:
            # Prefill (pos == 0) attends causally within the chunk; decode steps (T == 1) see all cached keys.
            if pos > 0 and T != 1:
                raise ValueError("KV cache supports a prefill at pos 0 or single-token steps")
            k, v = cache.append(layer, k, v, pos)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop,
                                           is_causal=causal and T > 1)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_head, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, **attn_kwargs):
        x = x + self.drop(self.attn(self.ln1(x), **attn_kwargs))
        return x + self.drop(self.mlp(self.ln2(x)))


class KVCache:
    """Preallocated keys/values for every layer: [B, n_head, block_size, head_dim]."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device, dtype):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: int):
        T = k.shape[2]
        self.k[layer, :, :, pos:pos + T] = k
        self.v[layer, :, :, pos:pos + T] = v
        return self.k[layer, :, :, :pos + T], self.v[layer, :, :, :pos + T]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only some batch rows (finished rows are dropped to save compute)."""
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]


def _init_weights(module: nn.Module, n_layer: int) -> None:
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            # residual projections are scaled down so the residual stream's variance stays flat with depth
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("attn.proj.weight", "mlp.2.weight")) else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class _Trunk(nn.Module):
    """Token + position embeddings, pre-norm blocks and a final norm: the part G and D share (same
    parameter names, which is what lets D start from the pretrained G)."""

    def __init__(self, cfg: GeneratorConfig | DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_head, cfg.dropout) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def embed(self, idx: torch.Tensor, pos: int = 0) -> torch.Tensor:
        positions = torch.arange(pos, pos + idx.shape[1], device=idx.device)
        return self.drop(self.tok_emb(idx) + self.pos_emb(positions))


class Generator(_Trunk):
    """Decoder-only causal LM conditioned by its prefix."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        _init_weights(self, cfg.n_layer)
        self.lm_head.weight = self.tok_emb.weight  # tied: fewer parameters, better small-data LM

    def forward(self, idx: torch.Tensor, *, logits_from: int = 0, cache: KVCache | None = None,
                pos: int = 0) -> torch.Tensor:
        """Logits for positions `logits_from..T-1` of `idx` [B, T] (skipping the prefix saves the
        vocabulary projection where no loss is taken)."""
        T = idx.shape[1]
        if pos + T > self.cfg.block_size:
            raise ValueError(f"sequence of {pos + T} tokens exceeds block_size {self.cfg.block_size}")
        x = self.embed(idx, pos)
        for i, block in enumerate(self.blocks):
            x = block(x, causal=True, cache=cache, layer=i, pos=pos)
        return self.lm_head(self.ln_f(x[:, logits_from:]))

    def new_cache(self, batch: int, device, dtype=None) -> KVCache:
        c = self.cfg
        dtype = dtype or self.tok_emb.weight.dtype
        return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.d_model // c.n_head, device, dtype)


@dataclass
class DiscriminatorOutput:
    token_logits: torch.Tensor  # [B, R] real-vs-fake logit per review token
    seq_logits: torch.Tensor  # [B] authenticity logit
    rating_logits: torch.Tensor  # [B, n_ratings]
    category_logits: torch.Tensor  # [B, n_categories]


class Discriminator(_Trunk):
    """Bidirectional encoder over prefix + review. Reads discrete tokens: it learns on the same text it
    will score later (no Gumbel-softmax relaxation)."""

    def __init__(self, cfg: DiscriminatorConfig, prefix_len: int, pad_id: int):
        super().__init__(cfg)
        self.prefix_len = prefix_len
        self.pad_id = pad_id
        self.token_head = nn.Linear(cfg.d_model, 1)
        # pooled = [mean of review tokens ; state at <sep>]: the <sep> state sees the product and the review
        self.seq_head = nn.Linear(2 * cfg.d_model, 1)
        self.rating_head = nn.Linear(2 * cfg.d_model, cfg.n_ratings)
        self.category_head = nn.Linear(2 * cfg.d_model, cfg.n_categories)
        _init_weights(self, cfg.n_layer)

    def forward(self, idx: torch.Tensor) -> DiscriminatorOutput:
        B, T = idx.shape
        keep = idx != self.pad_id  # [B, T]
        attn_mask = keep[:, None, None, :]
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, causal=False, attn_mask=attn_mask)
        x = self.ln_f(x)
        P = self.prefix_len
        review, review_keep = x[:, P:], keep[:, P:].unsqueeze(-1).to(x.dtype)
        mean = (review * review_keep).sum(1) / review_keep.sum(1).clamp_min(1.0)
        pooled = torch.cat([mean, x[:, P - 1]], dim=-1)
        return DiscriminatorOutput(
            token_logits=self.token_head(review).squeeze(-1),
            seq_logits=self.seq_head(pooled).squeeze(-1),
            rating_logits=self.rating_head(pooled),
            category_logits=self.category_head(pooled),
        )


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under a DDP/compile wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model
