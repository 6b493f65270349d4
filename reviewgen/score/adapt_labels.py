"""The labelled reviews `reviewgen calibrate` adapts the scorer to: reading and checking a shop's labels file
(`check_labels`), and scoring its rows once with the model's scorer (`score_labels`), the input of every fit
and report of `reviewgen.score.adapt`.

Labels: `is_generated` 1 = machine-written, so the scorer's label (1 = human) is 1 - is_generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from reviewgen.core.errors import InputError
from reviewgen.core.text import detect_language
from reviewgen.score.scorer import Scorer, review_conditions
from reviewgen.score.signals import SIGNALS

LABEL_COLUMN = "is_generated"
# a language needs this many human and this many machine-written rows for its own adapted model
MIN_CLASS_ROWS = 50
# the key of `Scorer.score_texts`' result that holds the zero-shot logit where "logit" is the adapted one
ZERO_SHOT_LOGIT = "zero_shot_logit"


class LabelsError(InputError):
    """A labels file cannot be used; the message names the file and the column or row."""


def check_labels(df: pd.DataFrame, source: str, text_column: str = "text") -> pd.DataFrame:
    """The labelled rows as text, label (1 = human), language, product_title, category, rating. Raises
    `LabelsError` for a missing column, an empty text or a label other than 0/1 (naming the row; rows
    counted from 1), or fewer than `MIN_CLASS_ROWS` rows of either class."""
    missing = [c for c in (text_column, LABEL_COLUMN) if c not in df.columns]
    if missing:
        raise LabelsError(f"{source}: missing column(s) {missing} (columns: {list(df.columns)})")
    text = df[text_column]
    empty = text.isna().to_numpy() | (text.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        raise LabelsError(
            f"{source}: row {int(np.argmax(empty)) + 1} has an empty {text_column!r} ({int(empty.sum())} empty in all)"
        )
    raw = df[LABEL_COLUMN]
    label = pd.to_numeric(raw, errors="coerce")
    bad = ~label.isin([0, 1]).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        value = raw.iloc[i].item() if hasattr(raw.iloc[i], "item") else raw.iloc[i]  # 2, not np.int64(2)
        raise LabelsError(
            f"{source}: row {i + 1} has {LABEL_COLUMN}={value!r}; it must be 0 (human) or "
            f"1 (machine-written) ({int(bad.sum())} such rows)"
        )
    label = label.astype(np.int64)
    n_machine = int(label.sum())
    n_human = len(label) - n_machine
    if min(n_human, n_machine) < MIN_CLASS_ROWS:
        kind = "one class only" if min(n_human, n_machine) == 0 else f"fewer than {MIN_CLASS_ROWS} rows per class"
        raise LabelsError(
            f"{source}: {kind}: {n_human} human ({LABEL_COLUMN}=0) and {n_machine} machine-written "
            f"({LABEL_COLUMN}=1) rows; need at least {MIN_CLASS_ROWS} of each"
        )
    texts = text.astype(str).tolist()
    lang = df["language"] if "language" in df.columns else pd.Series([None] * len(df), index=df.index)
    title = next((df[c] for c in ("product_title", "title") if c in df.columns), None)

    def strings(col):
        return [x if isinstance(x, str) else None for x in col] if col is not None else None

    return pd.DataFrame(
        {
            "text": texts,
            "label": (1 - label.to_numpy()).astype(np.int64),
            "language": [
                str(x).strip().lower() if isinstance(x, str) and x.strip() else detect_language(t)
                for x, t in zip(lang, texts)
            ],
            "product_title": strings(title),
            "category": strings(df.get("category")),
            "rating": pd.to_numeric(df["rating"], errors="coerce").tolist() if "rating" in df.columns else None,
        }
    )


@dataclass(frozen=True, eq=False)
class ScoredLabels:
    """Labelled rows with the scorer's signals: the fit's input, scored once and then split."""

    texts: list[str]
    labels: np.ndarray
    languages: np.ndarray
    signals: Mapping[str, np.ndarray]
    zero_shot: np.ndarray  # the scorer's combined logit
    p_zero_shot: np.ndarray
    dropped: Mapping[str, int]
    rows: np.ndarray  # each row's position in the scored frame

    def take(self, rows: np.ndarray) -> "ScoredLabels":
        """The given rows."""
        rows = np.asarray(rows)
        return ScoredLabels(
            [self.texts[i] for i in rows],
            self.labels[rows],
            self.languages[rows],
            {k: v[rows] for k, v in self.signals.items()},
            self.zero_shot[rows],
            self.p_zero_shot[rows],
            self.dropped,
            self.rows[rows],
        )


def score_labels(scorer: Scorer, frame: pd.DataFrame, res: Mapping[str, Any] | None = None) -> ScoredLabels:
    """Score `check_labels`' rows (or take `res`, the scorer's result for them); rows the scorer cannot score
    (too long, no words, repetitive) or whose zero-shot logit is not finite are left out and counted in
    `dropped`."""
    if res is None:
        res = scorer.score_texts(review_conditions(frame.to_dict("records")), frame["text"].tolist())
    # the zero-shot detector's logit, also when the model already scores with an adapted detector
    zs = np.asarray(res.get(ZERO_SHOT_LOGIT, res["logit"]), dtype=np.float64)
    p_zs = sigmoid(zs) if ZERO_SHOT_LOGIT in res else np.asarray(res["p_human"], dtype=np.float64)
    keep = np.isfinite(zs)
    dropped = {str(k): int(v) for k, v in pd.Series([r for r in res["reason"] if r]).value_counts().items()}
    nonfinite = int((~keep).sum()) - sum(dropped.values())
    if nonfinite:
        dropped["non_finite_signals"] = nonfinite
    rows = np.flatnonzero(keep)
    return ScoredLabels(
        [frame["text"].iloc[i] for i in rows],
        frame["label"].to_numpy()[rows],
        frame["language"].to_numpy(dtype=object)[rows],
        {k: np.asarray(res[k], dtype=np.float64)[rows] for k in SIGNALS},
        zs[rows],
        p_zs[rows],
        dropped,
        rows,
    )


def sigmoid(z: np.ndarray) -> np.ndarray:
    """p_human of a logit, computed as the scorer computes it, so that thresholds taken on it match the
    scorer's exactly (a very negative logit gives 0 without an overflow warning)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
