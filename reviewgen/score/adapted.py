"""The adapted detector: what `reviewgen calibrate` fits on a shop's labelled reviews, per language.

For each adapted language, a lexical model (`reviewgen.score.lexical`) reads the text, and a combiner
(`reviewgen.score.combiner.Combiner`) stacks its logit with the zero-shot detector's logit and the scorer's
signals into one logit, Platt-scaled and shifted to the scorer's 1:1 prior. Languages without an adapted
model get NaN, so the caller keeps the zero-shot detector for them. Stored as calibration.json's "adapted"
entry (plain JSON) beside one lexical .npz per language, whose sha256 the entry records: the model
directory's content version hashes calibration.json, so a changed lexical file is a new version too.
This module imports neither the scorer nor the fit, so the scorer can load it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reviewgen.core.errors import ReviewgenError
from reviewgen.score.combiner import Combiner, CombinerError
from reviewgen.score.lexical import LexicalError, LexicalModel

ADAPTED_FORMAT = "reviewgen-adapted/1"
# the stacked features that are not scorer signals: the lexical model's logit and the zero-shot logit
LEXICAL, ZERO_SHOT = "lexical", "zero_shot"
# the false-accusation rates of the stored thresholds, in the order `AdaptedDetector.thresholds` returns
THRESHOLD_KEYS = ("machine_1pct", "machine_5pct")
_SAFE_NAME = re.compile(r"[A-Za-z0-9-]{1,32}")


class AdaptError(ReviewgenError, ValueError):
    """An "adapted" entry or one of its files is missing, altered or malformed; the message names it."""


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class LanguageModel:
    """One language's adapted model: the lexical model, the stacking combiner (Platt step and prior shift
    folded in) and the p_human thresholds that flag 1% and 5% of the labelled human reviews."""

    lexical: LexicalModel
    combiner: Combiner
    thresholds: tuple[float, float]

    def logit(
        self, texts: Sequence[str | None], signals: Mapping[str, np.ndarray], zero_shot_logit: np.ndarray
    ) -> np.ndarray:
        """The adapted logit of every text (NaN where a feature the combiner reads is NaN)."""
        feats = {
            k: np.asarray(signals[k], dtype=np.float64)
            for k in self.combiner.features
            if k not in (LEXICAL, ZERO_SHOT) and k in signals
        }
        feats[LEXICAL] = self.lexical.logit([t if isinstance(t, str) else "" for t in texts])
        feats[ZERO_SHOT] = np.asarray(zero_shot_logit, dtype=np.float64)
        return self.combiner.logit(feats)


@dataclass(frozen=True)
class AdaptedDetector:
    """Adapted models by language; `info` is what the fit reports (plain data)."""

    models: Mapping[str, LanguageModel]
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages with an adapted model."""
        return tuple(sorted(self.models))

    def thresholds(self, lang: str | None) -> tuple[float, float] | None:
        """(1%, 5%) false-accusation p_human thresholds of a language (flag p_human < t), None if not adapted."""
        m = self.models.get(lang) if lang is not None else None
        return m.thresholds if m is not None else None

    def logit(
        self,
        texts: Sequence[str | None],
        signals: Mapping[str, np.ndarray],
        zero_shot_logit: np.ndarray,
        languages: Sequence[str | None],
    ) -> np.ndarray:
        """The adapted logit of every row (arrays aligned with `texts`); NaN for rows of a language without
        an adapted model, or with a NaN signal, where the zero-shot detector stays in charge."""
        langs = np.asarray(["" if x is None else x for x in languages], dtype=object)
        zs = np.asarray(zero_shot_logit, dtype=np.float64)
        if not len(langs) == len(texts) == len(zs):
            raise ValueError(f"adapted logit: {len(texts)} texts, {len(langs)} languages, {len(zs)} logits")
        out = np.full(len(texts), np.nan)
        for lang, model in self.models.items():
            rows = np.flatnonzero(langs == lang)
            if len(rows):
                out[rows] = model.logit(
                    [texts[i] for i in rows], {k: np.asarray(v)[rows] for k, v in signals.items()}, zs[rows]
                )
        return out

    def to_doc(self, model_dir: str | Path) -> dict[str, Any]:
        """Write one lexical file per language into `model_dir` and return the "adapted" entry that names them."""
        by_language = {}
        for i, lang in enumerate(self.languages):
            m = self.models[lang]
            name = f"lexical-{lang}.npz" if _SAFE_NAME.fullmatch(lang) else f"lexical_{i}.npz"
            m.lexical.save(Path(model_dir) / name)
            by_language[lang] = {
                "lexical": name,
                "lexical_sha256": sha256_file(Path(model_dir) / name),
                "combiner": m.combiner.to_dict(),
                "thresholds": dict(zip(THRESHOLD_KEYS, m.thresholds)),
            }
        return {
            "format": ADAPTED_FORMAT,
            "by_language": by_language,
            "info": json.loads(json.dumps(self.info, default=float)),
        }

    @classmethod
    def load(cls, model_dir: str | Path, doc: Mapping[str, Any]) -> "AdaptedDetector":
        """The detector of an "adapted" entry `doc`, its lexical files read from `model_dir` and checked
        against their recorded sha256. Errors name the file and the field."""
        src = f"{Path(model_dir) / 'calibration.json'} ['adapted']"
        if not isinstance(doc, Mapping) or doc.get("format") != ADAPTED_FORMAT:
            got = doc.get("format") if isinstance(doc, Mapping) else type(doc).__name__
            raise AdaptError(f"{src}: format {got!r} is not {ADAPTED_FORMAT!r}")
        by = doc.get("by_language")
        if not isinstance(by, Mapping) or not by:
            raise AdaptError(f"{src}: 'by_language' must map at least one language to its model")
        return cls(
            {str(lang): _load_language(Path(model_dir), entry, f"{src} [{lang}]") for lang, entry in by.items()},
            doc.get("info", {}),
        )


def _load_language(model_dir: Path, entry: Any, src: str) -> LanguageModel:
    try:
        name, digest = str(entry["lexical"]), str(entry["lexical_sha256"])
        thresholds = tuple(float(entry["thresholds"][k]) for k in THRESHOLD_KEYS)
        combiner = Combiner.from_dict(entry["combiner"], src)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CombinerError):
            raise AdaptError(str(e)) from e
        raise AdaptError(f"{src}: missing or malformed field ({e!r})") from e
    path = model_dir / name
    if Path(name).name != name or not path.is_file():
        raise AdaptError(f"{src}: lexical model file {name!r} is not in {model_dir}")
    if sha256_file(path) != digest:
        raise AdaptError(f"{path}: sha256 differs from the one calibration.json records (file replaced?)")
    try:
        lexical = LexicalModel.load(path)
    except LexicalError as e:
        raise AdaptError(str(e)) from e
    if not {LEXICAL, ZERO_SHOT} <= set(combiner.features):
        raise AdaptError(f"{src}: the combiner must read {LEXICAL!r} and {ZERO_SHOT!r}")
    return LanguageModel(lexical, combiner, thresholds)
