"""The evaluation report: report.md rendered from the `EvalResult` `run_evaluation` builds.

The plots are written first (`reviewgen.evaluate.report_plots.write_plots`), as the report lists their
names; report.md is then rendered from the finished result in one piece (`render_report`: the run and its
budget, quality and matched diversity, condition match, copying and examples here, the scorer section from
`reviewgen.evaluate.report_scorer`, the fluency section last) and written once (`write_report`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from reviewgen.core.text import PII_KINDS
from reviewgen.evaluate.fluency import fluency_markdown
from reviewgen.evaluate.markdown import table
from reviewgen.evaluate.matching import MatchedDiversity
from reviewgen.evaluate.quality import MODELS, ConditionClassifiers
from reviewgen.evaluate.report_scorer import scorer_lines
from reviewgen.evaluate.results import EvalResult
from reviewgen.infra.storage import write_local_atomic
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
    return table(["texts", *columns], rows)


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
    return table(["model", "T (between)", "reached", *MATCHED_COLUMNS, "test NLL"], rows)


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
    lines = [*_intro_lines(r), *_results_lines(r), *scorer_lines(r), *_copying_lines(r, inputs)]
    return "\n".join(lines) + "\n" + "\n" + fluency_markdown(r.fluency)


def write_report(r: EvalResult, out: Path, inputs: ReportInputs) -> Path:
    """Write report.md into `out` in one piece (`render_report`; the plots `r.plots` names are written
    already, by `reviewgen.evaluate.report_plots.write_plots`)."""
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
        table(["target", "status", "detail"], [[k, v.status, v.detail] for k, v in r.targets.items()]),
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
        table(["model", "NLL"], [[n.upper(), v] for n, v in r.nll.items()]),
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
