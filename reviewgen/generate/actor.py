"""The generating actor of the nightly job: loads the exported model once, then per call generates,
scores, filters (the one `ReviewFilter`) and writes whole shards.

A shard's filter rejects are written first and its reviews file last, each atomically; the reviews file
carries the shard's counts in its footer and marks the shard finished. Generation is a pure function of
(product, index, seed), so a shard rewritten after a retried task is the same rows.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.device import pick_device
from reviewgen.core.sampling import generate_texts, row_seed
from reviewgen.core.tokenizer import Condition
from reviewgen.core.watermark import Watermark
from reviewgen.generate.config import GenerateConfig
from reviewgen.generate.run import STATS_KEY, draw_rating, review_id, shard_file
from reviewgen.infra.storage import filesystem, write_atomic
from reviewgen.score.filter import ReviewFilter
from reviewgen.score.scorer import Scorer

REVIEW_FIELDS = [
    ("product_id", pa.string()),
    ("review_id", pa.string()),
    ("review_index", pa.int64()),
    ("rating", pa.int64()),
    ("text", pa.string()),
    ("score", pa.float64()),
    ("model_version", pa.string()),
    ("run_id", pa.string()),
    ("seed", pa.int64()),
    ("generated_at", pa.string()),
    ("language", pa.string()),
    ("title", pa.string()),
    ("category", pa.string()),
    ("watermark_z", pa.float64()),
    ("watermark_key_id", pa.string()),
]
REJECT_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("product_id", pa.string()),
        ("review_id", pa.string()),
        ("review_index", pa.int64()),
        ("source_file", pa.string()),
        ("text", pa.string()),
        ("score", pa.float64()),
        ("raw", pa.string()),
        ("run_id", pa.string()),
        ("source_row", pa.int64()),
    ]
)
STATS_COLUMNS = ("shard", "products", "generated", "accepted", "t_generate", "t_score", "t_filter", "t_write")


def review_schema(keep_columns: Sequence[str]) -> pa.Schema:
    """Schema of the reviews table (pass-through columns as strings)."""
    return pa.schema(REVIEW_FIELDS + [(c, pa.string()) for c in keep_columns])


@dataclass(frozen=True)
class ShardJob:
    """What every actor needs: the run's settings and identity, the model and the partition to write."""

    config: GenerateConfig
    run_id: str
    model_version: str
    model_dir: str
    partition: str
    rating_distribution: tuple[float, ...]
    # sign every review with this watermark's first key (None: unwatermarked, as --no-watermark chose); its
    # repr shows key ids only, so the job's repr in a Ray error does not show the key
    watermark: Watermark | None = None


class GeneratorActor:
    """Ray Data actor (via `map_groups` by shard): one call = one whole shard of products -> its files."""

    def __init__(self, job: ShardJob):
        torch.set_num_threads(max(1, round(job.config.sharding.cpus_per_actor)))
        self.job, self.cfg = job, job.config
        self.device = pick_device(None)
        self.ckpt = load_checkpoint(job.model_dir, self.device)
        self.tok = self.ckpt.tokenizer
        # the same p_human as the scoring endpoint and `reviewgen score`
        self.scorer = Scorer.from_checkpoint(self.ckpt, str(self.device))
        # detect with the signing key alone, and accept only reviews that carry it at the threshold
        wm = job.watermark
        self.watermark = Watermark(wm.keys[:1], wm.config) if wm is not None else None
        self.scorer.watermark = self.watermark
        fc = replace(self.cfg.filter, require_watermark=True) if wm is not None else self.cfg.filter
        self.filter = ReviewFilter.from_model(self.ckpt.path, self.tok, fc)
        self.fs, self.part = filesystem(job.partition)
        cdf = np.cumsum(np.asarray(job.rating_distribution, dtype=np.float64))
        self.cdf = cdf / cdf[-1]

    def __call__(self, group: pd.DataFrame) -> pd.DataFrame:
        shards = group["shard"].unique()
        if len(shards) != 1:  # map_groups hands over exactly one shard; anything else is a wiring bug
            raise RuntimeError(f"GeneratorActor got rows of shards {sorted(shards)[:5]} in one call")
        products = group.drop(columns="shard").astype(object).where(group.drop(columns="shard").notna(), None)
        stats = self.write_shard(int(shards[0]), products.to_dict("records"))
        return pd.DataFrame([stats], columns=list(STATS_COLUMNS))

    def judge(self, conds: list[Condition], texts: list[str]) -> tuple[list[float | None], list[str | None]]:
        """(p_human, reject reason or None) per generated review, as `ReviewFilter.judge` decides for the
        scoring endpoint too: a text the scorer cannot score (no words, ...) is rejected with the scorer's
        reason first. The watermark's z-scores of the last call are kept in `last_watermark` (z, key id per
        review; None when unwatermarked)."""
        scored = self.scorer.score_texts(conds, texts, batch_size=self.cfg.sampling.batch_size)
        self.last_watermark = [
            (float(z) if np.isfinite(z) else None, k) for z, k in zip(scored["watermark_z"], scored["watermark_key_id"])
        ]
        judged = self.filter.judge(scored, texts, [c.language for c in conds])
        return [j.p_human for j in judged], [j.reasons[0] if j.reasons else None for j in judged]

    def write_shard(self, shard: int, products: list[dict[str, Any]]) -> dict[str, Any]:
        """Generate, score, filter and write one shard's reviews and rejects; returns its counts and times."""
        products = sorted(products, key=lambda p: p["product_id"])  # file content independent of arrival order
        t0 = time.perf_counter()
        rows, ratings, conds = self._review_slots(products)
        texts = self._generate(rows, conds)
        t1 = time.perf_counter()
        scores, why_not = self.judge(conds, texts)
        t2 = time.perf_counter()
        keep, rejects = self._sort_out(rows, ratings, texts, scores, why_not)
        t3 = time.perf_counter()
        counts = {"shard": shard, "products": len(products), "generated": len(rows), "accepted": len(keep)}
        self._write_files(shard, counts, keep, rejects)
        t4 = time.perf_counter()
        return {**counts, "t_generate": t1 - t0, "t_score": t2 - t1, "t_filter": t3 - t2, "t_write": t4 - t3}

    def _review_slots(
        self, products: list[dict[str, Any]]
    ) -> tuple[list[tuple[dict[str, Any], int]], list[int], list[Condition]]:
        """Every (product, review index) of the shard with its rating (the catalog's target rating, else a
        draw from the run's distribution, fixed by product, index and seed) and its generation condition."""
        s = self.cfg.sampling
        rows = [(pr, i) for pr in products for i in range(s.reviews_per_product)]
        ratings = [
            int(pr["target_rating"]) if pr.get("target_rating") else draw_rating(pr["product_id"], i, s.seed, self.cdf)
            for pr, i in rows
        ]
        conds = [
            Condition(title=pr["title"], category=pr.get("category") or "", rating=r, language=pr["language"])
            for (pr, _), r in zip(rows, ratings)
        ]
        return rows, ratings, conds

    def _generate(self, rows: list[tuple[dict[str, Any], int]], conds: list[Condition]) -> list[str]:
        """One text per slot, each sampled from its own seed (product, index, run seed) so that a slot's text
        does not depend on the batch it falls in; signed with the watermark when the run has one."""
        s = self.cfg.sampling
        seeds = [row_seed(pr["product_id"], i, s.seed) for pr, i in rows]
        return generate_texts(
            self.ckpt.generator,
            self.tok,
            conds,
            row_seeds=seeds,
            temperature=s.temperature,
            top_p=s.top_p,
            batch_size=s.batch_size,
            device=self.device,
            compile_decode=s.compile_decode,
            watermark=self.watermark,
        )

    def _sort_out(
        self,
        rows: list[tuple[dict[str, Any], int]],
        ratings: list[int],
        texts: list[str],
        scores: list[float | None],
        why_not: list[str | None],
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(reviews table rows, filter rejects rows): each judged review goes to one of the two, in slot order."""
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        keep, rejects = [], []
        for slot, r, text, sc, why, wm in zip(rows, ratings, texts, scores, why_not, self.last_watermark):
            if why:
                rejects.append(self._reject_record(slot, text=text, score=sc, reason=why))
            else:
                keep.append(self._review_record(slot, rating=r, text=text, score=sc, watermark=wm, now=now))
        return keep, rejects

    def _reject_record(
        self, slot: tuple[dict[str, Any], int], *, text: str, score: float | None, reason: str
    ) -> dict[str, Any]:
        """A filter reject row (`REJECT_SCHEMA`) for the review of `slot` (product, index)."""
        pr, i = slot
        return {
            "stage": "filter",
            "reason": reason,
            "product_id": pr["product_id"],
            "review_id": review_id(self.job.run_id, pr["product_id"], i),
            "review_index": i,
            "source_file": pr.get("source_file"),
            "text": text,
            "score": score,
            "raw": None,
            "run_id": self.job.run_id,
            "source_row": pr.get("source_row"),
        }

    def _review_record(
        self,
        slot: tuple[dict[str, Any], int],
        *,
        rating: int,
        text: str,
        score: float | None,
        watermark: tuple[float | None, str | None],
        now: str,
    ) -> dict[str, Any]:
        """An accepted review's row (`review_schema`): the review, its identity and the run's, and the
        product's kept catalog columns as strings."""
        pr, i = slot
        rec = {
            "product_id": pr["product_id"],
            "review_id": review_id(self.job.run_id, pr["product_id"], i),
            "review_index": i,
            "rating": rating,
            "text": text,
            "score": score,
            "model_version": self.job.model_version,
            "run_id": self.job.run_id,
            "seed": self.cfg.sampling.seed,
            "generated_at": now,
            "language": pr["language"],
            "title": pr["title"],
            "category": pr.get("category"),
            "watermark_z": watermark[0],
            "watermark_key_id": watermark[1],
        }
        rec.update({c: None if pr.get(c) is None else str(pr.get(c)) for c in self.cfg.catalog.keep_columns})
        return rec

    def _write_files(
        self, shard: int, counts: dict[str, Any], keep: list[dict[str, Any]], rejects: list[dict[str, Any]]
    ) -> None:
        """Write the shard's rejects, then its reviews with `counts` and the rejects per reason in the footer:
        rejects first, reviews last, since the reviews file marks the shard done."""
        reasons: dict[str, int] = {}
        for rj in rejects:
            reasons[rj["reason"]] = reasons.get(rj["reason"], 0) + 1
        stats = {**counts, "rejects_by_reason": dict(sorted(reasons.items()))}
        write_atomic(
            self.fs, shard_file(self.part, "rejects", shard), pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
        )
        schema = review_schema(self.cfg.catalog.keep_columns).with_metadata({STATS_KEY: json.dumps(stats).encode()})
        write_atomic(self.fs, shard_file(self.part, "reviews", shard), pa.Table.from_pylist(keep, schema=schema))
