"""The scorer in evaluation: refit its calibration (the one fit path of `reviewgen.score.calibration`), and
measure the scorer's p_human, D alone, a TF-IDF baseline and each signal on human vs generated reviews, from
our own generators and from an out-of-family one the scorer never saw."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.device import pick_device
from reviewgen.core.encoding import conditions
from reviewgen.core.metrics import accuracy, auroc, brier, ece, ece_floor, f1, roc_curve, tpr_at_fpr
from reviewgen.core.model_dir import Calibration, write_calibration
from reviewgen.core.sampling import generate_texts
from reviewgen.core.tokenizer import Condition
from reviewgen.data.corpus import load_split
from reviewgen.evaluate.quality import MODELS, Log
from reviewgen.score.calibration import calibrate, describe_calibration
from reviewgen.score.detector_fit import FEATURE_SIGNS
from reviewgen.score.fakes import CALIBRATION_TEMPERATURES, DETECTOR_SETTINGS, SamplingSetting, sample_fakes
from reviewgen.score.platt import apply_calibration
from reviewgen.score.scorer import Scorer, reference_network
from reviewgen.score.signals import SIGNALS
from reviewgen.score.wordlm import WordNgramLM, build_wordlm

UNSEEN_DECODING = {"temperature": 0.9, "top_p": 0.9}
# how the out-of-family generator samples: top-k 40, as other generators commonly do
OOD_TOP_K = 40


def refit_calibration(
    model_dir: str | Path,
    data_dir: str | Path,
    *,
    checkpoints: Sequence[str | Path] | None = None,
    temperatures: Sequence[float | SamplingSetting] = DETECTOR_SETTINGS,
    seed: int = 0,
    max_rows: int | None = None,
    write: bool = True,
    device: str | None = None,
    log: Log = print,
) -> Calibration:
    """Refit the scorer (D's Platt calibration and the detector) on real VAL reviews vs samples from several
    checkpoints (default: the model and its MLE baseline `model_dir/mle`) over the sampling settings, through
    `reviewgen.score.calibration.calibrate`. The detector's reference network is the model's
    reference.safetensors, or else the second checkpoint's generator, whose weights `write` then stores as
    the model's reference.safetensors. The word n-gram model is the model's wordlm.npz, or else one built
    from the data's train split, which `write` then stores. With `write`, stores the calibration in
    `model_dir` (`reviewgen.core.checkpoint.write_calibration`: a new content version). Returns calibrate's
    `Calibration`, its fit naming the checkpoints and the source."""
    model_dir = Path(model_dir)
    dev = pick_device(device)
    ckpts = [Path(c) for c in (checkpoints if checkpoints is not None else [model_dir, model_dir / "mle"])]
    main = load_checkpoint(model_dir, dev)
    gens = [main.generator if c.resolve() == model_dir.resolve() else load_checkpoint(c, dev).generator for c in ckpts]
    ref, ref_file = reference_network(main, dev), None
    if ref is None and len(gens) > 1:
        ref, ref_file = gens[1], ckpts[1] / "generator.safetensors"
    built = main.wordlm_path is None
    wordlm = (
        build_wordlm(load_split(data_dir, "train")["text"].astype(str).tolist(), seed)
        if built
        else WordNgramLM.load(main.wordlm_path)
    )
    calib = calibrate(
        main.discriminator,
        main.tokenizer,
        load_split(data_dir, "val"),
        gens,
        G=main.generator,
        ref=ref,
        wordlm=wordlm,
        seed=seed,
        temperatures=temperatures,
        max_rows=max_rows,
        key_prefix="recal",
    )
    fit = replace(calib.fit, checkpoints=tuple(str(c) for c in ckpts), source="refit_calibration (val split)")
    calib = replace(calib, fit=fit)
    log(f"calibration refit on val reviews and samples: {describe_calibration(calib)}")
    if write:
        if ref_file is not None and ref_file.is_file():
            shutil.copyfile(ref_file, model_dir / "reference.safetensors")
        if built:
            wordlm.save(model_dir / "wordlm.npz")
        meta = main.meta
        write_calibration(model_dir, calib, replace(meta, metrics={**meta.metrics, "calibration": calib.to_dict()}))
    return calib


def extra_scorer_rows(test: pd.DataFrame, ev: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Test reviews beside the evaluated rows `ev`, drawn at random, that bring the scorer section to `n`
    reviews (none when `ev` has as many): every test product is unseen, and the scorer's ECE needs more
    rows than the quality sweep does (`reviewgen.core.metrics.ece_floor`)."""
    if n <= len(ev):
        return test.iloc[:0]
    taken = set(zip(ev["product_id"].astype(str), ev["text"].astype(str)))
    rest = test[[(p, t) not in taken for p, t in zip(test["product_id"].astype(str), test["text"].astype(str))]]
    rest = rest.sample(n=min(len(rest), n - len(ev)), random_state=seed)
    return rest.sort_values(["language", "product_id"], kind="stable").reset_index(drop=True)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUROC, accuracy, F1, ECE, the ECE a perfectly calibrated scorer would read on the same rows
    (`reviewgen.core.metrics.ece_floor`), Brier (positive class = human), and the share of machine rows
    caught at 1% and 5% false accusations of these human rows."""
    return {
        "auroc": auroc(y, p),
        "accuracy": accuracy(y, p),
        "f1": f1(y, p),
        "ece": ece(y, p),
        "ece_floor": ece_floor(p),
        "brier": brier(y, p),
        "tpr_1pct_fpr": tpr_at_fpr(y, p, 0.01),
        "tpr_5pct_fpr": tpr_at_fpr(y, p, 0.05),
    }


def tfidf_real_vs_fake(ck: dict[str, Any], train: pd.DataFrame, n: int, seed: int, log: Log) -> Any:
    """TF-IDF + LR trained on real TRAIN reviews (label 1) vs as many samples for other train products from
    the GAN and MLE generators at the calibration temperatures (label 0): the scorer's text-only baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rows = train.sample(n=min(len(train), 2 * n), random_state=seed)
    real, fake_rows = rows.iloc[: len(rows) // 2], rows.iloc[len(rows) // 2 :]
    fake, _ = sample_fakes(
        [ck[name].generator for name in MODELS],
        ck["gan"].tokenizer,
        conditions(fake_rows),
        CALIBRATION_TEMPERATURES,
        seed=seed,
        key_prefix="tfidf",
    )
    clf = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=1000, C=4.0),
    )
    clf.fit(real["text"].astype(str).tolist() + fake, np.r_[np.ones(len(real)), np.zeros(len(fake))])
    log(f"TF-IDF+LR real-vs-generated baseline trained on {len(real)} real + {len(fake)} generated train reviews")
    return clf


def _signal_aurocs(y: np.ndarray, sig: dict[str, np.ndarray]) -> dict[str, float | None]:
    """AUROC of each signal alone, oriented by its known direction (`FEATURE_SIGNS`; others: as is)."""
    out = {}
    for k in (
        "d_logit",
        "mean_logprob",
        "mean_log_rank",
        "top10_share",
        "binoculars",
        "fast_detect",
        "log_tokens",
        "trigram_seen",
        "ngram_logprob",
        "mixed_script",
    ):
        x = FEATURE_SIGNS.get(k, 1) * np.asarray(sig[k], dtype=np.float64)  # NaN: unscorable text
        ok = np.isfinite(x)
        out[k] = auroc(y[ok], x[ok]) if len(np.unique(y[ok])) == 2 else None
    return out


@dataclass(frozen=True)
class ScorerRows:
    """The real test reviews the scorer section reads: each row's condition, its human text and the key
    that fixes its sampling randomness."""

    conds: list[Condition]
    human: list[str]
    keys: list[str]


def _sampling_settings(
    ck: dict[str, Any],
    rows: ScorerRows,
    samples: dict[tuple[str, float], list[str]],
    temperatures: Sequence[float],
    *,
    seed: int,
    dev: Any,
    ood: Any = None,
) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Per sampling setting label, its settings and texts: the sweep's own samples, the GAN at the unseen
    decodings (top-p, top-k 40), and the out-of-family generator at top-k 40 when given."""
    tok, conds, keys = ck["gan"].tokenizer, rows.conds, rows.keys
    settings: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name in MODELS:
        for t in temperatures:
            settings[f"{name}@T={t:g}"] = (
                {"model": name, "temperature": t, "top_k": 0, "top_p": 1.0},
                samples[(name, t)],
            )
    for extra_setting in (SamplingSetting(**UNSEEN_DECODING), SamplingSetting(1.0, top_k=OOD_TOP_K)):
        texts = generate_texts(
            ck["gan"].generator,
            tok,
            conds,
            keys,
            seed=seed,
            temperature=extra_setting.temperature,
            top_k=extra_setting.top_k,
            top_p=extra_setting.top_p,
            device=dev,
        )
        settings[f"gan@{extra_setting.label}"] = (
            {
                "model": "gan",
                "temperature": extra_setting.temperature,
                "top_k": extra_setting.top_k,
                "top_p": extra_setting.top_p,
            },
            texts,
        )
    if ood is not None:
        texts = generate_texts(
            ood.generator, ood.tokenizer, conds, keys, seed=seed + 1, temperature=1.0, top_k=OOD_TOP_K, device=dev
        )
        settings[f"ood@T=1,top_k={OOD_TOP_K}"] = (
            {"model": "ood", "temperature": 1.0, "top_k": OOD_TOP_K, "top_p": 1.0},
            texts,
        )
    return settings


def scorer_section(
    ck: dict[str, Any],
    scorer: Scorer,
    rows: ScorerRows,
    samples: dict[tuple[str, float], list[str]],
    *,
    temperatures: Sequence[float],
    train: pd.DataFrame,
    n_base: int,
    seed: int,
    dev: Any,
    log: Log,
    ood: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scorer metrics per source and sampling setting, against the same real test reviews: the scorer's
    p_human ("calibrated"), D alone (Platt "discriminator", raw "uncalibrated"), a TF-IDF baseline, and each
    signal alone; plus raw arrays for plots. `ood`: the checkpoint of a generator the scorer never saw,
    sampled at top-k 40 (source "out_of_family"; every other source is "own")."""
    conds, human = rows.conds, rows.human
    baseline = tfidf_real_vs_fake(ck, train, n_base, seed, log)
    settings = _sampling_settings(ck, rows, samples, temperatures, seed=seed, dev=dev, ood=ood)
    fitted = _fitted_settings(scorer.calibration)
    h = scorer.score_texts(conds, human)
    h_base = baseline.predict_proba(human)[:, 1]
    out: dict[str, Any] = {
        "calibration": scorer.calibration.to_dict() if scorer.calibration else None,
        "mode": scorer.mode,
        "n_human": len(human),
        "settings": {},
    }
    extra: dict[str, Any] = {"human_p": h["p_human"], "gen_p": {}, "roc": {}, "pooled": ([], [])}
    for label, (info, texts) in settings.items():
        g = scorer.score_texts(conds, texts)
        s = _Scores.of(h, g, h_base, baseline.predict_proba(texts)[:, 1])
        signals = {k: np.r_[h[k], g[k]] for k in SIGNALS}
        out["settings"][label] = _setting_metrics(info, s, signals, scorer.calibration, fitted)
        extra["gen_p"][label] = g["p_human"]
        _add_plot_arrays(extra, label, info, s, scorer.calibration)
    return out, extra


def _fitted_settings(calibration: Calibration | None) -> set[str]:
    """The labels of the sampling settings the calibration was fitted on (none without a calibration)."""
    fit = calibration.fit if calibration is not None else None
    return set(fit.settings or [f"T={t:g}" for t in fit.temperatures]) if fit is not None else set()


@dataclass(frozen=True)
class _Scores:
    """The human rows then one setting's generated rows: labels (human = 1), the scorer's p_human, D's logit
    and the TF-IDF baseline's p_human; `ok` marks the rows with a score (unscorable texts, e.g. empty
    samples, have none)."""

    y: np.ndarray
    p: np.ndarray
    lg: np.ndarray
    p_base: np.ndarray
    ok: np.ndarray

    @classmethod
    def of(cls, h: dict[str, np.ndarray], g: dict[str, np.ndarray], h_base: np.ndarray, g_base: np.ndarray) -> _Scores:
        """From the scorer's outputs on the human (`h`) and generated (`g`) texts and the baseline's."""
        p = np.r_[h["p_human"], g["p_human"]]
        y = np.r_[np.ones(len(h_base)), np.zeros(len(g_base))]
        return cls(y, p, np.r_[h["d_logit"], g["d_logit"]], np.r_[h_base, g_base], np.isfinite(p))


def _setting_metrics(
    info: dict[str, Any],
    s: _Scores,
    signals: dict[str, np.ndarray],
    calibration: Calibration | None,
    fitted: set[str],
) -> dict[str, Any]:
    """One sampling setting's entry of the scorer section: its settings, source, whether the calibration
    was fitted on it, how many texts had no score, and each scorer's and signal's metrics."""
    setting = SamplingSetting(info["temperature"], info["top_k"], info["top_p"])
    ok = s.ok
    return {
        **info,
        "source": "out_of_family" if info["model"] == "ood" else "own",
        "in_calibration": bool(info["model"] in MODELS and setting.label in fitted),
        "unscored": int((~ok).sum()),
        "calibrated": binary_metrics(s.y[ok], s.p[ok]),
        "discriminator": binary_metrics(s.y[ok], apply_calibration(s.lg[ok], calibration)),
        "uncalibrated": binary_metrics(s.y[ok], apply_calibration(s.lg[ok], None)),
        "tfidf_lr": binary_metrics(s.y, s.p_base),
        "signals": _signal_aurocs(s.y, signals),
    }


def _add_plot_arrays(
    extra: dict[str, Any], label: str, info: dict[str, Any], s: _Scores, calibration: Calibration | None
) -> None:
    """Add one setting's curves to the plots' raw arrays: p_human's ROC (not for MLE), the pooled GAN
    plain-temperature scores of the reliability diagram, and at top-k 40, the decoding shared by our own and
    the out-of-family generator, D alone's ROC (and the TF-IDF baseline's for the GAN)."""
    y, p, ok = s.y, s.p, s.ok
    if info["model"] != "mle":
        fpr, tpr, _ = roc_curve(y[ok], p[ok])
        extra["roc"][f"p_human {label}"] = (fpr, tpr)
    if info["model"] == "gan" and info["top_p"] == 1.0 and info["top_k"] == 0:
        extra["pooled"][0].append(y[ok])
        extra["pooled"][1].append(p[ok])
    if info["top_k"] == OOD_TOP_K:  # same decoding, own vs out-of-family generator
        fpr, tpr, _ = roc_curve(y[ok], apply_calibration(s.lg[ok], calibration))
        extra["roc"][f"D alone {label}"] = (fpr, tpr)
        if info["model"] == "gan":
            fpr, tpr, _ = roc_curve(y, s.p_base)
            extra["roc"][f"TF-IDF+LR {label}"] = (fpr, tpr)
