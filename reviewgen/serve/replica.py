"""The model deployment: one Serve replica loads the exported model once and scores batches of requests.

It has no HTTP of its own; the ingress (`reviewgen.serve.ingress`) calls it through a DeploymentHandle.
Results are built by `reviewgen.serve.scoring.score_reviews` (the one place), and each call's answer names
the `model_version` that scored it, so a client can tell old from new replicas during a rollout.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.serve import metrics

from reviewgen.score.scorer import Scorer
from reviewgen.serve.api import log_record
from reviewgen.serve.config import ServeConfig
from reviewgen.serve.scoring import replica_filter, score_reviews

MODEL_DEPLOYMENT = "Scorer"
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]

logger = logging.getLogger("ray.serve")


class DispatchGate:
    """Tells Serve's batch queue when to stop waiting: at once while the model is idle, else as configured.

    `@serve.batch` waits `batch_wait_timeout_s` after a batch's first request even when nothing else is
    running, which costs a lone request that whole wait. Ray 2.60's batch queue re-evaluates
    `batch_size_fn` on every arrival and closes the batch as soon as the "size" reaches max_batch_size, so
    reporting a full batch while no model call is in flight dispatches at once (whatever is queued goes
    with it). While a call runs, the real count is reported: requests gather until the wait ends, the
    batch fills, or (on the next arrival) the model is free again. This keeps Serve's batching, its metrics
    and its setters, with no batching queue of our own."""

    def __init__(self, max_batch_size: int):
        self.max_batch_size = max_batch_size
        self.in_flight = 0  # model calls running; touched only on the replica's event loop

    def size(self, n: int) -> int:
        """The batch size to report for `n` queued requests."""
        return n if self.in_flight else max(n, self.max_batch_size)


@dataclass
class Queued:
    """One request in the batch queue; carries the replica's gate so `batch_size_fn` (a plain function,
    fixed at class definition) can read it."""

    reviews: list[dict[str, Any]]
    gate: DispatchGate


def _batch_size(items: list[Queued]) -> int:
    return items[0].gate.size(len(items)) if items else 0


@serve.deployment(name=MODEL_DEPLOYMENT, logging_config={"encoding": "JSON", "enable_access_log": False})
class ScorerDeployment:
    """One model replica: loads the exported model once, batches concurrent requests into model calls."""

    def __init__(self, model_dir: str, config: dict[str, Any] | None = None):
        self.cfg = ServeConfig.from_dict(config)
        self.model_dir = str(model_dir)
        # A model that fails to load fails the replica: Serve retries it, and the ingress's /readyz reports
        # the deployment's state (no replica running) with Serve's message.
        self.scorer = Scorer(self.model_dir, device=self.cfg.device)
        self.filter = replica_filter(self.cfg, self.scorer)
        self.gate = DispatchGate(self.cfg.max_batch_size)
        self._score_batch.set_max_batch_size(self.cfg.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self.actor_name = ray.get_runtime_context().get_actor_name()
        self._lock = threading.Lock()  # the model runs in a worker thread; stats are read from the loop
        self._batch_sizes: collections.Counter[int] = collections.Counter()
        self._reviews_scored = 0
        self.m_batch = metrics.Histogram(
            "reviewgen_batch_size", "requests per model batch", boundaries=BATCH_BOUNDARIES
        )
        self.m_batch_reviews = metrics.Histogram(
            "reviewgen_batch_reviews", "reviews per model batch", boundaries=BATCH_BOUNDARIES
        )
        self.m_reviews = metrics.Counter("reviewgen_reviews_scored_total", "reviews scored")
        logger.info(
            log_record(
                "replica_ready",
                model_version=self.scorer.version,
                check_copy=self.filter.ngrams is not None,
                replica=self.actor_name,
            )
        )

    def model_info(self) -> dict[str, Any]:
        """Version, calibration, copy index and tokenizer limits of the model this replica serves."""
        calib = self.scorer.calibration
        index = self.filter.ngrams
        return {
            "model_version": self.scorer.version,
            "model_dir": self.model_dir,
            "calibration": {"scale": calib.scale, "bias": calib.bias} if calib is not None else {},
            "detector": self.scorer.mode,
            "copy_index": {"n": index.n, "size": len(index), "threshold": self.filter.max_copy_span}
            if index is not None
            else None,
            "watermark": {
                "key_ids": list(self.scorer.watermark.key_ids),
                "threshold_z": self.scorer.watermark.config.threshold_z,
            }
            if self.scorer.watermark is not None
            else None,
            "tokenizer": {"prefix_len": self.scorer.tok.prefix_len, "max_review_len": self.scorer.tok.max_review_len},
            "config": self.cfg.public_dict(),
        }

    def stats(self) -> dict[str, Any]:
        """Batching counters of this replica."""
        with self._lock:
            sizes = dict(self._batch_sizes)
            reviews = self._reviews_scored
        return {
            "replica": self.actor_name,
            "model_version": self.scorer.version,
            "batches": sum(sizes.values()),
            "max_batch_size_observed": max(sizes, default=0),
            "batch_size_counts": {str(k): v for k, v in sorted(sizes.items())},
            "reviews_scored": reviews,
        }

    async def score(self, reviews: list[dict[str, Any]]) -> dict[str, Any]:
        """{"model_version", "results"} for one request's reviews (batched with concurrent requests)."""
        results = await self._score_batch(Queued(reviews, self.gate))
        return {"model_version": self.scorer.version, "results": results}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=_batch_size)
    async def _score_batch(self, requests: list[Queued]) -> list[list[dict[str, Any]]]:
        """Score several requests' reviews in one model call (sizes set from the config in __init__)."""
        self.gate.in_flight += 1
        try:
            flat = [r for req in requests for r in req.reviews]
            with self._lock:
                self._batch_sizes[len(requests)] += 1
                self._reviews_scored += len(flat)
            self.m_batch.observe(len(requests))
            self.m_batch_reviews.observe(len(flat))
            self.m_reviews.inc(len(flat))
            if self.cfg.log_review_text:
                logger.info(log_record("batch_texts", texts=[r["text"] for r in flat]))
            # The model runs off the event loop so health checks and batch gathering continue meanwhile.
            results = await asyncio.to_thread(score_reviews, self.scorer, self.filter, flat)
        finally:
            self.gate.in_flight -= 1
        out, i = [], 0
        for req in requests:
            out.append(results[i : i + len(req.reviews)])
            i += len(req.reviews)
        return out
