"""Tokenizer, models and sampler: shapes, causality, KV cache exactness, seeded determinism."""

from __future__ import annotations

import pytest
import torch

from reviewgen.core.config import DiscriminatorConfig, GeneratorConfig
from reviewgen.core.models import Discriminator, Generator
from reviewgen.core.sampling import SamplingParams, counter_uniforms, row_seed, sample
from reviewgen.core.tokenizer import Condition, ReviewTokenizer, review_mask

P, R = 16, 12


@pytest.fixture(scope="module")
def tok():
    texts = ["Great tablet, the battery lasts all day.", "Terrible charger, broke after a week!",
             "屏幕很清晰，电池也很耐用，物流很快。", "衣服质量一般，颜色和图片不一样。"] * 20
    return ReviewTokenizer.train(texts, vocab_size=400, prefix_len=P, max_review_len=R, min_frequency=1)


def tiny_g(vocab: int, dropout: float = 0.0) -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(vocab_size=vocab, block_size=P + R, n_layer=2, n_head=2, d_model=32, dropout=dropout))


@pytest.mark.parametrize("text", ["Great tablet, the battery lasts all day.", "屏幕很清晰，电池也很耐用。",
                                  "Mixed 中文 and English — 5★ & émojis 👍"])
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
    zh = tok.encode_prefixes([Condition(title="平板", category="平板", sentiment="negative", language="zh")])[0].tolist()
    assert tok.special["<sent_negative>"] in zh and tok.special["<lang_zh>"] in zh


def test_review_mask_stops_at_eos(tok):
    ids = torch.tensor([[5, 6, tok.eos_id, tok.pad_id], [5, 6, 7, 8]])
    assert review_mask(ids, tok.eos_id, tok.pad_id).tolist() == [[True, True, True, False], [True] * 4]


def test_generator_shapes_and_causal_mask(tok):
    g = tiny_g(tok.vocab_size).eval()
    x = torch.randint(0, tok.vocab_size, (3, P + R))
    logits = g(x)
    assert logits.shape == (3, P + R, tok.vocab_size)
    y = x.clone()
    y[:, 20:] = torch.randint(0, tok.vocab_size, (3, P + R - 20))  # change only the future of position 19
    assert torch.allclose(g(y)[:, :20], logits[:, :20], atol=1e-5)
    assert not torch.allclose(g(y)[:, 20:], logits[:, 20:])


def test_discriminator_heads_and_bidirectional(tok):
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(vocab_size=tok.vocab_size, block_size=P + R, n_layer=1, n_head=2,
                                          d_model=32, dropout=0.0, n_categories=7), P, tok.pad_id).eval()
    ids = tok.encode_examples([Condition("Fire HD 8", "Tablets", 5)] * 2, ["Love it, great value.", "Bad."])
    out = d(ids)
    assert out.token_logits.shape == (2, R) and out.seq_logits.shape == (2,)
    assert out.rating_logits.shape == (2, 5) and out.category_logits.shape == (2, 7)
    ids2 = ids.clone()
    ids2[:, -3] = 7  # a late token influences early token logits: the encoder is bidirectional
    assert not torch.allclose(d(ids2).token_logits[:, 0], out.token_logits[:, 0])


def test_kv_cache_matches_full_recompute_greedy(tok):
    g = tiny_g(tok.vocab_size)
    pre = tok.encode_prefixes([Condition("Echo Dot", "Smart Speakers", r) for r in (1, 3, 5, 4)])
    params = SamplingParams(max_new_tokens=R, temperature=0.0)
    a = sample(g, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id, use_cache=True)
    b = sample(g, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id, use_cache=False)
    assert torch.equal(a, b)


def test_kv_cache_matches_full_recompute_sampled(tok):
    g = tiny_g(tok.vocab_size)
    pre = tok.encode_prefixes([Condition("Kindle", "E-Readers", r) for r in (2, 5)])
    params = SamplingParams(max_new_tokens=R, temperature=1.0, top_p=0.9, top_k=50)
    u = counter_uniforms([1, 2], R)
    a = sample(g, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id, uniforms=u, use_cache=True)
    b = sample(g, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id, uniforms=u, use_cache=False)
    assert torch.equal(a, b)


def test_per_row_seed_independent_of_batch(tok):
    g = tiny_g(tok.vocab_size)
    conds = [Condition("Kindle", "E-Readers", r) for r in (1, 2, 3, 4, 5)]
    seeds = [row_seed(f"p{i}", 0, 7) for i in range(5)]
    params = SamplingParams(max_new_tokens=R, temperature=1.0)
    full = sample(g, tok.encode_prefixes(conds), params, eos_id=tok.eos_id, pad_id=tok.pad_id,
                  uniforms=counter_uniforms(seeds, R))
    alone = sample(g, tok.encode_prefixes(conds[3:4]), params, eos_id=tok.eos_id, pad_id=tok.pad_id,
                   uniforms=counter_uniforms(seeds[3:4], R))
    assert torch.equal(full[3:4], alone)
    again = sample(g, tok.encode_prefixes(conds), params, eos_id=tok.eos_id, pad_id=tok.pad_id,
                   uniforms=counter_uniforms(seeds, R))
    assert torch.equal(full, again)
    other = sample(g, tok.encode_prefixes(conds), params, eos_id=tok.eos_id, pad_id=tok.pad_id,
                   uniforms=counter_uniforms([row_seed(f"p{i}", 0, 8) for i in range(5)], R))
    assert not torch.equal(full, other)


def test_sample_pads_after_eos(tok):
    g = tiny_g(tok.vocab_size)
    with torch.no_grad():  # shift the final LayerNorm towards <eos>'s (tied) embedding: <eos> gets likely
        w = g.lm_head.weight[tok.eos_id]
        g.ln_f.bias.copy_(8.0 * w / w.norm() ** 2)
    out = sample(g, tok.encode_prefixes([Condition("x")] * 3), SamplingParams(R, 1.0), eos_id=tok.eos_id,
                 pad_id=tok.pad_id, generator=torch.Generator().manual_seed(0))
    rows = out.tolist()
    assert any(tok.eos_id in r[:-1] for r in rows)
    for row in rows:
        if tok.eos_id in row:
            assert all(t == tok.pad_id for t in row[row.index(tok.eos_id) + 1:])


def test_chinese_target_rating_becomes_sentiment():
    assert Condition("x", rating=5, language="zh").condition_token() == "<sent_positive>"
    assert Condition("x", rating=1, language="zh").condition_token() == "<sent_negative>"
    assert Condition("x", rating=3, language="zh").condition_token() == "<sent_neutral>"
    assert Condition("x", sentiment="negative", language="zh").condition_token() == "<sent_negative>"
    assert Condition("x", rating=2, language="en").condition_token() == "<rating_2>"
