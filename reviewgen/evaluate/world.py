"""The scorer against machine text from generators it never saw (`reviewgen evaluate --fakes FILE`).

FILE holds labelled reviews from someone else's generator: `text`, `is_generated` (1 = machine-written) and
optionally `language` and a group column (`hotel_name`, `product_title` or `product_id`). Nothing in it is
ever fitted by the zero-shot scorer. Per language the section reports AUROC, the catch rate at the model's
own 1% / 5% thresholds and the false accusations they make here, ECE, the share of machine reviews scored
confidently human, and AUROC within length bins, since the length of a review can carry its label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from reviewgen.core.errors import MissingInputError
from reviewgen.core.metrics import auroc, ece, tpr_at_fpr
from reviewgen.data.io import read_table
from reviewgen.score.adapt import split_report
from reviewgen.score.adapt_labels import LabelsError, check_labels, score_labels
from reviewgen.score.adapted import AdaptError
from reviewgen.score.combiner import CombinerError
from reviewgen.score.scorer import MACHINE_FLAGS, Scorer, review_conditions

# where `reviewgen evaluate` looks for a fakes file when --fakes is not given
DEFAULT_FAKES = Path("../shared/data/fakes_maideup_gpt4_hotels.parquet")
GROUP_COLUMNS = ("hotel_name", "product_title", "product_id")
LENGTH_BINS = 4  # quantile bins of text length (characters), per language
CONFIDENT_HUMAN = 0.9  # p_human at or above which a machine review counts as confidently wrong


@dataclass(frozen=True)
class LengthBin:
    """The scorer within one quantile bin of review length: AUROC is None when the bin holds one class only."""

    chars: list[int]  # [shortest, longest] characters of the bin
    n: int  # reviews in the bin
    n_machine: int
    auroc: float | None


@dataclass(frozen=True)
class FakesLanguage:
    """The scorer on one language of a fakes file (human = positive class)."""

    language: str
    n_human: int
    n_machine: int
    unscored: int
    auroc: float
    ece: float
    tpr_1pct_fpr: float  # catch rate at 1% false accusations of this file's own humans
    tpr_5pct_fpr: float
    flagged_1pct: float | None  # machine reviews flagged by the model's stored 1% threshold
    flagged_5pct: float | None
    humans_flagged_1pct: float | None  # false accusations that threshold makes on this file's humans
    humans_flagged_5pct: float | None
    confident_human: float  # machine reviews scored p_human >= CONFIDENT_HUMAN
    out_of_domain_machine: float | None  # mean out-of-domain measure of the machine / human reviews
    out_of_domain_human: float | None
    length_bins: tuple[LengthBin, ...]

    @property
    def worst_bin_auroc(self) -> float | None:
        """The lowest AUROC over the length bins that hold both classes (None: no such bin)."""
        vals = [b.auroc for b in self.length_bins if b.auroc is not None]
        return min(vals) if vals else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (metrics.json's scorer.fakes.languages entry), with `worst_bin_auroc`."""
        return {**asdict(self), "worst_bin_auroc": self.worst_bin_auroc}


@dataclass(frozen=True)
class FakesSection:
    """The scorer on one fakes file: its path and rows, each language's `FakesLanguage` (languages with one
    class only are left out), and the `reviewgen calibrate` check (`calibrate_section`; None without groups)."""

    file: str
    rows: int
    languages: Mapping[str, FakesLanguage]
    calibrate: Mapping[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (metrics.json's scorer.fakes)."""
        return {
            "file": self.file,
            "rows": self.rows,
            "languages": {lang: m.to_dict() for lang, m in self.languages.items()},
            "calibrate": self.calibrate,
        }


def read_fakes(path: str | Path) -> pd.DataFrame:
    """The fakes file as a frame (its columns are checked by `check_labels`)."""
    return read_table(Path(path)).reset_index(drop=True)


def labelled_frame(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """`check_labels`' frame of a fakes file, the group column standing in for the product title."""
    group = next((c for c in GROUP_COLUMNS if c in df.columns), None)
    if group is not None and "product_title" not in df.columns:
        df = df.assign(product_title=df[group].astype(str))
    return check_labels(df, source)


def _length_bins(y: np.ndarray, p: np.ndarray, chars: np.ndarray) -> tuple[LengthBin, ...]:
    edges = np.unique(np.quantile(chars, np.linspace(0, 1, LENGTH_BINS + 1)))
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        rows = (chars >= lo) & ((chars <= hi) if hi == edges[-1] else (chars < hi))
        ok = len(np.unique(y[rows])) == 2
        out.append(
            LengthBin(
                chars=[int(lo), int(hi)],
                n=int(rows.sum()),
                n_machine=int((y[rows] == 0).sum()),
                auroc=auroc(y[rows], p[rows]) if ok else None,
            )
        )
    return tuple(out)


def _share(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def language_metrics(
    lang: str, y: np.ndarray, p: np.ndarray, chars: np.ndarray, flags: dict[str, np.ndarray], ood: np.ndarray
) -> FakesLanguage:
    """`FakesLanguage` from labels (1 human), p_human, lengths, the scorer's flags and out-of-domain values
    of the scored rows of one language."""
    has = {k: np.asarray([f is not None for f in v]) for k, v in flags.items()}
    flag = {k: np.asarray([bool(f) for f in v]) for k, v in flags.items()}

    def flagged(k: str, label: int) -> float | None:
        rows = (y == label) & has[k]
        return _share(flag[k][rows]) if rows.any() else None

    fin = np.isfinite(ood)
    return FakesLanguage(
        lang,
        int((y == 1).sum()),
        int((y == 0).sum()),
        0,
        auroc(y, p),
        ece(y, p),
        tpr_at_fpr(y, p, 0.01),
        tpr_at_fpr(y, p, 0.05),
        flagged("machine_1pct", 0),
        flagged("machine_5pct", 0),
        flagged("machine_1pct", 1),
        flagged("machine_5pct", 1),
        float(np.mean(p[y == 0] >= CONFIDENT_HUMAN)),
        _share(ood[fin & (y == 0)]),
        _share(ood[fin & (y == 1)]),
        _length_bins(y, p, chars),
    )


def fakes_section(scorer: Scorer, path: str | Path, seed: int = 0, log: Callable[[str], None] = print) -> FakesSection:
    """The scorer on a fakes file, per language (`FakesLanguage`), and the `reviewgen calibrate` fit on half of
    the file's groups, tested on the other half (`calibrate_section`)."""
    df = read_fakes(path)
    frame = labelled_frame(df, str(path))
    res = scorer.score_texts(review_conditions(frame.to_dict("records")), frame["text"].tolist())
    p = np.asarray(res["p_human"], dtype=np.float64)
    y, langs = frame["label"].to_numpy(), frame["language"].to_numpy(dtype=object)
    chars = frame["text"].str.len().to_numpy()
    ood = np.asarray(res["out_of_domain"], dtype=np.float64)
    languages: dict[str, FakesLanguage] = {}
    for lang in sorted(set(langs)):
        rows = langs == lang
        ok = rows & np.isfinite(p)
        if len(np.unique(y[ok])) < 2:
            continue
        m = language_metrics(
            lang, y[ok], p[ok], chars[ok], {k: np.asarray(res[k], dtype=object)[ok] for k in MACHINE_FLAGS}, ood[ok]
        )
        m = languages[lang] = replace(m, unscored=int((rows & ~np.isfinite(p)).sum()))
        log(
            f"fakes [{lang}]: AUROC {m.auroc:.3f} (worst length bin {m.worst_bin_auroc}), TPR at 1%/5% FPR "
            f"{m.tpr_1pct_fpr:.3f}/{m.tpr_5pct_fpr:.3f}, machine reviews with p_human >= {CONFIDENT_HUMAN}: "
            f"{m.confident_human:.3f}"
        )
    return FakesSection(
        file=str(path),
        rows=len(df),
        languages=languages,
        calibrate=calibrate_section(scorer, df, frame, res, seed, log),
    )


def calibrate_section(
    scorer: Scorer, df: pd.DataFrame, frame: pd.DataFrame, res: dict[str, Any], seed: int, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """`reviewgen calibrate` on the file: fitted on a seeded half of its groups (hotels, products), reported on
    the other half's reviews, so that no group's wording is seen at fit time. None without a group column."""
    group = next((c for c in GROUP_COLUMNS if c in df.columns), None)
    if group is None:
        return None
    data = score_labels(scorer, frame, res)
    try:
        report = split_report(
            data,
            df[group].astype(str).to_numpy()[data.rows],
            seed,
            evaluation=f"held-out {group} half",
            source="fakes file",
        )
    except (LabelsError, AdaptError, CombinerError) as e:  # too few labels in a half: say so, do not fail
        log(f"fakes: calibrate section skipped ({e})")
        return {"skipped": str(e)}
    for line in report.lines():
        log(f"fakes, calibrate: {line}")
    return report.to_dict()


def resolve_fakes(path: Path | None, enabled: bool = True) -> Path | None:
    """The fakes file to read: `path`, or `DEFAULT_FAKES` when it exists; None when disabled or absent."""
    if not enabled:
        return None
    if path is not None:
        if not Path(path).is_file():
            raise MissingInputError(f"--fakes {path}: no such file")
        return Path(path)
    return DEFAULT_FAKES if DEFAULT_FAKES.is_file() else None
