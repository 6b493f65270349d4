"""Scorer calibration, the one fit path used at training time and in evaluation.

Two things are fitted on real validation reviews (positives) against samples from the generator G and the
frozen MLE reference (negatives) across sampling settings: temperatures 0.7 to 1.3, and top-k 40 and
nucleus 0.9, because other generators sample that way and we otherwise do not
(`reviewgen.score.fakes.DETECTOR_SETTINGS`).

- Platt scaling of D's sequence logit, p = sigmoid(scale * logit + bias): the fallback scorer of a model
  directory without the reference network. A discriminator near GAN equilibrium outputs about 0.5 for
  everything, so its raw logit needs it.
- The detector: a logistic combiner (`reviewgen.score.combiner`) over D's logit, the zero-shot LM statistics
  of `reviewgen.score.detect` and length, stored as calibration.json's "detector" entry.

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

What limits the ECE. One p_human serves every sampling setting, and they want different maps: against
T=0.6 samples the middle of the scale holds almost only humans, against T=1.0 samples it holds many
machine reviews. So the worst per-temperature ECE sits at the hardest setting, and a map fitted to one
setting is worse at the others.

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

import traceback
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from reviewgen.core.encoding import conditions
from reviewgen.core.metrics import auroc, ece, log_loss
from reviewgen.core.model_dir import Calibration, CalibrationFit
from reviewgen.core.models import unwrap
from reviewgen.core.tokenizer import ReviewTokenizer
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
from reviewgen.score.fakes import DETECTOR_SETTINGS, SamplingSetting, as_setting, sample_fake_sources
from reviewgen.score.platt import apply_calibration, fit_platt
from reviewgen.score.signals import review_signals
from reviewgen.score.thresholds import machine_thresholds, oof_thresholds
from reviewgen.score.wordlm import WordNgramLM

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
# machine-written reviews sampled per real one for the fit: the combiner's machine side covers every sampling
# setting of two generators, so each needs enough rows; more steady the worst per-temperature ECE, at the cost
# of the time to draw and score them
FAKES_PER_REVIEW = 6
# L2 on the scale of that Platt step: negligible for a scale of a few units (the mean log loss is ~0.1)
PLATT_SCALE_L2 = 1e-4
# validation reviews the training-end fit reads at most: more than the demo's whole validation split, so that
# a small language's combiner (the demo's English) sees every one of its reviews, as `reviewgen evaluate`'s
# refit does
CALIBRATION_ROWS = 1000
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


def calibrate(
    D,
    tok: ReviewTokenizer,
    val_df: pd.DataFrame,
    generators: Sequence[Any],
    *,
    G=None,
    ref=None,
    wordlm: WordNgramLM | None = None,
    seed: int = 0,
    temperatures: Sequence[float | SamplingSetting] = DETECTOR_SETTINGS,
    max_rows: int | None = CALIBRATION_ROWS,
    key_prefix: str = "calib",
    fakes_per_review: int = FAKES_PER_REVIEW,
) -> Calibration:
    """Fit the scorer on real validation reviews (up to `max_rows`; None: all) against `fakes_per_review`
    samples per review from `generators` over the sampling settings `temperatures` (`sample_fakes`). The
    scorer assumes a 1:1 prior, so every fitted logit is shifted back by the fit set's log(machine / human)
    (`prior_shift`). Always D's Platt calibration; with the language model `G` (and the reference `ref`,
    and the training reviews' word n-gram model `wordlm`) also the detector (see the module docstring).
    Returns the `Calibration`: D's Platt scaling, how it was fitted (the ECEs under the fit set's own prior),
    the detector's document (with `G`) and the p_human thresholds."""
    df = val_df.sample(n=max_rows, random_state=seed) if max_rows is not None and len(val_df) > max_rows else val_df
    if df.empty:
        raise ValueError("calibrate: no validation reviews to calibrate on")
    conds = conditions(df)
    real_texts = df["text"].astype(str).tolist()
    parts = sample_fake_sources(
        generators, tok, conds, temperatures, seed=seed, key_prefix=key_prefix, n=max(1, fakes_per_review) * len(conds)
    )
    fake_texts = [t for p in parts for t in p[2]]
    fake_conds = [c for p in parts for c in p[3]]
    names = ["G" if gen is G else ("ref" if gen is ref else f"gen{i}") for i, gen in enumerate(generators)]
    groups = ["human"] * len(real_texts) + [
        f"{names[gi]}:{'plain' if s.plain else 'truncated'}" for gi, s, texts, _ in parts for _ in texts
    ]
    device = next(unwrap(D).parameters()).device
    all_conds = conds + fake_conds
    sig = review_signals(D, G, tok, all_conds, real_texts + fake_texts, ref=ref, wordlm=wordlm, device=device)
    labels = np.r_[np.ones(len(real_texts)), np.zeros(len(fake_texts))]
    sig, keep, nonfinite = finite_rows(sig)
    labels, all_conds = labels[keep], [c for c, k in zip(all_conds, keep) if k]
    groups = [g for g, k in zip(groups, keep) if k]
    if len(np.unique(labels)) < 2:
        raise ValueError(
            f"calibrate: no human or no machine-written row has finite signals (non-finite counts: {nonfinite})"
        )
    logits = sig["d_logit"]
    platt = fit_platt(logits, labels)
    settings = [as_setting(s) for s in temperatures]
    fit = CalibrationFit(
        n=int(len(labels)),
        temperatures=tuple(sorted({s.temperature for s in settings})),
        settings=tuple(s.label for s in settings),
        ece_raw=ece(labels, apply_calibration(logits, None)),
        ece=ece(labels, apply_calibration(logits, platt)),
        nonfinite_signals=dict(nonfinite),
        rows_left_out=int((~keep).sum()),
    )
    calib = Calibration(scale=platt["scale"], bias=platt["bias"] + prior_shift(labels), fit=fit)
    langs = [c.language for c in all_conds]
    if G is None:
        return replace(
            calib,
            thresholds=machine_thresholds(
                apply_calibration(logits, calib)[labels == 1],
                [x for x, y in zip(langs, labels) if y == 1],
                MIN_LANGUAGE_ROWS,
            ),
        )
    detector = fit_detector(sig, labels, groups, langs, seed=seed)
    return replace(
        calib,
        detector=detector.to_dict(),
        thresholds={lang: c.info["thresholds"] for lang, c in detector.combiners.items() if c.info.get("thresholds")},
    )


def finite_rows(signals: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, int]]:
    """The signals on the rows whose every usable signal is finite, that row mask, and how many non-finite
    values each signal had. A signal
    that is NaN on every row was not computed (e.g. no word model) and is ignored. One that overflows on
    some rows (a badly scaled base model) leaves those rows out of the fit instead of failing it; one that
    is non-finite on most rows is made NaN everywhere, so the fit chooses among candidates without it."""
    n = len(next(iter(signals.values()))) if signals else 0
    keep = np.ones(n, dtype=bool)
    counts, out = {}, dict(signals)
    for k, v in signals.items():
        fin = np.isfinite(np.asarray(v, dtype=np.float64))
        if fin.any() and not fin.all():
            counts[k] = int((~fin).sum())
            if fin.mean() >= 0.5:
                keep &= fin
            else:
                out[k] = np.full(n, np.nan)
    return {k: np.asarray(v)[keep] for k, v in out.items()}, keep, counts


def prior_shift(labels: np.ndarray) -> float:
    """log(machine rows / human rows) of a fit set (labels: 1 human, 0 machine): what a logistic fit on it
    subtracts from every logit, and what adding back gives the logit under the scorer's 1:1 prior."""
    y = np.asarray(labels)
    n_human, n_machine = int((y == 1).sum()), int((y == 0).sum())
    return float(np.log(n_machine / n_human)) if n_human and n_machine else 0.0


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
    g = np.asarray(groups, dtype=object)
    machine = g[np.asarray(labels) == 0]
    sources = sorted({x.split(":")[0] for x in machine})
    kinds = sorted({x.split(":")[1] for x in machine})
    splits = []
    for a in sources if len(sources) > 1 else []:
        fit = {x for x in machine if x.startswith(a + ":")}
        splits.append((fit, set(machine) - fit))
    for k in kinds if len(kinds) > 1 else []:
        fit = {x for x in machine if x.endswith(":" + k)}
        splits.append((fit, set(machine) - fit))
    if not splits:
        splits = [(set(machine), set(machine))]
    combiner = select_combiner(signals, labels, groups, candidates, splits, signs=FEATURE_SIGNS, seed=seed)
    # the L2 that keeps the weights' proportions robust also shrinks them towards p = 0.5: one Platt step
    # on the combined logit restores the calibration (a positive scale keeps every sign). It is fitted on
    # out-of-fold logits: the combiner's logits on its own fit rows are more separated than on new text,
    # and a Platt step fitted on them would make p_human overconfident.
    chosen = next(c for c in candidates if c.name == combiner.info["candidate"])
    tuned, z, platt, l2_losses = choose_l2(signals, labels, chosen, seed=seed)
    combiner = fit_combiner(
        signals,
        labels,
        tuned.features,
        l2=tuned.l2_for(len(labels)),
        signs=FEATURE_SIGNS,
        info=dict(combiner.info, l2_scale=tuned.l2 / chosen.l2, l2_scale_losses=l2_losses),
    )
    ok = np.isfinite(z)
    ece_before = ece(labels[ok], 1.0 / (1.0 + np.exp(-z[ok])))
    if platt["scale"] > 0:
        combiner = replace(
            combiner,
            weights=tuple(platt["scale"] * w for w in combiner.weights),
            bias=platt["scale"] * combiner.bias + platt["bias"],
            floor=platt["floor"],
            ceiling=platt["ceiling"],
        )
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


def fit_calibration(
    G,
    D,
    tok: ReviewTokenizer,
    val_df: pd.DataFrame,
    *,
    ref=None,
    wordlm: WordNgramLM | None = None,
    seed: int = 0,
    temperatures: Sequence[float | SamplingSetting] = DETECTOR_SETTINGS,
    max_rows: int | None = CALIBRATION_ROWS,
    log: Callable[[str], None] = print,
) -> Calibration:
    """The training-end calibration: `calibrate` against samples from G and the MLE reference `ref`, with
    the detector over G's (and the reference's) LM statistics and the word statistics under `wordlm`.
    It never raises: a failed fit is logged with its traceback and gives D's raw logit, with the reason
    under "detector_error" (the scorer reports it as its mode), so the trained model is still written."""
    try:
        calib = calibrate(
            D,
            tok,
            val_df,
            [G] + ([ref] if ref is not None and ref is not G else []),
            G=G,
            ref=ref,
            wordlm=wordlm,
            seed=seed,
            temperatures=temperatures,
            max_rows=max_rows,
        )
    except Exception as e:  # noqa: BLE001 - a failed scorer fit must never lose the trained model
        reason = f"{type(e).__name__}: {e}"
        log(f"scorer calibration failed; the model will score with D alone ({reason})\n{traceback.format_exc()}")
        return Calibration(detector_error=reason)
    log(f"scorer calibration on validation reviews and samples: {describe_calibration(calib)}")
    return calib


def describe_calibration(calib: Calibration) -> str:
    """D's Platt scaling, its fit's ECE and rows, and the detector, on one line."""
    fit = calib.fit
    ece_line = f" ECE {fit.ece_raw:.3f} -> {fit.ece:.3f} on {fit.n} rows" if fit is not None else ""
    det = describe_detector(calib.detector) if calib.detector is not None else f"none ({calib.detector_error})"
    return f"D Platt scale={calib.scale:.3f} bias={calib.bias:.3f}{ece_line}; detector {det}"


def describe_detector(doc: Mapping[str, Any]) -> str:
    """One line per detector: each language's chosen candidate and L2 multiple, held-out-source AUROC and fit
    ECE."""
    det = Detector.from_dict(doc)
    out = []
    for lang, c in det.combiners.items():
        i = c.info
        held = i.get("worst_held_out_auroc", {}).get(i.get("candidate"), float("nan"))
        out.append(
            f"[{lang}] {i.get('candidate')} (L2 x{i.get('l2_scale', 1.0):g}, worst held-out-source AUROC "
            f"{held:.3f}, fit AUROC {i.get('fit_auroc', float('nan')):.3f}, "
            f"ECE {i.get('fit_ece', float('nan')):.3f})"
        )
    return "; ".join(out)
