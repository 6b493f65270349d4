"""The scorer in evaluation: refit its calibration (the one fit path of `reviewgen.score.calibration`), and
measure the calibrated discriminator, the raw one and a TF-IDF baseline on human vs generated reviews."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from reviewgen.core.checkpoint import content_version, load_checkpoint
from reviewgen.core.device import pick_device
from reviewgen.core.encoding import conditions
from reviewgen.core.metrics import accuracy, auroc, brier, ece, f1, roc_curve
from reviewgen.core.sampling import generate_texts
from reviewgen.data.corpus import load_split
from reviewgen.evaluate.jsonio import write_json_atomic
from reviewgen.evaluate.quality import MODELS, Log
from reviewgen.score.calibration import CALIBRATION_TEMPERATURES, apply_calibration, calibrate, sample_fakes
from reviewgen.score.signals import discriminator_outputs

UNSEEN_DECODING = {"temperature": 0.9, "top_p": 0.9}


def refit_calibration(model_dir: str | Path, data_dir: str | Path, *, checkpoints: Sequence[str | Path] | None = None,
                      temperatures: Sequence[float] = CALIBRATION_TEMPERATURES, seed: int = 0,
                      max_rows: int | None = None, write: bool = True, device: str | None = None,
                      log: Log = print) -> dict[str, Any]:
    """Refit the scorer's Platt calibration on real VAL reviews vs samples from several checkpoints
    (default: the model and its MLE baseline `model_dir/mle`) at several temperatures, through
    `reviewgen.score.calibration.calibrate`. With `write`, stores calibration.json in `model_dir` and
    refreshes meta.json's content version. Returns {"scale", "bias", "n", "temperatures", "checkpoints",
    "source", "ece_raw", "ece"}."""
    model_dir = Path(model_dir)
    dev = pick_device(device)
    ckpts = [Path(c) for c in (checkpoints if checkpoints is not None else [model_dir, model_dir / "mle"])]
    main = load_checkpoint(model_dir, dev)
    gens = [main.generator if c.resolve() == model_dir.resolve() else load_checkpoint(c, dev).generator for c in ckpts]
    calib = calibrate(main.discriminator, main.tokenizer, load_split(data_dir, "val"), gens, seed=seed,
                      temperatures=temperatures, max_rows=max_rows, key_prefix="recal")
    calib.update(checkpoints=[str(c) for c in ckpts], source="refit_calibration (val split)")
    log(f"calibration refit: scale={calib['scale']:.3f} bias={calib['bias']:.3f} "
        f"ECE {calib['ece_raw']:.3f} -> {calib['ece']:.3f} on {calib['n']} val reviews/samples")
    if write:
        write_json_atomic(model_dir / "calibration.json", calib)
        meta = json.loads((model_dir / "meta.json").read_text())
        meta["version"] = content_version(model_dir)  # the version hash covers calibration.json
        meta.setdefault("metrics", {})["calibration"] = calib
        write_json_atomic(model_dir / "meta.json", meta)
    return calib


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUROC, accuracy, F1, ECE, Brier (positive class = human)."""
    return {"auroc": auroc(y, p), "accuracy": accuracy(y, p), "f1": f1(y, p), "ece": ece(y, p), "brier": brier(y, p)}


def tfidf_real_vs_fake(ck: dict[str, Any], train: pd.DataFrame, n: int, seed: int, log: Log) -> Any:
    """TF-IDF + LR trained on real TRAIN reviews (label 1) vs as many samples for other train products from
    the GAN and MLE generators at the calibration temperatures (label 0): the scorer's text-only baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rows = train.sample(n=min(len(train), 2 * n), random_state=seed)
    real, fake_rows = rows.iloc[: len(rows) // 2], rows.iloc[len(rows) // 2:]
    fake, _ = sample_fakes([ck[name].generator for name in MODELS], ck["gan"].tokenizer, conditions(fake_rows),
                           CALIBRATION_TEMPERATURES, seed, "tfidf")
    clf = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, sublinear_tf=True),
                        LogisticRegression(max_iter=1000, C=4.0))
    clf.fit(real["text"].astype(str).tolist() + fake, np.r_[np.ones(len(real)), np.zeros(len(fake))])
    log(f"TF-IDF+LR real-vs-generated baseline trained on {len(real)} real + {len(fake)} generated train reviews")
    return clf


def scorer_section(ck, calib, conds, human, keys, samples, temperatures, train, n_base, seed, dev,
                   log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scorer metrics per setting (calibrated D, uncalibrated D, TF-IDF+LR), and raw arrays for plots."""
    D, tok = ck["gan"].discriminator, ck["gan"].tokenizer
    baseline = tfidf_real_vs_fake(ck, train, n_base, seed, log)
    settings: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name in MODELS:
        for t in temperatures:
            settings[f"{name}@T={t:g}"] = ({"model": name, "temperature": t, "top_p": 1.0}, samples[(name, t)])
    u = UNSEEN_DECODING
    unseen = generate_texts(ck["gan"].generator, tok, conds, keys, seed=seed, temperature=u["temperature"],
                            top_p=u["top_p"], device=dev)
    settings[f"gan@T={u['temperature']:g},top_p={u['top_p']:g}"] = ({"model": "gan", **u}, unseen)
    h_logit = discriminator_outputs(D, tok, conds, human, device=dev)[0]
    h_base = baseline.predict_proba(human)[:, 1]
    out: dict[str, Any] = {"calibration": calib, "n_human": len(human), "settings": {}}
    extra: dict[str, Any] = {"human_p": apply_calibration(h_logit, calib), "gen_p": {}, "roc": {}, "pooled": ([], [])}
    for label, (info, texts) in settings.items():
        g_logit = discriminator_outputs(D, tok, conds, texts, device=dev)[0]
        y = np.r_[np.ones(len(h_logit)), np.zeros(len(g_logit))]
        lg = np.r_[h_logit, g_logit]
        p_cal = apply_calibration(lg, calib)
        p_base = np.r_[h_base, baseline.predict_proba(texts)[:, 1]]
        info = dict(info, in_calibration=bool(info["top_p"] == 1.0 and
                                              any(abs(info["temperature"] - c) < 1e-9 for c in CALIBRATION_TEMPERATURES)))
        out["settings"][label] = {**info, "calibrated": binary_metrics(y, p_cal),
                                  "uncalibrated": binary_metrics(y, apply_calibration(lg, None)),
                                  "tfidf_lr": binary_metrics(y, p_base)}
        extra["gen_p"][label] = p_cal[len(h_logit):]
        fpr, tpr, _ = roc_curve(y, p_cal)
        extra["roc"][f"D {label}"] = (fpr, tpr)
        if info["model"] == "gan":
            extra["pooled"][0].append(y)
            extra["pooled"][1].append(p_cal)
            if abs(info["temperature"] - 1.0) < 1e-9 and info["top_p"] == 1.0:
                fpr, tpr, _ = roc_curve(y, p_base)
                extra["roc"][f"TF-IDF+LR {label}"] = (fpr, tpr)
    return out, extra


