"""The evaluation report: PNG plots and report.md rendered from the `EvalResult` `run_evaluation` builds.

The plots are written first (`write_plots`), as the report lists their names; report.md is then rendered
from the finished result in one piece (`render_report`) and written once (`write_report`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from reviewgen.core.metrics import reliability_bins
from reviewgen.core.model_dir import Calibration
from reviewgen.core.text import PII_KINDS
from reviewgen.evaluate import plots as P
from reviewgen.evaluate.fluency import fluency_markdown
from reviewgen.evaluate.jsonio import json_default
from reviewgen.evaluate.matching import MatchedDiversity
from reviewgen.evaluate.quality import MODELS, ConditionClassifiers
from reviewgen.evaluate.results import EvalResult, ScorerResult
from reviewgen.evaluate.text_metrics import tokenize_for_bleu
from reviewgen.evaluate.world import LengthBin
from reviewgen.infra.storage import write_local_atomic
from reviewgen.score.combiner import Detector
from reviewgen.score.filter import ReviewFilter

QUALITY_COLUMNS = (
    "bleu2",
    "bleu3",
    "bleu4",
    "bleu5",
    "self_bleu2",
    "self_bleu3",
    "self_bleu4",
    "distinct1",
    "distinct2",
    "distinct3",
    "fed",
    "mauve",
    "title_relevance",
    "length",
)
CONDITION_COLUMNS = ("rating_acc", "rating_mae", "polarity_agreement", "polarity_balanced", "category_acc")
# the matched-diversity comparison (each metric interpolated at the temperature of the common Self-BLEU-4)
MATCHED_COLUMNS = (
    "self_bleu4",
    "mauve",
    "category_acc",
    "polarity_agreement",
    "polarity_balanced",
    "title_relevance",
    "rating_acc",
    "rating_mae",
    "bleu4",
    "fed",
    "distinct2",
    "copy_rate",
    "accepted_copy_rate",
)
FILTER_COLUMNS = ("copy_rate", "reject_rate", "accepted_copy_rate", *(f"pii_{k}" for k in PII_KINDS), "empty_rate")


def _cell(entry: Any) -> str:
    if entry is None:
        return "null"
    if isinstance(entry, dict):
        if entry.get("mean") is None:
            return "null"
        if len(entry.get("values", [])) > 1:
            return f"{entry['mean']:.4f} ± {entry['sd']:.4f}"
        return f"{entry['mean']:.4f}"
    if isinstance(entry, float):
        return f"{entry:.4f}" if np.isfinite(entry) else "null"
    return str(entry)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class ReportInputs:
    """What the report shows beside the results: the model directory (its training history), the evaluated
    rows, the first seed's texts per (model, temperature), the condition classifiers, the production filter
    and the scorer's raw arrays for its plots (`scorer_section`'s second value)."""

    model_dir: Path
    ev: pd.DataFrame
    samples: Mapping[tuple[str, float], list[str]]
    clf: ConditionClassifiers
    review_filter: ReviewFilter
    scorer_extra: Mapping[str, Any]


def _sweep_table(r: EvalResult, columns: Sequence[str]) -> str:
    rows = [["human (test)", *[r.human.get(c) for c in columns]]]
    for name, by_t in r.sweep.points.items():
        for t, p in by_t.items():
            rows.append([f"{name.upper()} T={t}", *[p.metrics.get(c) for c in columns]])
    return _table(["texts", *columns], rows)


def _matched_text(mt: MatchedDiversity) -> str:
    """How the matched point was chosen."""
    if not mt.common:
        how = (
            "the GAN and MLE Self-BLEU-4 ranges over the sampled temperatures do not overlap, so there is no "
            "common point; each model is shown at the value of its own range closest to the human one"
        )
    elif mt.target_is_human:
        how = f"both GAN and MLE reach the human Self-BLEU-4 {mt.human_self_bleu4:.4f}"
    else:
        how = (
            f"not both GAN and MLE reach the human Self-BLEU-4 {mt.human_self_bleu4:.4f} over the sampled "
            f"temperatures; the closest value both reach is {mt.target_self_bleu4:.4f}"
        )
    return (
        f"Every model is compared where its mean Self-BLEU-4 over seeds equals one target value: {how}. Its "
        "temperature there, and every metric, is interpolated linearly between the two sampled temperatures "
        "around it (reached = no: the model's curve misses the target; shown at its closest sampled "
        "temperature). The GAN-vs-MLE target reads this table; test NLL does not depend on temperature."
    )


def _matched_table(r: EvalResult) -> str:
    """MLE, the compared models, then the GAN, at matched diversity; the human texts as the ceiling."""
    pts = r.matched.points
    order = ["mle", *[n for n in pts if n not in MODELS], "gan"]
    rows = [["human (test)", "-", "-", *[r.human.get(c) for c in MATCHED_COLUMNS], "-"]]
    for n in order:
        p = pts[n]
        lo, hi = p.segment
        where = f"{p.temperature:.3f}" + (f" ({lo:g}-{hi:g})" if lo != hi else "")
        rows.append(
            [n.upper(), where, "yes" if p.reached else "no", *[p.metrics.get(c) for c in MATCHED_COLUMNS], r.nll.get(n)]
        )
    return _table(["model", "T (between)", "reached", *MATCHED_COLUMNS, "test NLL"], rows)


def _matched_texts(r: EvalResult, samples: Mapping[tuple[str, float], list[str]]) -> dict[str, list[str]]:
    """Each model's texts at its sampled temperature nearest the matched one, labelled "GAN T=0.8"."""
    return {
        f"{n.upper()} T={p.nearest_sampled:g}": samples[(n, p.nearest_sampled)] for n, p in r.matched.points.items()
    }


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


def _examples(r: EvalResult, inputs: ReportInputs, per_lang: int = 3) -> str:
    """Up to `per_lang` evaluated rows per language, one per product: the real review and each model's text at
    its sampled temperature nearest the matched one, with the filter's reasons when it rejects it."""
    ev, parts = inputs.ev, []
    for lang in ("en", "zh"):
        seen: set[str] = set()
        for i in ev.index[ev["language"] == lang].tolist():
            pid = ev.at[i, "product_id"]
            if pid in seen or len(seen) >= per_lang:
                continue
            seen.add(pid)
            row = ev.loc[i]
            cond = f"rating {int(row['rating'])}" if not pd.isna(row["rating"]) else f"sentiment {row['sentiment']}"
            parts += [f"**{row['product_title']}** ({lang}, {row['category']}, {cond})\n", f"- real: {row['text']}"]
            for n, point in r.matched.points.items():
                t = point.nearest_sampled
                text = inputs.samples[(n, t)][i]
                reasons = inputs.review_filter.check([text], languages=[lang])[0].reasons
                tag = f" _(rejected: {', '.join(reasons)})_" if reasons else ""
                parts.append(f"- {n.upper()} T={t:g}: {text or '(empty)'}{tag}")
            parts.append("")
    return "\n".join(parts) if parts else "(no evaluated rows)"


def render_report(r: EvalResult, inputs: ReportInputs) -> str:
    """report.md's text: every section of `r`, the fluency section last; reads `r` and changes nothing."""
    lines = [*_intro_lines(r), *_results_lines(r), *_scorer_lines(r), *_copying_lines(r, inputs)]
    return "\n".join(lines) + "\n" + "\n" + fluency_markdown(r.fluency)


def write_report(r: EvalResult, out: Path, inputs: ReportInputs) -> Path:
    """Write report.md into `out` in one piece (`render_report`; the plots `r.plots` names are written
    already, by `write_plots`)."""
    path = out / "report.md"
    write_local_atomic(path, render_report(r, inputs))
    return path


def _intro_lines(r: EvalResult) -> list[str]:
    """The report's title, what was evaluated on which rows, and the compute budget."""
    meta = r.meta
    tw = meta.train_wall_time_s
    return [
        "# reviewgen evaluation report",
        "",
        f"Model `{meta.model_dir}` (version {meta.model_version}) vs its MLE-only checkpoint "
        f"`{meta.baseline_dir}`, on {meta.data['evaluated_reviews']} reviews of "
        f"{meta.data['evaluated_products']} test-split products never seen in training."
        + "".join(
            f" Compared as well: {n.upper()} `{c['model_dir']}` (version {c['version']})."
            for n, c in meta.compared.items()
        ),
        "",
        "## Compute budget",
        "",
        f"- evaluation wall time: {meta.wall_time_s:.0f} s on {meta.device}" + (" (fast mode)" if meta.fast else ""),
        f"- training wall time (metrics.jsonl): {'unknown' if tw is None else f'{tw:.0f} s'}; steps "
        f"{meta.train_steps}, batch size {meta.batch_size} per worker",
        f"- generator {meta.generator_params / 1e6:.2f}M parameters ({meta.generator_config}); "
        f"discriminator {meta.discriminator_params / 1e6:.2f}M ({meta.discriminator_config}); "
        f"tokenizer {meta.tokenizer}",
        f"- data: {meta.data}",
        f"- temperatures {meta.temperatures}, seeds {meta.seeds} (mean ± sd over seeds), top-p {meta.top_p}",
        "",
    ]


def _results_lines(r: EvalResult) -> list[str]:
    """The targets, the matched-diversity comparison, quality and diversity, test NLL and condition match."""
    meta = r.meta
    embeddings = (
        "all-MiniLM-L6-v2 (English model; Chinese embeddings are weak)"
        if meta.embeddings_available
        else "unavailable, FED/MAUVE/title relevance are null"
    )
    return [
        "## Targets",
        "",
        _table(["target", "status", "detail"], [[k, v.status, v.detail] for k, v in r.targets.items()]),
        "",
        "## Matched diversity",
        "",
        _matched_text(r.matched),
        "",
        _matched_table(r),
        "",
        "## Quality and diversity",
        "",
        "BLEU against real test reviews of other unseen products with the same language, category and rating "
        "(human row: the real reviews of the evaluated products against the same pools). FED/MAUVE compare with "
        "the real reviews of the same products (human row: against reviews of the reference products).",
        "",
        _sweep_table(r, QUALITY_COLUMNS),
        "",
        f"Embeddings: {embeddings}; MAUVE package {'available' if meta.mauve_available else 'unavailable'}.",
        "",
        "## Test NLL (teacher forced, all test reviews, nats/token)",
        "",
        _table(["model", "NLL"], [[n.upper(), v] for n, v in r.nll.items()]),
        "",
        "## Condition match",
        "",
        "TF-IDF + logistic regression trained only on real train reviews; generated reviews are scored against "
        "the rating/category they were asked for. Polarity: 1-2 stars negative, 4-5 positive (3 left out); rows "
        "without a star rating (Chinese) by their sentiment label; one class-balanced classifier per language. "
        "Agreement is the share of rows of the asked polarity, balanced the mean of its per-class recalls; the "
        "human row is the ceiling these classifiers allow.",
        "",
        _sweep_table(r, CONDITION_COLUMNS),
        "",
    ]


def _scorer_lines(r: EvalResult) -> list[str]:
    """The scorer section: its mode, the out-of-family generator, the calibration, and its tables."""
    ood = r.meta.out_of_family
    return [
        "## Scorer",
        "",
        f"p_human: {r.scorer.section.get('mode', 'discriminator-only')}. Out-of-family generator: "
        + (
            f"`{ood.model_dir}` ({ood.generator_params / 1e6:.2f}M parameters, seed {ood.seed}), sampled at top-k "
            "40; never used to fit or calibrate the scorer."
            if ood
            else "none given (no out-of-family check)."
        ),
        "",
        f"Calibration: {json.dumps(_calibration_summary(r.calibration), default=json_default)}",
        "",
        _scorer_table(r.scorer),
        "",
        _fakes_table(r.scorer),
        "",
        "AUROC of each signal alone (oriented by its known direction; human = positive):",
        "",
        _signal_table(r.scorer),
        "",
    ]


def _copying_lines(r: EvalResult, inputs: ReportInputs) -> list[str]:
    """Copying and PII under the production filter, example generations, the plots and the protocol notes."""
    return [
        "## Copying and PII",
        "",
        f"Copy = a span of >= {inputs.review_filter.max_copy_span} tokens found in the training reviews (hashed "
        "n-gram index); accepted = passes the production output filter (`reviewgen.score.filter`: no copy, no PII, "
        f"not empty, broken, too short or in the wrong language). Human test reviews copy-rate: "
        f"{r.human.get('copy_rate', 0.0):.4f}.",
        "",
        _sweep_table(r, FILTER_COLUMNS),
        "",
        "## Example generations for unseen products",
        "",
        _examples(r, inputs),
        "",
        "## Plots",
        "",
        *[f"![{name}]({name})" for name in r.plots],
        "",
        "## Protocol notes",
        "",
        f"- {r.meta.reference_pools}.",
        "- GAN, MLE and compared models' samples share per-row random numbers (same keys and seeds).",
        "- Example texts and the length/rating plots use each model's sampled temperature nearest its matched one.",
        "- Scorer settings marked in_calibration=False were never used to fit the scorer (D's Platt calibration "
        "and the detector); the out-of-family generator never is.",
    ]


def _scorer_table(scorer: ScorerResult) -> str:
    rows = []
    for label, s in scorer.settings.items():
        for kind in ("calibrated", "discriminator", "uncalibrated", "tfidf_lr"):
            if kind not in s:
                continue
            m = s[kind]
            name = {"calibrated": "p_human", "discriminator": "D (Platt)", "uncalibrated": "D (raw)"}.get(kind, kind)
            rows.append(
                [
                    f"human vs {label}" + ("" if s["in_calibration"] else " (not in calibration)"),
                    s.get("source", "own"),
                    name,
                    m["auroc"],
                    m.get("tpr_1pct_fpr"),
                    m.get("tpr_5pct_fpr"),
                    m["accuracy"],
                    m["f1"],
                    m["ece"],
                    m.get("ece_floor"),
                    m["brier"],
                ]
            )
    return _table(
        [
            "setting",
            "source",
            "scorer",
            "AUROC",
            "TPR@1%FPR",
            "TPR@5%FPR",
            "accuracy",
            "F1",
            "ECE",
            "ECE floor",
            "Brier",
        ],
        rows,
    )


def _fakes_table(scorer: ScorerResult) -> str:
    """The scorer on another generator's labelled reviews (`--fakes`), per language and length bin."""
    f = scorer.fakes
    if f is None:
        return "No fakes file of another generator was read (`--fakes`)."
    rows = [
        [
            lang,
            m.n_human,
            m.n_machine,
            m.auroc,
            m.worst_bin_auroc,
            " / ".join(_length_bin(b) for b in m.length_bins),
            m.tpr_1pct_fpr,
            m.tpr_5pct_fpr,
            m.flagged_1pct,
            m.humans_flagged_1pct,
            m.ece,
            m.confident_human,
            m.out_of_domain_machine,
            m.out_of_domain_human,
        ]
        for lang, m in f.languages.items()
    ]
    return (
        f"Another generator's reviews, never fitted on: `{f.file}` ({f.rows} rows). TPR at 1%/5% FPR of "
        "the file's own humans; flagged: by the model's stored 1% threshold (machine reviews, and humans "
        "falsely accused).\n\n"
        + _table(
            [
                "language",
                "humans",
                "machine",
                "AUROC",
                "worst length bin",
                "AUROC by length (chars)",
                "TPR@1%",
                "TPR@5%",
                "flagged 1%",
                "humans flagged 1%",
                "ECE",
                "machine p_human>=0.9",
                "out-of-domain (machine)",
                "out-of-domain (human)",
            ],
            rows,
        )
        + "\n\n"
        + _calibrate_lines(f.calibrate)
    )


def _calibrate_lines(cal: Mapping[str, Any] | None) -> str:
    """`reviewgen calibrate` on the fakes file: fitted on half its groups, reported on the other half."""
    if not cal:
        return "No calibrate check: the fakes file has no group column (hotel_name, product_title, product_id)."
    if "skipped" in cal:
        return f"Calibrate check skipped: {cal['skipped']}"
    rows = [
        [
            x["language"],
            x["rows"],
            x["adapted"],
            x["auroc"],
            x["tpr_1pct"],
            x["tpr_5pct"],
            x["ece"],
            x["zero_shot_auroc"],
        ]
        for x in cal["languages"]
    ]
    return (
        f"`reviewgen calibrate` with the file's labels, {cal['evaluation']} (fitted on the other half):\n\n"
        + _table(["language", "rows", "adapted", "AUROC", "TPR@1%", "TPR@5%", "ECE", "zero-shot AUROC"], rows)
    )


def _length_bin(b: LengthBin) -> str:
    auc = "-" if b.auroc is None else f"{b.auroc:.3f}"
    lo, hi = b.chars
    return f"{lo}-{hi}: {auc}"


def _signal_table(scorer: ScorerResult) -> str:
    settings = {k: s for k, s in scorer.settings.items() if s.get("signals")}
    names = list(next(iter(settings.values()))["signals"]) if settings else []
    return _table(["setting", *names], [[k, *[s["signals"][n] for n in names]] for k, s in settings.items()])


def _calibration_summary(calib: Calibration | None) -> Mapping[str, Any] | None:
    """The calibration with each language's detector combiner reduced to its features, weights and choice
    (the per-candidate detail stays in metrics.json)."""
    if calib is None or calib.detector is None:
        return None if calib is None else calib.to_dict()
    det = Detector.from_dict(calib.detector)
    return {
        **{k: v for k, v in calib.to_dict().items() if k != "detector"},
        "detector": {
            lang: {
                "features": list(c.features),
                "weights": [round(w, 4) for w in c.weights],
                "candidate": c.info.get("candidate"),
                "worst_held_out_auroc": c.info.get("worst_held_out_auroc"),
                "dropped_for_sign": c.info.get("dropped_for_sign"),
            }
            for lang, c in det.combiners.items()
        },
    }


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl training history ([] when absent); names the line that is not JSON."""
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i + 1} is not JSON ({e})") from e
    return rows
