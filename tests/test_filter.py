"""The one output filter on hand-built reviews whose verdicts are known."""

from __future__ import annotations

import pytest

from reviewgen.core.memorization import NGramIndex
from reviewgen.core.tokenizer import ReviewTokenizer
from reviewgen.score.filter import FilterConfig, ReviewFilter

TRAIN = ["the battery lasts all day and the screen is bright and sharp in sunlight",
         "great tablet for kids, sturdy case and easy parental controls"] * 20


@pytest.fixture(scope="module")
def tok():
    return ReviewTokenizer.train(TRAIN + ["这个酒店很好，服务周到"] * 5, 400, 16, 48, min_frequency=1)


def test_each_rule_and_its_order(tok):
    index = NGramIndex.build(tok.review_token_lists(TRAIN[:2]), n=4)
    f = ReviewFilter(FilterConfig(min_score=0.5, max_copy_span=6, max_chars=200), tok, index)
    cases = {
        "": ("empty",),
        "ok \ufffd broken": ("broken_text",),
        "hi": ("too_short",),
        "x" * 201: ("too_long",),
        "mail me at bob@example.com for a deal": ("pii",),
        "great value, write to <email> now": ("pii",),
        "这个酒店很好，服务周到，下次还来": ("language_mismatch",),
        TRAIN[0]: ("memorized",),
        "a fine little speaker for the price": ("low_score",),
    }
    texts = list(cases)
    verdicts = f.check(texts, languages=["en"] * len(texts), scores=[0.2 if "speaker" in t else 0.9 for t in texts])
    assert {t: v.reasons for t, v in zip(texts, verdicts)} == cases
    copied = verdicts[texts.index(TRAIN[0])]
    assert copied.copy_span == len(tok.review_token_lists([TRAIN[0]])[0]) and copied.copied
    assert copied.flags() == {"copy_span": copied.copy_span, "copied": True, "pii": dict.fromkeys(
        ("email", "phone", "url", "handle"), 0), "has_pii": False}
    assert f.check([None])[0].reason == "empty"


def test_unchecked_rules_report_none(tok):
    f = ReviewFilter(FilterConfig(check_pii=False, check_copy=False), tok, None)
    v = f.check(["call 555-123-4567 for this great lamp"])[0]
    assert v.accepted and v.copy_span is None and v.copied is None and v.pii is None and v.has_pii is None
    with pytest.raises(ValueError, match="below the model's n-gram size"):
        ReviewFilter(FilterConfig(max_copy_span=2), tok, NGramIndex.build([[1, 2, 3, 4]], n=4))
