"""The keyed green-list watermark: the z-test on hand-built sequences, the colours' determinism, key handling
and rotation, the sampler (deterministic per row seed and key) and the filter rule. Where it is used (scorer,
endpoint, command line, nightly actor, transformers): tests/test_watermark_use.py."""

from __future__ import annotations

import hashlib
import json
import math
import pickle

import numpy as np
import pytest
import torch

from reviewgen.core import watermark as wmk
from reviewgen.core.config import GeneratorConfig
from reviewgen.core.models import Generator
from reviewgen.core.sampling import SamplingParams, counter_uniforms, generate_texts, row_seed, sample
from reviewgen.core.tokenizer import Condition, ReviewTokenizer
from reviewgen.core.watermark import (
    Watermark,
    WatermarkConfig,
    WatermarkKey,
    WatermarkKeyError,
    WatermarkLogitsProcessor,
    load_keys,
)
from tests.recompute import sample_recompute

P, R = 16, 20
KEY_A, KEY_B = "a-secret-key-for-tests-0001", "another-secret-key-for-tests-2"
NO_ENV: dict[str, str] = {}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    texts = [
        "Great tablet, the battery lasts all day.",
        "Terrible charger, broke after a week!",
        "屏幕很清晰，电池也很耐用，物流很快。",
        "衣服质量一般，颜色和图片不一样。",
    ] * 20
    return ReviewTokenizer.train(texts, vocab_size=400, prefix_len=P, max_review_len=R, min_frequency=1)


def tiny_g(vocab: int) -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(vocab_size=vocab, block_size=P + R, dropout=0.0, n_layer=2, n_head=2, d_model=32))


def walk(wm: Watermark, colours: list[bool], start: int = 7, vocab: int = 500) -> list[int]:
    """Tokens after `start` whose (previous, token) pairs have the given colours under wm's first key, all
    pairs distinct."""
    seq, prev, seen = [], start, set()
    for want in colours:
        row = wm.green_mask(torch.tensor([prev]), vocab)[0]
        tok = next(t for t in torch.nonzero(row == want).squeeze(-1).tolist() if (prev, t) not in seen)
        seen.add((prev, tok))
        seq.append(tok)
        prev = tok
    return seq


# -- the z-test ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_green,n", [(40, 40), (0, 40), (13, 40), (25, 60)])
def test_z_score_on_hand_built_sequences(n_green, n):
    wm = Watermark(WatermarkKey(KEY_A))
    colours = [True] * n_green + [False] * (n - n_green)
    np.random.default_rng(0).shuffle(colours)
    det = wm.z_scores([walk(wm, colours)], first_prev=7)
    g = wm.config.gamma
    assert det.n_scored[0] == n and det.green[0] == n_green
    assert det.z[0] == pytest.approx((n_green - g * n) / math.sqrt(n * g * (1 - g)))
    exact = sum(math.comb(n, k) * g**k * (1 - g) ** (n - k) for k in range(n_green, n + 1))
    assert det.p_value[0] == pytest.approx(exact, rel=1e-9)
    assert det.ours == [exact <= 0.5 * math.erfc(wm.config.threshold_z / math.sqrt(2))]
    assert det.key_id == [wm.key_id]


def test_all_green_is_ours_and_all_red_is_not():
    wm = Watermark(WatermarkKey(KEY_A))
    det = wm.z_scores([walk(wm, [True] * 30), walk(wm, [False] * 30), []], first_prev=7)
    assert det.ours == [True, False, False]
    g = wm.config.gamma
    assert det.z[0] == pytest.approx(math.sqrt(30 * (1 - g) / g)) and det.z[1] == pytest.approx(
        -math.sqrt(30 * g / (1 - g))
    )
    assert math.isnan(det.z[2]) and det.key_id[2] is None and det.n_scored[2] == 0


def test_short_texts_need_the_exact_tail_not_the_normal_z():
    # at gamma 0.25, 8 green of 10: z is above 4, but 8 or more green of 10 happens by chance 4 times in 10^4
    wm = Watermark(WatermarkKey(KEY_A), WatermarkConfig(gamma=0.25))
    det = wm.z_scores([walk(wm, [True] * 8 + [False] * 2)], first_prev=7)
    assert det.z[0] > wm.config.threshold_z and det.p_value[0] == pytest.approx(4.158e-4, rel=1e-3)
    assert det.ours == [False]
    assert det.max_p == pytest.approx(3.167e-5, rel=1e-3)  # the normal tail at z = 4


def test_padded_tensor_with_mask_equals_lists_and_repeats_count_once():
    wm = Watermark(WatermarkKey(KEY_A))
    a, b = walk(wm, [True, False, True, True]), walk(wm, [False] * 3, start=9)
    ids = torch.tensor([[7, *a, 0], [9, *b, 0, 0]])
    mask = torch.tensor([[False, True, True, True, True, False], [False, True, True, True, False, False]])
    padded, lists = wm.z_scores(ids, mask), wm.z_scores([a, b[:3]], first_prev=None)
    assert padded.n_scored.tolist() == [4, 3] and padded.green.tolist() == [3, 0]
    assert lists.n_scored.tolist() == [3, 2]  # without first_prev, a list's first token is not scored
    looped = a * 5  # the same pairs again and again: one count each
    assert wm.z_scores([looped], first_prev=7).n_scored[0] == len(set(zip([7, *looped], looped)))
    counted = Watermark(WatermarkKey(KEY_A), WatermarkConfig(gamma=0.25, dedupe_pairs=False))
    assert counted.z_scores([looped], first_prev=7).n_scored[0] == len(looped)


def test_unrelated_text_stays_near_chance():
    wm = Watermark(WatermarkKey(KEY_A))
    rng = np.random.default_rng(1)
    det = wm.z_scores([rng.integers(0, 5000, 60).tolist() for _ in range(400)], first_prev=3)
    assert abs(float(np.mean(det.z))) < 0.2 and 0.8 < float(np.std(det.z)) < 1.2
    assert not any(det.ours)


# -- colours: determinism -------------------------------------------------------------------------------


def test_colours_are_a_pure_function_of_key_and_pair():
    wm = Watermark(WatermarkKey(KEY_A), WatermarkConfig(gamma=0.25))  # the pinned colours are gamma 0.25's
    prev = torch.tensor([0, 5, 399, 123456])
    mask = wm.green_mask(prev, 4096)
    assert mask.shape == (4, 4096) and abs(mask.float().mean().item() - wm.config.gamma) < 0.02
    # elementwise and batched agree; a fresh object, a pickled copy and a second call give the same colours
    assert torch.equal(mask[2], wm.green(torch.full((4096,), 399), torch.arange(4096)))
    assert torch.equal(mask, Watermark(WatermarkKey(KEY_A), wm.config).green_mask(prev, 4096))
    assert torch.equal(mask, pickle.loads(pickle.dumps(wm)).green_mask(prev, 4096))
    assert not torch.equal(mask, Watermark(WatermarkKey(KEY_B), wm.config).green_mask(prev, 4096))
    # pinned: these colours must never change, or earlier reviews could no longer be detected
    digest = hashlib.sha256(np.packbits(mask.numpy()).tobytes()).hexdigest()[:16]
    assert digest == PINNED_DIGEST


PINNED_DIGEST = "c3e411a762ee7d24"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_colours_are_the_same_on_cuda():
    wm = Watermark(WatermarkKey(KEY_A))
    prev = torch.randint(0, 50000, (64,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(wm.green_mask(prev, 50000), wm.green_mask(prev.cuda(), 50000).cpu())


def test_bias_adds_delta_to_green_logits_only():
    wm = Watermark(WatermarkKey(KEY_A), WatermarkConfig(delta=3.0))
    logits, prev = torch.randn(3, 300), torch.tensor([1, 2, 3])
    out = wm.bias_logits(logits, prev)
    assert torch.allclose(out - logits, wm.green_mask(prev, 300).float() * 3.0)
    proc = WatermarkLogitsProcessor(wm)
    assert torch.equal(proc(torch.tensor([[9, 1], [9, 2], [9, 3]]), logits), out)


# -- keys ------------------------------------------------------------------------------------------------


def test_key_repr_hides_the_secret_and_short_keys_are_refused():
    k = WatermarkKey(KEY_A)
    assert KEY_A not in repr(k) and KEY_A not in str(k) and k.key_id in repr(k) and len(k.key_id) == 16
    wm = Watermark([k, WatermarkKey(KEY_B)])
    assert KEY_A not in repr(wm) and KEY_A not in json.dumps(wm.lineage()) and wm.lineage()["key_id"] == k.key_id
    with pytest.raises(WatermarkKeyError, match="at least 16"):
        WatermarkKey("short")


def test_keys_from_env_and_file(tmp_path):
    assert load_keys(environ=NO_ENV) == [] and Watermark.from_env(environ=NO_ENV) is None
    assert load_keys(environ={wmk.OLD_KEYS_ENV: KEY_B}) == []  # older keys alone sign nothing
    env = {wmk.KEY_ENV: KEY_A, wmk.OLD_KEYS_ENV: f"{KEY_B}, {KEY_A}"}
    assert [k.key_id for k in load_keys(environ=env)] == [WatermarkKey(KEY_A).key_id, WatermarkKey(KEY_B).key_id]
    f = tmp_path / "keys"
    f.write_text(f"# current first\n{KEY_B}\n\n{KEY_A}\n")
    for keys in (
        load_keys(f, environ={wmk.KEY_ENV: "ignored-when-a-file-is-given"}),
        load_keys(environ={wmk.KEY_FILE_ENV: str(f)}),
    ):
        assert keys == [WatermarkKey(KEY_B), WatermarkKey(KEY_A)]
    with pytest.raises(WatermarkKeyError, match="cannot read"):
        load_keys(tmp_path / "missing", environ=NO_ENV)
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(WatermarkKeyError, match="no key"):
        load_keys(tmp_path / "empty", environ=NO_ENV)


def test_wrong_key_gives_low_z_and_rotation_finds_the_old_key():
    old, new = WatermarkKey(KEY_A), WatermarkKey(KEY_B)
    seqs = [walk(Watermark(old), [True] * 25, start=s) for s in (3, 4, 5)]
    assert Watermark(old).z_scores(seqs, first_prev=None).ours == [True] * 3
    wrong = Watermark(new).z_scores(seqs, first_prev=None)
    assert not any(wrong.ours) and max(wrong.z) < 3
    ring = Watermark([new, old]).z_scores(seqs, first_prev=None)
    assert ring.ours == [True] * 3 and ring.key_id == [old.key_id] * 3


# -- sampling --------------------------------------------------------------------------------------------


def _review_ids(out: torch.Tensor, eos: int, pad: int) -> list[list[int]]:
    rows = []
    for r in out.tolist():
        r = r[: r.index(eos)] if eos in r else r
        rows.append([t for t in r if t != pad])
    return rows


def test_watermarked_sampling_is_deterministic_and_detectable(tok):
    g = tiny_g(tok.vocab_size)
    conds = [Condition("Kindle", "E-Readers", r) for r in (1, 2, 3, 4, 5, 5)]
    seeds = [row_seed(f"p{i}", 0, 7) for i in range(6)]
    params = SamplingParams(max_new_tokens=R, temperature=1.0, top_p=0.95, precision="fp32")
    a, b = Watermark(WatermarkKey(KEY_A)), Watermark(WatermarkKey(KEY_B))

    def run(wm, rows=slice(None), **kw):
        return sample(
            g,
            tok.encode_prefixes(conds[rows]),
            params,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            uniforms=counter_uniforms(seeds[rows], R),
            watermark=wm,
            **kw,
        )

    plain, signed = run(None), run(a)
    assert torch.equal(signed, run(a)) and torch.equal(signed[3:4], run(a, slice(3, 4)))  # per row, any batch
    recomputed = sample_recompute(
        g,
        tok.encode_prefixes(conds),
        params,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        uniforms=counter_uniforms(seeds, R),
        watermark=a,
    )
    assert torch.equal(signed, recomputed)  # the bias follows each row's own previous token
    assert not torch.equal(signed, plain) and not torch.equal(signed, run(b))
    ids = _review_ids(signed, tok.eos_id, tok.pad_id)
    z_a, z_b = (
        a.z_scores(ids, first_prev=tok.sep_id).z,
        a.z_scores(_review_ids(plain, tok.eos_id, tok.pad_id), first_prev=tok.sep_id).z,
    )
    assert np.nanmean(z_a) > 4 > np.nanmean(z_b)
    assert np.nanmean(b.z_scores(ids, first_prev=tok.sep_id).z) < 2  # the wrong key sees chance


def test_green_needed_is_the_fewest_green_tokens_the_exact_tail_accepts():
    wm = Watermark(WatermarkKey(KEY_A), WatermarkConfig(gamma=0.25))
    need, max_p = wm.green_needed(30, 4.5).tolist(), 0.5 * math.erfc(4.5 / math.sqrt(2))

    def tail(g: int, t: int) -> float:
        return sum(math.comb(t, k) * 0.25**k * 0.75 ** (t - k) for k in range(g, t + 1))

    for t, g in enumerate(need):
        if g > t:
            assert tail(t, t) > max_p  # not even all green is enough
        else:
            assert tail(g, t) <= max_p < (tail(g - 1, t) if g > 0 else 1.0)
    assert need[9] == 10 and need[10] == 10 and need[30] < 30  # all green: 0.25^9 = 3.8e-6 > max_p >= 0.25^10


def test_eos_is_held_until_the_watermark_would_be_detected(tok):
    g = tiny_g(tok.vocab_size)
    eos_bias = torch.zeros(tok.vocab_size)
    eos_bias[tok.eos_id] = 5.0  # a model that wants to stop at once
    g.lm_head.register_forward_hook(lambda m, i, out: out + eos_bias)
    conds = [Condition("Kindle", "E-Readers", 1 + i % 5) for i in range(12)]
    seeds = [row_seed(f"p{i}", 0, 3) for i in range(12)]
    params = SamplingParams(max_new_tokens=R, temperature=1.0, top_p=0.95, precision="fp32")
    # at gamma 0.25 a review needs about 9 distinct all-green pairs, more than this model writes unheld
    held, free = (Watermark(WatermarkKey(KEY_A), WatermarkConfig(gamma=0.25, hold_eos_z=z)) for z in (4.5, None))

    def run(wm, rows=slice(None), sampler=sample):
        pre = tok.encode_prefixes(conds[rows])
        u = counter_uniforms(seeds[rows], R)
        return sampler(g, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id, uniforms=u, watermark=wm)

    out = run(held)
    assert torch.equal(out, run(held, sampler=sample_recompute)) and torch.equal(out[5:7], run(held, slice(5, 7)))
    counted = Watermark(WatermarkKey(KEY_A), WatermarkConfig(gamma=0.25, dedupe_pairs=False))
    ended = [(out[i] == tok.eos_id).any().item() for i in range(len(conds))]
    det = counted.z_scores(_review_ids(out, tok.eos_id, tok.pad_id), first_prev=tok.sep_id)
    assert any(ended) and all(p <= 0.5 * math.erfc(4.5 / math.sqrt(2)) for p, e in zip(det.p_value, ended) if e)
    short = free.z_scores(_review_ids(run(free), tok.eos_id, tok.pad_id), first_prev=tok.sep_id)
    assert sum(short.ours) < len(conds) // 2  # without the hold most reviews stop too short to be ours
    assert torch.equal(run(None), run(None, sampler=sample_recompute))  # unwatermarked: nothing held


def test_generate_texts_threads_the_watermark(tok):
    g = tiny_g(tok.vocab_size)
    conds, keys = [Condition("Echo Dot", "Speakers", 5)] * 4, [f"k{i}" for i in range(4)]
    kw = dict(seed=3, temperature=1.0, top_p=0.95)
    wm = Watermark(WatermarkKey(KEY_A))
    assert generate_texts(g, tok, conds, keys, **kw) == generate_texts(g, tok, conds, keys, watermark=None, **kw)
    signed = generate_texts(g, tok, conds, keys, watermark=wm, **kw)
    assert signed == generate_texts(g, tok, conds, keys, watermark=wm, batch_size=3, **kw)
    assert signed != generate_texts(g, tok, conds, keys, **kw)


# -- the filter rule -------------------------------------------------------------------------------------


def test_filter_rule_watermark_weak(tok):
    from reviewgen.score.filter import REASONS, FilterConfig, ReviewFilter

    texts = ["Great tablet, the battery lasts all day."] * 3
    strict = ReviewFilter(FilterConfig(check_copy=False, require_watermark=True), tok)
    v = strict.check(texts, watermark_ours=[True, False, None])
    assert [x.reasons for x in v] == [(), ("watermark_weak",), ("watermark_weak",)]
    assert REASONS[-1] == "watermark_weak"
    with pytest.raises(ValueError, match="watermark_ours"):
        strict.check(texts)
    lax = ReviewFilter(FilterConfig(check_copy=False), tok)
    assert all(x.accepted for x in lax.check(texts, watermark_ours=[False] * 3))
