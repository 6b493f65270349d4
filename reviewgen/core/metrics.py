"""Classifier metrics (positive class = 1 = human-written) and mean ± sd aggregation; pure numpy.

The scorer's calibration reports ECE through `ece`; evaluation uses the rest. Text metrics (BLEU, FED,
MAUVE) live in `reviewgen.evaluate.text_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------
# Classifier metrics (positive class = 1 = human-written)


def _check_binary(y_true: Any, p: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    s = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{name}: y_true has {y.size} values but scores have {s.size}")
    if y.size == 0:
        raise ValueError(f"{name}: empty input")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(f"{name}: y_true must be 0/1, found {y[bad][0]!r} at index {int(np.argmax(bad))}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name}: scores contain NaN/inf at index {int(np.argmax(~np.isfinite(s)))}")
    return y.astype(np.int64), s


def _check_prob(p: np.ndarray, name: str) -> None:
    if (p < 0).any() or (p > 1).any():
        raise ValueError(f"{name}: probabilities must lie in [0, 1]")


def auroc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic (tied scores get average ranks)."""
    y, s = _check_binary(y_true, scores, "auroc")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc: y_true must contain both classes")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average 1-based rank for each group of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(group_rank, ends - starts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds), one per distinct score, starting at (0, 0) with threshold inf."""
    y, s = _check_binary(y_true, scores, "roc_curve")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_curve: y_true must contain both classes")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y_sorted)[last_of_group]
    fps = (last_of_group + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, s_sorted[last_of_group]]
    return fpr, tpr, thresholds


def accuracy(y_true: Any, p: Any, threshold: float = 0.5) -> float:
    """Fraction of correct predictions with ``p >= threshold`` predicting class 1."""
    y, s = _check_binary(y_true, p, "accuracy")
    return float(((s >= threshold).astype(np.int64) == y).mean())


def f1(y_true: Any, p: Any, threshold: float = 0.5) -> float:
    """F1 of class 1 with ``p >= threshold`` predicting class 1 (0.0 when there are no TP)."""
    y, s = _check_binary(y_true, p, "f1")
    pred = s >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    return 2.0 * tp / (2 * tp + fp + fn) if tp else 0.0


def brier(y_true: Any, p: Any) -> float:
    """Brier score: mean squared error between probabilities and 0/1 labels."""
    y, s = _check_binary(y_true, p, "brier")
    _check_prob(s, "brier")
    return float(np.mean((s - y) ** 2))


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # p == 1.0 belongs to the last bin, not a phantom bin n_bins.
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def reliability_bins(y_true: Any, p: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width reliability bins on [0, 1].

    Returns arrays of length ``n_bins``: ``centers``, ``confidence`` (mean p), ``accuracy`` (mean label),
    ``counts``, plus ``edges`` (n_bins + 1). Empty bins have NaN confidence / accuracy.
    """
    if n_bins < 1:
        raise ValueError(f"reliability_bins: n_bins must be >= 1, got {n_bins}")
    y, s = _check_binary(y_true, p, "reliability_bins")
    _check_prob(s, "reliability_bins")
    idx = _bin_index(s, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=s, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(counts > 0, sum_p / counts, np.nan)
        acc = np.where(counts > 0, sum_y / counts, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "centers": (edges[:-1] + edges[1:]) / 2.0,
        "confidence": conf,
        "accuracy": acc,
        "counts": counts,
        "edges": edges,
    }


def ece(y_true: Any, p: Any, n_bins: int = 15) -> float:
    """Expected calibration error: count-weighted mean of |accuracy - confidence| over equal-width bins."""
    b = reliability_bins(y_true, p, n_bins)
    nz = b["counts"] > 0
    w = b["counts"][nz] / b["counts"].sum()
    return float(np.sum(w * np.abs(b["accuracy"][nz] - b["confidence"][nz])))


def log_loss(y_true: Any, p: Any, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy of probabilities `p` for labels `y_true` (p clipped to [eps, 1 - eps])."""
    y, s = _check_binary(y_true, p, "log_loss")
    _check_prob(s, "log_loss")
    s = np.clip(s, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(s) + (1.0 - y) * np.log1p(-s)))


def machine_threshold(p_human_of_humans: Any, fpr: float) -> float:
    """The p_human below which a review is flagged as machine-written so that at most `fpr` of these human
    reviews are flagged (a false accusation): the k-th smallest of them, k = floor(fpr * n), flagged by
    `p < threshold` (strictly, so ties with it are not flagged)."""
    h = np.sort(np.asarray(p_human_of_humans, dtype=np.float64).ravel())
    if h.size == 0 or not np.isfinite(h).all():
        raise ValueError("machine_threshold: need finite p_human of at least one human review")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"machine_threshold: fpr must be in [0, 1), got {fpr}")
    return float(h[int(np.floor(fpr * h.size))])


def tpr_at_fpr(y_true: Any, p: Any, fpr: float) -> float:
    """Share of machine-written rows (y = 0) flagged at the `machine_threshold` of the human rows (y = 1)
    for false-accusation rate `fpr`: the catch rate at that operating point."""
    y, s = _check_binary(y_true, p, "tpr_at_fpr")
    if y.all() or not y.any():
        raise ValueError("tpr_at_fpr: y_true must contain both classes")
    return float((s[y == 0] < machine_threshold(s[y == 1], fpr)).mean())


def ece_floor(p: Any, n_bins: int = 15, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated scorer reads on these scores: the mean `ece` over label sets drawn as
    Bernoulli(p). ECE is biased upwards on a finite sample (every bin's accuracy is a noisy estimate), the
    more so the fewer the rows, so an ECE means little unless read beside it."""
    s = np.asarray(p, dtype=np.float64)
    _check_prob(s, "ece_floor")
    rng = np.random.default_rng(seed)
    return float(np.mean([ece((rng.random(s.shape) < s).astype(np.int64), s, n_bins) for _ in range(draws)]))


# ----------------------------------------------------------------------------------------------
# Aggregation


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) for "mean ± sd over seeds"."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_sd: no values")
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean()), sd
