"""The whole-character guard: UTF-8 states on hand-built byte strings, the byte spelling of a vocabulary, and
a sampler that never writes a broken character, nor a Chinese one in an English review, where the unguarded
one does."""

from __future__ import annotations

import re

import pytest
import torch

from reviewgen.core.config import GeneratorConfig
from reviewgen.core.models import Generator
from reviewgen.core.sampling import SamplingParams, counter_uniforms, generate_texts, row_seed, sample, text_guard
from reviewgen.core.tokenizer import Condition, ReviewTokenizer
from reviewgen.core.utf8 import Utf8Guard, transition_table
from tests.recompute import sample_recompute

P, R = 16, 24
CJK = re.compile(r"[\u3000-\u9fff\uf900-\uffef]")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    texts = [
        "屏幕很清晰，电池也很耐用，物流很快。",
        "衣服质量一般，颜色和图片不一样。",
        "Great tablet, lasts all day.",
    ] * 20
    return ReviewTokenizer.train(texts, vocab_size=300, prefix_len=P, max_review_len=R, min_frequency=1)


def test_transition_table_on_hand_built_bytes():
    han = "清".encode()  # three bytes, e6 b8 85
    table = transition_table([b"ab", han[:1], han[1:], han[2:], han, b"\x80", None, b"\xff"]).tolist()
    assert table[0] == [0] + [-1] * 7  # ASCII: only between characters
    assert table[1] == [2] + [-1] * 7  # a lead byte opens a character that owes two bytes
    assert table[2] == [-1, -1, 0, 1, 0, -1, 1, -1]  # two continuation bytes close it (or leave one owed)
    assert table[3] == [-1, 0, 1, 2, -1, 1, -1, 2]  # 0x85 is no second byte after e0 or f0
    assert table[4] == [0] + [-1] * 7
    assert table[5][:4] == [-1, 0, 1, 2]  # a lone continuation byte, only inside a character
    assert table[6] == [0] + [-1] * 7  # <eos> and other special tokens: between characters
    assert table[7] == [-1] * 8  # never UTF-8


@pytest.mark.parametrize(
    "data", [b"\xed\xaf\xad", b"\xf4\x99\xb7\xb0", b"\xe0\x80\x80", b"\xf0\x80\x80\x80", b"\xc0\x80"]
)
def test_what_utf8_forbids_is_refused(data):
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # a surrogate, past U+10FFFF, overlong forms
    assert transition_table([data[:k] for k in range(1, len(data) + 1)])[-1, 0] == -1
    whole = transition_table([bytes([b]) for b in data])
    state = 0
    for i in range(len(data)):
        state = int(whole[i, state])
        if state < 0:
            break
    assert state < 0


def test_guard_masks_and_advances_per_row():
    table = transition_table([b"a", "清".encode()[:1], "清".encode()[1:], None])
    guard = Utf8Guard(table, 2, "cpu")
    guard.update(torch.tensor([1, 0]))  # row 0 opens a character, row 1 writes 'a'
    masked = guard.apply(torch.zeros(2, 4))
    assert masked[0].tolist() == [-float("inf"), -float("inf"), 0.0, -float("inf")]  # only the rest of it
    assert masked[1].tolist() == [0.0, 0.0, -float("inf"), 0.0]
    guard.select(torch.tensor([0]))
    guard.update(torch.tensor([2]))
    assert guard.state.tolist() == [0]


def test_token_bytes_spell_what_the_decoder_writes(tok):
    spelled = tok.token_bytes()
    assert spelled[tok.eos_id] is None and spelled[tok.pad_id] is None
    for i, b in enumerate(spelled):
        if b is not None:
            assert b.decode("utf-8", errors="replace") == tok.tok.decode([i])


def test_guarded_sampling_writes_whole_characters_only(tok):
    torch.manual_seed(0)
    g = Generator(
        GeneratorConfig(vocab_size=tok.vocab_size, block_size=P + R, dropout=0.0, n_layer=2, n_head=2, d_model=32)
    )
    conds = [Condition("平板", "电子", 1 + i % 5, language="zh") for i in range(16)]
    keys = [f"p{i}" for i in range(16)]
    free = generate_texts(g, tok, conds, keys, seed=1, temperature=1.0, whole_chars=False)
    guarded = generate_texts(g, tok, conds, keys, seed=1, temperature=1.0)
    assert sum("\ufffd" in t for t in free) >= 4  # a random model writes byte fragments freely
    assert not any("\ufffd" in t for t in guarded)
    params = SamplingParams(max_new_tokens=R, temperature=1.0, precision="fp32")
    run = dict(eos_id=tok.eos_id, pad_id=tok.pad_id)
    pre, u = tok.encode_prefixes(conds), counter_uniforms([row_seed(k, 0, 1) for k in keys], R)
    out = sample(g, pre, params, uniforms=u, guard=text_guard(tok, conds), **run)
    assert torch.equal(out, sample_recompute(g, pre, params, uniforms=u, guard=text_guard(tok, conds), **run))
    one = sample(g, pre[3:5], params, uniforms=u[3:5], guard=text_guard(tok, conds[3:5]), **run)
    assert torch.equal(out[3:5], one)  # per row, any batch


def test_english_rows_write_no_chinese_and_chinese_rows_still_may(tok):
    torch.manual_seed(0)
    g = Generator(
        GeneratorConfig(vocab_size=tok.vocab_size, block_size=P + R, dropout=0.0, n_layer=2, n_head=2, d_model=32)
    )
    conds = [Condition("Tablet", "Electronics", 1 + i % 5, language="en" if i % 2 else "zh") for i in range(32)]
    keys = [f"p{i}" for i in range(32)]
    free = generate_texts(g, tok, conds, keys, seed=2, temperature=1.0, whole_chars=False)
    guarded = generate_texts(g, tok, conds, keys, seed=2, temperature=1.0)
    english = [i for i, c in enumerate(conds) if c.language == "en"]
    assert sum(bool(CJK.search(free[i])) for i in english) >= 4  # a random model mixes the two freely
    assert not any(CJK.search(guarded[i]) for i in english)
    assert any(CJK.search(t) for c, t in zip(conds, guarded) if c.language == "zh")
    cjk = tok.cjk_tokens()
    for i, b in enumerate(tok.token_bytes()):
        if b is not None and not cjk[i]:
            assert not CJK.search(b.decode("utf-8", errors="ignore"))
