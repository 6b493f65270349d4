"""Matched-diversity comparison: each model's metrics at the temperature where its Self-BLEU-4 reaches a
common target, by linear interpolation between the sampled temperatures.

Comparing models at one fixed temperature rewards a model that has only sharpened its distribution; at
matched Self-BLEU-4 both are equally diverse, so the remaining differences are quality and conditioning.

* The target is the human Self-BLEU-4 when every anchor model's sampled curve reaches it; otherwise the
  value inside all anchor ranges closest to it. When the anchor ranges do not overlap there is no common
  point: each model is then placed at the value of its own range closest to the human one.
* A model's temperature for the target is found on its piecewise-linear mean Self-BLEU-4 curve. Where the
  curve is not monotone and crosses the target more than once, the crossing nearest to the sampled
  temperature whose Self-BLEU-4 is closest to the human one is used.
* Every metric's mean is interpolated linearly in temperature on the same segment.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class MatchedPoint:
    """One model at the matched diversity."""

    temperature: float  # interpolated temperature at which the model's Self-BLEU-4 meets the target
    self_bleu4: float  # the model's (interpolated) Self-BLEU-4 there
    reached: bool  # the target lies on the model's sampled curve (else: its closest end)
    segment: tuple[float, float]  # the sampled temperatures interpolated between
    nearest_sampled: float  # the sampled temperature closest to `temperature` (for example texts)
    metrics: Mapping[str, float | None]  # every metric's mean interpolated at `temperature`


@dataclass(frozen=True)
class MatchedDiversity:
    """The models compared at one Self-BLEU-4 (module docstring)."""

    human_self_bleu4: float
    target_self_bleu4: float
    target_is_human: bool  # every anchor model reaches the human Self-BLEU-4
    common: bool  # the anchor models' Self-BLEU-4 ranges overlap (a common target exists)
    anchors: tuple[str, ...]  # the models whose ranges choose the target
    points: Mapping[str, MatchedPoint]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (metrics.json's "matched")."""
        return dataclasses.asdict(self)


def _curve(by_t: Mapping[str, Any]) -> list[tuple[float, dict[str, float | None]]]:
    """[(temperature, {metric: mean})] sorted by temperature, skipping temperatures without Self-BLEU-4."""
    out = []
    for key, entry in by_t.items():
        means = {k: (v.get("mean") if isinstance(v, dict) else v) for k, v in entry.items()}
        sb = means.get("self_bleu4")
        if sb is not None and math.isfinite(sb):
            out.append((float(key), means))
    if not out:
        raise ValueError("matched diversity: a model has no temperature with a Self-BLEU-4")
    return sorted(out, key=lambda p: p[0])


def _crossings(ts: Sequence[float], ss: Sequence[float], x: float) -> list[tuple[int, float]]:
    """(segment index, temperature) of every point where the piecewise-linear curve (ts, ss) equals x."""
    if len(ts) == 1:
        return [(0, ts[0])] if ss[0] == x else []
    out = []
    for i in range(len(ts) - 1):
        a, b = ss[i], ss[i + 1]
        if (a - x) * (b - x) <= 0:
            t = ts[i] if a == b else ts[i] + (x - a) * (ts[i + 1] - ts[i]) / (b - a)
            out.append((i, t))
    return out


def _lerp(a: float | None, b: float | None, w: float) -> float | None:
    """(1 - w) a + w b; an end with weight 0 may be missing."""
    if w == 0.0:
        return a
    if w == 1.0:
        return b
    return None if a is None or b is None else (1.0 - w) * a + w * b


def _point(curve: list[tuple[float, dict[str, float | None]]], target: float, human: float) -> MatchedPoint:
    """The model at Self-BLEU-4 `target`, or at its sampled point closest to it when its curve misses it."""
    ts = [t for t, _ in curve]
    ss = [float(m["self_bleu4"]) for _, m in curve]
    hits = _crossings(ts, ss, target)
    if not hits:
        j = min(range(len(ts)), key=lambda k: (abs(ss[k] - target), ts[k]))
        return MatchedPoint(ts[j], ss[j], False, (ts[j], ts[j]), ts[j], dict(curve[j][1]))
    t_star = ts[min(range(len(ts)), key=lambda k: (abs(ss[k] - human), ts[k]))]
    i, t = min(hits, key=lambda h: (abs(h[1] - t_star), h[1]))
    j = min(i + 1, len(ts) - 1)
    w = 0.0 if j == i else (t - ts[i]) / (ts[j] - ts[i])
    keys = dict.fromkeys([*curve[i][1], *curve[j][1]])
    metrics = {k: _lerp(curve[i][1].get(k), curve[j][1].get(k), w) for k in keys}
    metrics["self_bleu4"] = target
    nearest = ts[i] if w <= 0.5 else ts[j]
    return MatchedPoint(t, target, True, (ts[i], ts[j]), nearest, metrics)


def match_at_diversity(
    sweep: Mapping[str, Mapping[str, Any]], human_sb4: float, anchors: Sequence[str] = ("gan", "mle")
) -> MatchedDiversity:
    """Every model of `sweep` ({model: {temperature key: {metric: {"mean": ...} or value}}}) at the
    Self-BLEU-4 chosen from the anchors' ranges (module docstring)."""
    curves = {name: _curve(by_t) for name, by_t in sweep.items()}
    ranges = {}
    for name in anchors:
        ss = [float(m["self_bleu4"]) for _, m in curves[name]]
        ranges[name] = (min(ss), max(ss))
    lo = max(r[0] for r in ranges.values())
    hi = min(r[1] for r in ranges.values())
    common = lo <= hi
    target = min(max(human_sb4, lo), hi) if common else human_sb4
    points = {}
    for name, curve in curves.items():
        ss = [float(m["self_bleu4"]) for _, m in curve]
        own = target if common else min(max(human_sb4, min(ss)), max(ss))
        points[name] = _point(curve, own, human_sb4)
    return MatchedDiversity(
        human_self_bleu4=human_sb4,
        target_self_bleu4=target,
        target_is_human=common and target == human_sb4,
        common=common,
        anchors=tuple(anchors),
        points=points,
    )
