"""Tokenizer-independent fluency metrics and TSTR on hand-built cases (reviewgen.evaluate.fluency)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from reviewgen.core.tokenizer import ReviewTokenizer
from reviewgen.evaluate.fluency import (
    bits_per_char,
    fluency_markdown,
    fluency_result,
    real_word_rate,
    tstr,
    vocabulary,
    words,
)
from reviewgen.evaluate.quality import ConditionClassifiers

P, R = 12, 16
TEXTS = [
    "Great tablet, the battery lasts all day.",
    "Terrible charger, broke after a week!",
    "The speaker sounds clear.",
    "质量很好，物流很快。",
    "Cheap case, the color faded quickly.",
] * 8


def test_words_and_real_word_rate():
    vocab = vocabulary(["The battery lasts all day", "GREAT sound, don't buy"])
    assert words(["The battry lasts, GREAT!! 4 stars", "x2y"]) == ["the", "battry", "lasts", "great", "stars", "x", "y"]
    r = real_word_rate(["The battry lasts, GREAT!"], vocab)
    assert r == {"real_word_rate": 0.75, "words": 4}
    assert real_word_rate(["don't"], vocab)["real_word_rate"] == 1.0  # "don" and "t" are both training words
    assert real_word_rate(["质量很好 123"], vocab) == {"real_word_rate": None, "words": 0}


class Uniform(torch.nn.Module):
    """A generator whose every next-token distribution is uniform over V: log2(V) bits per token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, logits_from: int = 0):
        return torch.zeros(x.shape[0], x.shape[1] - logits_from, self.vocab) + 0 * self.w


@pytest.fixture(scope="module")
def tok():
    return ReviewTokenizer.train(TEXTS, vocab_size=400, prefix_len=P, max_review_len=R, min_frequency=1)


def _frame(texts, langs):
    return pd.DataFrame(
        {
            "text": texts,
            "language": langs,
            "product_title": "Fire HD",
            "category": "Tablets",
            "rating": [5 if lang == "en" else None for lang in langs],
            "sentiment": "positive",
        }
    )


def test_bits_per_char_of_a_uniform_model(tok):
    df = _frame(["Great tablet, the battery lasts.", "Broke after a week!", "质量很好"], ["en", "en", "zh"])
    got = bits_per_char(Uniform(tok.vocab_size), tok, df, batch_size=2)
    bits_per_token = math.log2(tok.vocab_size)
    for lang in ("en", "zh"):
        rows = df[df["language"] == lang]["text"]
        n_tok = sum(len(tok.tok.encode(t, add_special_tokens=False).ids) + 1 for t in rows)  # + <eos>
        chars = sum(len(t) for t in rows)
        assert got[lang]["chars"] == chars and got[lang]["reviews"] == len(rows)
        assert got[lang]["bits_per_char"] == pytest.approx(n_tok * bits_per_token / chars, rel=1e-6)


def test_bits_per_char_counts_only_what_the_model_saw(tok):
    """A review longer than max_review_len: its characters are those of the R tokens scored (no <eos>)."""
    long = " ".join(["the battery lasts all day"] * 10)
    got = bits_per_char(Uniform(tok.vocab_size), tok, _frame([long], ["en"]))["en"]
    ids = tok.tok.encode(long, add_special_tokens=False).ids[:R]
    assert got["chars"] == len(tok.tok.decode(ids)) < len(long)
    assert got["bits_per_char"] == pytest.approx(R * math.log2(tok.vocab_size) / got["chars"], rel=1e-6)


GOOD = ["love it, excellent and great", "great product, love the quality", "excellent, works great, love"]
BAD = ["awful, broke in a day, terrible", "terrible quality, broken, awful", "broken on arrival, awful"]


def _reviews(n: int, flip: bool = False, seed: int = 0) -> pd.DataFrame:
    rows = []
    for i in range(n):
        good = i % 2 == 0
        text = (GOOD if good else BAD)[(i // 2 + seed) % 3]
        rating = 5 if good != flip else 1
        rows.append(
            {"text": text, "rating": rating, "category": "Tablets" if i % 4 < 2 else "Speakers", "language": "en"}
        )
    return pd.DataFrame(rows)


def test_tstr_separates_useful_from_useless_synthetic_reviews():
    real_train, real_test = _reviews(40), _reviews(20, seed=1)
    real = ConditionClassifiers(real_train)
    useful = tstr(_reviews(40, seed=2), real_test, real)
    useless = tstr(_reviews(40, flip=True, seed=2), real_test, real)  # texts that contradict their rating
    assert useful["real"]["rating_acc"] == 1.0 and useful["synthetic"]["rating_acc"] == 1.0
    assert useless["synthetic"]["rating_acc"] == 0.0 and useless["real"] == useful["real"]
    assert useless["synthetic"]["rating_mae"] == 4.0
    assert useful["test_reviews"] == 20 and useful["synthetic_reviews"] == 40


def test_fluency_section_and_report(tok):
    class Ck:  # the parts of a loaded checkpoint the section reads
        generator, tokenizer = Uniform(tok.vocab_size), tok
        config = type("C", (), {"train": type("T", (), {"batch_size": 4})})

    ev = _reviews(8).assign(product_id=[f"p{i % 2}" for i in range(8)], product_title="Echo")
    test = pd.concat([ev, ev.assign(product_id="other")])
    train = _reviews(40)
    samples = {("gan", 0.8): ev["text"].tolist(), ("gan", 1.0): ["lovv itt"] * 8}
    result = fluency_result(
        {"gan": Ck()},
        samples,
        ev,
        test,
        train,
        _frame(TEXTS[:5], ["en"] * 3 + ["zh", "en"]),
        real_clf=ConditionClassifiers(train),
        tstr_temperature=0.85,
    )
    f = result.to_dict()
    assert f["human"]["real_word_rate"] == 1.0
    assert f["gan"]["real_word_rate"]["0.8"]["real_word_rate"] == 1.0
    assert f["gan"]["real_word_rate"]["1"] == {"real_word_rate": 0.0, "words": 16}
    assert f["tstr_temperature"] == 0.8  # the sampled temperature nearest the one asked for
    assert f["gan"]["tstr"]["test_reviews"] == 8  # real reviews of the evaluated products only
    assert set(f["gan"]["val_bits_per_char"]) == {"en", "zh"}
    md = fluency_markdown(result)
    assert "bits per character" in md and "| gan | synthetic |" in md and "T=0.8" in md
