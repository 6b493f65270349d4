"""Tests for reviewgen.core.text: cleaning, promo stripping and PII masking (English and Chinese)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from reviewgen.core.text import PII_KINDS, clean_text, find_pii, mask_pii, strip_promo


def test_clean_text_unescapes_nested_entities_and_strips_controls():
    raw = "\ufeff It&amp;#39;s  great&hellip;\n\tcafe\u0301\x00 &quot;ok&quot; "
    assert clean_text(raw) == 'It\'s great… caf\u00e9 "ok"'


def test_clean_text_collapses_whitespace_and_handles_non_str():
    assert clean_text("a \r\n\r\n b") == "a b"
    assert clean_text(None) == ""  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_clean_text_never_raises_and_is_idempotent(s):
    once = clean_text(s)
    assert clean_text(once) == once
    masked, counts = mask_pii(once)
    assert set(counts) == set(PII_KINDS)


def test_strip_promo_variants():
    for raw in [
        "Works well. This review was collected as part of a promotion.",
        "Works well. [This review was collected as part of a promotion.]",
        "Works well.  this REVIEW was  collected as part of a promotion",
    ]:
        assert strip_promo(raw) == "Works well."
    assert strip_promo("No boilerplate here.") == "No boilerplate here."


def test_mask_pii_english():
    text = (
        "Call +1 (555) 123-4567 or 555-123-4567, mail john.doe@example.com, "
        "see https://shop.example.com/p?id=3. or www.example.org, thanks @john_doe!"
    )
    masked, counts = mask_pii(text)
    assert counts == {"email": 1, "phone": 2, "url": 2, "handle": 1}
    for leaked in ("555", "john.doe", "example", "john_doe"):
        assert leaked not in masked
    assert masked.count("<phone>") == 2 and "<email>" in masked and "<handle>!" in masked
    assert "<url>." in masked  # trailing sentence punctuation stays outside the URL


def test_mask_pii_chinese():
    text = "我的电话13812345678，座机010-12345678，网址www.taobao.com/abc很好，邮箱abc@qq.com谢谢@bob_1"
    masked, counts = mask_pii(text)
    assert counts == {"email": 1, "phone": 2, "url": 1, "handle": 1}
    assert masked == "我的电话<phone>，座机<phone>，网址<url>很好，邮箱<email>谢谢<handle>"


def test_ordinary_numbers_untouched():
    text = "16 GB, 2017, Rs 220, HD 8, $129.99, 8GB-123, ISBN 9780140449136, years 2016 2017 2018, 价格199元"
    masked, counts = mask_pii(text)
    assert masked == text
    assert sum(counts.values()) == 0


def test_find_pii_counts_without_masking():
    assert find_pii("write to a@b.co or @someone") == {"email": 1, "phone": 0, "url": 0, "handle": 1}
