"""Evaluation of the output filter: the copy, PII and accepted-output figures come from the same
`ReviewFilter` the nightly job and the scoring endpoint apply (built with `ReviewFilter.from_model` from the
evaluation's `EvalConfig.filter_config()`), so evaluation measures what production does."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from reviewgen.core.text import PII_KINDS
from reviewgen.score.filter import REASONS, ReviewFilter, Verdict


def filter_verdicts(review_filter: ReviewFilter, texts: Sequence[str], languages: Sequence[str]) -> list[Verdict]:
    """The filter's verdict on each generated text, checked against the language it was asked for."""
    return review_filter.check(list(texts), languages=list(languages))


def filter_metrics(verdicts: Sequence[Verdict], texts: Sequence[str]) -> dict[str, Any]:
    """Rates over the verdicts: copy_rate (memorized), reject_rate, accepted_copy_rate (copies among the
    accepted, which the filter must keep at 0), PII counts per kind, empty_rate and one reject_<reason>
    rate per filter rule."""
    n = max(len(verdicts), 1)
    accepted = [v for v in verdicts if v.accepted]
    out: dict[str, Any] = {
        "copy_rate": sum(bool(v.copied) for v in verdicts) / n,
        "reject_rate": 1.0 - len(accepted) / n,
        "accepted_copy_rate": float(np.mean([bool(v.copied) for v in accepted])) if accepted else 0.0,
    }
    for k in PII_KINDS:
        out[f"pii_{k}"] = int(sum(v.pii[k] for v in verdicts if v.pii is not None))
    out["empty_rate"] = float(np.mean([not str(t).strip() for t in texts])) if len(texts) else 0.0
    for reason in REASONS:
        out[f"reject_{reason}"] = sum(reason in v.reasons for v in verdicts) / n
    return out
