"""The one output filter: a review gets the same verdict in the nightly job, the scoring endpoint and
`reviewgen evaluate`.

`ReviewFilter.check` takes texts (and, where known, each review's language, calibrated score and token
ids) and returns one `Verdict` per text: every rule that fails, in a fixed order, plus the measurements
behind them (longest copied span, PII counts, token count, detected language). The nightly job rejects a
review with its first reason; the endpoint reports the verdict's flags and reasons without rejecting;
evaluation counts the same verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from reviewgen.core.config import ConfigError
from reviewgen.core.memorization import NGramIndex
from reviewgen.core.model_dir import NGRAM_FILE, ngram_order
from reviewgen.core.text import PII_KINDS, detect_language, find_pii
from reviewgen.core.tokenizer import ReviewTokenizer

# Checked in this order; a rejected review's reason is the first that applies.
REASONS = (
    "empty",
    "broken_text",
    "too_short",
    "too_long",
    "pii",
    "language_mismatch",
    "memorized",
    "low_score",
    "watermark_weak",
)
# Cleaning replaces PII in training text with these, so a model can learn to write them.
PII_PLACEHOLDERS = ("<email>", "<url>", "<phone>", "<handle>")


@dataclass(frozen=True)
class FilterConfig:
    """The filter's rules. None disables a bound; the checks can be turned off one by one.

    `max_copy_span` is the copy threshold every stage names the same way; None means "the model's n-gram
    size", and `resolved` is the one place that turns it into the number a model's filter applies."""

    min_score: float = 0.0  # reject below this calibrated p_human (0 = off)
    max_copy_span: int | None = 8  # reject when this many consecutive training tokens are copied (None: index n)
    min_tokens: int = 3
    max_tokens: int | None = None
    min_chars: int = 1
    max_chars: int | None = None
    reject_broken_text: bool = True  # U+FFFD: byte-level BPE stopped mid-character, visible garbage
    check_pii: bool = True
    check_copy: bool = True
    check_language: bool = True
    # reject a review whose watermark is not detected at its threshold (rule watermark_weak): the nightly job
    # turns it on when it signs, so every accepted review is detectable as ours
    require_watermark: bool = False

    def __post_init__(self) -> None:
        for name in ("min_tokens", "min_chars"):
            if getattr(self, name) < 0:
                raise ConfigError(f"filter: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_tokens", "max_chars", "max_copy_span"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"filter: {name} must be >= 1 or unset, got {v}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"filter: min_score must be within [0, 1], got {self.min_score}")

    def resolved(self, ngram_n: int | None) -> "FilterConfig":
        """These rules for a model whose n-gram index has order `ngram_n` (None: no index): an unset
        max_copy_span becomes n. A span below n is a ConfigError naming both, as the index cannot see a
        shorter copy, so such a rule would promise a check no stage can make. Without an index, or with the
        copy check off, nothing changes."""
        span = self.max_copy_span
        if ngram_n is None or not self.check_copy:
            return self
        if span is not None and span < ngram_n:
            raise ConfigError(
                f"filter: max_copy_span {span} is below the model's n-gram size {ngram_n}: the "
                f"index cannot see shorter copies (set it >= {ngram_n}, or unset for {ngram_n})"
            )
        return replace(self, max_copy_span=ngram_n if span is None else span)


@dataclass(frozen=True)
class Verdict:
    """The filter's finding for one review. `reasons` is empty when the review passes."""

    reasons: tuple[str, ...]
    n_tokens: int
    language: str  # detected from the text
    copy_span: int | None  # longest span copied from training reviews; None when not checked
    max_copy_span: int | None  # the copy threshold applied; None when not checked
    pii: dict[str, int] | None  # occurrences per kind; None when not checked

    @property
    def accepted(self) -> bool:
        """True when no rule failed."""
        return not self.reasons

    @property
    def reason(self) -> str | None:
        """The first failed rule (the nightly job's reject reason), or None."""
        return self.reasons[0] if self.reasons else None

    @property
    def copied(self) -> bool | None:
        """True when the copy rule failed; None when it was not checked."""
        return None if self.copy_span is None else self.copy_span >= self.max_copy_span

    @property
    def has_pii(self) -> bool | None:
        """True when any PII kind was found; None when not checked."""
        return None if self.pii is None else any(self.pii.values())

    def reasons_with(self, unscorable: str | None) -> list[str]:
        """The reasons with the scorer's own first, when it could not score the text (e.g. "no_words"):
        the order every stage reports and rejects by."""
        return ([unscorable] if unscorable and unscorable not in self.reasons else []) + list(self.reasons)

    def flags(self) -> dict[str, Any]:
        """The scoring endpoint's `flags` object."""
        return {"copy_span": self.copy_span, "copied": self.copied, "pii": self.pii, "has_pii": self.has_pii}


@dataclass(frozen=True)
class Judged:
    """A scored review's fate: its p_human (None when the scorer could not judge it), the filter's verdict,
    and every reason it fails, the scorer's own first (empty when accepted)."""

    p_human: float | None
    verdict: Verdict
    reasons: tuple[str, ...]


class ReviewFilter:
    """Applies `FilterConfig` with one model's tokenizer and training n-gram index (None: no copy check).
    `config` is kept resolved against the index (`FilterConfig.resolved`), and `max_copy_span` is the
    threshold it applies (None without a copy check)."""

    def __init__(self, config: FilterConfig, tokenizer: ReviewTokenizer, ngrams: NGramIndex | None = None):
        self.ngrams = ngrams if config.check_copy else None
        self.config = config.resolved(self.ngrams.n if self.ngrams is not None else None)
        self.tok = tokenizer
        self.max_copy_span = self.config.max_copy_span if self.ngrams is not None else None

    @classmethod
    def from_model(cls, model_dir: str | Path, tokenizer: ReviewTokenizer, config: FilterConfig) -> "ReviewFilter":
        """The filter of a model directory: its tokenizer (the caller has it loaded) and its n-gram index
        (`ngrams.npy`; absent, or the copy check off: no copy check). The rules are resolved against the
        index's n before the index is read, so a bad max_copy_span fails fast. Every stage builds its filter
        here, so all of them apply the same rules the same way."""
        n = ngram_order(model_dir) if config.check_copy else None
        config = config.resolved(n)
        return cls(config, tokenizer, NGramIndex.load(Path(model_dir) / NGRAM_FILE) if n is not None else None)

    def judge(
        self, scored: Mapping[str, Any], texts: Sequence[str | None], languages: Sequence[str | None]
    ) -> list[Judged]:
        """The filter over the scorer's result for the same texts (`Scorer.score_texts`): p_human (None
        where not finite) meets min_score, the watermark's detection ("ours") meets require_watermark, and
        the scorer's unscorable reason leads the reasons. The nightly job and the scoring endpoint both
        judge this way, so their verdicts on one review agree."""
        p_human = [float(p) if math.isfinite(p) else None for p in scored["p_human"]]
        verdicts = self.check(texts, languages=languages, scores=p_human, watermark_ours=scored["ours"])
        return [Judged(p, v, tuple(v.reasons_with(why))) for p, v, why in zip(p_human, verdicts, scored["reason"])]

    def check(
        self,
        texts: Sequence[str | None],
        *,
        languages: Sequence[str | None] | None = None,
        scores: Sequence[float | None] | None = None,
        token_ids: Sequence[Sequence[int]] | None = None,
        watermark_ours: Sequence[bool | None] | None = None,
    ) -> list[Verdict]:
        """One verdict per text. `languages`: each review's expected language (None: not checked);
        `scores`: calibrated p_human (None: not checked); `token_ids`: the review tokens when the caller
        already has them (else the texts are tokenised here, in one batch); `watermark_ours`: whether each
        review's watermark is detected (`Watermark.z_scores(...).ours`), needed when `require_watermark` is on."""
        n = len(texts)
        texts = ["" if t is None else str(t) for t in texts]
        languages = languages if languages is not None else [None] * n
        scores = scores if scores is not None else [None] * n
        if token_ids is None:
            token_ids = self.tok.review_token_lists(texts) if n else []
        if not (len(languages) == len(scores) == len(token_ids) == n):
            raise ValueError("ReviewFilter.check: texts, languages, scores and token_ids differ in length")
        if self.config.require_watermark and (watermark_ours is None or len(watermark_ours) != n):
            raise ValueError("ReviewFilter.check: require_watermark is on, so every text needs its watermark_ours")
        wm = watermark_ours if watermark_ours is not None else [None] * n
        return [self._one(t, lang, sc, ids, w) for t, lang, sc, ids, w in zip(texts, languages, scores, token_ids, wm)]

    def _one(
        self, text: str, lang: str | None, score: float | None, ids: Sequence[int], watermark_ours: bool | None = None
    ) -> Verdict:
        c, reasons = self.config, []
        stripped = text.strip()
        if not stripped:
            reasons.append("empty")
        if c.reject_broken_text and "\ufffd" in text:
            reasons.append("broken_text")
        if stripped and (len(ids) < c.min_tokens or len(text) < c.min_chars):
            reasons.append("too_short")
        if (c.max_tokens and len(ids) > c.max_tokens) or (c.max_chars and len(text) > c.max_chars):
            reasons.append("too_long")
        pii = find_pii(text) if c.check_pii else None
        if pii is not None and (any(pii.values()) or any(t in text for t in PII_PLACEHOLDERS)):
            reasons.append("pii")
        detected = detect_language(text)
        if c.check_language and lang is not None and stripped and detected != lang:
            reasons.append("language_mismatch")
        span = self.ngrams.longest_copy(ids) if self.ngrams is not None else None
        if span is not None and span >= self.max_copy_span:
            reasons.append("memorized")
        if score is not None and score < c.min_score:
            reasons.append("low_score")
        if c.require_watermark and not watermark_ours:
            reasons.append("watermark_weak")
        return Verdict(
            tuple(reasons),
            len(ids),
            detected,
            span,
            self.max_copy_span if span is not None else None,
            pii if pii is None else {k: int(pii.get(k, 0)) for k in PII_KINDS},
        )
