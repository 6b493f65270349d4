"""In-process scoring throughput: the scorer before (D alone, Platt-calibrated) and after (D, G
and the MLE reference, combined by the detector), on the same real reviews, model and batches.

Before = D over fixed-width batches in input order + `apply_calibration`, exactly what `Scorer.score`
computed before the detector (`old_scorer` keeps that path here, since the library's D path now batches by
length). After = `Scorer.score`: D, G and the reference over length-sorted batches, and the word n-gram
statistics. Also reported: D alone through today's signal path (length-sorted batches, and bf16 on a CPU with
native bf16), so that the gain from batching and precision can be told apart from the cost of G and the
reference. Goal: after >= 50% of before. The model: `--model DIR` (e.g. the `make demo` model, with
`--data` its prepared data), or else the bench's tiny model; one without the current detector gets it first
(`refit_calibration`, which also stores its reference network and word n-gram model).

Run: python -m bench.bench_score [--quick] [--model DIR --data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch

from bench.bench_generate import DATA_DIR, bench_model, model_description
from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.device import autocast, cpu_has_native_bf16, training_dtype
from reviewgen.core.encoding import conditions
from reviewgen.data.corpus import load_split
from reviewgen.score.platt import apply_calibration
from reviewgen.score.scorer import Scorer
from reviewgen.score.signals import review_signals

GOAL_FRACTION = 0.5
BATCH = 64


@torch.inference_mode()
def old_scorer(D, tok, conds, texts, calibration, batch_size: int = BATCH):
    """The scorer before the detector: D's Platt-calibrated probability over fixed-width batches."""
    logits = []
    for s in range(0, len(texts), batch_size):
        ids = tok.encode_examples(conds[s : s + batch_size], texts[s : s + batch_size])
        with autocast(ids.device, training_dtype(ids.device)):
            logits.append(D(ids).seq_logits.float())
    return apply_calibration(torch.cat(logits).numpy(), calibration)


def _rate(fn, n: int, repeats: int) -> float:
    """Best-of-`repeats` reviews/s of fn() over n reviews, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main(quick: bool = False, model: str | None = None, data: str | None = None) -> dict[str, Any]:
    """{"before_reviews_per_s", "after_reviews_per_s", "fraction", "goal_met", ...}."""
    model = model or bench_model()
    data = data or DATA_DIR
    probe = Scorer(model, device="cpu")
    if probe.detector is None or probe.wordlm is None:
        from reviewgen.evaluate.scorer_eval import refit_calibration

        refit_calibration(model, data, max_rows=128 if quick else 384, device="cpu", log=lambda *_: None)
    scorer = Scorer(model, device="cpu")
    test = load_split(data, "test")
    rows = test.sample(n=min(len(test), 128 if quick else 512), random_state=0)
    conds, texts = conditions(rows), rows["text"].astype(str).tolist()
    repeats = 2 if quick else 3

    # the before path's own fp32 discriminator: the Scorer's networks hold their matmul weights in the
    # inference dtype and run only under inference autocast
    d_before = load_checkpoint(model, torch.device("cpu")).discriminator

    def before():
        return old_scorer(d_before, scorer.tok, conds, texts, scorer.calibration)

    def after():
        return scorer.score_texts(conds, texts, batch_size=BATCH)

    def d_alone_now():
        return review_signals(scorer.D, None, scorer.tok, conds, texts, batch_size=BATCH, device=scorer.device)

    rb = _rate(before, len(texts), repeats)
    ra = _rate(after, len(texts), repeats)
    rd = _rate(d_alone_now, len(texts), repeats)
    return {
        "model": model_description(model),
        "mode": scorer.mode,
        "languages": rows["language"].value_counts().to_dict(),
        "reviews": len(texts),
        "batch": BATCH,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "before_reviews_per_s": round(rb, 1),
        "after_reviews_per_s": round(ra, 1),
        "d_alone_now_reviews_per_s": round(rd, 1),
        "inference_bf16": cpu_has_native_bf16(),
        "fraction": round(ra / rb, 3),
        "goal_fraction": GOAL_FRACTION,
        "goal_met": ra / rb >= GOAL_FRACTION,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", help="model directory to bench (default: the bench's tiny model)")
    ap.add_argument("--data", help="its prepared data directory (for a refit; default: the bench's)")
    a = ap.parse_args()
    print(json.dumps(main(a.quick, a.model, a.data), indent=2))
