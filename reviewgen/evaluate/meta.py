"""The run metadata of an evaluation (`RunMeta` in metrics.json): compute budget, model sizes and configs,
data sizes, the evaluation protocol's settings, and the compared and out-of-family models."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

from reviewgen.core.checkpoint import Checkpoint
from reviewgen.core.models import count_params
from reviewgen.evaluate.config import EvalConfig
from reviewgen.evaluate.inputs import EvalModels, EvalPaths, EvalRows
from reviewgen.evaluate.jsonio import read_history
from reviewgen.evaluate.results import OutOfFamily, RunMeta


def run_meta(
    paths: EvalPaths,
    models: EvalModels,
    rows: EvalRows,
    c: EvalConfig,
    *,
    embeddings_available: bool,
    device: str,
    nll_reviews: int,
    max_copy_span: int | None,
) -> RunMeta:
    """Compute budget and settings: model sizes, training time, data sizes, evaluation protocol (with the
    copy threshold the filter applied, `max_copy_span`), and the compared and out-of-family models (the wall
    time is filled in at the end)."""
    history = read_history(paths.model_dir / "metrics.jsonl")
    gan, mle = models.ck["gan"], models.ck["mle"]
    cfg, tok = gan.config.to_dict(), gan.tokenizer
    return RunMeta(
        model_dir=str(paths.model_dir),
        baseline_dir=str(paths.baseline_dir),
        data_dir=str(paths.data_dir),
        model_version=gan.version,
        baseline_version=mle.version,
        device=device,
        generator_params=count_params(gan.generator),
        discriminator_params=count_params(gan.discriminator),
        generator_config=dict(cfg["generator"]),
        discriminator_config=dict(cfg["discriminator"]),
        tokenizer={"vocab_size": tok.vocab_size, "prefix_len": tok.prefix_len, "max_review_len": tok.max_review_len},
        train_steps={
            p: cfg["train"].get(k)
            for p, k in (("mle", "mle_steps"), ("disc", "disc_warmup_steps"), ("adv", "adv_steps"))
        },
        batch_size=gan.config.train.batch_size,
        train_wall_time_s=max((float(r.get("time", 0)) for r in history), default=None),
        data=_data_sizes(rows),
        temperatures=list(c.temperatures),
        seeds=list(c.seeds),
        top_p=c.top_p,
        max_copy_span=max_copy_span,
        fast=c.fast,
        embeddings_available=embeddings_available,
        mauve_available=importlib.util.find_spec("mauve") is not None,
        reference_pools=rows.pool_note,
        nll_reviews=nll_reviews,
        compared={
            name: {"model_dir": str(path), "version": models.ck[name].version} for name, path in paths.compare.items()
        },
        out_of_family=_out_of_family_meta(paths.ood_model_dir, models.ood),
    )


def _data_sizes(rows: EvalRows) -> dict[str, Any]:
    """Reviews and products of the train and test splits and of the evaluated rows, and the reference rows."""
    train, test, ev = rows.train, rows.test, rows.ev
    return {
        "train_reviews": len(train),
        "train_products": int(train["product_id"].nunique()),
        "test_reviews": len(test),
        "test_products": int(test["product_id"].nunique()),
        "evaluated_reviews": len(ev),
        "evaluated_products": int(ev["product_id"].nunique()),
        "reference_reviews": len(rows.ref),
        "evaluated_by_language": dict(Counter(ev["language"])),
    }


def _out_of_family_meta(model_dir: str | Path | None, ood: Checkpoint | None) -> OutOfFamily | None:
    """The out-of-family generator's directory, version, size, config, seed and training data (None: none)."""
    if ood is None:
        return None
    return OutOfFamily(
        model_dir=str(model_dir),
        version=ood.version,
        generator_params=count_params(ood.generator),
        generator_config=ood.config.to_dict()["generator"],
        seed=ood.config.train.seed,
        trained_on=ood.meta.data_hash,
    )
