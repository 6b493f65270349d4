"""`reviewgen calibrate`: adapt a model's scorer to a shop's labelled reviews, into a new model directory."""

from __future__ import annotations

from pathlib import Path

import typer

from reviewgen.cli.common import log


def read_labels(path: Path, text_column: str = "text"):
    """The labelled rows of a parquet, CSV or JSONL file, checked (`reviewgen.score.adapt_labels.check_labels`)."""
    from reviewgen.data.io import read_table
    from reviewgen.score.adapt_labels import check_labels

    return check_labels(read_table(path), str(path), text_column)


def calibrate(
    model: Path = typer.Option(
        ..., "--model", help="Model directory to adapt (from train or export); it is not changed."
    ),
    labels: Path = typer.Option(
        ...,
        "--labels",
        help="Labelled reviews, parquet/CSV/JSONL: a text column, "
        "is_generated (1 = machine-written, 0 = human), and optional product_title (or "
        "title), category, rating (1-5) and language (else detected from the text). "
        "At least 50 rows of each class; a language gets its own adapted model with "
        "50 of each, others keep the zero-shot detector.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="New model directory to write: a copy of MODEL with the adapted "
        "detector, a new version and adapt_report.json. Must not exist or be empty.",
    ),
    text_column: str = typer.Option("text", "--text-column", help="Name of the review text column."),
    folds: int = typer.Option(
        5,
        "--folds",
        min=2,
        help="Cross-validation folds: the report's figures and the stored thresholds come from out-of-fold scores.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the fold assignment."),
):
    """Adapt the scorer to labelled reviews (word and character n-grams stacked on the scorer's signals),
    report out-of-fold AUROC, TPR at 1% and 5% FPR and ECE per language, and write a new model version."""
    from reviewgen.score.adapt import fit_adapted
    from reviewgen.score.adapt_labels import score_labels
    from reviewgen.score.adapt_output import check_output_dir, write_adapted_model
    from reviewgen.score.scorer import Scorer

    check_output_dir(model, out)
    frame = read_labels(labels, text_column)
    scorer = Scorer(model)
    log(f"scoring {len(frame)} labelled reviews with {model} (version {scorer.version}) ...")
    data = score_labels(scorer, frame)
    log(f"fitting the adapted detector ({folds}-fold cross-validation) ...")
    detector, report = fit_adapted(data, folds=folds, seed=seed, source=str(labels))
    version = write_adapted_model(model, out, detector, report, labels)
    for line in report.lines():
        log(line)
    log(
        f"wrote {out} (version {version}, adapted from {scorer.version}; languages "
        f"{', '.join(detector.languages)}; report in {out / 'adapt_report.json'})"
    )
