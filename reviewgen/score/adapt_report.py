"""The report of an adapted scorer (`reviewgen calibrate`'s adapt_report.json and console lines): per
language, how well the p_human it is served with separates labelled reviews it was not fitted on, beside
the zero-shot detector's figures on the same rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from reviewgen.core.metrics import auroc, ece, tpr_at_fpr
from reviewgen.score.adapt_labels import MIN_CLASS_ROWS, sigmoid
from reviewgen.score.adapted import THRESHOLD_KEYS
from reviewgen.score.platt import prior_shift
from reviewgen.score.thresholds import FALSE_ACCUSATION_RATES

FPRS = tuple(FALSE_ACCUSATION_RATES[k] for k in THRESHOLD_KEYS)


@dataclass(frozen=True)
class LanguageReport:
    """One language's figures: rows used, whether it got an adapted model, and AUROC, TPR at 1% and 5% FPR
    (false accusations of the human rows) and ECE (under these rows' own class ratio) of the p_human it is
    served with, beside the zero-shot detector's AUROC and TPR at 1% FPR on the same rows (None: not
    measurable, e.g. one class only)."""

    language: str
    rows: int
    human: int
    machine: int
    adapted: bool
    auroc: float | None
    tpr_1pct: float | None
    tpr_5pct: float | None
    ece: float | None
    zero_shot_auroc: float | None
    zero_shot_tpr_1pct: float | None


@dataclass(frozen=True)
class AdaptReport:
    """How well the adapted scorer separates labelled reviews it was not fitted on: `evaluation` says how
    ("out-of-fold", or held-out groups); `dropped` counts the rows left out, by reason."""

    evaluation: str
    languages: tuple[LanguageReport, ...]
    rows: int
    dropped: Mapping[str, int]
    folds: int
    seed: int

    def language(self, lang: str) -> LanguageReport | None:
        """The report of one language, or None."""
        return next((r for r in self.languages if r.language == lang), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        d = asdict(self)
        d["languages"] = [asdict(r) for r in self.languages]
        d["dropped"] = dict(self.dropped)
        return d

    def lines(self) -> list[str]:
        """One line per language, for the console."""

        def fmt(x):
            return "n/a" if x is None else f"{x:.3f}"

        out = []
        for r in self.languages:
            head = f"[{r.language}] {r.rows} rows ({r.human} human, {r.machine} machine):"
            zs = f"zero-shot AUROC {fmt(r.zero_shot_auroc)}, TPR@1%FPR {fmt(r.zero_shot_tpr_1pct)}"
            if r.adapted:
                out.append(
                    f"{head} adapted, {self.evaluation} AUROC {fmt(r.auroc)}, TPR@1%FPR {fmt(r.tpr_1pct)}, "
                    f"TPR@5%FPR {fmt(r.tpr_5pct)}, ECE {fmt(r.ece)} ({zs})"
                )
            else:
                out.append(f"{head} too few labels (< {MIN_CLASS_ROWS} per class), keeps the zero-shot detector ({zs})")
        if self.dropped:
            out.append(f"rows left out: {dict(self.dropped)}")
        return out


def _metrics(y: np.ndarray, p: np.ndarray) -> tuple[float | None, ...]:
    """AUROC, TPR at each of `FPRS`, and ECE under these rows' class ratio, of served p_human (1:1 prior)."""
    ok = np.isfinite(p)
    y, p = y[ok], p[ok]
    if len(np.unique(y)) < 2:
        return (None,) * (len(FPRS) + 2)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    own = sigmoid(np.log(q) - np.log1p(-q) - prior_shift(y))
    return (auroc(y, p), *(tpr_at_fpr(y, p, r) for r in FPRS), ece(y, own))


def language_report(lang: str, y: np.ndarray, p: np.ndarray | None, p_zero_shot: np.ndarray) -> LanguageReport:
    """One language's report from its rows' labels `y`, the p_human `p` they are served with (None: the
    language has no adapted model) and the zero-shot detector's p_human."""
    zs = _metrics(y, p_zero_shot)
    ours = _metrics(y, p) if p is not None else (None,) * len(zs)
    return LanguageReport(lang, len(y), int(y.sum()), int(len(y) - y.sum()), p is not None, *ours, zs[0], zs[1])
