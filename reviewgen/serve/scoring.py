"""What one Serve replica computes for a batch of reviews, without Ray: calibrated scores and signals plus the verdict
of the one output filter (`reviewgen.score.filter`), so the endpoint's flags match the nightly job's and
`reviewgen evaluate`'s verdicts on the same review."""

from __future__ import annotations

import math
from typing import Any, Sequence

from reviewgen.score.filter import FilterConfig, ReviewFilter
from reviewgen.score.scorer import MACHINE_FLAGS, REPORTED_SIGNALS, Scorer
from reviewgen.serve.config import ServeConfig


def filter_config(cfg: ServeConfig) -> FilterConfig:
    """The output filter's rules for the endpoint: the copy and PII checks as the serve config sets them,
    under the same names; an unset max_copy_span is the model's n-gram size (`FilterConfig.resolved`)."""
    return FilterConfig(check_copy=cfg.check_copy, max_copy_span=cfg.max_copy_span, check_pii=cfg.check_pii)


def replica_filter(cfg: ServeConfig, scorer: Scorer) -> ReviewFilter:
    """The filter a replica builds once, with `ReviewFilter.from_model` over the scorer's model directory
    and tokenizer; a max_copy_span below the model's n-gram size is a ConfigError naming both."""
    return ReviewFilter.from_model(scorer.ckpt.path, scorer.tok, filter_config(cfg))


def score_reviews(
    scorer: Scorer, review_filter: ReviewFilter, reviews: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One result per review dict: p_human, rating_pred, the scorer's `signals`, the filter's `flags` and its
    `reasons` (the review's own `language`, when given, is the one checked). A review the scorer cannot
    judge gets null p_human, rating_pred and signals, and the scorer's reason ahead of the filter's."""
    res = scorer.score(reviews, batch_size=max(64, len(reviews)))
    judged = review_filter.judge(res, [r.get("text") for r in reviews], [r.get("language") for r in reviews])
    out = []
    for i, j in enumerate(judged):
        why = res["reason"][i]
        out.append(
            {
                "p_human": j.p_human,
                "rating_pred": None if why else int(res["rating_pred"][i]),
                "signals": None if why else {k: _num(res[k][i]) for k in REPORTED_SIGNALS},
                "flags": {**j.verdict.flags(), **{k: res[k][i] for k in MACHINE_FLAGS}, "ours": res["ours"][i]},
                "reasons": list(j.reasons),
            }
        )
    return out


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
