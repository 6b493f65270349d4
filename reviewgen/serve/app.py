"""Ray Serve deployment of the review scorer (FastAPI ingress, request batching, autoscaling).

Run it with `reviewgen serve --model DIR`, `python jobs/serve.py --model DIR`, or
`serve deploy cluster/serve_config.yaml` (import path `reviewgen.serve:app_builder`; the YAML is generated
by `build_serve_config()` via scripts/build_serve_config.py). The HTTP API lives in `reviewgen.serve.api`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray import serve
from ray.serve import metrics

from reviewgen.infra.runtime import ensure_ray
from reviewgen.score.scorer import Scorer
from reviewgen.serve.api import log_record, make_api
from reviewgen.serve.config import TOKEN_ENV, TOKEN_FILE_ENV, ServeConfig, ServeConfigError, load_api_token
from reviewgen.serve.scoring import replica_filter, score_reviews

DEPLOYMENT_NAME = "Scorer"
APP_NAME = "scorer"
DEFAULT_CLUSTER_MODEL_DIR = "/mnt/shared/models/current"
# ServeConfig fields that become Serve deployment options rather than app_builder args.
DEPLOYMENT_FIELDS = frozenset({"min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s",
                               "downscale_delay_s", "metrics_interval_s", "look_back_period_s", "num_cpus",
                               "num_gpus", "env_vars"})
LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]

logger = logging.getLogger("ray.serve")


@serve.deployment(name=DEPLOYMENT_NAME, logging_config={"encoding": "JSON", "enable_access_log": True})
@serve.ingress()
class ScorerDeployment:
    """One replica: loads the exported model once, batches concurrent requests into model calls."""

    def __init__(self, model_dir: str, config: dict[str, Any] | None = None):
        self.cfg = ServeConfig.from_dict(config)
        self.model_dir = str(model_dir)
        self.token = load_api_token()
        self.scorer = Scorer(self.model_dir, device=self.cfg.device)
        self.filter = replica_filter(self.cfg, self.scorer)
        self._score_batch.set_max_batch_size(self.cfg.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self.actor_name = ray.get_runtime_context().get_actor_name()
        self._lock = threading.Lock()  # the model runs in a worker thread; stats are read from the loop
        self._batch_sizes: collections.Counter[int] = collections.Counter()
        self._requests: collections.Counter[str] = collections.Counter()
        self._reviews_scored = 0
        self.m_requests = metrics.Counter("reviewgen_requests_total", "HTTP requests by route and status",
                                          tag_keys=("route", "status"))
        self.m_latency = metrics.Histogram("reviewgen_request_latency_s", "request latency (s) by route and status",
                                           boundaries=LATENCY_BOUNDARIES_S, tag_keys=("route", "status"))
        self.m_batch = metrics.Histogram("reviewgen_batch_size", "requests per model batch",
                                         boundaries=BATCH_BOUNDARIES)
        self.m_batch_reviews = metrics.Histogram("reviewgen_batch_reviews", "reviews per model batch",
                                                 boundaries=BATCH_BOUNDARIES)
        self.m_reviews = metrics.Counter("reviewgen_reviews_scored_total", "reviews scored")
        self._loaded = True
        logger.info(log_record("replica_ready", model_version=self.scorer.version, auth=self.token is not None,
                               copy_check=self.filter.ngrams is not None, replica=self.actor_name))

    def __serve_build_asgi_app__(self):
        """Late-bound ingress: the app is built per replica so its models carry this config's limits."""
        return make_api(self, self.cfg, self.token)

    def check_health(self) -> None:
        """Serve health check: fail until the model is loaded."""
        if not getattr(self, "_loaded", False):
            raise RuntimeError("model not loaded")

    # -- ScoreBackend --------------------------------------------------------------------------------
    def ready(self) -> bool:
        return getattr(self, "_loaded", False)

    def model_info(self) -> dict[str, Any]:
        calib = self.scorer.calibration or {}
        index = self.filter.ngrams
        return {"model_version": self.scorer.version, "model_dir": self.model_dir,
                "calibration": {k: calib[k] for k in ("scale", "bias") if k in calib},
                "detector": self.scorer.mode,
                "copy_index": {"n": index.n, "size": len(index), "threshold": self.filter.copy_threshold}
                if index is not None else None,
                "tokenizer": {"prefix_len": self.scorer.tok.prefix_len,
                              "max_review_len": self.scorer.tok.max_review_len},
                "config": self.cfg.public_dict(), "auth": self.token is not None}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            sizes = dict(self._batch_sizes)
            requests = dict(self._requests)
            reviews = self._reviews_scored
        return {"replica": self.actor_name, "batches": sum(sizes.values()),
                "max_batch_size_observed": max(sizes, default=0),
                "batch_size_counts": {str(k): v for k, v in sorted(sizes.items())},
                "reviews_scored": reviews, "requests": requests}

    def record_request(self, route: str, status: int, seconds: float) -> None:
        tags = {"route": route, "status": str(status)}
        self.m_requests.inc(tags=tags)
        self.m_latency.observe(seconds, tags=tags)
        with self._lock:
            self._requests[f"{route} {status}"] += 1
        if route == "/v1/score" or status >= 500:
            logger.info(log_record("request", route=route, status=status, latency_ms=round(seconds * 1000, 2)))

    async def score(self, reviews: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await self._score_batch(reviews)

    # -- batching ------------------------------------------------------------------------------------
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _score_batch(self, requests: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        """Score several requests' reviews in one model call (sizes set from the config in __init__)."""
        flat = [r for req in requests for r in req]
        with self._lock:
            self._batch_sizes[len(requests)] += 1
            self._reviews_scored += len(flat)
        self.m_batch.observe(len(requests))
        self.m_batch_reviews.observe(len(flat))
        self.m_reviews.inc(len(flat))
        if self.cfg.log_review_text:
            logger.info(log_record("batch_texts", texts=[r["text"] for r in flat]))
        # The model runs off the event loop so health checks and batch gathering continue meanwhile.
        results = await asyncio.to_thread(self._score_sync, flat)
        out, i = [], 0
        for req in requests:
            out.append(results[i:i + len(req)])
            i += len(req)
        return out

    def _score_sync(self, reviews: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return score_reviews(self.scorer, self.filter, reviews)


def build_app(model_dir: str | Path, config: ServeConfig | None = None):
    """The bound Serve application for a model directory (deployment options from the config)."""
    cfg = config or ServeConfig()
    model_dir = Path(model_dir).expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        raise ServeConfigError(f"{model_dir}: not a model directory (no config.json); export one first")
    opts: dict[str, Any] = {"max_ongoing_requests": cfg.max_ongoing_requests,
                            "ray_actor_options": cfg.ray_actor_options()}
    if cfg.min_replicas == cfg.max_replicas:
        opts["num_replicas"] = cfg.min_replicas
    else:
        opts["autoscaling_config"] = cfg.autoscaling_config()
    return ScorerDeployment.options(**opts).bind(str(model_dir), cfg.to_dict())


def app_builder(args: dict[str, Any]):
    """Application builder for `serve run` / `serve deploy` (import path reviewgen.serve:app_builder).

    args: {"model_dir": DIR, **ServeConfig fields}."""
    args = dict(args or {})
    model_dir = args.pop("model_dir", None)
    if not model_dir:
        raise ServeConfigError("app_builder: args.model_dir is required (the exported model directory)")
    return build_app(model_dir, ServeConfig.from_dict(args))


def build_serve_config(model_dir: str = DEFAULT_CLUSTER_MODEL_DIR, config: ServeConfig | None = None, *,
                       host: str = "127.0.0.1", port: int = 8000, app_name: str = APP_NAME,
                       route_prefix: str = "/") -> dict[str, Any]:
    """A Serve config (the `serve deploy` YAML) for this deployment.

    args carry only the non-default serving fields; scaling and resources go in the deployment block."""
    cfg = config or ServeConfig()
    default = ServeConfig().to_dict()
    args: dict[str, Any] = {"model_dir": str(model_dir)}
    for k, v in cfg.to_dict().items():
        if k not in DEPLOYMENT_FIELDS and v != default[k]:
            args[k] = v
    return {"proxy_location": "EveryNode",
            "http_options": {"host": host, "port": int(port), "request_timeout_s": _proxy_timeout(cfg)},
            "applications": [{"name": app_name, "route_prefix": route_prefix,
                              "import_path": "reviewgen.serve:app_builder", "args": args,
                              "deployments": [{"name": DEPLOYMENT_NAME, "autoscaling_config": cfg.autoscaling_config(),
                                               "ray_actor_options": cfg.ray_actor_options()}]}]}


def _proxy_timeout(cfg: ServeConfig) -> float:
    # The proxy's end-to-end timeout sits above the handler's own, so clients get the handler's JSON 504.
    return float(cfg.request_timeout_s + 5)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(model_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
               config: ServeConfig | None = None, blocking: bool = True,
               log: Callable[[str], None] = print, app_name: str = APP_NAME, route_prefix: str = "/") -> str:
    """Start Serve (HTTP on host:port) and deploy the scorer; returns the base URL.

    Connects to the Ray cluster in $RAY_ADDRESS if set, else starts a local one. With blocking=True it
    serves until Ctrl-C and then shuts Serve down. A token in $REVIEWGEN_API_TOKEN(_FILE) is forwarded to
    the replicas (as the file path when one is used)."""

    cfg = config or ServeConfig()
    token = load_api_token()
    env = dict(cfg.env_vars)
    for name in (TOKEN_FILE_ENV, TOKEN_ENV):
        if os.environ.get(name) and name not in env:
            env[name] = os.environ[name]
            break
    cfg = dataclasses.replace(cfg, env_vars=env)
    if token is None and not _is_loopback(host):
        log(f"WARNING: serving on {host} without auth; set {TOKEN_ENV} or {TOKEN_FILE_ENV} "
            f"or bind to 127.0.0.1")
    app = build_app(model_dir, cfg)
    ensure_ray(log=log, log_to_driver=False)
    serve.start(http_options={"host": host, "port": int(port), "request_timeout_s": _proxy_timeout(cfg)})
    t0 = time.time()
    serve.run(app, name=app_name, route_prefix=route_prefix, blocking=False)
    url = f"http://{host}:{port}{route_prefix.rstrip('/')}"
    log(f"scorer up in {time.time() - t0:.1f}s at {url}/v1/score (docs {url}/docs, auth "
        f"{'on' if token else 'off'})")
    if blocking:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            log("shutting down Serve")
            serve.shutdown()
    return url
