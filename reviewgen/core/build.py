"""Models built around weights that already exist, with no random-init copy of the base.

A 7B base in fp32 is about 28 GB; building G (and D) at random first, then loading the base into them,
holds two or three such copies on the host at once. Here the module is built on the meta device (shapes
only), the base tensors are assigned in place (each cast once to the dtype the module asks for, e.g. bf16
for a frozen LoRA base), and only what the base lacks (adapters, D's heads) is allocated and drawn:

    G = generator_from_state(cfg.generator, base.state)            # G takes base.state's tensors
    D = discriminator_on(G, cfg.discriminator, prefix_len, pad_id)  # D's trunk is G's base: one storage

A model directory loads the same way: its weight files (with a LoRA directory, the base plus the adapters)
are moved into models built on the meta device.
"""

from __future__ import annotations

import torch
from torch import nn

from reviewgen.core.config import DiscriminatorConfig, GeneratorConfig
from reviewgen.core.lora import has_adapters, is_adapter_key, merged_state_dict, share_base
from reviewgen.core.models import Discriminator, Generator, init_weights, rope_tables


def _assign(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Move `state`'s tensors into `model` as its parameters (no copy where the dtype already matches);
    `state` is left empty, so nothing else can train or keep them."""
    want = model.state_dict()
    unexpected = sorted(set(state) - set(want))
    if unexpected:
        raise ValueError(f"{type(model).__name__} has no parameter {unexpected[0]!r} ({len(unexpected)} unexpected)")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(want[k].shape)]
    if bad:
        raise ValueError(f"{bad[0]}: shape {tuple(state[bad[0]].shape)}, the model needs {tuple(want[bad[0]].shape)}")
    # popped one by one: a tensor cast to another dtype frees its original before the next is cast
    model.load_state_dict({k: state.pop(k).to(want[k].dtype) for k in list(state)}, strict=False, assign=True)


def _materialize(model: nn.Module, n_layer: int, fresh_ok: tuple[str, ...] | None) -> None:
    """Allocate on the host every parameter still on the meta device and draw it as a fresh model would:
    adapters and names starting with `fresh_ok` may start fresh (None: nothing may); any other missing
    weight is a ValueError."""
    fresh = set()
    for name, p in list(model.named_parameters()):
        if p.is_meta:
            if fresh_ok is None or not (is_adapter_key(name) or name.startswith(fresh_ok)):
                raise ValueError(f"no weight for {name!r} in the state {type(model).__name__} was built from")
            owner, _, leaf = name.rpartition(".")
            setattr(
                model.get_submodule(owner),
                leaf,
                nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad),
            )
            fresh.add(name)
    init_weights(model, n_layer, only=fresh)
    rope = getattr(model, "rope_cos", None)
    if rope is not None and rope.is_meta:  # derived from the config, never stored: computed again
        a = model.arch
        model.rope_cos, model.rope_sin = rope_tables(model.cfg.block_size, a.head_dim, a.rope_theta, a.rope_scaling)


def generator_from_state(cfg: GeneratorConfig, state: dict[str, torch.Tensor], *, complete: bool = False) -> Generator:
    """G holding `state` (our names; a tied head may be left out), which it empties: G takes the tensors.
    Adapters missing from `state` start fresh unless `complete`; a missing base weight is a ValueError."""
    with torch.device("meta"):
        G = Generator(cfg)
    _assign(G, state)
    if G.arch.tie_embeddings:
        G.lm_head.weight = G.tok_emb.weight
    _materialize(G, cfg.n_layer, None if complete else ())
    return G


def discriminator_from_state(
    cfg: DiscriminatorConfig,
    prefix_len: int,
    pad_id: int,
    state: dict[str, torch.Tensor],
    *,
    share_with: Generator | None = None,
    complete: bool = False,
) -> Discriminator:
    """D holding `state` (which it empties), its trunk first made `share_with`'s base tensors when given
    (D's adapters then sit on G's base); heads and adapters missing from `state` start fresh unless
    `complete`."""
    with torch.device("meta"):
        D = Discriminator(cfg, prefix_len, pad_id)
    if share_with is not None:
        share_base(share_with, D)
    _assign(D, state)
    _materialize(D, cfg.n_layer, None if complete else Discriminator.HEADS)
    return D


def discriminator_on(G: Generator, cfg: DiscriminatorConfig, prefix_len: int, pad_id: int) -> Discriminator:
    """D whose trunk is G's frozen base (the same tensors), with fresh heads and adapters."""
    return discriminator_from_state(cfg, prefix_len, pad_id, {}, share_with=G)


def trunk_state(G: Generator) -> dict[str, torch.Tensor]:
    """G's weights a discriminator of its own (not sharing G's base) starts from: adapters merged in, no LM head."""
    sd = merged_state_dict(G) if has_adapters(G) else G.state_dict()
    return {k: v for k, v in sd.items() if k != "lm_head.weight"}
