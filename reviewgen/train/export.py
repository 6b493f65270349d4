"""The model directory a training run leaves at OUT: generator, discriminator, calibration, n-gram index,
word n-gram model.

Written when training completes, and also when it stops early (time budget, `stop_after_phase`): then it
holds the current generator and discriminator, `"complete": false` and the phase reached in meta.json, so
`reviewgen sample|score|generate` work at once while OUT/state stays ready for a rerun to continue.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd

from reviewgen.core.checkpoint import save_checkpoint
from reviewgen.core.encoding import encode_frame, fixed_batches
from reviewgen.core.losses import val_nll
from reviewgen.core.memorization import NGramIndex
from reviewgen.core.model_dir import Meta
from reviewgen.score.calibration import fit_calibration
from reviewgen.score.wordlm import build_wordlm

# calibration sample of a partial model: small, so stopping on a time budget stays quick
PARTIAL_CALIBRATION_ROWS = 96


def finalize_model(
    trainer, out: Path, train_df: pd.DataFrame, val_df: pd.DataFrame, data_hash: str, log: Callable[[str], None] = print
) -> Path:
    """Calibrate the scorer (D's Platt scaling and the detector over LM and word statistics, stored in
    calibration.json; the reference network in reference.safetensors, the word n-gram model in
    wordlm.npz), build the memorisation index, and write the trainer's models into OUT.

    A trainer in phase "done" gives the final model (role "final"); any other phase a usable partial one
    (role "partial", `complete: false`, with the phase and step it reached)."""
    out = Path(out)
    complete = trainer.phase == "done"
    # the scorer's second language model: the frozen MLE reference, or G itself before the reference exists
    ref = trainer.ref if trainer.ref is not None else trainer.G
    wordlm = build_wordlm(train_df["text"].astype(str).tolist(), trainer.cfg.train.seed)
    wordlm_file = wordlm.save(out / ".wordlm.tmp.npz")
    calib = fit_calibration(
        trainer.G,
        trainer.D,
        trainer.tok,
        val_df,
        ref=ref,
        wordlm=wordlm,
        seed=trainer.cfg.train.seed,
        log=log,
        **({} if complete else {"max_rows": PARTIAL_CALIBRATION_ROWS}),
    )
    idx = NGramIndex.build(
        trainer.tok.review_token_lists(train_df["text"].astype(str).tolist()), n=trainer.cfg.train.ngram_n
    )
    ngram_file = out / ".ngrams.tmp.npy"
    idx.save(ngram_file)
    final_val = _final_val_nll(trainer, val_df)
    save_checkpoint(
        out,
        config=trainer.cfg,
        categories=trainer.categories,
        tokenizer=trainer.tok,
        generator=trainer.G,
        discriminator=trainer.D,
        calibration=calib,
        ngram_file=ngram_file,
        wordlm_file=wordlm_file,
        reference=ref,
        meta=_model_meta(trainer, train_df, data_hash, {"val_nll": final_val, "calibration": calib.to_dict()}),
    )
    ngram_file.unlink(missing_ok=True)
    wordlm_file.unlink(missing_ok=True)
    what = "final model" if complete else f"partial model (phase {trainer.phase}, step {trainer.step})"
    log(f"{what} written to {out} (val NLL {final_val:.3f}, {len(idx)} n-grams indexed)")
    return out


def _final_val_nll(trainer, val_df: pd.DataFrame) -> float:
    """The generator's validation NLL over the run's fixed validation batches, stamped on the model."""
    return val_nll(
        trainer.G,
        fixed_batches(
            encode_frame(val_df, trainer.tok, trainer.categories),
            trainer.cfg.train.batch_size,
            trainer.cfg.train.val_batches,
            trainer.device,
        ),
        trainer.tk,
    )


def _model_meta(trainer, train_df: pd.DataFrame, data_hash: str, metrics: dict) -> Meta:
    """The model's meta.json: role "final" once training is done, else "partial" with the phase and step it
    reached; the training data's hash and rating distribution; the base it started from."""
    complete = trainer.phase == "done"
    return Meta(
        data_hash=data_hash,
        role="final" if complete else "partial",
        complete=complete,
        phase=trainer.phase,
        step=trainer.step,
        global_step=trainer.global_step,
        metrics=metrics,
        rating_distribution=tuple(rating_distribution(train_df)),
        base=trainer.base,
    )


def rating_distribution(df: pd.DataFrame) -> list[float]:
    """Share of 1..5-star reviews in a review table (the nightly job draws target ratings from it)."""
    counts = df["rating"].dropna().astype(int).value_counts()
    total = float(counts.sum()) or 1.0
    return [round(float(counts.get(k, 0)) / total, 6) for k in range(1, 6)]


def data_hash_of(data_dir: str | Path) -> str:
    """The data hash that `reviewgen prepare` wrote into stats.json ("unknown" without one)."""
    try:
        return json.loads((Path(data_dir) / "stats.json").read_text()).get("data_hash", "unknown")
    except (OSError, json.JSONDecodeError):
        return "unknown"
