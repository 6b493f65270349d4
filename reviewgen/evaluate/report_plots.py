"""The report's PNGs, written before report.md (which lists their names): training curves, quality vs
diversity, the scorer's ROC curves, reliability and p_human histograms, and the length and rating
distributions of each model's texts at matched diversity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from reviewgen.core.metrics import reliability_bins
from reviewgen.evaluate import plots as P
from reviewgen.evaluate.jsonio import read_history
from reviewgen.evaluate.quality import MODELS
from reviewgen.evaluate.report import ReportInputs
from reviewgen.evaluate.results import EvalResult
from reviewgen.evaluate.text_metrics import tokenize_for_bleu


def write_plots(r: EvalResult, out: Path, inputs: ReportInputs) -> list[str]:
    """Write the report's PNGs into `out` (training curves, quality vs diversity, the scorer's, length and
    rating distributions); returns their file names in report order."""
    hist = [
        dict(row, step=row.get("global_step", row.get("step")))
        for row in read_history(inputs.model_dir / "metrics.jsonl")
    ]
    files = [P.plot_training_curves(hist, out / "training_curves.png")]
    curves = {
        name.upper(): [(p.mean("self_bleu4"), p.mean("bleu4") or 0.0, float(p.temperature)) for p in r.sweep.of(name)]
        for name in r.sweep.points
    }
    files.append(
        P.plot_quality_diversity(
            curves, (r.human["self_bleu4"], r.human.get("bleu4", 0.0)), out / "quality_diversity.png"
        )
    )
    files += _scorer_plots(inputs.scorer_extra, out)
    ev = inputs.ev
    langs = ev["language"].tolist()
    lens = lambda texts: [len(tokenize_for_bleu(t, lang)) for t, lang in zip(texts, langs)]  # noqa: E731
    gen = _matched_texts(r, inputs.samples)
    files.append(
        P.plot_distributions(
            lens(ev["text"].astype(str)),
            {k: lens(v) for k, v in gen.items()},
            out / "length_distribution.png",
            "review length (BLEU tokens)",
        )
    )
    rated = [i for i, x in enumerate(ev["rating"]) if not pd.isna(x)]
    clf = inputs.clf
    if clf.rating is not None and rated:
        pick = lambda texts: clf.rating.predict([str(texts[i]) for i in rated]).astype(int)  # noqa: E731
        real, gens = pick(ev["text"].tolist()), {k: pick(v) for k, v in gen.items()}
    else:
        real, gens = [], {}
    files.append(
        P.plot_distributions(
            real, gens, out / "rating_distribution.png", "rating predicted by the TF-IDF classifier (English rows)"
        )
    )
    return [f.name for f in files]


def _scorer_plots(extra: Mapping[str, Any], out: Path) -> list[Path]:
    """The scorer's ROC curves, reliability diagram and p_human histograms from its raw arrays."""
    files = [P.plot_roc(extra["roc"], out / "scorer_roc.png")]
    y, p = np.concatenate(extra["pooled"][0]), np.concatenate(extra["pooled"][1])
    files.append(P.plot_reliability(reliability_bins(y, p), out / "scorer_reliability.png"))
    gen_p = extra["gen_p"]
    groups = {"human": extra["human_p"]}
    for name in MODELS:
        groups[f"{name.upper()} (all T)"] = np.concatenate(
            [v for k, v in gen_p.items() if k.startswith(name + "@T=") and "," not in k]
        )
    groups.update({k: v for k, v in gen_p.items() if "," in k})  # top-k / top-p and out-of-family
    groups = {k: np.asarray(v)[np.isfinite(v)] for k, v in groups.items()}
    files.append(P.plot_score_histograms(groups, out / "scorer_histograms.png"))
    return files


def _matched_texts(r: EvalResult, samples: Mapping[tuple[str, float], list[str]]) -> dict[str, list[str]]:
    """Each model's texts at its sampled temperature nearest the matched one, labelled "GAN T=0.8"."""
    return {
        f"{n.upper()} T={p.nearest_sampled:g}": samples[(n, p.nearest_sampled)] for n, p in r.matched.points.items()
    }
