"""Adapting the scorer to a shop's labelled reviews (`reviewgen calibrate`).

The zero-shot detector only knows our own generator's mistakes, and other generators make other ones. A shop
that has caught fakes has labels, and with them a lexical model (`reviewgen.score.lexical`) learns what those
fakes say. For every language with at least `MIN_CLASS_ROWS` human and machine-written rows, a K-fold
cross-validation gives each row a lexical logit from a model that never saw it; a combiner
(`reviewgen.score.combiner.fit_combiner`) stacks those with the zero-shot detector's logit and the scorer's
signals, and a Platt step (`reviewgen.score.platt.fit_platt`) on the out-of-fold combined logits makes
p_human calibrated. The report's figures and the stored thresholds come from those out-of-fold scores; the
stored models are then refitted on every row. Other languages keep the zero-shot detector.

The labels file is read and scored by `reviewgen.score.adapt_labels`, and the report is
`reviewgen.score.adapt_report`. The result is `reviewgen.score.adapted.AdaptedDetector`, written into a copy
of the model directory with a new content version (`reviewgen.score.adapt_output.write_adapted_model`).
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pandas as pd

from reviewgen.core.metrics import machine_threshold
from reviewgen.score.adapt_labels import (
    MIN_CLASS_ROWS,
    LabelsError,
    ScoredLabels,
    check_labels,
    score_labels,
    sigmoid,
)

# writing the adapted model directory: `reviewgen calibrate` imports it from here
from reviewgen.score.adapt_report import FPRS, AdaptReport, language_report
from reviewgen.score.adapted import LEXICAL, ZERO_SHOT, AdaptedDetector, LanguageModel
from reviewgen.score.combiner import fit_combiner
from reviewgen.score.lexical import HashedCounts, LexicalSettings, fit_lexical, hash_counts
from reviewgen.score.platt import fit_platt, prior_shift
from reviewgen.score.scorer import Scorer
from reviewgen.score.signals import SIGNALS


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold per row, each class spread evenly over the folds in a seeded random order."""
    y = np.asarray(labels)
    out = np.zeros(len(y), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        out[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % folds
    return out


def stack_features(data: ScoredLabels) -> list[str]:
    """The combiner's features: the lexical and zero-shot logits and every signal finite on all rows."""
    return [LEXICAL, ZERO_SHOT, *(k for k in SIGNALS if np.isfinite(data.signals[k]).all())]


def _lexical_oof(counts: HashedCounts, y: np.ndarray, fold: np.ndarray, settings: LexicalSettings) -> np.ndarray:
    """Each row's lexical logit from a lexical model fitted on the other folds' rows."""
    z = np.full(len(y), np.nan)
    for k in np.unique(fold):
        fit, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        z[held] = fit_lexical(counts.take(fit), y[fit], settings).logit_counts(counts.take(held))
    return z


def fit_language(
    data: ScoredLabels, *, folds: int = 5, seed: int = 0, settings: LexicalSettings = LexicalSettings()
) -> tuple[LanguageModel, np.ndarray]:
    """One language's adapted model, refitted on every row, and its out-of-fold served logits."""
    y = data.labels
    fold = fold_ids(y, folds, seed)
    counts = hash_counts(data.texts, settings)
    feats = {**data.signals, LEXICAL: _lexical_oof(counts, y, fold, settings), ZERO_SHOT: data.zero_shot}
    names = stack_features(data)
    z = np.full(len(y), np.nan)
    for k in range(folds):
        fit = fold != k
        c = fit_combiner({n: v[fit] for n, v in feats.items()}, y[fit], names)
        z[~fit] = c.logit({n: v[~fit] for n, v in feats.items()})
    platt = fit_platt(z, y, smooth_targets=True)
    shift = prior_shift(y)
    served = platt["scale"] * z + platt["bias"] + shift
    thresholds = tuple(machine_threshold(sigmoid(served[y == 1]), r) for r in FPRS)
    full = fit_combiner(
        feats,
        y,
        names,
        info={"platt": platt, "folds": folds, "seed": seed, "left_out_signals": sorted(set(SIGNALS) - set(names))},
    )
    a, b = platt["scale"], platt["bias"]
    combiner = replace(full, weights=tuple(a * w for w in full.weights), bias=a * full.bias + b, offset=shift)
    return LanguageModel(fit_lexical(counts, y, settings), combiner, thresholds), served


def fit_adapted(
    data: ScoredLabels,
    *,
    folds: int = 5,
    seed: int = 0,
    settings: LexicalSettings = LexicalSettings(),
    source: str = "labels",
) -> tuple[AdaptedDetector, AdaptReport]:
    """An adapted model for every language with `MIN_CLASS_ROWS` rows of each class, and the out-of-fold
    report of every language. Raises `LabelsError` when no language has enough."""
    models, reports = {}, []
    for lang in sorted(set(data.languages)):
        part = data.take(np.flatnonzero(data.languages == lang))
        if min(part.labels.sum(), len(part.labels) - part.labels.sum()) >= MIN_CLASS_ROWS:
            models[lang], served = fit_language(part, folds=folds, seed=seed, settings=settings)
            reports.append(language_report(lang, part.labels, sigmoid(served), part.p_zero_shot))
        else:
            reports.append(language_report(lang, part.labels, None, part.p_zero_shot))
    if not models:
        counts = ", ".join(f"{r.language}: {r.human} human / {r.machine} machine" for r in reports)
        raise LabelsError(f"{source}: no language has {MIN_CLASS_ROWS} scorable rows of each class ({counts})")
    report = AdaptReport("out-of-fold", tuple(reports), len(data.labels), dict(data.dropped), folds, seed)
    return AdaptedDetector(models, {"lexical_settings": asdict(settings)}), report


def evaluate_adapted(
    detector: AdaptedDetector, data: ScoredLabels, evaluation: str, *, folds: int = 0, seed: int = 0
) -> AdaptReport:
    """The report of `detector` on labelled rows it was not fitted on, per language."""
    z = detector.logit(data.texts, data.signals, data.zero_shot, list(data.languages))
    p = np.where(np.isfinite(z), sigmoid(z), data.p_zero_shot)  # the zero-shot p_human where z is NaN
    reports = []
    for lang in sorted(set(data.languages)):
        rows = data.languages == lang
        reports.append(
            language_report(
                lang, data.labels[rows], p[rows] if lang in detector.models else None, data.p_zero_shot[rows]
            )
        )
    return AdaptReport(evaluation, tuple(reports), len(data.labels), dict(data.dropped), folds, seed)


def split_by_group_report(
    scorer: Scorer,
    df: pd.DataFrame,
    group_column: str,
    seed: int = 0,
    *,
    text_column: str = "text",
    folds: int = 5,
    source: str = "labels",
) -> AdaptReport:
    """Fit the adapted model on the labelled rows of a seeded random half of the groups (e.g. hotels or
    products) and report it on the other half's rows, so no group's wording is seen at fit time. Writes
    nothing."""
    if group_column not in df.columns:
        raise LabelsError(f"{source}: missing column {group_column!r}")
    frame = check_labels(df, source, text_column).assign(group=df[group_column].astype(str).to_numpy())
    data = score_labels(scorer, frame)
    groups = frame["group"].to_numpy()[data.rows]
    return split_report(data, groups, seed, folds=folds, evaluation=f"held-out {group_column} half", source=source)


def split_report(
    data: ScoredLabels,
    groups: np.ndarray,
    seed: int = 0,
    *,
    folds: int = 5,
    evaluation: str = "held-out group half",
    source: str = "labels",
) -> AdaptReport:
    """`split_by_group_report` on already scored rows, `groups` one per row."""
    names = np.unique(groups)
    fit_groups = names[np.random.default_rng(seed).permutation(len(names))[: len(names) // 2]]
    in_fit = np.isin(groups, fit_groups)
    detector, _ = fit_adapted(data.take(np.flatnonzero(in_fit)), folds=folds, seed=seed, source=source)
    return evaluate_adapted(detector, data.take(np.flatnonzero(~in_fit)), evaluation, folds=folds, seed=seed)
