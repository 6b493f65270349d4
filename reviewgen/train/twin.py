"""The out-of-family ("twin") generator of the evaluation's scorer check: a small generator the scorer never
saw, of another size, seed and tokenizer, trained with MLE only on a random half of the train products.

It lives in the train stage because training it runs the trainer; `reviewgen evaluate` calls
`train_ood_model` before the evaluation and hands the directory to `reviewgen.evaluate.run`, which only
loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from reviewgen.core.config import RunConfig
from reviewgen.core.model_dir import is_model_dir, read_run_config
from reviewgen.data.corpus import load_split
from reviewgen.train.local import train_local

# A generator the scorer never saw: another size, seed and tokenizer, trained on another set of products.
OOD_CONFIG: dict[str, Any] = {
    "tokenizer": {"vocab_size": 1000, "prefix_len": 24},
    "generator": {"n_layer": 2, "n_head": 2, "d_model": 96, "dropout": 0.0},
    "discriminator": {"n_layer": 1, "n_head": 2, "d_model": 32, "dropout": 0.0, "n_categories": 8},
    "train": {
        "batch_size": 32,
        "mle_steps": 400,
        "disc_warmup_steps": 0,
        "adv_steps": 0,
        "seed": 17,
        "warmup_steps": 20,
        "eval_every": 100,
        "checkpoint_every": 400,
        "val_batches": 2,
        "log_every": 100,
    },
}
SPLIT_SEED = 17  # which half of the train products the twin sees


def ood_config(model: Path, *, fast: bool = False, mle_steps: int | None = None) -> RunConfig:
    """`OOD_CONFIG` with the evaluated model's review length (so both write reviews of the same length), and
    `mle_steps` MLE steps (default the config's; 30 when `fast`), evaluated and saved once at the end."""
    review_len = read_run_config(model).tokenizer.max_review_len
    cfg = RunConfig.from_dict(
        {**OOD_CONFIG, "tokenizer": {**OOD_CONFIG["tokenizer"], "max_review_len": review_len}}, source="OOD_CONFIG"
    )
    steps = mle_steps or (30 if fast else cfg.train.mle_steps)
    return cfg.override({"train.mle_steps": steps, "train.eval_every": steps, "train.checkpoint_every": steps})


def half_of_train(data: Path, out: Path) -> tuple[Path, int]:
    """A data directory under `out` with the train reviews of a seeded random half of the train products
    (the other half stays unseen by the twin) and the whole val split; and how many products it kept."""
    train = load_split(data, "train")
    products = train["product_id"].drop_duplicates().sample(frac=0.5, random_state=SPLIT_SEED)
    ood_data = out / "data"
    ood_data.mkdir(parents=True, exist_ok=True)
    train[train["product_id"].isin(products)].to_parquet(ood_data / "train.parquet", index=False)
    load_split(data, "val").to_parquet(ood_data / "val.parquet", index=False)
    return ood_data, int(products.size)


def train_ood_model(
    data: Path,
    out: Path,
    model: Path,
    *,
    fast: bool = False,
    mle_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train (or reuse, when OUT already holds a model) the out-of-family generator into `out`: `ood_config` on
    `half_of_train`. Returns `out`, the model directory to pass to the evaluation."""
    out, data, model = Path(out), Path(data), Path(model)
    if is_model_dir(out):
        log(f"out-of-family generator: reusing {out}")
        return out
    cfg = ood_config(model, fast=fast, mle_steps=mle_steps)
    ood_data, n_products = half_of_train(data, out)
    g = cfg.generator
    log(
        f"out-of-family generator: training {g.n_layer} layers x {g.d_model} for {cfg.train.mle_steps} MLE steps "
        f"on {n_products} train products -> {out}"
    )
    train_local(ood_data, out, cfg, log=lambda *_: None)
    return out
