"""`reviewgen sample|score|export`: use or export a trained model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from reviewgen.cli.common import log


def sample(
    *,
    model: Path = typer.Option(..., "--model", help="Model directory (from train or export)."),
    title: str = typer.Option(..., "--title", help="Product title."),
    category: str = typer.Option("", "--category", help="Product category text."),
    rating: Optional[int] = typer.Option(None, "--rating", min=1, max=5, help="Target star rating 1-5."),
    sentiment: Optional[str] = typer.Option(None, help="positive/negative/neutral, when there is no star rating (zh)."),
    language: str = typer.Option("en", help="en or zh."),
    n: int = typer.Option(3, "-n", help="Number of reviews."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature; 0 = greedy."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k cut (0 = off)."),
    seed: int = typer.Option(0, "--seed", help="(title, index, seed) always gives the same review."),
    score: bool = typer.Option(True, help="Also print the calibrated p_human of each review."),
    watermark_key_file: Optional[Path] = typer.Option(
        None,
        "--watermark-key-file",
        help="File of secret "
        "watermark keys, one per line, the first signing. The "
        "reviews are watermarked whenever a key is configured: "
        "this file, else $REVIEWGEN_WATERMARK_KEY_FILE or "
        "$REVIEWGEN_WATERMARK_KEY.",
    ),
):
    """Write reviews for one product."""
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.core.sampling import generate_texts
    from reviewgen.core.tokenizer import Condition

    ck = load_checkpoint(model)
    wm = _signing_watermark(watermark_key_file)
    cond = Condition(title=title, category=category, rating=rating, sentiment=sentiment, language=language)
    texts = generate_texts(
        ck.generator,
        ck.tokenizer,
        [cond] * n,
        [f"{title}:{i}" for i in range(n)],
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        watermark=wm,
    )
    res = _score_reviews(ck, wm, cond, texts) if score else {"p_human": [None] * n, "watermark_z": [None] * n}
    _log_reviews(texts, res)


def _signing_watermark(key_file: Path | None):
    """The watermark `sample` signs with (None when no key is configured), logged by key id."""
    from reviewgen.core.watermark import Watermark

    wm = Watermark.from_env(key_file)
    if wm is not None:
        log(f"watermark: signing key id {wm.key_id}")
    return wm


def _score_reviews(ck, wm, cond, texts: list[str]) -> dict:
    """p_human and watermark_z of each sampled review, from the scorer of the checkpoint already loaded (not a
    second copy read from disk)."""
    from reviewgen.score.scorer import Scorer

    scorer = Scorer.from_checkpoint(ck)
    scorer.watermark = wm
    return scorer.score(
        [
            {
                "text": t,
                "product_title": cond.title,
                "category": cond.category,
                "rating": cond.rating,
                "language": cond.language,
            }
            for t in texts
        ]
    )


def _log_reviews(texts: list[str], res: dict) -> None:
    """One console line per review: its index, p_human and watermark z-score when known, and the text."""
    for i, (t, p, z) in enumerate(zip(texts, res["p_human"], res["watermark_z"])):
        log(
            f"[{i}]"
            + (f" p_human={p:.3f}" if p is not None and p == p else "")
            + (f" watermark_z={z:.1f}" if z is not None else "")
            + f" {t}"
        )


def score(
    model: Path = typer.Option(..., "--model", help="Model directory."),
    input: Path = typer.Option(
        ...,
        "--input",
        help="Parquet, CSV or JSONL with a text column and optional product_title/title, category, rating, language.",
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        help="Output file (format from its extension): the input plus "
        "p_human, rating_pred, the signals (d_prob, mean_logprob, mean_log_rank, binoculars) "
        "and score_reason (why p_human is null).",
    ),
    text_column: str = typer.Option("text", help="Name of the review text column."),
    watermark_key_file: Optional[Path] = typer.Option(
        None,
        "--watermark-key-file",
        help="File of secret "
        "watermark keys, one per line (current and older keys); "
        "default: $REVIEWGEN_WATERMARK_KEY_FILE, else "
        "$REVIEWGEN_WATERMARK_KEY (+ $REVIEWGEN_WATERMARK_OLD_KEYS). "
        "Adds the columns watermark_z (the best key's z-score) and "
        "ours (the watermark detected at its threshold); null "
        "without a key.",
    ),
):
    """Score reviews in a file: how likely each is human-written (calibrated)."""
    from reviewgen.core.watermark import Watermark
    from reviewgen.data.io import read_table, write_table
    from reviewgen.score.scorer import Scorer

    df = read_table(input)
    scorer = Scorer(model)
    if watermark_key_file is not None:
        scorer.watermark = Watermark.from_env(watermark_key_file)
    out = scorer.score_frame(df, text_column=text_column)
    write_table(out, output)
    unscored = int(out["p_human"].isna().sum())
    log(
        f"scored {len(out) - unscored} reviews -> {output} (mean p_human {out['p_human'].mean():.3f}"
        + (f"; {unscored} not scored: {dict(out['score_reason'].value_counts())}" if unscored else "")
        + ")"
    )


def export(
    model: Path = typer.Option(
        ...,
        "--model",
        "--checkpoint",
        help="Trained model or checkpoint directory (--checkpoint is the older name of this flag).",
    ),
    out: Path = typer.Option(..., "--out", help="Directory to write."),
    format_: str = typer.Option(
        "reviewgen",
        "--format",
        help="reviewgen (default): a model directory for the "
        "generate and serve jobs (serving files + content-hash version). hf: the "
        "generator as a Hugging Face model directory (config.json, model.safetensors, "
        "tokenizer with the condition tokens, README.md with the prompt layout) that "
        "transformers, vLLM and ray.data.llm load. A LoRA generator's adapters are merged "
        "into full weights.",
    ),
    adapters: bool = typer.Option(
        False,
        "--adapters",
        help="With --format hf and a LoRA model: write the "
        "adapters alone as a PEFT adapter directory (adapter_model.safetensors, "
        "adapter_config.json with Hugging Face module names) instead of merging.",
    ),
    with_base: bool = typer.Option(
        False,
        "--with-base",
        help="With --adapters: also write OUT/base, the base "
        "model (with reviewgen's vocabulary) the adapters load onto.",
    ),
):
    """Export a trained model: for the generate and serve jobs, or (--format hf) for Hugging Face tools."""
    from reviewgen.core.checkpoint import export_model
    from reviewgen.core.config import ConfigError
    from reviewgen.core.hf_adapters import export_adapters
    from reviewgen.core.hf_export import export_hf
    from reviewgen.core.model_dir import read_meta

    if format_ not in ("reviewgen", "hf"):
        raise ConfigError(f"--format must be reviewgen or hf, got {format_!r}")
    if (adapters or with_base) and format_ != "hf":
        raise ConfigError("--adapters and --with-base need --format hf")
    if adapters:
        d = export_adapters(model, out, with_base=with_base)
    else:
        d = export_hf(model, out) if format_ == "hf" else export_model(model, out)
    if adapters:
        log(
            f"exported {d} (PEFT LoRA adapters: load with peft.PeftModel.from_pretrained onto the base"
            f"{' in ' + str(d / 'base') if with_base else ''})"
        )
    elif format_ == "hf":
        log(f"exported {d} (Hugging Face format: load with transformers.AutoModelForCausalLM.from_pretrained)")
    else:
        log(f"exported {d} (version {read_meta(d).version})")
