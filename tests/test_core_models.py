"""Tokenizer, models and sampler: shapes, causality, KV cache exactness, seeded determinism."""

from __future__ import annotations

import pytest
import torch

from reviewgen.core import sampling
from reviewgen.core.config import DiscriminatorConfig, GeneratorConfig
from reviewgen.core.models import Discriminator, Generator
from reviewgen.core.sampling import SamplingParams, counter_uniforms, row_seed, sample
from reviewgen.core.tokenizer import Condition, ReviewTokenizer, review_mask
from tests.recompute import sample_recompute

P, R = 16, 12


@pytest.fixture(scope="module")
def tok():
    texts = [
        "Great tablet, the battery lasts all day.",
        "Terrible charger, broke after a week!",
        "屏幕很清晰，电池也很耐用，物流很快。",
        "衣服质量一般，颜色和图片不一样。",
    ] * 20
    return ReviewTokenizer.train(texts, vocab_size=400, prefix_len=P, max_review_len=R, min_frequency=1)


# architecture families: today's GPT-2 shape, Llama (RoPE, RMSNorm, SwiGLU, GQA, untied head), Qwen2 (+ q/k/v biases)
FAMILIES = {
    "gpt2": {},
    "llama": dict(arch="llama", n_head=4, n_kv_head=2, tie_embeddings=False),
    "qwen2": dict(arch="llama", n_head=4, n_kv_head=1, qkv_bias=True),
}


def tiny_g(vocab: int, dropout: float = 0.0, family: str = "gpt2") -> Generator:
    torch.manual_seed(0)
    shape = dict(dict(n_layer=2, n_head=2, d_model=32), **FAMILIES[family])
    return Generator(GeneratorConfig(vocab_size=vocab, block_size=P + R, dropout=dropout, **shape))


@pytest.mark.parametrize(
    "text",
    [
        "Great tablet, the battery lasts all day.",
        "屏幕很清晰，电池也很耐用。",
        "Mixed 中文 and English — 5★ & émojis 👍",
    ],
)
def test_tokenizer_round_trip(tok, text):
    ids = tok.encode_reviews([text])
    assert ids.shape == (1, R)
    long_tok = ReviewTokenizer(tok.tok, P, 200)
    assert long_tok.decode_reviews(long_tok.encode_reviews([text])) == [text]


def test_prefix_layout_keeps_conditions_and_truncates_title(tok):
    cond = Condition(title="A very long product title " * 20, category="Tablets", rating=4, language="en")
    pre = tok.encode_prefixes([cond])[0].tolist()
    assert len(pre) == P and pre[-1] == tok.sep_id
    assert tok.special["<rating_4>"] in pre and tok.special["<lang_en>"] in pre and tok.bos_id in pre
    zh_cond = Condition(title="平板", category="平板", sentiment="negative", language="zh")
    zh = tok.encode_prefixes([zh_cond])[0].tolist()
    assert tok.special["<sent_negative>"] in zh and tok.special["<lang_zh>"] in zh


def test_review_mask_stops_at_eos(tok):
    ids = torch.tensor([[5, 6, tok.eos_id, tok.pad_id], [5, 6, 7, 8]])
    assert review_mask(ids, tok.eos_id, tok.pad_id).tolist() == [[True, True, True, False], [True] * 4]


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_shapes_and_causal_mask(tok, family):
    g = tiny_g(tok.vocab_size, family=family).eval()
    x = torch.randint(0, tok.vocab_size, (3, P + R))
    logits = g(x)
    assert logits.shape == (3, P + R, tok.vocab_size)
    y = x.clone()
    y[:, 20:] = torch.randint(0, tok.vocab_size, (3, P + R - 20))  # change only the future of position 19
    assert torch.allclose(g(y)[:, :20], logits[:, :20], atol=1e-5)
    assert not torch.allclose(g(y)[:, 20:], logits[:, 20:])


@pytest.mark.parametrize("family", FAMILIES)
def test_discriminator_heads_and_bidirectional(tok, family):
    torch.manual_seed(0)
    shape = dict(dict(n_head=2), **{k: v for k, v in FAMILIES[family].items() if k != "tie_embeddings"})
    d = Discriminator(
        DiscriminatorConfig(
            vocab_size=tok.vocab_size, block_size=P + R, n_layer=1, d_model=32, dropout=0.0, n_categories=7, **shape
        ),
        P,
        tok.pad_id,
    ).eval()
    ids = tok.encode_examples([Condition("Fire HD 8", "Tablets", 5)] * 2, ["Love it, great value.", "Bad."])
    out = d(ids)
    assert out.token_logits.shape == (2, R) and out.seq_logits.shape == (2,)
    assert out.rating_logits.shape == (2, 5) and out.category_logits.shape == (2, 7)
    ids2 = ids.clone()
    ids2[:, -3] = 7  # a late token influences early token logits: the encoder is bidirectional
    assert not torch.allclose(d(ids2).token_logits[:, 0], out.token_logits[:, 0])


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_matches_full_recompute_greedy(tok, family):
    g = tiny_g(tok.vocab_size, family=family)
    pre = tok.encode_prefixes([Condition("Echo Dot", "Smart Speakers", r) for r in (1, 3, 5, 4)])
    # fp32: the cache is exact there; under bf16 a recompute rounds differently (checked below)
    params = SamplingParams(max_new_tokens=R, temperature=0.0, precision="fp32")
    a = sample(g, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id)
    b = sample_recompute(g, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id)
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_matches_full_recompute_sampled(tok, family):
    g = tiny_g(tok.vocab_size, family=family)
    pre = tok.encode_prefixes([Condition("Kindle", "E-Readers", r) for r in (2, 5)])
    params = SamplingParams(max_new_tokens=R, temperature=1.0, top_p=0.9, top_k=50, precision="fp32")
    u = counter_uniforms([1, 2], R)
    a = sample(g, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id, uniforms=u)
    b = sample_recompute(g, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id, uniforms=u)
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_row_seed_independent_of_batch(tok, family):
    g = tiny_g(tok.vocab_size, family=family)
    conds = [Condition("Kindle", "E-Readers", r) for r in (1, 2, 3, 4, 5)]
    seeds = [row_seed(f"p{i}", 0, 7) for i in range(5)]
    params = SamplingParams(max_new_tokens=R, temperature=1.0)
    full = sample(
        g, tok.encode_prefixes(conds), params, eos_id=tok.eos_id, pad_id=tok.pad_id, uniforms=counter_uniforms(seeds, R)
    )
    alone = sample(
        g,
        tok.encode_prefixes(conds[3:4]),
        params,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        uniforms=counter_uniforms(seeds[3:4], R),
    )
    assert torch.equal(full[3:4], alone)
    again = sample(
        g, tok.encode_prefixes(conds), params, eos_id=tok.eos_id, pad_id=tok.pad_id, uniforms=counter_uniforms(seeds, R)
    )
    assert torch.equal(full, again)
    other = sample(
        g,
        tok.encode_prefixes(conds),
        params,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        uniforms=counter_uniforms([row_seed(f"p{i}", 0, 8) for i in range(5)], R),
    )
    assert not torch.equal(full, other)


def test_sample_pads_after_eos(tok):
    g = tiny_g(tok.vocab_size)
    with torch.no_grad():  # shift the final LayerNorm towards <eos>'s (tied) embedding: <eos> gets likely
        w = g.lm_head.weight[tok.eos_id]
        g.ln_f.bias.copy_(8.0 * w / w.norm() ** 2)
    out = sample(
        g,
        tok.encode_prefixes([Condition("x")] * 3),
        SamplingParams(R, 1.0),
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        generator=torch.Generator().manual_seed(0),
    )
    rows = out.tolist()
    assert any(tok.eos_id in r[:-1] for r in rows)
    for row in rows:
        if tok.eos_id in row:
            assert all(t == tok.pad_id for t in row[row.index(tok.eos_id) + 1 :])


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (0, 0.5), (5, 1.0), (40, 0.8), (64, 1.0), (100, 0.95), (300, 1.0)])
@pytest.mark.parametrize("scale", [0.05, 3.0, 12.0])
def test_topk_head_picks_the_full_sort_tokens(top_k, top_p, scale):
    # flat (head never reaches top_p), middling and peaked rows, plus exact ties across the head's edge
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(48, 500, generator=g) * scale
    logits[:4, :90] = 1.5
    logits[4:8, 100:103] = 20.0
    params = SamplingParams(8, 1.0, top_k, top_p)
    for t in range(4):
        u = torch.rand(48, generator=g, dtype=torch.float64)
        u[0] = 1.0 - 2.0**-53  # the inverse CDF's last step
        assert torch.equal(
            sampling.pick_tokens(logits, u, params), sampling._pick_reference(torch.softmax(logits, dim=-1), u, params)
        )


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (0, 0.95), (0, 0.3), (7, 1.0), (150, 0.9)])
def test_values_only_sort_picks_the_stable_sort_tokens(top_k, top_p):
    """The CPU path sorts probabilities without their indices and recovers the token among ties."""
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(40, 700, generator=g) * 0.01, dim=-1)
    probs[:20, 100:300] = probs[:20, 50:51]  # long runs of equal values, where index order decides
    probs[20:30] = torch.softmax(torch.randint(0, 3, (10, 700), generator=g).float(), dim=-1)  # three levels
    probs[30:, 600:] = 0.0  # underflowed entries
    params = SamplingParams(8, 1.0, top_k, top_p)
    for _ in range(5):
        u = torch.rand(40, generator=g, dtype=torch.float64)
        u[0], u[1] = 0.0, 1.0 - 2.0**-53
        assert torch.equal(sampling._pick_sorted(probs, u, params), sampling._pick_reference(probs, u, params))


def test_masked_finished_rows_match_compacting_every_step(tok, monkeypatch):
    g = tiny_g(tok.vocab_size)
    with torch.no_grad():  # shift the final LayerNorm towards <eos>'s embedding: rows finish at varied steps
        w = g.lm_head.weight[tok.eos_id]
        g.ln_f.bias.copy_(4.0 * w / w.norm() ** 2)
    conds = [Condition("Kindle", "E-Readers", 1 + i % 5) for i in range(16)]
    u = counter_uniforms([row_seed(f"p{i}", 0, 3) for i in range(16)], R)
    params = SamplingParams(R, 1.0, 0, 0.9)
    outs = []
    for threshold in (1.01, 0.75, 0.0):  # compact at every finish, below 3/4 live, never
        monkeypatch.setattr(sampling, "COMPACT_BELOW", threshold)
        outs.append(sample(g, tok.encode_prefixes(conds), params, eos_id=tok.eos_id, pad_id=tok.pad_id, uniforms=u))
    ends = [r.index(tok.eos_id) for r in outs[0].tolist() if tok.eos_id in r]
    assert len(set(ends)) > 1  # rows did finish at different steps
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_chinese_target_rating_becomes_sentiment():
    assert Condition("x", rating=5, language="zh").condition_token() == "<sent_positive>"
    assert Condition("x", rating=1, language="zh").condition_token() == "<sent_negative>"
    assert Condition("x", rating=3, language="zh").condition_token() == "<sent_neutral>"
    assert Condition("x", sentiment="negative", language="zh").condition_token() == "<sent_negative>"
    assert Condition("x", rating=2, language="en").condition_token() == "<rating_2>"


# parameter names of checkpoints written before the architecture families: they must keep loading
OLD_GPT2_NAMES = (
    ["tok_emb.weight", "pos_emb.weight"]
    + [
        f"blocks.{i}.{m}.{w}"
        for i in range(2)
        for m in ("ln1", "attn.qkv", "attn.proj", "ln2", "mlp.0", "mlp.2")
        for w in ("weight", "bias")
    ]
    + ["ln_f.weight", "ln_f.bias", "lm_head.weight"]
)


def test_default_gpt2_checkpoint_keeps_names_and_loads(tok, tmp_path):
    """A checkpoint of the default (gpt2) config, with a config.json from before the architecture fields
    existed, loads with the same parameter names and gives the same logits."""
    import json

    from reviewgen.core.checkpoint import load_checkpoint, save_checkpoint
    from reviewgen.core.config import RunConfig, TokenizerConfig

    cfg = RunConfig(tokenizer=TokenizerConfig(prefix_len=P, max_review_len=R)).override(
        {"generator.n_layer": 2, "generator.d_model": 32, "discriminator.n_layer": 1, "discriminator.d_model": 32}
    )
    cfg = cfg.finalize(tok.vocab_size, n_categories=3)
    torch.manual_seed(0)
    g, d = Generator(cfg.generator), Discriminator(cfg.discriminator, P, tok.pad_id)
    assert sorted(g.state_dict()) == sorted(OLD_GPT2_NAMES)
    path = save_checkpoint(
        tmp_path / "old", config=cfg, categories=["a", "b", "c"], tokenizer=tok, generator=g, discriminator=d
    )
    doc = json.loads((path / "config.json").read_text())
    new_keys = set(GeneratorConfig.__dataclass_fields__) - {
        "vocab_size",
        "block_size",
        "n_layer",
        "n_head",
        "d_model",
        "dropout",
    }
    for sec in ("generator", "discriminator"):
        doc["run"][sec] = {k: v for k, v in doc["run"][sec].items() if k not in new_keys}
    (path / "config.json").write_text(json.dumps(doc))
    ck = load_checkpoint(path)
    assert ck.generator.arch.pos == "learned" and ck.generator.lm_head.weight is ck.generator.tok_emb.weight
    x = tok.encode_examples([Condition("Kindle", "E-Readers", 4)], ["Love it."])
    with torch.no_grad():
        assert torch.equal(ck.generator(x), g.eval()(x))


def test_untied_head_survives_a_checkpoint(tok, tmp_path):
    from reviewgen.core.checkpoint import load_checkpoint, save_checkpoint
    from reviewgen.core.config import RunConfig, TokenizerConfig

    cfg = RunConfig(tokenizer=TokenizerConfig(prefix_len=P, max_review_len=R)).override(
        {
            "generator.arch": "llama",
            "generator.n_layer": 1,
            "generator.d_model": 32,
            "generator.tie_embeddings": False,
            "discriminator.arch": "llama",
            "discriminator.n_layer": 1,
            "discriminator.d_model": 32,
        }
    )
    cfg = cfg.finalize(tok.vocab_size, n_categories=2)
    torch.manual_seed(0)
    g, d = Generator(cfg.generator), Discriminator(cfg.discriminator, P, tok.pad_id)
    assert g.lm_head.weight is not g.tok_emb.weight and "pos_emb.weight" not in g.state_dict()
    ck = load_checkpoint(
        save_checkpoint(
            tmp_path / "m", config=cfg, categories=["a", "b"], tokenizer=tok, generator=g, discriminator=d, reference=g
        )
    )
    assert torch.equal(ck.generator.lm_head.weight, g.lm_head.weight)
    assert torch.equal(ck.reference_state["lm_head.weight"], g.lm_head.weight)


def test_rope_kv_cache_uses_the_position_offset(tok):
    """Decoding one token at position t with the cache gives the logits of the full sequence at t."""
    g = tiny_g(tok.vocab_size, family="llama").eval()
    x = torch.randint(0, tok.vocab_size, (2, P + 3))
    with torch.no_grad():
        full = g(x)
        cache = g.new_cache(2, "cpu")
        g(x[:, :P], cache=cache, pos=0)
        steps = [g(x[:, P + t : P + t + 1], cache=cache, pos=P + t)[:, -1] for t in range(3)]
    assert torch.allclose(torch.stack(steps, 1), full[:, P:], atol=1e-5)


def test_decode_step_masks_the_unfilled_cache_tail(tok):
    """A one-token step attends over the whole cache buffer with a mask of the filled positions: values
    written past the current position change nothing, and a cache step refuses an attention mask."""
    g = tiny_g(tok.vocab_size).eval()
    x = torch.randint(0, tok.vocab_size, (2, P + 2))
    with torch.no_grad():
        full = g(x)
        cache = g.new_cache(2, "cpu", max_len=P + 4)
        assert len(cache.k) == g.cfg.n_layer and cache.k[0].shape[2] == P + 4
        g(x[:, :P], cache=cache, pos=0)
        for keys, values in zip(cache.k, cache.v):
            keys[:, :, P + 1 :] = 1e4
            values[:, :, P + 1 :] = -1e4
        step = g(x[:, P : P + 1], cache=cache, pos=P)[:, -1]
        with pytest.raises(ValueError, match="no attention mask"):
            g.blocks[0].attn(
                torch.zeros(2, 1, g.cfg.d_model),
                causal=True,
                cache=cache,
                pos=P + 1,
                attn_mask=torch.ones(2, 1, 1, P + 2, dtype=torch.bool),
            )
    assert torch.allclose(step, full[:, P], atol=1e-5)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("arch", "bert", "arch='bert'"),
        ("norm", "batchnorm", "norm="),
        ("n_kv_head", 3, "n_kv_head=3 must divide n_head=4"),
    ],
)
def test_invalid_architecture_fields_are_named(key, value, match):
    from reviewgen.core.config_io import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=f"generator.*{match}"):
        config_from_dict(GeneratorConfig, {key: value}, source="run.yaml:generator")


def test_compile_decode_flag_routes_only_decode_steps(tok, monkeypatch):
    """compile_decode=True sends every single-token step (never the prefill) through torch.compile's
    wrapper; False never calls torch.compile."""
    g = tiny_g(tok.vocab_size)
    pre = tok.encode_prefixes([Condition("Kindle", "E-Readers", r) for r in (2, 5)])
    seen: list[int] = []

    def fake_compile(fn, **kw):
        assert kw.get("dynamic") and kw.get("fullgraph")

        def step(idx, **a):
            seen.append(idx.shape[1])
            return fn(idx, **a)

        return step

    monkeypatch.setattr(torch, "compile", fake_compile)
    u = counter_uniforms([1, 2], R)
    on = sample(g, pre, SamplingParams(R, 1.0, compile_decode=True), eos_id=-1, pad_id=tok.pad_id, uniforms=u)
    assert seen == [1] * (R - 1)
    seen.clear()
    off = sample(g, pre, SamplingParams(R, 1.0), eos_id=-1, pad_id=tok.pad_id, uniforms=u)
    assert seen == [] and torch.equal(on, off)


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_tokens(tok):
    """On a tiny model the real torch.compile (CPU inductor) decode step picks the same tokens as eager,
    including after finished rows are compacted out of the cache (a new batch size)."""
    g = tiny_g(tok.vocab_size)
    with torch.no_grad():  # <eos> likely, so rows finish at varied steps and the cache is compacted
        w = g.lm_head.weight[tok.eos_id]
        g.ln_f.bias.copy_(4.0 * w / w.norm() ** 2)
    conds = [Condition("Kindle", "E-Readers", 1 + i % 5) for i in range(8)]
    u = counter_uniforms([row_seed(f"p{i}", 0, 3) for i in range(8)], R)
    for params in (SamplingParams(R, 1.0, precision="fp32"), SamplingParams(R, 1.0, 0, 0.9, precision="fp32")):
        eager = sample(g, tok.encode_prefixes(conds), params, eos_id=tok.eos_id, pad_id=tok.pad_id, uniforms=u)
        comp = sample(
            g,
            tok.encode_prefixes(conds),
            SamplingParams(R, 1.0, params.top_k, params.top_p, True, "fp32"),
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            uniforms=u,
        )
        assert torch.equal(eager, comp)


def test_sampling_precision_is_checked():
    assert SamplingParams(8, precision="fp32").precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        SamplingParams(8, precision="fp16")


@pytest.mark.parametrize("kv,causal", [(4, True), (2, True), (1, False), (4, False)])
def test_short_attention_equals_sdpa(kv, causal):
    """The CPU inference path's explicit attention, with grouped heads and a key-padding mask."""
    import torch.nn.functional as F

    from reviewgen.core.attention import explicit_attention as _short_attention

    g = torch.Generator().manual_seed(kv)
    q, k, v = (torch.randn(3, n, 9, 8, generator=g) for n in (4, kv, kv))
    keep = torch.rand(3, 9, generator=g) > 0.3
    keep[:, 0] = True
    mask = None if causal else keep[:, None, None, :]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=kv != 4)
    assert torch.allclose(_short_attention(q, k, v, causal=causal, attn_mask=mask), want, atol=1e-6)
