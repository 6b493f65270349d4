"""The scorer: p_human for (product, review) pairs, the one scoring path of `reviewgen score`, the Serve
replica, `reviewgen sample` and the nightly job (`Scorer.score_texts`).

p_human comes from the detector stored in the model directory's calibration.json (fitted by
`reviewgen.score.calibration`) over D's logit, the LM statistics of G and the MLE reference
(reference.safetensors) and the word statistics of the training reviews' n-gram model (wordlm.npz), with
one combiner per review language. A model directory from before the detector existed, or one without the
files its detector reads, falls back to D alone with its Platt calibration, and `Scorer.mode` says so. Texts the models
cannot judge (null, empty, no words, one character repeated, longer than any training review) get a NaN
p_human and a reason instead of a score.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from reviewgen.core.checkpoint import Checkpoint, load_checkpoint
from reviewgen.core.device import cast_matmul_weights, inference_dtype, pick_device
from reviewgen.core.errors import InputError
from reviewgen.core.model_dir import CALIBRATION_FILE
from reviewgen.core.models import Generator
from reviewgen.core.text import detect_language
from reviewgen.core.tokenizer import Condition
from reviewgen.core.watermark import Watermark
from reviewgen.score.adapted import AdaptedDetector
from reviewgen.score.combiner import ANY_LANGUAGE, CombinerError, Detector
from reviewgen.score.detect import head_weights
from reviewgen.score.platt import apply_calibration
from reviewgen.score.signals import SIGNALS, review_signals
from reviewgen.score.wordlm import STATISTICS as WORD_STATISTICS
from reviewgen.score.wordlm import WordLMError, WordNgramLM

# `reviewgen prepare` drops longer reviews, so no model was trained or calibrated on one
MAX_SCORABLE_CHARS = 4000
UNSCORABLE = ("empty", "too_long", "no_words", "repetitive")
# the per-review signals reported beside p_human (API `signals` object, `reviewgen score` columns)
# out_of_domain: how far the review's signals lie from the detector's human fit rows, 0 (typical) to 1
# (p_human is then moved to the prior instead of claiming human authorship); NaN without a detector
# (watermark_z: the keyed watermark's z-score, `Scorer.watermark_fields`)
REPORTED_SIGNALS = ("d_prob", "mean_logprob", "mean_log_rank", "binoculars", "out_of_domain", "watermark_z")
# flagged as machine-written at the threshold that accuses 1% / 5% of the human validation reviews
MACHINE_FLAGS = ("machine_1pct", "machine_5pct")


def unscorable_reason(text: Any) -> str | None:
    """Why `text` gets no score (one of `UNSCORABLE`), or None when it can be scored."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return "empty"
    t = str(text)
    if not t.strip():
        return "empty"
    if len(t) > MAX_SCORABLE_CHARS:
        return "too_long"
    if not any(ch.isalpha() for ch in t):
        return "no_words"  # emoji, digits or punctuation only: nothing a review model has learnt to read
    chars = "".join(t.split())  # str.split() splits on exactly the characters str.isspace() accepts
    if len(chars) >= 20 and max(Counter(chars).values()) >= 0.8 * len(chars):
        return "repetitive"
    return None


def review_conditions(reviews: Sequence[dict[str, Any]]) -> list[Condition]:
    """Conditions from API-style review dicts (text, product_title?, category?, rating?, language?)."""
    out = []
    for r in reviews:
        rating = r.get("rating")
        rating = int(rating) if rating is not None and not pd.isna(rating) and 1 <= int(rating) <= 5 else None
        text = r.get("text")
        lang = r.get("language") or detect_language("" if text is None or pd.isna(text) else str(text))
        out.append(
            Condition(
                title=str(r.get("product_title") or ""),
                category=str(r.get("category") or ""),
                rating=rating,
                sentiment=None if rating else "neutral",
                language=lang,
            )
        )
    return out


def reference_network(ckpt: Checkpoint, device="cpu") -> Generator | None:
    """The checkpoint's frozen MLE reference (reference.safetensors) as a network, or None without one."""
    if ckpt.reference_state is None:
        return None
    ref = Generator(ckpt.config.generator)
    ref.load_state_dict(ckpt.reference_state, strict=False)  # the tied head is re-tied, not stored
    return ref.to(device).eval().requires_grad_(False)


class Scorer:
    """Loads a model directory once; scores batches of reviews. Exposes the model's tokenizer (`tok`), version,
    calibration, n-gram index path (`ngram_path`, for the output filter's copy check) and `mode`: how p_human
    is computed ("detector: ..." or "discriminator-only (...)"). A scorer built from a model directory owns its
    networks (`D`, `G`, `ref`), which hold their matmul weights (all but the LM heads) in the inference dtype:
    run them only under `reviewgen.core.device.autocast` to that dtype, as the scoring path does."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        self.device = pick_device(device)
        self._setup(load_checkpoint(model_dir, self.device))
        # the networks are this scorer's own and only run under inference autocast: their matmul weights
        # are stored in its dtype once (not for `from_checkpoint`, whose networks the caller shares). The
        # LM heads stay as they are: a tied one is the embedding, and the scoring path projects with the
        # copies of `head_weights` and recomputes each target's logit from the fp32 head
        dtype = inference_dtype(self.device)
        cast_matmul_weights(self.D, dtype)
        for lm in (self.G, self.ref):
            if lm is not None:
                cast_matmul_weights(lm.blocks, dtype)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str | None = None) -> "Scorer":
        """A scorer over an already loaded checkpoint (e.g. the nightly job's actor), on `device`."""
        self = cls.__new__(cls)
        self.device = pick_device(device)
        self._setup(ckpt)
        return self

    def _setup(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.tok, self.D, self.G = ckpt.tokenizer, ckpt.discriminator.to(self.device), ckpt.generator.to(self.device)
        self.calibration = ckpt.calibration
        self.version = ckpt.version
        self.ngram_path = ckpt.ngram_path
        # watermark keys from the environment (reviewgen.core.watermark); None: the watermark fields stay null
        self.watermark: Watermark | None = Watermark.from_env()
        self.ref = reference_network(ckpt, self.device)
        # cast once: the networks do not change during a scorer's life
        self._heads = head_weights(self.G, self.ref, inference_dtype(self.device))
        self.wordlm: WordNgramLM | None = None
        self.detector: Detector | None = None
        # p_human thresholds per language (`reviewgen.score.thresholds`); only for the p_human they were
        # fitted on, so a detector model that falls back to D alone has none
        calib = self.calibration
        self.thresholds: dict[str, dict[str, float]] = (
            {} if calib is None or calib.detector is not None else {k: dict(v) for k, v in calib.thresholds.items()}
        )
        # a shop's own labels (`reviewgen calibrate`): per language, over the zero-shot logit and a lexical model
        self.adapted = AdaptedDetector.load(ckpt.path, calib.adapted) if calib and calib.adapted else None
        if calib is None or calib.detector is None:
            err = calib.detector_error if calib is not None else None
            self.mode = (
                f"discriminator-only (detector fit failed: {err})"
                if err
                else "discriminator-only (model predates LM statistics)"
            )
            return
        if self.ref is None:
            self.mode = "discriminator-only (model has no reference.safetensors)"
            return
        try:
            detector = Detector.from_dict(calib.detector, source=str(ckpt.path / CALIBRATION_FILE))
        except CombinerError as e:
            raise CombinerError(f"{e} (delete its 'detector' entry to score with D alone)") from e
        if detector.signals & set(WORD_STATISTICS):
            if ckpt.wordlm_path is None:
                self.mode = "discriminator-only (model has no wordlm.npz)"
                return
            try:
                self.wordlm = WordNgramLM.load(ckpt.wordlm_path)
            except WordLMError as e:
                raise CombinerError(f"{e} (delete its 'detector' entry to score with D alone)") from e
        self.detector = detector
        self.thresholds = {k: dict(v) for k, v in calib.thresholds.items()}
        self.mode = (
            f"detector: {', '.join(detector.features)}"
            + (f" (per language: {', '.join(sorted(detector.combiners))})" if len(detector.combiners) > 1 else "")
            + (f"; adapted to labels for {', '.join(self.adapted.languages)}" if self.adapted is not None else "")
        )

    def score_texts(
        self, conds: Sequence[Condition], texts: Sequence[str | None], batch_size: int = 64
    ) -> dict[str, Any]:
        """Score texts under their conditions: {"p_human" [N] (NaN where unscorable), "logit" [N] (the
        combined logit, or D's raw logit without a detector; the adapted one where `reviewgen calibrate`
        adapted the review's language), "zero_shot_logit" [N] (the logit before that adaptation),
        "rating_pred" [N] (-1 where unscorable), "reason": [N] (None or one of `UNSCORABLE`), `MACHINE_FLAGS` [N]
        (bool, None where unknown), and every `REPORTED_SIGNALS` and
        `reviewgen.score.signals.SIGNALS` name -> [N] (NaN where unscorable), and the watermark's
        "watermark_key_id" and "ours" (`watermark_fields`: for every text, scorable or not)}."""
        n = len(texts)
        if len(conds) != n:
            raise ValueError(f"score_texts: {len(conds)} conditions for {n} texts")
        reasons = [unscorable_reason(t) for t in texts]
        ok = [i for i, r in enumerate(reasons) if r is None]
        out: dict[str, Any] = {
            "p_human": np.full(n, np.nan),
            "logit": np.full(n, np.nan),
            "zero_shot_logit": np.full(n, np.nan),
            "rating_pred": np.full(n, -1, dtype=np.int64),
            "reason": reasons,
            **{k: np.full(n, np.nan) for k in (*REPORTED_SIGNALS, *SIGNALS)},
            **{k: [None] * n for k in MACHINE_FLAGS},
        }
        out.update(self.watermark_fields(texts))
        if not ok:
            return out
        ok_conds = [conds[i] for i in ok]
        sig = review_signals(
            self.D,
            self.G,
            self.tok,
            ok_conds,
            [str(texts[i]) for i in ok],
            ref=self.ref,
            wordlm=self.wordlm,
            batch_size=batch_size,
            device=self.device,
            heads=self._heads,
        )
        if self.ref is None:
            sig["binoculars"] = np.full(len(ok), np.nan)  # without the reference it is not the fitted ratio
        d_prob = apply_calibration(sig["d_logit"], self.calibration)
        if self.detector is not None:
            logit = self.detector.logit(sig, [c.language for c in ok_conds])
            p = 1.0 / (1.0 + np.exp(-logit))
            out["out_of_domain"][ok] = self.detector.out_of_domain(sig, [c.language for c in ok_conds])
        else:
            logit, p = sig["d_logit"], d_prob
        out["zero_shot_logit"][ok] = logit
        if self.adapted is not None:
            za = self.adapted.logit([str(texts[i]) for i in ok], sig, logit, [c.language for c in ok_conds])
            logit = np.where(np.isfinite(za), za, logit)
            p = np.where(np.isfinite(za), 1.0 / (1.0 + np.exp(-za)), p)
        out["p_human"][ok], out["logit"][ok], out["rating_pred"][ok] = p, logit, sig["rating_pred"]
        out["d_prob"][ok] = d_prob
        out.update(self._flags(p, [c.language for c in ok_conds], ok, n))
        for k in SIGNALS:
            out[k][ok] = sig[k]
        return out

    def _flags(self, p: np.ndarray, languages: Sequence[str | None], rows: Sequence[int], n: int) -> dict[str, list]:
        """`MACHINE_FLAGS` per text: p_human below its language's (else the pooled) threshold; None where
        unscorable or where the model stores no threshold."""
        out: dict[str, list] = {k: [None] * n for k in MACHINE_FLAGS}
        for i, pi, lang in zip(rows, p, languages):
            own = self.adapted.thresholds(lang) if self.adapted is not None else None
            t = (
                dict(zip(MACHINE_FLAGS, own))
                if own is not None
                else (self.thresholds.get(lang or "") or self.thresholds.get(ANY_LANGUAGE))
            )
            if t is not None and math.isfinite(pi):
                for k in MACHINE_FLAGS:
                    out[k][i] = bool(pi < t[k]) if k in t else None
        return out

    def watermark_fields(self, texts: Sequence[str | None]) -> dict[str, Any]:
        """{"watermark_z" [N] (NaN: nothing to score), "watermark_key_id" [N], "ours" [N]} from the keys in
        `self.watermark`: the best key's z, and ours when the watermark is detected at its threshold
        (`Detection.ours`). Without a key z is NaN and the others None: never guessed. No model runs."""
        n = len(texts)
        if self.watermark is None:
            return {"watermark_z": np.full(n, np.nan), "watermark_key_id": [None] * n, "ours": [None] * n}
        det = self.watermark.detect_texts(self.tok, texts)
        return {"watermark_z": det.z.astype(np.float64), "watermark_key_id": det.key_id, "ours": det.ours}

    def score(self, reviews: Sequence[dict[str, Any]], batch_size: int = 64) -> dict[str, Any]:
        """`score_texts` for API-style review dicts (text, product_title?, category?, rating?, language?)."""
        return self.score_texts(review_conditions(reviews), [r.get("text") for r in reviews], batch_size=batch_size)

    def score_frame(self, df: pd.DataFrame, text_column: str = "text") -> pd.DataFrame:
        """The input frame plus p_human, rating_pred, the `REPORTED_SIGNALS` columns and score_reason (why
        p_human is null; null when scored). Unscorable rows keep null scores."""
        if text_column not in df.columns:
            raise InputError(f"input has no {text_column!r} column (columns: {list(df.columns)})")
        rows = []
        for rec in df.to_dict("records"):
            rows.append(
                {
                    "text": rec.get(text_column),
                    "product_title": rec.get("product_title", rec.get("title")),
                    "category": rec.get("category"),
                    "rating": rec.get("rating"),
                    "language": rec.get("language"),
                }
            )
        res = self.score(rows)
        out = df.copy()
        out["p_human"] = res["p_human"]
        out["rating_pred"] = pd.array([None if r < 0 else int(r) for r in res["rating_pred"]], dtype="Int64")
        for k in REPORTED_SIGNALS:
            out[k] = res[k]
        for k in MACHINE_FLAGS:
            out[k] = pd.array(res[k], dtype="boolean")
        out["ours"] = pd.array(res["ours"], dtype="boolean")
        out["score_reason"] = res["reason"]
        return out
