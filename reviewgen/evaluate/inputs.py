"""What one evaluation reads: where its models, data and report live (`EvalPaths`, the compared models
checked by `check_compare_names` before any work), the loaded checkpoints and scorer (`load_models`) and the
evaluated test rows with what each model is asked for (`load_eval_rows`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch

from reviewgen.core.checkpoint import Checkpoint, load_checkpoint
from reviewgen.core.config import ConfigError
from reviewgen.core.encoding import conditions
from reviewgen.core.errors import MissingInputError
from reviewgen.core.model_dir import Calibration
from reviewgen.core.tokenizer import Condition
from reviewgen.data.corpus import load_split
from reviewgen.evaluate.config import EvalConfig
from reviewgen.evaluate.quality import MODELS, Log, reference_pools, split_eval_rows
from reviewgen.evaluate.scorer_eval import refit_calibration
from reviewgen.score.scorer import Scorer


@dataclass(frozen=True)
class EvalPaths:
    """Where one evaluation reads and writes: the GAN, its baseline, the data, the report directory, the
    compared models by name and the out-of-family generator (None: no check)."""

    model_dir: Path
    baseline_dir: Path
    data_dir: str | Path
    out_dir: Path
    compare: dict[str, Path]
    ood_model_dir: str | Path | None


@dataclass(frozen=True)
class EvalModels:
    """The loaded checkpoints by name (gan, mle, then the compared ones), the calibration in force, the
    scorer, and the out-of-family checkpoint (None: no check)."""

    ck: dict[str, Checkpoint]
    calib: Calibration | None
    scorer: Scorer
    ood: Checkpoint | None


@dataclass(frozen=True)
class EvalRows:
    """The splits and the evaluated test rows with what each model is asked for: reference pools,
    conditions, languages, per-row sampling keys and the human texts of the same rows."""

    train: pd.DataFrame
    test: pd.DataFrame
    ev: pd.DataFrame
    ref: pd.DataFrame
    pools: list
    pool_note: str
    conds: list[Condition]
    langs: list[str]
    keys: list[str]
    human: list[str]


def check_compare_names(compare: Mapping[str, str | Path]) -> dict[str, Path]:
    """The `compare` models as {name: directory}; a name must be a plain word other than the built-in
    gan, mle, human and ood, and the directory must exist (checked before the long evaluation starts)."""
    out = {}
    for name, path in compare.items():
        if not name.replace("_", "").replace("-", "").isalnum() or name.lower() in (*MODELS, "human", "ood"):
            raise ConfigError(
                f"evaluate: compare model name {name!r} must be a plain word other than gan, mle, human and ood"
            )
        if not Path(path).is_dir():
            raise MissingInputError(f"evaluate: compare model {name!r}: no model directory at {path}")
        out[name] = Path(path)
    return out


def load_models(paths: EvalPaths, c: EvalConfig, dev: torch.device, log: Log) -> EvalModels:
    """Refit the scorer calibration first (when `c.recalibrate`), so the scorer loaded after it reads the
    refit; then every checkpoint the evaluation samples from."""
    calib = None
    if c.recalibrate:
        calib = refit_calibration(
            paths.model_dir,
            paths.data_dir,
            checkpoints=[paths.model_dir, paths.baseline_dir],
            device=str(dev),
            max_rows=64 if c.fast else None,
            log=log,
        )
    ck = {
        "gan": load_checkpoint(paths.model_dir, dev),
        "mle": load_checkpoint(paths.baseline_dir, dev),
        **{name: load_checkpoint(path, dev) for name, path in paths.compare.items()},
    }
    scorer = Scorer.from_checkpoint(ck["gan"], str(dev))
    ood = load_checkpoint(paths.ood_model_dir, dev) if paths.ood_model_dir is not None else None
    return EvalModels(ck, calib or ck["gan"].calibration, scorer, ood)


def load_eval_rows(data_dir: str | Path, c: EvalConfig, log: Log) -> EvalRows:
    """The evaluated rows of unseen test products and their reference pools (`split_eval_rows`)."""
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    ev, ref = split_eval_rows(test, c.n_products, c.samples_per_product)
    pools, pool_note = reference_pools(ev, ref)
    conds, langs = conditions(ev), ev["language"].tolist()
    keys = [f"{pid}:{i}" for i, pid in enumerate(ev["product_id"])]
    log(
        f"evaluating on {len(ev)} test reviews of {ev['product_id'].nunique()} unseen products "
        f"({dict(Counter(langs))}); {len(c.temperatures)} temperatures x {len(c.seeds)} seeds; {pool_note}"
    )
    return EvalRows(train, test, ev, ref, pools, pool_note, conds, langs, keys, ev["text"].astype(str).tolist())
