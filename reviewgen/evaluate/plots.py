"""Evaluation figures. Each function writes one PNG and returns its path.

matplotlib is imported lazily with the non-interactive Agg backend, so importing this module has no side
effects and works on headless workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _new_figure(figsize: tuple[float, float]) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    # A bare Figure (not pyplot) keeps no global state, so parallel callers do not leak figures.
    return Figure(figsize=figsize)


def _figure(figsize: tuple[float, float] = (6.0, 4.5)) -> tuple[Any, Any]:
    fig = _new_figure(figsize)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    return path


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Losses (G, D), D accuracy and validation NLL against step; rows may omit any key.

    Phase changes (e.g. ``mle`` -> ``adv``) are marked with vertical dashed lines.
    """
    fig = _new_figure((10.0, 4.0))
    ax_loss, ax_acc, ax_nll = fig.subplots(1, 3)
    series = {k: ([], []) for k in ("g_loss", "d_loss", "d_acc", "val_nll")}
    phase_starts: list[tuple[float, str]] = []
    last_phase = None
    for i, row in enumerate(history):
        step = float(row.get("step", i))
        phase = row.get("phase")
        if phase is not None and phase != last_phase:
            phase_starts.append((step, str(phase)))
            last_phase = phase
        for k, (xs, ys) in series.items():
            v = row.get(k)
            if v is not None and np.isfinite(float(v)):
                xs.append(step)
                ys.append(float(v))
    for ax, keys, title in (
        (ax_loss, ("g_loss", "d_loss"), "losses"),
        (ax_acc, ("d_acc",), "discriminator accuracy"),
        (ax_nll, ("val_nll",), "validation NLL"),
    ):
        for k in keys:
            xs, ys = series[k]
            if xs:
                ax.plot(xs, ys, label=k, marker="." if len(xs) < 30 else None)
        for step, phase in phase_starts:
            ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
            ax.text(step, 1.0, f" {phase}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
        ax.set_title(title)
        ax.set_xlabel("step")
        if any(series[k][0] for k in keys):
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_quality_diversity(
    curves: Mapping[str, Sequence[tuple[float, ...]]],
    human_point: tuple[float, float] | None,
    path: str | Path,
) -> Path:
    """Quality-diversity trade-off: x = Self-BLEU-4 (lower = more diverse), y = BLEU-4.

    ``curves`` maps a model label to points ``(x, y)`` or ``(x, y, temperature)``; temperatures are
    written next to their points. ``human_point`` is drawn as a star when given.
    """
    fig, ax = _figure()
    for label, points in curves.items():
        if not points:
            continue
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        ax.plot(xs, ys, marker="o", label=label)
        for p in points:
            if len(p) >= 3:
                ax.annotate(f"T={p[2]:g}", (p[0], p[1]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if human_point is not None:
        ax.scatter([human_point[0]], [human_point[1]], marker="*", s=160, color="black", label="human", zorder=5)
    ax.set_xlabel("Self-BLEU-4 (lower = more diverse)")
    ax.set_ylabel("BLEU-4 vs test references")
    ax.set_title("quality vs diversity")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path) -> Path:
    """ROC curves, one per label, as ``{label: (fpr, tpr)}``; the chance diagonal is drawn."""
    fig, ax = _figure((5.0, 5.0))
    for label, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC")
    if curves:
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_reliability(bins: Mapping[str, Any], path: str | Path) -> Path:
    """Reliability diagram from :func:`reviewgen.core.metrics.reliability_bins` output (empty bins skipped)."""
    centers = np.asarray(bins["centers"], dtype=float)
    acc = np.asarray(bins["accuracy"], dtype=float)
    conf = np.asarray(bins["confidence"], dtype=float)
    counts = np.asarray(bins["counts"], dtype=float)
    width = float(centers[1] - centers[0]) if centers.size > 1 else 1.0
    fig, ax = _figure((5.0, 5.0))
    ok = counts > 0
    ax.bar(centers[ok], acc[ok], width=width * 0.9, alpha=0.6, edgecolor="black", label="accuracy")
    ax.plot(conf[ok], acc[ok], marker="o", linestyle="none", color="C1", label="mean confidence")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(human)")
    ax.set_ylabel("fraction human")
    ax.set_title("reliability")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_score_histograms(scores: Mapping[str, Any], path: str | Path, bins: int = 30) -> Path:
    """Overlaid histograms (density) of scores per group, e.g. ``{"human": p, "generated": p}``."""
    fig, ax = _figure()
    arrays = {k: np.asarray(v, dtype=float).ravel() for k, v in scores.items()}
    finite = [a[np.isfinite(a)] for a in arrays.values() if a.size]
    edges = np.histogram_bin_edges(np.concatenate(finite), bins=bins) if finite else bins
    for label, a in arrays.items():
        a = a[np.isfinite(a)]
        if a.size:
            ax.hist(a, bins=edges, alpha=0.5, density=True, label=f"{label} (n={a.size})")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title("score distributions")
    if arrays:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_distributions(
    real: Sequence[float], generated: Mapping[str, Sequence[float]], path: str | Path, title: str
) -> Path:
    """Real vs generated distributions (lengths, ratings, ...) as normalised histograms on shared bins.

    Integer-valued data with few distinct values (e.g. ratings 1..5) gets one bin per value.
    """
    fig, ax = _figure()
    groups = {"real": np.asarray(real, dtype=float)}
    groups.update({k: np.asarray(v, dtype=float) for k, v in generated.items()})
    allv = np.concatenate([g[np.isfinite(g)] for g in groups.values()] or [np.empty(0)])
    if allv.size and np.all(allv == np.round(allv)) and np.unique(allv).size <= 20:
        lo, hi = allv.min(), allv.max()
        edges = np.arange(lo - 0.5, hi + 1.5, 1.0)
    else:
        edges = np.histogram_bin_edges(allv, bins=30) if allv.size else 30
    for label, g in groups.items():
        g = g[np.isfinite(g)]
        if g.size:
            ax.hist(g, bins=edges, density=True, histtype="step", linewidth=1.5, label=f"{label} (n={g.size})")
    ax.set_title(title)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _save(fig, path)
