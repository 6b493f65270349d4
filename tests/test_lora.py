"""LoRA adapters: exact base logits with fresh adapters, merge parity for the gpt2/llama/qwen2 shapes, the one
shared base of G, the reference and D in the trainer, DDP over adapters only, and the LoRA checkpoint with its
verified base reference. Tiny models, synthetic batches: a few seconds in all."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.distributed as dist

from reviewgen.core.checkpoint import BaseMismatchError, load_checkpoint
from reviewgen.core.config import (
    ConfigError,
    DiscriminatorConfig,
    GeneratorConfig,
    LoRAConfig,
    RunConfig,
    TokenizerConfig,
)
from reviewgen.core.lora import adapters_disabled, ddp_ignore_frozen, is_adapter_key, lora_layers, merged_state_dict
from reviewgen.core.models import Discriminator, Generator
from reviewgen.core.tokenizer import Condition, ReviewTokenizer
from reviewgen.train.batches import TensorBatches
from reviewgen.train.trainer import GANTrainer

P, R = 12, 10
TEXTS = [
    "Great tablet, the battery lasts all day.",
    "Terrible charger, broke after a week!",
    "The speaker sounds clear and the setup was easy.",
    "Cheap case, the color faded quickly.",
] * 8
# the three families' shapes: gpt2 (GELU, biases), llama (SwiGLU, GQA), qwen2 (llama + q/k/v biases)
FAMILIES = {
    "gpt2": dict(arch="gpt2"),
    "llama": dict(arch="llama", n_kv_head=2),
    "qwen2": dict(arch="llama", n_kv_head=2, qkv_bias=True),
}
LORA = LoRAConfig(rank=4, alpha=8.0)


def _gen_cfg(family: str, cls=GeneratorConfig, **kw):
    return cls(vocab_size=64, block_size=P + R, n_layer=2, n_head=4, d_model=32, dropout=0.0, **FAMILIES[family], **kw)


def _randomize_adapters(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_adapters_give_exactly_the_base_logits(family):
    x = torch.randint(0, 64, (3, P + R), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    base = Generator(_gen_cfg(family)).eval()
    torch.manual_seed(0)
    G = Generator(_gen_cfg(family, lora=LORA)).eval()
    assert sum(1 for _ in lora_layers(G)) == 2 * 4  # qkv, proj, mlp in, mlp out in both blocks
    with torch.no_grad():
        assert torch.equal(G(x), base(x))
    trainable = {n for n, p in G.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_key(n) for n in trainable)
    torch.manual_seed(0)
    D0 = Discriminator(_gen_cfg(family, DiscriminatorConfig, n_categories=3), P, 0).eval()
    torch.manual_seed(0)
    D = Discriminator(_gen_cfg(family, DiscriminatorConfig, n_categories=3, lora=LORA), P, 0).eval()
    with torch.no_grad():
        assert torch.equal(D(x).seq_logits, D0(x).seq_logits)
    assert {n for n, p in D.named_parameters() if p.requires_grad and not is_adapter_key(n)} == {
        n for n, _ in D.named_parameters() if n.startswith(Discriminator.HEADS)
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_weights_compute_the_adapter_model(family):
    G = Generator(_gen_cfg(family, lora=LORA)).eval()
    _randomize_adapters(G)
    plain = Generator(_gen_cfg(family)).eval()
    plain.load_state_dict(merged_state_dict(G))
    x = torch.randint(0, 64, (2, P + R), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, merged = G(x), plain(x)
        with adapters_disabled(G):
            assert not torch.allclose(G(x), ours, atol=1e-3)  # the adapters do change the function
    assert (ours - merged).abs().max().item() < 1e-5


def test_bf16_base_and_gradient_checkpointing_train():
    cfg = _gen_cfg("llama", lora=dataclasses.replace(LORA, base_dtype="bfloat16"), gradient_checkpointing=True)
    G = Generator(cfg).train()
    assert G.blocks[0].attn.qkv.weight.dtype == torch.bfloat16 and G.blocks[0].attn.qkv.lora_A.dtype == torch.float32
    x = torch.randint(0, 64, (2, P + R))
    G(x).float().logsumexp(-1).mean().backward()
    assert G.blocks[0].attn.qkv.lora_B.grad is not None and G.blocks[0].attn.qkv.weight.grad is None


# -- the trainer: one shared base ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    return ReviewTokenizer.train(TEXTS, vocab_size=300, prefix_len=P, max_review_len=R, min_frequency=1)


def lora_run_config(tok, **train) -> RunConfig:
    arch = {
        "arch": "llama",
        "n_layer": 2,
        "d_model": 32,
        "n_head": 4,
        "n_kv_head": 2,
        "lora.rank": 4,
        "lora.alpha": 8.0,
    }
    over = {f"{sec}.{k}": v for sec in ("generator", "discriminator") for k, v in arch.items()}
    over.update(
        {
            f"train.{k}": v
            for k, v in dict(
                dict(batch_size=8, group_size=2, mle_steps=2, disc_warmup_steps=2, adv_steps=2, replay_size=16), **train
            ).items()
        }
    )
    cfg = RunConfig(tokenizer=TokenizerConfig(prefix_len=P, max_review_len=R)).override(over)
    return cfg.finalize(tok.vocab_size, n_categories=3)


def _batches(tok, cfg: RunConfig) -> TensorBatches:
    conds = [Condition(f"Item {i}", ["Tablets", "Cases", "Audio"][i % 3], 1 + i % 5) for i in range(len(TEXTS))]
    data = {
        "ids": tok.encode_examples(conds, TEXTS).numpy(),
        "rating": torch.tensor([c.rating - 1 for c in conds]).numpy(),
        "category": torch.tensor([i % 3 for i in range(len(TEXTS))]).numpy(),
    }
    return TensorBatches(data, cfg.train.batch_size, cfg.train.seed)


def _trainable_of(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _base_tensors(model) -> dict[str, torch.Tensor]:
    return {
        n: p for n, p in model.named_parameters() if not is_adapter_key(n) and not n.startswith(Discriminator.HEADS)
    }


@pytest.fixture(scope="module")
def trained(tok):
    """A LoRA trainer after all three phases (two steps each), and the base as it was at the start."""
    cfg = lora_run_config(tok)
    tr = GANTrainer(cfg, tok, ["Tablets", "Cases", "Audio"])
    start = {n: p.detach().clone() for n, p in _base_tensors(tr.G).items()}
    batches = _batches(tok, cfg)
    while tr.phase != "done":
        tr.train_step(next(batches))
    return tr, start, batches


def test_g_reference_and_d_share_one_base(trained):
    tr, start, _ = trained
    g, ref, d = _base_tensors(tr.G), dict(tr.ref.named_parameters()), _base_tensors(tr.D)
    assert set(d) == set(g) - {"lm_head.weight"} and set(ref) == set(g)
    for name, p in g.items():
        assert ref[name].data_ptr() == p.data_ptr()
        if name in d:
            assert d[name].data_ptr() == p.data_ptr()
        assert torch.equal(p, start[name]), name  # frozen through all three phases
    assert tr.cond is None or all(q.data_ptr() == g[n].data_ptr() for n, q in _base_tensors(tr.cond).items())


def test_g_without_adapters_is_exactly_the_reference_after_training(trained, tok):
    tr, _, _ = trained
    assert any(m.lora_B.abs().sum() > 0 for _, m in lora_layers(tr.G))  # the adapters did train
    x = tok.encode_examples([Condition("Echo", "Audio", 4), Condition("Case", "Cases", 2)], TEXTS[:2])
    tr.G.eval()
    with torch.no_grad():
        with adapters_disabled(tr.G):
            off = tr.G(x)
        assert torch.equal(off, tr.ref(x))
        assert not torch.equal(tr.G(x), off)


def test_only_adapters_and_heads_get_gradients_and_optimizer_state(trained):
    tr, _, _ = trained
    for model, opt in ((tr.G, tr.opt_g), (tr.D, tr.opt_d)):
        in_opt = {id(p) for grp in opt.param_groups for p in grp["params"]}
        for name, p in model.named_parameters():
            own = is_adapter_key(name) or name.startswith(Discriminator.HEADS)
            assert (id(p) in in_opt) == own == p.requires_grad, name
            if not own:
                assert p not in opt.state and p.grad is None, name
        assert any(p in opt.state for p in _trainable_of(model))


def test_ddp_carries_adapters_only(tok):
    cfg = lora_run_config(tok)
    G = Generator(cfg.generator)
    frozen = ddp_ignore_frozen(G)
    assert frozen and not any(is_adapter_key(n) for n in frozen)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(G)
        reduced = {id(p) for p in ddp._module_parameters}
        assert reduced == {id(p) for n, p in G.named_parameters() if is_adapter_key(n)}
        assert ddp.parameters_to_ignore == set(frozen)
        ddp(torch.randint(0, 64, (2, P + R))).float().mean().backward()  # the reducer runs over adapters only
        assert all(p.grad is None for n, p in G.named_parameters() if not is_adapter_key(n))
    finally:
        if started:
            dist.destroy_process_group()


def test_config_rejects_d_adapters_without_a_shared_base(tok):
    cfg = lora_run_config(tok)
    with pytest.raises(ConfigError, match="discriminator.n_layer"):
        cfg.override({"discriminator.n_layer": 1}).validate()
    with pytest.raises(ConfigError, match="needs generator.lora.rank"):
        cfg.override({"generator.lora.rank": 0}).validate()


# -- checkpoints: adapters + heads + a verified base reference -------------------------------------


def test_checkpoint_round_trip_and_base_hash_mismatch(trained, tok, tmp_path):
    tr, _, batches = trained
    d = tr.save(tmp_path / "ck")
    meta = json.loads((d / "meta.json").read_text())
    assert meta["lora_base"]["kind"] == "file" and (d / "base.safetensors").is_file()
    assert not (d / "reference.safetensors").exists()
    from safetensors.torch import load_file

    assert all(is_adapter_key(k) for k in load_file(str(d / "generator.safetensors")))
    ck = load_checkpoint(d)
    x = next(batches)["ids"]
    tr.G.eval()
    with torch.no_grad():
        assert torch.equal(ck.generator(x), tr.G(x))
        assert torch.equal(ck.discriminator(x).seq_logits, tr.D.eval()(x).seq_logits)
    assert ck.discriminator.blocks[0].attn.qkv.weight.data_ptr() == ck.generator.blocks[0].attn.qkv.weight.data_ptr()
    assert set(ck.reference_state) == {k for k in tr.G.state_dict() if not is_adapter_key(k)}
    # resume: the trainer's reference is again the base G holds
    tr2 = GANTrainer(tr.cfg, tok, tr.categories)
    tr2.resume_from(d)
    assert tr2.ref.blocks[0].attn.qkv.weight.data_ptr() == tr2.G.blocks[0].attn.qkv.weight.data_ptr()
    # a changed base is a named error
    from safetensors.torch import save_file

    base = load_file(str(d / "base.safetensors"))
    base["ln_f.weight"] = base["ln_f.weight"] + 1e-3
    save_file(base, str(d / "base.safetensors"))
    with pytest.raises(BaseMismatchError, match="sha256"):
        load_checkpoint(d)
    (d / "base.safetensors").unlink()
    with pytest.raises(BaseMismatchError, match="missing"):
        load_checkpoint(d)


@pytest.mark.parametrize("family", FAMILIES)
def test_models_built_from_a_base_take_its_tensors_and_draw_only_what_it_lacks(family):
    """G built on the meta device holds the base's very tensors (no random-init copy), computes the base's
    logits with fresh adapters, and D's trunk is the same storage with fresh heads."""
    from reviewgen.core.build import discriminator_on, generator_from_state

    torch.manual_seed(0)
    base = Generator(_gen_cfg(family)).eval()
    tied = base.arch.tie_embeddings
    state = {k: v.clone() for k, v in base.state_dict().items() if k != "lm_head.weight" or not tied}
    ptrs = {k: v.data_ptr() for k, v in state.items()}
    G = generator_from_state(_gen_cfg(family, lora=LORA), state).eval()
    assert state == {}  # G took every tensor
    assert all(dict(G.named_parameters())[k].data_ptr() == p for k, p in ptrs.items())
    assert not any(t.is_meta for t in [*G.parameters(), *G.buffers()])
    x = torch.randint(0, 64, (3, P + R), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(G(x), base(x))
    D = discriminator_on(G, _gen_cfg(family, cls=DiscriminatorConfig, lora=LORA, n_categories=3), P, 0)
    assert D.blocks[0].attn.qkv.weight.data_ptr() == G.blocks[0].attn.qkv.weight.data_ptr()
    heads = {n for n, p in D.named_parameters() if n.startswith(Discriminator.HEADS)}
    trainable = {n for n, p in D.named_parameters() if p.requires_grad}
    assert heads and heads <= trainable and all(is_adapter_key(n) or n in heads for n in trainable)
    assert D.seq_head.weight.std() > 0 and torch.isfinite(D(x).seq_logits).all()


def test_a_base_missing_a_weight_is_refused_not_drawn_at_random():
    from reviewgen.core.build import generator_from_state

    state = dict(Generator(_gen_cfg("llama")).state_dict())
    del state["blocks.1.mlp.down.weight"]
    with pytest.raises(ValueError, match="blocks.1.mlp.down.weight"):
        generator_from_state(_gen_cfg("llama", lora=LORA), state)
