"""Output guards for generated reviews: the memorisation (copy) guard and the PII guard.

Used by `reviewgen evaluate` (copy rate, accepted-output rate) and by the generation pipeline's filter.
A review is rejected when it reproduces >= `min_span` consecutive tokens of a training review (checked
against the model directory's hashed n-gram index, `ngrams.npy`) or, with `pii="reject"`, when it
contains an e-mail, phone number, URL or @handle. With `pii="mask"` PII is replaced by placeholders
(`reviewgen.core.text.mask_pii`) and the review is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from reviewgen.core.memorization import NGramIndex
from reviewgen.core.text import PII_KINDS, mask_pii

PII_POLICIES = ("reject", "mask")
COPY_REASON = "copy"


def pii_reasons(counts: dict[str, int]) -> list[str]:
    """One reason per PII kind present, e.g. ["pii:email", "pii:phone"]."""
    return [f"pii:{k}" for k in PII_KINDS if counts.get(k, 0) > 0]


def guard_review(text: str, token_ids: Sequence[int], ngram_index: NGramIndex | None,
                 min_span: int = 8) -> list[str]:
    """Reasons to reject `text` under the reject policy: "copy" when `token_ids` (the review's tokens,
    as `ReviewTokenizer.review_token_lists` gives them) repeat >= `min_span` training tokens, then one
    "pii:<kind>" per PII kind found. Empty list = acceptable."""
    reasons = []
    if ngram_index is not None and ngram_index.copies(token_ids, min_span=min_span):
        reasons.append(COPY_REASON)
    return reasons + pii_reasons(mask_pii(text)[1])


class OutputGuard:
    """Copy + PII guard bound to one model's n-gram index and tokenizer.

    `ngram_path` may be a path to `ngrams.npy`, an already loaded `NGramIndex`, or None (copy check
    disabled; `flags["copy_checked"]` is then False so callers can tell)."""

    def __init__(self, ngram_path: str | Path | NGramIndex | None, tokenizer: Any, min_span: int = 8,
                 pii: str = "reject"):
        if pii not in PII_POLICIES:
            raise ValueError(f"OutputGuard: pii must be one of {PII_POLICIES}, got {pii!r}")
        if isinstance(ngram_path, NGramIndex) or ngram_path is None:
            self.index = ngram_path
        else:
            p = Path(ngram_path)
            if not p.is_file():
                raise FileNotFoundError(f"OutputGuard: n-gram index not found: {p}")
            self.index = NGramIndex.load(p)
        if self.index is not None and min_span < self.index.n:
            raise ValueError(f"OutputGuard: min_span={min_span} is below the index n-gram size {self.index.n}")
        self.tok, self.min_span, self.pii = tokenizer, int(min_span), pii

    def longest_copy(self, text: str) -> int:
        """Longest span (tokens) of `text` found verbatim in the training reviews (0 without an index)."""
        if self.index is None:
            return 0
        return self.index.longest_copy(self.tok.review_token_lists([text])[0])

    def check(self, text: str) -> tuple[str, list[str], dict[str, Any]]:
        """(text_out, reasons, flags). Accept the review iff `reasons` is empty.

        text_out is the PII-masked text under the "mask" policy, else `text` unchanged. flags holds
        `longest_copy`, `copy_checked`, `pii` (counts per kind, before masking) and `masked`."""
        return self.check_many([text])[0]

    def check_many(self, texts: Sequence[str]) -> list[tuple[str, list[str], dict[str, Any]]]:
        """`check` over a list, tokenising in one batch."""
        ids = self.tok.review_token_lists(list(texts)) if self.index is not None else [[] for _ in texts]
        out = []
        for text, tid in zip(texts, ids):
            longest = self.index.longest_copy(tid) if self.index is not None else 0
            masked, counts = mask_pii(text)
            reasons = [COPY_REASON] if longest >= self.min_span else []
            reasons += pii_reasons(counts) if self.pii == "reject" else []
            out.append((text if self.pii == "reject" else masked, reasons,
                        {"longest_copy": longest, "copy_checked": self.index is not None, "pii": counts,
                         "masked": self.pii == "mask" and any(counts.values())}))
        return out
