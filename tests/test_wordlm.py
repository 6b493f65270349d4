"""The scorer's word n-gram model of the training reviews, on hand-built texts whose counts are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reviewgen.score.wordlm import STATISTICS, WordLMError, WordNgramLM, build_wordlm, word_units

TRAIN = ["The battery lasts two days.", "the battery is great", "很好用，电池耐用。"]


def test_units_are_lowercase_words_digits_cjk_characters_and_marks():
    assert word_units("Great TV, 55 inch!") == ["great", "tv", ",", "55", "inch", "!"]
    assert word_units("电池 ok") == ["电", "池", "ok"]


def test_seen_shares_and_log_probability_follow_the_counts(tmp_path):
    lm = build_wordlm(TRAIN)
    s = lm.statistics(["the battery lasts two days.", "purple elephants dance", "电池耐用", "", "the 电池"])
    assert set(s) == set(STATISTICS)
    # a training review: every pair and triple (with the start and end markers) was seen
    assert s["bigram_seen"][0] == 1.0 and s["trigram_seen"][0] == 1.0
    # unseen words: nothing but the start marker's pair... was seen, and each unit costs more
    assert s["bigram_seen"][1] == 0.0 and s["trigram_seen"][1] == 0.0
    assert s["ngram_logprob"][0] > s["ngram_logprob"][2] > s["ngram_logprob"][1]
    # an empty review is only its end marker; mixing scripts is measured on letter units
    assert s["mixed_script"][0] == 0.0 and math.isnan(s["mixed_script"][3])
    assert math.isclose(s["mixed_script"][4], 1 / 3)
    assert lm.total == sum(len(word_units(t)) + 1 for t in TRAIN)


def test_the_interpolated_estimate_by_hand():
    lm = build_wordlm(TRAIN)
    d = lm.total + 0.5 * (lm.vocab + 1)
    # "great" opens no training review: only the unigram estimate (seen once) is left; then the end
    # marker after "great" is the bigram's only continuation (1.0) plus the unigram estimate (3 reviews end)
    want = (math.log(0.2 * 1.5 / d) + math.log(0.3 * 1.0 + 0.2 * 3.5 / d)) / 2
    got = lm.statistics(["great"])
    assert math.isclose(got["ngram_logprob"][0], want, rel_tol=1e-12)
    assert got["bigram_seen"][0] == 0.5 and got["trigram_seen"][0] == 0.0


def test_round_trip_without_pickle_and_errors_name_the_file(tmp_path):
    lm = WordNgramLM.build(TRAIN)
    path = lm.save(tmp_path / "wordlm.npz")
    again = WordNgramLM.load(path)
    texts = ["the battery is great", "电池很好"]
    for k in STATISTICS:
        np.testing.assert_array_equal(lm.statistics(texts)[k], again.statistics(texts)[k])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(WordLMError, match="bad.npz"):
        WordNgramLM.load(bad)
    with pytest.raises(WordLMError, match="missing.npz"):
        WordNgramLM.load(tmp_path / "missing.npz")


def test_a_big_corpus_is_sampled_to_the_cap(monkeypatch):
    import reviewgen.score.wordlm as wordlm

    monkeypatch.setattr(wordlm, "MAX_REVIEWS", 2)
    lm = build_wordlm(["alpha beta", "gamma delta", "epsilon zeta", "eta theta"], seed=0)
    assert lm.total == 2 * 3  # two reviews of two words plus the end marker each
