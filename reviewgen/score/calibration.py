"""Scorer calibration, the one fit path used at training time and in evaluation.

Two things are fitted on real validation reviews (positives) against samples from the generator G and the
frozen MLE reference (negatives) across sampling settings: temperatures 0.7 to 1.3, and top-k 40 and
nucleus 0.9, because other generators sample that way and we otherwise do not
(`reviewgen.score.fakes.DETECTOR_SETTINGS`).

- Platt scaling of D's sequence logit, p = sigmoid(scale * logit + bias): the fallback scorer of a model
  directory without the reference network. A discriminator near GAN equilibrium outputs about 0.5 for
  everything, so its raw logit needs it.
- The detector: a logistic combiner (`reviewgen.score.combiner`) over D's logit, the zero-shot LM statistics
  of `reviewgen.score.detect` and length, stored as calibration.json's "detector" entry. How its features,
  its per-language combiners and its Platt step are chosen, and why: `reviewgen.score.detector_fit`.

What limits the ECE. One p_human serves every sampling setting, and they want different maps: against
T=0.6 samples the middle of the scale holds almost only humans, against T=1.0 samples it holds many
machine reviews. So the worst per-temperature ECE sits at the hardest setting, and a map fitted to one
setting is worse at the others.

The figures behind these choices are in docs/results/design_notes.md.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from reviewgen.core.encoding import conditions
from reviewgen.core.metrics import ece
from reviewgen.core.model_dir import Calibration, CalibrationFit
from reviewgen.core.models import unwrap
from reviewgen.core.tokenizer import ReviewTokenizer
from reviewgen.score.combiner import Detector

# the detector fit's names that callers outside this package read from here
from reviewgen.score.detector_fit import MIN_LANGUAGE_ROWS, fit_detector
from reviewgen.score.fakes import DETECTOR_SETTINGS, SamplingSetting, as_setting, sample_fake_sources
from reviewgen.score.platt import apply_calibration, fit_platt, prior_shift
from reviewgen.score.signals import review_signals
from reviewgen.score.thresholds import machine_thresholds
from reviewgen.score.wordlm import WordNgramLM

# machine-written reviews sampled per real one for the fit: the combiner's machine side covers every sampling
# setting of two generators, so each needs enough rows; more steady the worst per-temperature ECE, at the cost
# of the time to draw and score them
FAKES_PER_REVIEW = 6
# validation reviews the training-end fit reads at most: more than the demo's whole validation split, so that
# a small language's combiner (the demo's English) sees every one of its reviews, as `reviewgen evaluate`'s
# refit does
CALIBRATION_ROWS = 1000


@dataclass(frozen=True, eq=False)
class FitSet:
    """The calibration's scored rows: each row's signals, label (1 human, 0 machine-written), group ("human",
    or "SOURCE:plain" / "SOURCE:truncated" for a machine-written row) and language, after the rows with
    non-finite signals were left out (`finite_rows`: `nonfinite` counts, per signal, and `rows_left_out`)."""

    signals: dict[str, np.ndarray]
    labels: np.ndarray
    groups: list[str]
    languages: list[str | None]
    nonfinite: dict[str, int]
    rows_left_out: int


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
    and the training reviews' word n-gram model `wordlm`) also the detector (`reviewgen.score.detector_fit`).
    Returns the `Calibration`: D's Platt scaling, how it was fitted (the ECEs under the fit set's own prior),
    the detector's document (with `G`) and the p_human thresholds."""
    df = val_df.sample(n=max_rows, random_state=seed) if max_rows is not None and len(val_df) > max_rows else val_df
    if df.empty:
        raise ValueError("calibrate: no validation reviews to calibrate on")
    rows = score_fit_set(
        D,
        tok,
        df,
        generators,
        G=G,
        ref=ref,
        wordlm=wordlm,
        seed=seed,
        temperatures=temperatures,
        key_prefix=key_prefix,
        fakes_per_review=fakes_per_review,
    )
    calib = platt_calibration(rows, temperatures)
    if G is None:
        human = rows.labels == 1
        p_human = apply_calibration(rows.signals["d_logit"], calib)[human]
        languages = [x for x, y in zip(rows.languages, rows.labels) if y == 1]
        return replace(calib, thresholds=machine_thresholds(p_human, languages, MIN_LANGUAGE_ROWS))
    detector = fit_detector(rows.signals, rows.labels, rows.groups, rows.languages, seed=seed)
    return replace(
        calib,
        detector=detector.to_dict(),
        thresholds={lang: c.info["thresholds"] for lang, c in detector.combiners.items() if c.info.get("thresholds")},
    )


def score_fit_set(
    D,
    tok: ReviewTokenizer,
    df: pd.DataFrame,
    generators: Sequence[Any],
    *,
    G,
    ref,
    wordlm: WordNgramLM | None,
    seed: int,
    temperatures: Sequence[float | SamplingSetting],
    key_prefix: str,
    fakes_per_review: int,
) -> FitSet:
    """`calibrate`'s fit set: the reviews of `df` and `fakes_per_review` machine-written ones per review,
    scored with every signal (`review_signals`) and cut to the rows whose signals are finite. Raises
    `ValueError` when that leaves no human or no machine-written row."""
    conds = conditions(df)
    real_texts = df["text"].astype(str).tolist()
    fake_texts, fake_conds, fake_groups = sample_machine_rows(
        generators,
        tok,
        conds,
        temperatures,
        G=G,
        ref=ref,
        seed=seed,
        key_prefix=key_prefix,
        n=max(1, fakes_per_review) * len(conds),
    )
    groups = ["human"] * len(real_texts) + fake_groups
    device = next(unwrap(D).parameters()).device
    all_conds = conds + fake_conds
    sig = review_signals(D, G, tok, all_conds, real_texts + fake_texts, ref=ref, wordlm=wordlm, device=device)
    labels = np.r_[np.ones(len(real_texts)), np.zeros(len(fake_texts))]
    sig, keep, nonfinite = finite_rows(sig)
    labels = labels[keep]
    if len(np.unique(labels)) < 2:
        raise ValueError(
            f"calibrate: no human or no machine-written row has finite signals (non-finite counts: {nonfinite})"
        )
    return FitSet(
        signals=sig,
        labels=labels,
        groups=[g for g, k in zip(groups, keep) if k],
        languages=[c.language for c, k in zip(all_conds, keep) if k],
        nonfinite=dict(nonfinite),
        rows_left_out=int((~keep).sum()),
    )


def sample_machine_rows(
    generators: Sequence[Any],
    tok: ReviewTokenizer,
    conds: list,
    temperatures: Sequence[float | SamplingSetting],
    *,
    G,
    ref,
    seed: int,
    key_prefix: str,
    n: int,
) -> tuple[list[str], list, list[str]]:
    """`n` machine-written reviews from `generators` for the conditions `conds` over the sampling settings
    `temperatures` (`sample_fake_sources`): their texts, their conditions and their groups, "SOURCE:plain"
    or "SOURCE:truncated", SOURCE being "G" for `G`, "ref" for `ref` and "genI" for any other generator, so
    that the detector's choice can hold out one source or one sampling kind."""
    parts = sample_fake_sources(generators, tok, conds, temperatures, seed=seed, key_prefix=key_prefix, n=n)
    names = ["G" if gen is G else ("ref" if gen is ref else f"gen{i}") for i, gen in enumerate(generators)]
    texts = [t for p in parts for t in p[2]]
    fake_conds = [c for p in parts for c in p[3]]
    groups = [f"{names[gi]}:{'plain' if s.plain else 'truncated'}" for gi, s, sampled, _ in parts for _ in sampled]
    return texts, fake_conds, groups


def platt_calibration(rows: FitSet, temperatures: Sequence[float | SamplingSetting]) -> Calibration:
    """D's Platt scaling on the fit set, shifted to the scorer's 1:1 prior, and how it was fitted: the
    sampling settings, and the ECE of D's raw and Platt-scaled logit under the fit set's own prior."""
    logits, labels = rows.signals["d_logit"], rows.labels
    platt = fit_platt(logits, labels)
    settings = [as_setting(s) for s in temperatures]
    fit = CalibrationFit(
        n=int(len(labels)),
        temperatures=tuple(sorted({s.temperature for s in settings})),
        settings=tuple(s.label for s in settings),
        ece_raw=ece(labels, apply_calibration(logits, None)),
        ece=ece(labels, apply_calibration(logits, platt)),
        nonfinite_signals=dict(rows.nonfinite),
        rows_left_out=rows.rows_left_out,
    )
    return Calibration(scale=platt["scale"], bias=platt["bias"] + prior_shift(labels), fit=fit)


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
