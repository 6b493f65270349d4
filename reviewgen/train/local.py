"""The single-process driver: `reviewgen train` without Ray runs one `GANTrainer` through the training loop
(`reviewgen.train.loop`) with a local sink, resuming from OUT/state when it is there. The Ray Train driver
is `reviewgen.train.distributed`; both write OUT the same way (`reviewgen.train.export`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from reviewgen.core.config import RunConfig
from reviewgen.core.device import pick_device
from reviewgen.core.encoding import encode_frame, fixed_batches
from reviewgen.core.model_dir import is_model_dir
from reviewgen.data.corpus import load_split
from reviewgen.train.batches import TensorBatches
from reviewgen.train.export import data_hash_of, finalize_model
from reviewgen.train.loop import LocalSink, LoopSettings, run_loop
from reviewgen.train.run_setup import setup_run
from reviewgen.train.trainer import GANTrainer


def train_local(
    data_dir: str | Path,
    out: str | Path,
    cfg: RunConfig,
    *,
    max_minutes: float | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
    resume: bool = True,
    stop_after_phase: str | None = None,
    init_from: str | Path | None = None,
    tracker=None,
) -> Path:
    """Train in this process and write OUT: the model (final, or partial with its phase in meta.json when
    the time budget or `stop_after_phase` ends the run first), OUT/mle (the MLE baseline), OUT/state
    (resumable: the same call continues from it) and OUT/metrics.jsonl.

    With `init_from` (a local Hugging Face model directory), a fresh run starts G and D from that base,
    with its tokenizer and architecture (see `reviewgen.core.hf_import.init_from_hf`); a resumed run
    continues from OUT/state as always. With a `tracker` (reviewgen.infra.tracking), every step's metrics
    are logged to it too."""
    deadline = time.time() + 60 * max_minutes if max_minutes else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    train_df, val_df = load_split(data_dir, "train"), load_split(data_dir, "val")
    state_dir = out / "state"
    resuming = resume and is_model_dir(state_dir)
    setup = setup_run(train_df, cfg, checkpoint=state_dir if resuming else None, init_from=init_from, log=log)
    cfg, tok, categories = setup.config, setup.tokenizer, setup.categories
    trainer = GANTrainer(cfg, tok, categories, dev, base=setup.init.base if setup.init is not None else None)
    val_batches = fixed_batches(encode_frame(val_df, tok, categories), cfg.train.batch_size, cfg.train.val_batches, dev)
    loader = TensorBatches(encode_frame(train_df, tok, categories), cfg.train.batch_size, cfg.train.seed, dev)
    run = trainer.resume_from(state_dir) if resuming else {}
    if run.get("loader"):
        loader.load_state_dict(run["loader"])
    log(f"training on {len(train_df)} reviews ({train_df['product_id'].nunique()} products); {trainer.describe()}")
    data_hash = data_hash_of(data_dir)
    settings = LoopSettings(
        deadline=deadline,
        stop_after_phase=stop_after_phase,
        data_hash=data_hash,
        resumes=int(run.get("resumes", -1)) + 1 if run else 0,
        elapsed=float(run.get("elapsed", 0.0)),
    )
    result = run_loop(
        trainer, loader, loader.state_dict, val_batches, LocalSink(out, trainer.global_step, log, tracker), settings
    )
    if result.stopped != "done":
        log(
            f"stopped in phase {result.phase} at global step {result.global_step}; resumable state in "
            f"{state_dir}: rerun the same command to continue"
        )
    return finalize_model(trainer, out, train_df, val_df, data_hash, log=log)
