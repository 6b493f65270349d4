"""Fitting the detector: one logistic combiner (`reviewgen.score.combiner`) per language over D's logit, the
zero-shot LM statistics of `reviewgen.score.detect`, the word statistics and length, each chosen among
`DETECTOR_CANDIDATES` on held-out sources and then Platt-scaled. `reviewgen.score.calibration.calibrate`
draws the fit set and stores the result as calibration.json's "detector" entry.

How the detector's features are chosen. A combiner fitted on our own samples alone learns what separates
*our* generator's artifacts, and that need not carry over to other generators. So the choice is made on
held-out sources, never on the fit set: each candidate of `DETECTOR_CANDIDATES` is fitted on one source (G's
samples, or plain-temperature samples) and checked on another (the reference's, or top-k / top-p samples),
and the candidate with the best worst-case AUROC wins, preferring the earlier of near-equal ones. Every fit
uses strong L2 and fixes the signs of the features whose direction is known (`FEATURE_SIGNS`), so no
combination relies on a relation that is reversed in its fit set.

Why two-sided features. "Machine text is more probable" (GLTR, Binoculars) holds for a generator at least as
good as the observer model, sampling at T <= 1 or with top-k / top-p. It is reversed for a weaker generator
or a high temperature: that text is *less* probable than human text under G, so a one-sided statistic
calls it human. Human text sits in a band, so the candidates add "sq:" features
(`reviewgen.score.combiner.Combiner`): the squared distance of log-rank, log-prob and the Binoculars ratio
from the human centre, which count against p_human on either side of it. D stays a candidate but not the
first one: against fluent text from a stronger generator it is the weakest signal.

Why word n-grams and one combiner per language. G's own samples at T=1 are exactly as predictable to G as
G expects, and so is human text to a calibrated G, so no statistic of G alone separates them. The word
trigram model of the training reviews (`reviewgen.score.wordlm`) is a second model of another family: it
catches what the observer LM misses, and so does the Fast-DetectGPT discrepancy. The validation split is
mostly Chinese and the test split mostly English, and the two languages' signals live on different scales,
so each language with enough validation rows (`MIN_LANGUAGE_ROWS`) gets its own combiner, with an L2 prior
of fixed strength (`Candidate.per_row`) so that a small language is not fitted to perfectly separated,
overconfident weights; `mixed_script` is there for Chinese, the weaker side of the per-language fits. The
strength of each combiner's L2 is then chosen by cross-validation (`choose_l2`, `L2_SCALES`).

Why a fitted floor and ceiling. Some human reviews are short and generic ("Bought for my wife. Great
product. Easy to set up and use.") and read exactly like machine text; a logistic map claims
near-certainty for them. The Platt step therefore fits p = f + (c - f) * sigmoid(a * z + b), a logistic
model robust to such look-alikes, with the floor f and the ceiling c fitted by likelihood beside a and b
(`fit_platt(floor=True)`). It is fitted on out-of-fold logits with Platt's smoothed targets: with hard 0/1
targets a small, perfectly separated fit set would score real reviews p_human = 1.0. Its temperatures are
spread evenly over 0.7-1.3 (`reviewgen.score.fakes.CALIBRATION_TEMPERATURES`), so that the map favours no
one setting.

The figures behind these choices are in docs/results/design_notes.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from reviewgen.core.metrics import auroc, ece, log_loss
from reviewgen.score.combiner import (
    ANY_LANGUAGE,
    Candidate,
    Combiner,
    Detector,
    base_signal,
    fit_combiner,
    fit_domain,
    select_combiner,
)
from reviewgen.score.platt import apply_calibration, fit_platt, prior_shift
from reviewgen.score.thresholds import oof_thresholds

LM_FEATURES = ("mean_log_rank", "binoculars", "mean_logprob", "top10_share")
TWO_SIDED = tuple(f"sq:{f}" for f in ("mean_log_rank", "binoculars", "mean_logprob"))
WORD_FEATURES = ("trigram_seen", "bigram_seen", "ngram_logprob", "sq:ngram_logprob", "sq:trigram_seen", "mixed_script")
FAST_DETECT = ("fast_detect", "sq:fast_detect")
# +1: larger means more likely human-written. A two-sided feature grows with the distance from typical human
# text, in either direction, so it always counts against p_human.
FEATURE_SIGNS = {
    "d_logit": 1,
    "mean_logprob": -1,
    "mean_log_rank": 1,
    "top1_share": -1,
    "top10_share": -1,
    "binoculars": 1,
    "fast_detect": -1,
    "mixed_script": -1,
    "trigram_seen": 1,
    "bigram_seen": 1,
    "ngram_logprob": 1,
    **{f: -1 for f in (*TWO_SIDED, "sq:ngram_logprob", "sq:trigram_seen", "sq:fast_detect")},
}
# L2 on the scale of that Platt step: negligible for a scale of a few units (the mean log loss is ~0.1)
PLATT_SCALE_L2 = 1e-4
# the L2 strengths `choose_l2` tries, as multiples of a candidate's own, strongest first, and how much more
# out-of-fold log loss it accepts for a stronger one. The candidates' L2 keeps the weights' proportions robust
# to generators outside the fit set, but it was set before the per-language fits, and a language whose fit set
# can carry more should get a weaker prior: cross-validation picks the multiple per fit set
L2_SCALES = (1.0, 0.3, 0.1, 0.03, 0.01)
L2_TOLERANCE = 1e-3
# the share of the fit set's human rows inside the detector's domain (`Combiner.out_of_domain`)
DOMAIN_QUANTILE = 0.99
# a language gets its own combiner with at least this many human and this many machine-written rows
MIN_LANGUAGE_ROWS = 40
DETECTOR_CANDIDATES = (
    Candidate(
        "lm+words+fast",
        ("mean_log_rank", "binoculars", *TWO_SIDED, "log_tokens", "d_logit", *WORD_FEATURES, *FAST_DETECT),
        4.5,
        per_row=True,
    ),
    Candidate(
        "lm+words",
        ("mean_log_rank", "binoculars", *TWO_SIDED, "log_tokens", "d_logit", *WORD_FEATURES),
        4.5,
        per_row=True,
    ),
    Candidate("lm-two-sided", ("mean_log_rank", "binoculars", *TWO_SIDED), 0.1),
    Candidate("lm-two-sided+length", ("mean_log_rank", "binoculars", *TWO_SIDED, "log_tokens"), 0.1),
    Candidate("lm-two-sided+length+d", ("mean_log_rank", "binoculars", *TWO_SIDED, "log_tokens", "d_logit"), 0.1),
    Candidate("lm", LM_FEATURES, 0.1),
    Candidate("lm+length+d", (*LM_FEATURES, "log_tokens", "d_logit"), 0.1),
)


def fit_detector(
    signals: dict[str, np.ndarray],
    labels: np.ndarray,
    groups: Sequence[str],
    languages: Sequence[str | None] | None = None,
    *,
    seed: int = 0,
) -> Detector:
    """The detector: a combiner for every language with at least `MIN_LANGUAGE_ROWS` human and machine rows,
    and a pooled one for the rest, each chosen on held-out sources (`fit_language_combiner`). `groups`:
    "human" or "SOURCE:plain" / "SOURCE:truncated" per row; `languages`: per row (None: all pooled)."""
    y = np.asarray(labels)
    langs = np.asarray(
        ["" if x is None else x for x in (languages if languages is not None else [""] * len(y))], dtype=object
    )
    # candidates whose signals were all computed (e.g. no word statistics without a word n-gram model)
    have = {k for k, v in signals.items() if np.isfinite(np.asarray(v, dtype=np.float64)).any()}
    candidates = [c for c in DETECTOR_CANDIDATES if {base_signal(f) for f in c.features} <= have]
    if not candidates:
        raise ValueError(f"fit_detector: no candidate's signals are all available (have {sorted(have)})")
    combiners = {ANY_LANGUAGE: fit_language_combiner(signals, y, groups, candidates, seed=seed)}
    for lang in sorted(set(langs) - {""}):
        rows = langs == lang
        if min((y[rows] == 1).sum(), (y[rows] == 0).sum()) >= MIN_LANGUAGE_ROWS:
            sub = {k: np.asarray(v)[rows] for k, v in signals.items()}
            combiners[lang] = fit_language_combiner(
                sub, y[rows], np.asarray(groups, dtype=object)[rows], candidates, seed=seed
            )
    return Detector(combiners, {"rows_by_language": {str(k): int((langs == k).sum()) for k in sorted(set(langs))}})


def fit_language_combiner(
    signals: dict[str, np.ndarray],
    labels: np.ndarray,
    groups: Sequence[str],
    candidates: Sequence[Candidate] = DETECTOR_CANDIDATES,
    *,
    seed: int = 0,
) -> Combiner:
    """One combiner, chosen among `candidates` on held-out sources (module docstring), then Platt-scaled.
    `groups`: "SOURCE:plain" or "SOURCE:truncated" per machine-written row."""
    machine = np.asarray(groups, dtype=object)[np.asarray(labels) == 0]
    splits = held_out_splits(machine)
    selected = select_combiner(signals, labels, groups, candidates, splits, signs=FEATURE_SIGNS, seed=seed)
    # the L2 that keeps the weights' proportions robust also shrinks them towards p = 0.5: one Platt step
    # on the combined logit restores the calibration (a positive scale keeps every sign). It is fitted on
    # out-of-fold logits: the combiner's logits on its own fit rows are more separated than on new text,
    # and a Platt step fitted on them would make p_human overconfident.
    combiner, z, platt = refit_at_chosen_l2(signals, labels, candidates, selected, seed=seed)
    ok = np.isfinite(z)
    ece_before = ece(labels[ok], 1.0 / (1.0 + np.exp(-z[ok])))
    combiner = with_platt_step(combiner, platt)
    p = combiner.predict(signals)
    shift = prior_shift(labels[ok])
    info = dict(
        combiner.info,
        fit_auroc=auroc(labels[ok], p[ok]),
        fit_ece=ece(labels[ok], p[ok]),
        fit_ece_before_platt=ece_before,
        platt=platt,
        prior_shift=shift,
        sources=sorted(set(machine)),
        thresholds=oof_thresholds(z, labels, platt, shift),
    )
    # the shift applies to the logit of the bounded probability, so it is an offset after the bounds
    domain, radius = fit_domain(signals, labels, sorted({base_signal(f) for f in combiner.features}), DOMAIN_QUANTILE)
    return replace(combiner, offset=shift, info=info, domain=domain, domain_radius=radius)


def held_out_splits(machine: np.ndarray) -> list[tuple[set[str], set[str]]]:
    """The (fit groups, check groups) splits a candidate is judged on, from the machine-written rows'
    groups: one per source (fit on G's samples, check on the reference's, ...) and one per sampling kind
    (fit on plain-temperature samples, check on top-k / top-p ones, ...). With a single source and kind,
    one split that fits and checks on all of them."""
    sources = sorted({x.split(":")[0] for x in machine})
    kinds = sorted({x.split(":")[1] for x in machine})
    splits = []
    for a in sources if len(sources) > 1 else []:
        fit = {x for x in machine if x.startswith(a + ":")}
        splits.append((fit, set(machine) - fit))
    for k in kinds if len(kinds) > 1 else []:
        fit = {x for x in machine if x.endswith(":" + k)}
        splits.append((fit, set(machine) - fit))
    return splits or [(set(machine), set(machine))]


def refit_at_chosen_l2(
    signals: dict[str, np.ndarray],
    labels: np.ndarray,
    candidates: Sequence[Candidate],
    selected: Combiner,
    *,
    seed: int = 0,
) -> tuple[Combiner, np.ndarray, dict[str, float]]:
    """The candidate `select_combiner` chose (`selected`), refitted on every row at the L2 strength that
    cross-validation picks (`choose_l2`), with its out-of-fold logits and their Platt step."""
    chosen = next(c for c in candidates if c.name == selected.info["candidate"])
    tuned, z, platt, l2_losses = choose_l2(signals, labels, chosen, seed=seed)
    combiner = fit_combiner(
        signals,
        labels,
        tuned.features,
        l2=tuned.l2_for(len(labels)),
        signs=FEATURE_SIGNS,
        info=dict(selected.info, l2_scale=tuned.l2 / chosen.l2, l2_scale_losses=l2_losses),
    )
    return combiner, z, platt


def with_platt_step(combiner: Combiner, platt: dict[str, float]) -> Combiner:
    """`combiner` with the Platt step folded into its weights and bias, within the step's floor and ceiling;
    unchanged when the fitted scale is not positive, since a negative one would flip every feature's sign."""
    if platt["scale"] > 0:
        return replace(
            combiner,
            weights=tuple(platt["scale"] * w for w in combiner.weights),
            bias=platt["scale"] * combiner.bias + platt["bias"],
            floor=platt["floor"],
            ceiling=platt["ceiling"],
        )
    return combiner


def choose_l2(
    signals: dict[str, np.ndarray], labels: np.ndarray, candidate: Candidate, *, seed: int = 0
) -> tuple[Candidate, np.ndarray, dict[str, float], dict[str, float]]:
    """`candidate` at the L2 strength, among `L2_SCALES` multiples of its own, whose out-of-fold logits
    predict best once Platt-scaled (the strongest within `L2_TOLERANCE` of the lowest log loss). Returns it,
    those logits, their Platt step (`fit_platt(floor=True)`) and the log loss of every multiple tried."""
    y = np.asarray(labels)
    tried, losses = [], {}
    for k in L2_SCALES:
        cand = replace(candidate, l2=candidate.l2 * k)
        z = out_of_fold_logits(signals, y, cand, seed=seed)
        ok = np.isfinite(z)
        # with a floor and a ceiling to absorb the outliers, out-of-fold logits that separate a small
        # language's fit set perfectly would let the scale grow without bound (a step function): a light
        # L2 holds it
        platt = fit_platt(z[ok], y[ok], l2=PLATT_SCALE_L2, smooth_targets=True, floor=True)
        losses[f"{k:g}"] = log_loss(y[ok], apply_calibration(z[ok], platt)) if ok.any() else float("inf")
        tried.append((cand, z, platt, losses[f"{k:g}"]))
    best = min(t[3] for t in tried)
    cand, z, platt, _ = next(t for t in tried if t[3] <= best + L2_TOLERANCE)
    return cand, z, platt, losses


def out_of_fold_logits(
    signals: dict[str, np.ndarray], labels: np.ndarray, candidate: Candidate, *, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """The combined logit of every row from a fit of `candidate` on the other folds (NaN where a feature is)."""
    y = np.asarray(labels)
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    z = np.full(len(y), np.nan)
    for k in range(folds):
        fit = fold != k
        if len(np.unique(y[fit])) < 2:
            continue
        c = fit_combiner(
            {n: np.asarray(v)[fit] for n, v in signals.items()},
            y[fit],
            candidate.features,
            l2=candidate.l2_for(int(fit.sum())),
            signs=FEATURE_SIGNS,
        )
        z[~fit] = c.logit({n: np.asarray(v)[~fit] for n, v in signals.items()})
    return z
