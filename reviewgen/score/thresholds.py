"""Operating points: the p_human below which a review is flagged as machine-written, so that a stated share
of human reviews would be falsely accused. calibration.json stores them per language; the scorer flags
against them (`reviewgen.score.scorer.MACHINE_FLAGS`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from reviewgen.core.metrics import machine_threshold
from reviewgen.score.combiner import ANY_LANGUAGE
from reviewgen.score.platt import apply_calibration

# the false-accusation rates whose p_human thresholds calibration.json stores (`machine_thresholds`)
FALSE_ACCUSATION_RATES = {"machine_1pct": 0.01, "machine_5pct": 0.05}


def machine_thresholds(
    p_human: np.ndarray, languages: Sequence[str | None], min_rows: int = 40
) -> dict[str, dict[str, float]]:
    """p_human thresholds that flag `FALSE_ACCUSATION_RATES` of these human reviews as machine-written:
    per language with at least `min_rows` reviews, and pooled (`ANY_LANGUAGE`)."""
    p = np.asarray(p_human, dtype=np.float64)
    langs = np.asarray(["" if x is None else x for x in languages], dtype=object)
    ok = np.isfinite(p)
    out = {}
    for lang in [ANY_LANGUAGE, *sorted(set(langs[ok]) - {""})]:
        rows = ok if lang == ANY_LANGUAGE else ok & (langs == lang)
        if rows.sum() >= (1 if lang == ANY_LANGUAGE else min_rows):
            out[lang] = {k: machine_threshold(p[rows], r) for k, r in FALSE_ACCUSATION_RATES.items()}
    return out


def oof_thresholds(z: np.ndarray, labels: np.ndarray, platt: dict[str, float], shift: float) -> dict[str, float]:
    """`FALSE_ACCUSATION_RATES` thresholds on the out-of-fold p_human of the human rows (Platt-scaled, under
    the 1:1 prior): in-sample p_human of a small, well-separated fit set is near 1 for every human, and a
    threshold taken there would accuse far more than its share of new human reviews."""
    q = np.clip(apply_calibration(z, platt), 1e-12, 1 - 1e-12)
    p = 1.0 / (1.0 + np.exp(-(np.log(q / (1 - q)) + shift)))
    h = p[(np.asarray(labels) == 1) & np.isfinite(p)]
    return {k: machine_threshold(h, r) for k, r in FALSE_ACCUSATION_RATES.items()} if len(h) else {}
