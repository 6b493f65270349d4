"""Low-rank adapters (LoRA, Hu et al. 2021) on the trunk's projections, and the shared frozen base.

A `LoRALinear` is an nn.Linear (same `weight`/`bias` names, so base checkpoints and Hugging Face name maps
apply unchanged) plus a trainable pair `lora_A` [r, in], `lora_B` [out, r]:

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T

B starts at zero, so fresh adapters give exactly the base's output. On a fused projection (q|k|v, gate|up)
the pieces share A and each owns its rows of B, which is what a per-piece adapter with the same A computes.

With adapters on, every base tensor is frozen: the generator, its reference (the base with the adapters
disabled) and the discriminator's trunk can then hold the very same tensors (`share_base`), and only the
adapters and D's heads get gradients, optimizer state and the DDP all-reduce.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

ADAPTER_MARK = "lora_"  # in every adapter tensor's name


def is_adapter_key(name: str) -> bool:
    return ADAPTER_MARK in name


def base_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear that also takes a weight stored in another dtype than x (a bf16 base in an fp32 forward):
    under autocast the cast is autocast's; without it, x goes to the weight's dtype and back."""
    if weight.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return F.linear(x, weight, bias)
    return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


class LoRALinear(nn.Linear):
    """nn.Linear with a low-rank adapter; `adapters_on` False gives the base projection alone."""

    def __init__(self, in_features: int, out_features: int, bias: bool, *, rank: int, alpha: float, dropout: float):
        super().__init__(in_features, out_features, bias=bias)
        self.rank, self.scale = rank, alpha / rank
        # zeros here; `init_adapters` draws A once the base is initialised (the base's draws stay those of
        # a model without adapters)
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapters_on = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = base_linear(x, self.weight, self.bias)
        if not self.adapters_on:
            return y
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale

    def delta(self) -> torch.Tensor:
        """The adapter's weight update (alpha / r) B A, in fp32, shaped like `weight`."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale


def linear(in_features: int, out_features: int, bias: bool, lora, adapted: bool) -> nn.Linear:
    """A block projection: a LoRALinear when `lora` (a LoRAConfig) is on and `adapted`, else nn.Linear."""
    if lora.enabled and adapted:
        return LoRALinear(in_features, out_features, bias, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout)
    return nn.Linear(in_features, out_features, bias=bias)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear))


def init_adapters(model: nn.Module, only: set[str] | None = None) -> None:
    """A as nn.Linear's default (Kaiming uniform, as PEFT does), B zero: a fresh adapter adds nothing.
    `only`: the layers whose `NAME.lora_A` is in it (default all)."""
    for name, m in lora_layers(model):
        if only is not None and f"{name}.lora_A" not in only:
            continue
        nn.init.kaiming_uniform_(m.lora_A, a=math.sqrt(5))
        nn.init.zeros_(m.lora_B)


def has_adapters(model: nn.Module) -> bool:
    return any(True for _ in lora_layers(model))


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Within the block, `model` computes its base alone (its adapters skipped); restored afterwards."""
    layers = [m for _, m in lora_layers(model)]
    before = [m.adapters_on for m in layers]
    for m in layers:
        m.adapters_on = False
    try:
        yield model
    finally:
        for m, on in zip(layers, before):
            m.adapters_on = on


def freeze_base(model: nn.Module, trainable_prefixes: tuple[str, ...] = ()) -> None:
    """Only the adapters (and parameters under `trainable_prefixes`, e.g. D's heads) keep requires_grad."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_key(name) or name.startswith(trainable_prefixes))


def cast_base(blocks: nn.Module, dtype: torch.dtype) -> None:
    """Store the frozen matmul weights and biases of `blocks` in `dtype` (the adapters stay fp32); the
    parameters stay the same objects, so a base shared with other modules changes for all of them."""
    for m in blocks.modules():
        if isinstance(m, nn.Linear):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.data = p.data.to(dtype)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s state dict with every adapter folded into its weight (W + (alpha / r) B A, in the weight's
    dtype) and no adapter tensors: what a model without adapters loads to compute the same function."""
    sd = {k: v for k, v in model.state_dict().items() if not is_adapter_key(k)}
    for name, m in lora_layers(model):
        key = f"{name}.weight"
        sd[key] = (m.weight.float() + m.delta().to(m.weight.device)).to(m.weight.dtype)
    return sd


def share_base(src: nn.Module, dst: nn.Module) -> int:
    """Make every base parameter and buffer of `dst` (all but its adapters) the same tensor as `src`'s of
    the same name: one storage for both. Names only in `dst` (D's heads) keep their own. Returns the
    number of parameters shared; ValueError on a shape mismatch."""
    params = dict(src.named_parameters(remove_duplicate=False))
    shared = 0
    for name, p in list(dst.named_parameters(remove_duplicate=False)):
        if is_adapter_key(name) or name not in params:
            continue
        if params[name].shape != p.shape:
            raise ValueError(f"cannot share {name}: shape {tuple(params[name].shape)} vs {tuple(p.shape)}")
        owner, _, leaf = name.rpartition(".")
        setattr(dst.get_submodule(owner), leaf, params[name])
        shared += 1
    buffers = dict(src.named_buffers())
    for name, b in list(dst.named_buffers()):
        if name in buffers:
            owner, _, leaf = name.rpartition(".")
            dst.get_submodule(owner)._buffers[leaf] = buffers[name]
    return shared


def frozen_names(model: nn.Module) -> list[str]:
    """Names of the parameters that get no gradient (the shared base): what DDP need not broadcast or
    all-reduce."""
    return [n for n, p in model.named_parameters() if not p.requires_grad]


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` that keeps its frozen tensors (the shared base) as they are: only the
    trainable ones (adapters, heads) are copied, e.g. to freeze a snapshot of D without a second base."""
    import copy

    return copy.deepcopy(model, memo={id(p): p for p in model.parameters() if not p.requires_grad})


def ddp_ignore_frozen(module: nn.Module) -> list[str]:
    """Tell DistributedDataParallel (before wrapping `module`) to leave its frozen base alone: no start-up
    broadcast (every worker loads the same base) and no gradient buckets; only the adapters and heads are
    all-reduced. Returns the names ignored."""
    from torch.nn.parallel import DistributedDataParallel

    names = frozen_names(module)
    if names:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    return names
