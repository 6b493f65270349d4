"""A run's set-up, decided once before the first step and shared by both drivers (`train_local` and the Ray
Train driver): continue a checkpoint, or start fresh with a tokenizer fitted on the training text or taken
from an `--init-from` base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.config import RunConfig
from reviewgen.core.encoding import build_categories, fit_tokenizer
from reviewgen.core.hf_import import HFInit, init_from_hf
from reviewgen.core.tokenizer import ReviewTokenizer


@dataclass(frozen=True)
class RunSetup:
    """What a run trains with, decided once before the first step: its config, tokenizer and categories, the
    base record (meta.json's "base") and, for a fresh start from a base, the base itself."""

    config: RunConfig
    tokenizer: ReviewTokenizer
    categories: list[str]
    base: dict[str, Any] | None = None
    init: HFInit | None = None  # a fresh run's --init-from base (weights read when asked for)


def setup_run(
    train_df,
    cfg: RunConfig,
    *,
    checkpoint: str | Path | None = None,
    init_from: str | Path | None = None,
    weights: bool = True,
    log: Callable[[str], None] = print,
) -> RunSetup:
    """The one set-up of a run, for both drivers: continue a `checkpoint` (its config, tokenizer, categories
    and base record win), or start fresh, with the BPE tokenizer fitted on the training text or, with
    `init_from`, the base's tokenizer and architecture (`weights=False` reads the base's header only)."""
    if checkpoint is not None:
        ck = load_checkpoint(checkpoint, "cpu")
        log(f"continuing from {checkpoint} (phase {ck.meta.phase}, step {ck.meta.step})")
        return RunSetup(ck.config, ck.tokenizer, ck.categories, dict(ck.meta.base) if ck.meta.base else None)
    init = init_from_hf(init_from, cfg, weights=weights) if init_from is not None else None
    if init is not None:
        cfg, tok = init.config, init.tokenizer
        log(f"starting from base {init.meta['path']} ({init.meta['model_type']}, sha256 {init.meta['sha256'][:12]})")
    else:
        tok = fit_tokenizer(train_df, cfg)
    categories = build_categories(train_df, cfg.discriminator.n_categories)
    cfg = cfg.finalize(vocab_size=tok.vocab_size, n_categories=len(categories))
    return RunSetup(cfg, tok, categories, init.meta if init is not None else None, init)
