"""The generator (causal pre-norm transformer with a KV cache) and the discriminator (bidirectional
encoder with per-token, sequence, rating and category heads)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from reviewgen.core.attention import SHORT_ATTENTION, KVCache, apply_rope, explicit_attention, rope_tables
from reviewgen.core.config import LLAMA3_ROPE_KEYS, DiscriminatorConfig, GeneratorConfig, LoRAConfig
from reviewgen.core.lora import cast_base, freeze_base, init_adapters, is_adapter_key, linear, share_base


@dataclass(frozen=True)
class Arch:
    """A trunk's architecture switches with the family defaults filled in (one model file, a few
    switches, as litgpt does). gpt2: learned positions, LayerNorm, GELU MLP, biases. llama: rotary
    positions, RMSNorm, SwiGLU MLP, no biases, optional grouped-query attention. Qwen2 is llama with
    q/k/v biases. `lora` (rank > 0) puts adapters on the chosen projections and freezes the rest."""

    n_head: int
    n_kv_head: int
    head_dim: int
    norm: str
    norm_eps: float
    mlp: str
    intermediate_size: int
    pos: str
    rope_theta: float
    rope_scaling: tuple[float, float, float, float] | None  # Llama 3, in LLAMA3_ROPE_KEYS order
    bias: bool
    qkv_bias: bool
    tie_embeddings: bool
    gelu_approximate: str
    lora: LoRAConfig = LoRAConfig()

    @classmethod
    def of(cls, cfg: GeneratorConfig | DiscriminatorConfig) -> "Arch":
        llama = cfg.arch == "llama"
        mlp = cfg.mlp or ("swiglu" if llama else "gelu")
        bias = (not llama) if cfg.bias is None else cfg.bias
        d = cfg.d_model
        # SwiGLU has three matrices: 8/3 * d keeps its parameter count at a GELU MLP's 4 * d
        width = cfg.intermediate_size or (4 * d if mlp == "gelu" else 64 * math.ceil(8 * d / 3 / 64))
        return cls(
            n_head=cfg.n_head,
            n_kv_head=cfg.n_kv_head or cfg.n_head,
            head_dim=d // cfg.n_head,
            norm=cfg.norm or ("rmsnorm" if llama else "layernorm"),
            norm_eps=cfg.norm_eps,
            mlp=mlp,
            intermediate_size=width,
            pos=cfg.pos or ("rope" if llama else "learned"),
            rope_theta=cfg.rope_theta,
            bias=bias,
            rope_scaling=(tuple(float(cfg.rope_scaling[k]) for k in LLAMA3_ROPE_KEYS) if cfg.rope_scaling else None),
            qkv_bias=bias if cfg.qkv_bias is None else cfg.qkv_bias,
            tie_embeddings=cfg.tie_embeddings,
            gelu_approximate=cfg.gelu_approximate,
            lora=cfg.lora,
        )


def _norm(a: Arch, d_model: int) -> nn.Module:
    if a.norm == "rmsnorm":
        return nn.RMSNorm(d_model, eps=a.norm_eps)
    return nn.LayerNorm(d_model, eps=a.norm_eps, bias=a.bias)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, a: Arch, dropout: float):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = a.n_head, a.n_kv_head, a.head_dim
        # one fused projection, laid out [q | k | v] (k and v have n_kv_head heads each)
        self.sizes = (a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.n_kv_head * a.head_dim)
        self.qkv = linear(d_model, sum(self.sizes), a.qkv_bias, a.lora, "qkv" in a.lora.targets)
        self.proj = linear(a.n_head * a.head_dim, d_model, a.bias, a.lora, "proj" in a.lora.targets)
        self.gqa = a.n_kv_head != a.n_head
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        pos: int = 0,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if self.gqa:
            q, k, v = self.qkv(x).split(self.sizes, dim=-1)
            q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
            k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
            v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        else:
            q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            # in the activations' dtype, as Hugging Face does (bf16 under autocast)
            cos, sin = rope[0].to(q.dtype), rope[1].to(q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        filled = None
        if cache is not None:
            # Prefill (pos == 0) attends causally within the chunk; decode steps (T == 1) see all cached keys.
            if pos > 0 and T != 1:
                raise ValueError("KV cache supports a prefill at pos 0 or single-token steps")
            if attn_mask is not None:
                raise ValueError("a KV cache step takes no attention mask (the cache masks its own tail)")
            k, v, filled = cache.append(layer, k, v, pos)
        short = (
            cache is None
            and x.device.type == "cpu"
            and T <= SHORT_ATTENTION
            and not torch.is_grad_enabled()
            and (attn_mask is None or (attn_mask.dtype == torch.bool and attn_mask.shape[1] == 1))
        )
        if filled is not None:
            y = explicit_attention(q.contiguous(), k, v, causal=False, attn_mask=filled)
        elif short:
            y = explicit_attention(q, k, v, causal=causal and T > 1, attn_mask=attn_mask)
        else:
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=drop, is_causal=causal and T > 1, enable_gqa=self.gqa
            )
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up fused into one matmul laid out [gate | up]."""

    def __init__(self, d_model: int, width: int, bias: bool, lora: LoRAConfig = LoRAConfig()):
        super().__init__()
        self.gate_up = linear(d_model, 2 * width, bias, lora, "mlp_in" in lora.targets)
        self.down = linear(width, d_model, bias, lora, "mlp_out" in lora.targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d_model: int, a: Arch, dropout: float):
        super().__init__()
        self.ln1 = _norm(a, d_model)
        self.attn = SelfAttention(d_model, a, dropout)
        self.ln2 = _norm(a, d_model)
        if a.mlp == "swiglu":
            self.mlp = SwiGLU(d_model, a.intermediate_size, a.bias, a.lora)
        else:
            targets = a.lora.targets
            self.mlp = nn.Sequential(
                linear(d_model, a.intermediate_size, a.bias, a.lora, "mlp_in" in targets),
                nn.GELU(approximate=a.gelu_approximate),
                linear(a.intermediate_size, d_model, a.bias, a.lora, "mlp_out" in targets),
            )
        self.drop = nn.Dropout(dropout)

    def forward(self, x, **attn_kwargs):
        x = x + self.drop(self.attn(self.ln1(x), **attn_kwargs))
        return x + self.drop(self.mlp(self.ln2(x)))


RESIDUAL_PROJECTIONS = ("attn.proj.weight", "mlp.2.weight", "mlp.down.weight")


def init_weights(module: nn.Module, n_layer: int, only: set[str] | None = None) -> None:
    """Draw a fresh model's weights (all, or the parameters named in `only`), then its adapters."""
    for name, p in module.named_parameters():
        if is_adapter_key(name) or (only is not None and name not in only):
            continue  # adapters are drawn last, so the base's initial weights do not depend on them
        if p.dim() >= 2:
            # residual projections are scaled down so the residual stream's variance stays flat with depth
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(RESIDUAL_PROJECTIONS) else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
    init_adapters(module, only)


class _Trunk(nn.Module):
    """Token embeddings (+ learned positions, or rotary tables), pre-norm blocks and a final norm: the
    part G and D share (same parameter names, which is what lets D start from the pretrained G)."""

    def __init__(self, cfg: GeneratorConfig | DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        self.arch = a = Arch.of(cfg)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if a.pos == "learned":
            self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        else:
            self.pos_emb = None
            cos, sin = rope_tables(cfg.block_size, a.head_dim, a.rope_theta, a.rope_scaling)
            # not persistent: derived from the config, so checkpoints hold weights only
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.d_model, a, cfg.dropout) for _ in range(cfg.n_layer))
        self.ln_f = _norm(a, cfg.d_model)

    def _adapt(self, trainable_prefixes: tuple[str, ...] = ()) -> None:
        """With adapters on: freeze the base (all but the adapters and `trainable_prefixes`), optionally
        storing the blocks' matmul weights in bf16."""
        lora = self.arch.lora
        if lora.enabled:
            freeze_base(self, trainable_prefixes)
            if lora.base_dtype == "bfloat16":
                cast_base(self.blocks, torch.bfloat16)

    def _block(self, block: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """One block; with gradient checkpointing (training, no KV cache) its activations are recomputed in
        the backward pass instead of kept."""
        if (
            self.cfg.gradient_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and kwargs.get("cache") is None
        ):
            return checkpoint(block, x, use_reentrant=False, **kwargs)
        return block(x, **kwargs)

    def embed(self, idx: torch.Tensor, pos: int = 0):
        """Embeddings of `idx` [B, T] at positions pos..pos+T-1, and the rotary tables for those positions
        (None with learned positions)."""
        T = idx.shape[1]
        if self.pos_emb is not None:
            positions = torch.arange(pos, pos + T, device=idx.device)
            return self.drop(self.tok_emb(idx) + self.pos_emb(positions)), None
        return self.drop(self.tok_emb(idx)), (self.rope_cos[pos : pos + T], self.rope_sin[pos : pos + T])


class Generator(_Trunk):
    """Decoder-only causal LM conditioned by its prefix."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg.n_layer)
        if self.arch.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # fewer parameters, better small-data LM
        self._adapt()

    def forward(
        self, idx: torch.Tensor, *, logits_from: int = 0, cache: KVCache | None = None, pos: int = 0
    ) -> torch.Tensor:
        """Logits for positions `logits_from..T-1` of `idx` [B, T] (skipping the prefix saves the
        vocabulary projection where no loss is taken)."""
        return self.lm_head(self.features(idx, start=logits_from, cache=cache, pos=pos))

    def features(
        self, idx: torch.Tensor, *, start: int = 0, cache: KVCache | None = None, pos: int = 0
    ) -> torch.Tensor:
        """The final-normed hidden states [B, T - start, d_model] that `lm_head` maps to logits, for
        positions `start..T-1` of `idx` [B, T]: for callers that project only some positions, or in chunks."""
        T = idx.shape[1]
        if pos + T > self.cfg.block_size:
            raise ValueError(f"sequence of {pos + T} tokens exceeds block_size {self.cfg.block_size}")
        x, rope = self.embed(idx, pos)
        for i, block in enumerate(self.blocks):
            x = self._block(block, x, causal=True, cache=cache, layer=i, pos=pos, rope=rope)
        return self.ln_f(x[:, start:])

    def new_cache(self, batch: int, device, dtype=None, max_len: int | None = None) -> KVCache:
        """A KV cache for `batch` rows of up to `max_len` positions (default block_size): a sampler passes
        prefix + new tokens, since every decode step attends over the whole buffer."""
        a = self.arch
        dtype = dtype or self.tok_emb.weight.dtype
        n = min(max_len or self.cfg.block_size, self.cfg.block_size)
        return KVCache(self.cfg.n_layer, batch, a.n_kv_head, n, a.head_dim, device=device, dtype=dtype)


@dataclass
class DiscriminatorOutput:
    token_logits: torch.Tensor  # [B, R] real-vs-fake logit per review token
    seq_logits: torch.Tensor  # [B] authenticity logit
    rating_logits: torch.Tensor  # [B, n_ratings]
    category_logits: torch.Tensor  # [B, n_categories]


class Discriminator(_Trunk):
    """Bidirectional encoder over prefix + review. Reads discrete tokens: it learns on the same text it
    will score later (no Gumbel-softmax relaxation)."""

    HEADS = ("token_head.", "seq_head.", "rating_head.", "category_head.")  # trained even on a frozen base

    def __init__(self, cfg: DiscriminatorConfig, prefix_len: int, pad_id: int):
        super().__init__(cfg)
        self.prefix_len = prefix_len
        self.pad_id = pad_id
        self.token_head = nn.Linear(cfg.d_model, 1)
        # pooled = [mean of review tokens ; state at <sep>]: the <sep> state sees the product and the review
        self.seq_head = nn.Linear(2 * cfg.d_model, 1)
        self.rating_head = nn.Linear(2 * cfg.d_model, cfg.n_ratings)
        self.category_head = nn.Linear(2 * cfg.d_model, cfg.n_categories)
        init_weights(self, cfg.n_layer)
        self._adapt(self.HEADS)

    def forward(self, idx: torch.Tensor) -> DiscriminatorOutput:
        B, T = idx.shape
        keep = idx != self.pad_id  # [B, T]
        attn_mask = keep[:, None, None, :]
        x, rope = self.embed(idx)
        for block in self.blocks:
            x = self._block(block, x, causal=False, attn_mask=attn_mask, rope=rope)
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


def base_view(G: Generator) -> Generator:
    """A Generator without adapters whose every tensor is `G`'s base tensor (no copy): G with its adapters
    disabled, as a module of its own. Frozen, in eval mode."""
    with torch.device("meta"):  # no memory and no random init: every tensor is replaced by G's below
        ref = Generator(dataclasses.replace(G.cfg, lora=LoRAConfig()))
    share_base(G, ref)
    return ref.eval().requires_grad_(False)


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under a DDP/compile wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model
