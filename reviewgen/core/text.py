"""Text cleaning and PII masking shared by data preparation and the output guard.

Everything here is pure string processing (no I/O) and must never raise on any ``str``.
Patterns avoid ``\\b`` because Python treats CJK characters as word characters, so ``\\b``
silently fails between a Chinese character and a digit or a Latin letter.
"""

from __future__ import annotations

import html
import re
import unicodedata

PII_KINDS: tuple[str, ...] = ("email", "phone", "url", "handle")

_MAX_UNESCAPE_ROUNDS = 5
_INVISIBLE = {"\ufeff", "\u200b", "\u200c", "\u200d", "\u2060"}
_WS_RE = re.compile(r"\s+")

# Characters that end a URL: whitespace, quotes/brackets, and CJK text or full-width punctuation.
_URL_STOP = r"\s<>\"'\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_URL_RE = re.compile(rf"(?i)(?:https?://|www\.)[^{_URL_STOP}]+")
_URL_TRAIL = ".,;:!?)]}"
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}(?![A-Za-z])"
)
# Phone numbers: only phone-shaped runs, so "16 GB", "2017", "Rs 220" or "HD 8" never match.
_PHONE_PATTERNS = [
    # Chinese mobiles (optionally +86): 11 digits starting 1[3-9].
    r"(?:\+?86[\s-]?)?1[3-9]\d{9}",
    # Chinese landlines: area code 0xx(x) + 7-8 digits, with a separator.
    r"\(?0\d{2,3}\)?[\s-]\d{7,8}",
    # North-American style with separators: (555) 123-4567, 555-123-4567, +1 555.123.4567.
    r"(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}",
    # Other international numbers: +CC then groups, at least 8 more digits (checked below).
    r"\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,6}",
]
_PHONE_RE = re.compile(r"(?<![0-9A-Za-z+])(?:" + "|".join(_PHONE_PATTERNS) + r")(?![0-9])")
_HANDLE_RE = re.compile(r"(?<![A-Za-z0-9._%+\-@/])@[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_PROMO_RE = re.compile(
    r"[\[\(]?\s*this\s+review\s+was\s+collected\s+as\s+part\s+of\s+a\s+promotion\s*\.?\s*[\]\)]?",
    re.IGNORECASE,
)


def clean_text(s: str) -> str:
    """Normalise raw review text.

    Unescapes HTML entities until stable (handles double escapes like ``&amp;#39;``), drops BOM
    and zero-width characters and control characters (newline/tab/CR become spaces), applies
    Unicode NFC and collapses whitespace. Never raises on a ``str``; non-strings become ``""``.
    """
    if not isinstance(s, str):
        return ""
    for _ in range(_MAX_UNESCAPE_ROUNDS):
        un = html.unescape(s)
        if un == s:
            break
        s = un
    out = []
    for ch in s:
        if ch in _INVISIBLE:
            continue
        if ch in "\n\t\r\v\f":
            out.append(" ")
            continue
        cat = unicodedata.category(ch)
        if cat == "Cc" or cat == "Cs":  # controls and lone surrogates (would break UTF-8 writes)
            continue
        out.append(ch)
    s = unicodedata.normalize("NFC", "".join(out))
    return _WS_RE.sub(" ", s).strip()


def strip_promo(s: str) -> str:
    """Remove Datafiniti's "This review was collected as part of a promotion." boilerplate."""
    if not isinstance(s, str):
        return ""
    return _WS_RE.sub(" ", _PROMO_RE.sub(" ", s)).strip()


def _phone_ok(m: re.Match[str]) -> bool:
    digits = sum(c.isdigit() for c in m.group(0))
    return 10 <= digits <= 15 if m.group(0).startswith("+") else digits >= 10


def _sub_url(m: re.Match[str]) -> tuple[str, str]:
    url = m.group(0)
    trimmed = url.rstrip(_URL_TRAIL)
    return "<url>", url[len(trimmed) :]


def _apply(s: str) -> tuple[str, dict[str, int]]:
    counts = dict.fromkeys(PII_KINDS, 0)

    def email(m: re.Match[str]) -> str:
        counts["email"] += 1
        return "<email>"

    def url(m: re.Match[str]) -> str:
        counts["url"] += 1
        tok, tail = _sub_url(m)
        return tok + tail

    def phone(m: re.Match[str]) -> str:
        if not _phone_ok(m):
            return m.group(0)
        counts["phone"] += 1
        return "<phone>"

    def handle(m: re.Match[str]) -> str:
        counts["handle"] += 1
        return "<handle>"

    # E-mails before URLs and handles, so "a@b.com" is not read as a handle "@b".
    s = _EMAIL_RE.sub(email, s)
    s = _URL_RE.sub(url, s)
    s = _PHONE_RE.sub(phone, s)
    s = _HANDLE_RE.sub(handle, s)
    return s, counts


def mask_pii(s: str) -> tuple[str, dict[str, int]]:
    """Replace e-mails, URLs, phone numbers and @handles with ``<email>``, ``<url>``, ``<phone>``,
    ``<handle>``; return the masked text and a count per kind (all of ``PII_KINDS``, zeros included)."""
    if not isinstance(s, str):
        return "", dict.fromkeys(PII_KINDS, 0)
    return _apply(s)


def find_pii(s: str) -> dict[str, int]:
    """Count PII occurrences per kind (keys ``PII_KINDS``) without returning masked text."""
    return mask_pii(s)[1]


_CJK_CHAR = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def detect_language(text: str) -> str:
    """'zh' when CJK characters make up at least 30% of the non-space characters, else 'en'."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return "en"
    return "zh" if len(_CJK_CHAR.findall(text)) / len(chars) >= 0.3 else "en"
