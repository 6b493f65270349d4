"""Output guards: the memorisation guard flags planted training copies and passes novel text; the PII
guard rejects or masks e-mails and phone numbers in English and Chinese text."""

from __future__ import annotations

import pytest

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.data.corpus import load_split
from reviewgen.score.guards import OutputGuard, guard_review
from reviewgen.core.memorization import NGramIndex

NOVEL = "zqx vortek plimbus ardent quarlow fenix dromble quaint wuzzle orb"


@pytest.fixture(scope="module")
def guard_parts(tiny_model, prepared_data):
    ck = load_checkpoint(tiny_model)
    train = load_split(prepared_data, "train")
    ids = ck.tokenizer.review_token_lists(train["text"].astype(str).tolist())
    # a training review long enough to hold a 12-token copy
    i = next(k for k, t in enumerate(ids) if len(t) >= 20 and train["language"].iloc[k] == "en")
    return ck, train["text"].iloc[i], ids[i]


def test_flags_planted_copy_and_passes_novel_text(guard_parts) -> None:
    ck, review, _ = guard_parts
    guard = OutputGuard(ck.ngram_path, ck.tokenizer, min_span=8)
    out, reasons, flags = guard.check(f"{NOVEL} {review} {NOVEL}")
    assert "copy" in reasons and flags["longest_copy"] >= 8 and flags["copy_checked"]
    out, reasons, flags = guard.check(NOVEL)
    assert reasons == [] and flags["longest_copy"] < 8 and out == NOVEL


def test_guard_review_on_token_ids(guard_parts) -> None:
    ck, review, ids = guard_parts
    index = NGramIndex.load(ck.ngram_path)
    assert guard_review(review, ids, index, min_span=8) == ["copy"]
    novel_ids = ck.tokenizer.review_token_lists([NOVEL])[0]
    assert guard_review(NOVEL, novel_ids, index, min_span=8) == []
    assert guard_review("write to a.b@example.com", [], None) == ["pii:email"]


@pytest.mark.parametrize("text,kind,placeholder", [
    ("Great phone, mail me at john.doe@example.com for details", "email", "<email>"),
    ("Call the seller at 555-123-4567 if it breaks", "phone", "<phone>"),
    ("质量很好，有问题请联系13812345678谢谢", "phone", "<phone>"),
    ("客服邮箱是service@shop.cn，回复很快", "email", "<email>"),
])
def test_pii_reject_and_mask(guard_parts, text: str, kind: str, placeholder: str) -> None:
    ck, _, _ = guard_parts
    out, reasons, flags = OutputGuard(ck.ngram_path, ck.tokenizer, pii="reject").check(text)
    assert reasons == [f"pii:{kind}"] and out == text and flags["pii"][kind] == 1
    out, reasons, flags = OutputGuard(ck.ngram_path, ck.tokenizer, pii="mask").check(text)
    assert reasons == [] and placeholder in out and flags["masked"]
    assert "13812345678" not in out and "@" not in out


def test_guard_configuration_errors(guard_parts, tmp_path) -> None:
    ck, _, _ = guard_parts
    with pytest.raises(ValueError, match="pii"):
        OutputGuard(ck.ngram_path, ck.tokenizer, pii="ignore")
    with pytest.raises(ValueError, match="min_span"):
        OutputGuard(ck.ngram_path, ck.tokenizer, min_span=4)
    with pytest.raises(FileNotFoundError, match="ngrams"):
        OutputGuard(tmp_path / "ngrams.npy", ck.tokenizer)
    out, reasons, flags = OutputGuard(None, ck.tokenizer).check("plain text")
    assert reasons == [] and flags["copy_checked"] is False
