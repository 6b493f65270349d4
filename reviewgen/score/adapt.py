"""Adapting the scorer to a shop's labelled reviews (`reviewgen calibrate`).

The zero-shot detector only knows our own generator's mistakes, and other generators make other ones. A shop
that has caught fakes has labels, and with them a lexical model (`reviewgen.score.lexical`) learns what those
fakes say. For every language with at least `MIN_CLASS_ROWS` human and machine-written rows, a K-fold
cross-validation gives each row a lexical logit from a model that never saw it; a combiner
(`reviewgen.score.combiner.fit_combiner`) stacks those with the zero-shot detector's logit and the scorer's
signals, and a Platt step (`reviewgen.score.platt.fit_platt`) on the out-of-fold combined logits makes
p_human calibrated. The report's figures and the stored thresholds come from those out-of-fold scores; the
stored models are then refitted on every row. Other languages keep the zero-shot detector.

Labels: `is_generated` 1 = machine-written, so the scorer's label (1 = human) is 1 - is_generated. The
result is `reviewgen.score.adapted.AdaptedDetector`, written into a copy of the model directory with a new
content version (`write_adapted_model`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from reviewgen.core.errors import InputError
from reviewgen.core.metrics import auroc, ece, machine_threshold, tpr_at_fpr
from reviewgen.core.model_dir import META_FILE, Calibration, read_calibration, read_meta, write_calibration
from reviewgen.core.text import detect_language
from reviewgen.score.adapted import LEXICAL, THRESHOLD_KEYS, ZERO_SHOT, AdaptedDetector, LanguageModel, sha256_file
from reviewgen.score.calibration import prior_shift
from reviewgen.score.combiner import fit_combiner
from reviewgen.score.lexical import HashedCounts, LexicalSettings, fit_lexical, hash_counts
from reviewgen.score.platt import fit_platt
from reviewgen.score.scorer import Scorer, review_conditions
from reviewgen.score.signals import SIGNALS
from reviewgen.score.thresholds import FALSE_ACCUSATION_RATES

LABEL_COLUMN = "is_generated"
# a language needs this many human and this many machine-written rows for its own adapted model
MIN_CLASS_ROWS = 50
# sub-directories of a model directory that are training state, not the model: not copied
TRAINING_DIRS = ("state",)
FPRS = tuple(FALSE_ACCUSATION_RATES[k] for k in THRESHOLD_KEYS)
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
    p_zs = _sigmoid(zs) if ZERO_SHOT_LOGIT in res else np.asarray(res["p_human"], dtype=np.float64)
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


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold per row, each class spread evenly over the folds in a seeded random order."""
    y = np.asarray(labels)
    out = np.zeros(len(y), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        out[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % folds
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # as the scorer computes p_human, so that the thresholds match it exactly
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _metrics(y: np.ndarray, p: np.ndarray) -> tuple[float | None, ...]:
    """AUROC, TPR at each of `FPRS`, and ECE under these rows' class ratio, of served p_human (1:1 prior)."""
    ok = np.isfinite(p)
    y, p = y[ok], p[ok]
    if len(np.unique(y)) < 2:
        return (None,) * (len(FPRS) + 2)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    own = _sigmoid(np.log(q) - np.log1p(-q) - prior_shift(y))
    return (auroc(y, p), *(tpr_at_fpr(y, p, r) for r in FPRS), ece(y, own))


def _report(lang: str, y: np.ndarray, p: np.ndarray | None, p_zero_shot: np.ndarray) -> LanguageReport:
    zs = _metrics(y, p_zero_shot)
    ours = _metrics(y, p) if p is not None else (None,) * len(zs)
    return LanguageReport(lang, len(y), int(y.sum()), int(len(y) - y.sum()), p is not None, *ours, zs[0], zs[1])


def stack_features(data: ScoredLabels) -> list[str]:
    """The combiner's features: the lexical and zero-shot logits and every signal finite on all rows."""
    return [LEXICAL, ZERO_SHOT, *(k for k in SIGNALS if np.isfinite(data.signals[k]).all())]


def _lexical_oof(counts: HashedCounts, y: np.ndarray, fold: np.ndarray, settings: LexicalSettings) -> np.ndarray:
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
    thresholds = tuple(machine_threshold(_sigmoid(served[y == 1]), r) for r in FPRS)
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
            reports.append(_report(lang, part.labels, _sigmoid(served), part.p_zero_shot))
        else:
            reports.append(_report(lang, part.labels, None, part.p_zero_shot))
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
    p = np.where(np.isfinite(z), _sigmoid(z), data.p_zero_shot)  # the zero-shot p_human where z is NaN
    reports = []
    for lang in sorted(set(data.languages)):
        rows = data.languages == lang
        reports.append(
            _report(lang, data.labels[rows], p[rows] if lang in detector.models else None, data.p_zero_shot[rows])
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


def check_output_dir(model_dir: str | Path, out_dir: str | Path) -> None:
    """Refuse an output directory that is the model directory or already holds files."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise InputError(f"--out {out_dir} is the model directory itself; write the adapted model elsewhere")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"--out {out_dir} already exists and is not empty; choose a new directory")


def write_adapted_model(
    model_dir: str | Path, out_dir: str | Path, detector: AdaptedDetector, report: AdaptReport, labels_file: str | Path
) -> str:
    """Copy `model_dir` (but its training state) to `out_dir` with the lexical files, calibration.json's
    "adapted" entry, adapt_report.json and meta.json (written last) with a new content version. Returns it."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_output_dir(model_dir, out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_adapted(model_dir, tmp, detector, report, Path(labels_file))
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_meta(out_dir).version


def _stale(name: str) -> bool:
    # meta.json is written last; an earlier adaptation's files are replaced, not kept beside the new ones
    return name in (META_FILE, "adapt_report.json", *TRAINING_DIRS) or (
        name.startswith(("lexical-", "lexical_")) and name.endswith(".npz")
    )


def _write_adapted(model_dir: Path, tmp: Path, detector: AdaptedDetector, report: AdaptReport, labels: Path) -> None:
    meta = read_meta(model_dir)
    shutil.copytree(model_dir, tmp, ignore=lambda d, names: [n for n in names if Path(d) == model_dir and _stale(n)])
    labels_sha256 = sha256_file(labels)
    by_language = {r.language: {"human": r.human, "machine": r.machine} for r in report.languages}
    doc = {
        **detector.to_doc(tmp),
        "report": report.to_dict(),
        "labels": {
            "file": labels.name,
            "sha256": labels_sha256,
            "rows": report.rows,
            "dropped": dict(report.dropped),
            "by_language": by_language,
        },
    }
    (tmp / "adapt_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    # meta.json last, with the content version over the new calibration.json
    write_calibration(
        tmp,
        replace(read_calibration(tmp) or Calibration(), adapted=doc),
        replace(meta, adapted_from={"version": meta.version, "labels_sha256": labels_sha256}),
    )
