"""The machine-written side of the scorer's fit: the sampling settings of the negatives, and the sampling
itself, spread evenly over generators and settings and keyed so that the same call gives the same texts.
`reviewgen.score.calibration` fits on them; evaluation draws its baselines' negatives the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from reviewgen.core.models import unwrap
from reviewgen.core.sampling import generate_texts
from reviewgen.core.tokenizer import Condition, ReviewTokenizer


@dataclass(frozen=True)
class SamplingSetting:
    """How fakes are sampled: temperature, top-k (0 = off) and nucleus mass (1 = off)."""

    temperature: float
    top_k: int = 0
    top_p: float = 1.0

    @property
    def plain(self) -> bool:
        """True when neither top-k nor top-p truncates the distribution (how our own generator samples)."""
        return self.top_k <= 0 and self.top_p >= 1.0

    @property
    def label(self) -> str:
        """e.g. "T=1", "T=1,top_k=40", "T=1,top_p=0.9"."""
        return (
            f"T={self.temperature:g}"
            + (f",top_k={self.top_k}" if self.top_k > 0 else "")
            + (f",top_p={self.top_p:g}" if self.top_p < 1.0 else "")
        )


# evenly over 0.7-1.3: the top-k and top-p settings also sample at T=1.0, so fewer temperatures would let
# T=1.0 dominate the fit and leave the ends of the range the worst calibrated
CALIBRATION_TEMPERATURES = (0.7, 0.85, 1.0, 1.15, 1.3)
DETECTOR_SETTINGS = (
    *(SamplingSetting(t) for t in CALIBRATION_TEMPERATURES),
    SamplingSetting(1.0, top_k=40),
    SamplingSetting(1.0, top_p=0.9),
)


def as_setting(s: float | SamplingSetting) -> SamplingSetting:
    """A SamplingSetting from a setting or a plain temperature."""
    return s if isinstance(s, SamplingSetting) else SamplingSetting(float(s))


def sample_fake_sources(
    generators: Sequence[Any],
    tok: ReviewTokenizer,
    conds: Sequence[Condition],
    settings: Sequence[float | SamplingSetting],
    *,
    seed: int,
    key_prefix: str,
    n: int | None = None,
) -> list[tuple[int, SamplingSetting, list[str], list[Condition]]]:
    """`sample_fakes` kept apart by source: [(generator index, setting, texts, conditions)]."""
    if not conds or not generators or not settings:
        raise ValueError("sample_fakes: need at least one condition, generator and sampling setting")
    n = len(conds) if n is None else n
    slots = [(gi, si) for gi in range(len(generators)) for si in range(len(settings))]
    out = []
    for (gi, si), idx in zip(slots, np.array_split(np.arange(n), len(slots))):
        if not len(idx):
            continue
        g, s = generators[gi], as_setting(settings[si])
        c = [conds[i % len(conds)] for i in idx]
        keys = [f"{key_prefix}:{gi}:{si}:{i}" for i in idx]
        texts = generate_texts(
            g,
            tok,
            c,
            keys,
            seed=seed,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            device=next(unwrap(g).parameters()).device,
        )
        out.append((gi, s, texts, c))
    return out


def sample_fakes(
    generators: Sequence[Any],
    tok: ReviewTokenizer,
    conds: Sequence[Condition],
    temperatures: Sequence[float | SamplingSetting],
    *,
    seed: int,
    key_prefix: str,
    n: int | None = None,
) -> tuple[list[str], list[Condition]]:
    """`n` generated reviews (default: one per condition) spread evenly over every (generator, sampling
    setting) pair, each for a condition taken in turn from `conds`: the negatives of the scorer's
    calibration and of evaluation's TF-IDF baseline. A setting is a `SamplingSetting` or a plain
    temperature. Sample i of pair (g, s) is keyed `{key_prefix}:{g}:{s}:{i}`, so the same call gives the
    same texts. Each generator samples on its own device."""
    parts = sample_fake_sources(generators, tok, conds, temperatures, seed=seed, key_prefix=key_prefix, n=n)
    return [t for p in parts for t in p[2]], [c for p in parts for c in p[3]]
