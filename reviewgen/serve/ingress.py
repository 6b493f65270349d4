"""The ingress deployment: the FastAPI app (`reviewgen.serve.api`) in a thin Serve replica that calls the
model deployment (`reviewgen.serve.replica`) through a DeploymentHandle.

Why a separate ingress: when the model replica holding a request dies, the HTTP proxy cannot retry it (it
does not know the request is idempotent). The ingress does: scoring is a pure function of the request, so
a request whose replica died is sent again, and the handle's router, which has just marked that replica
dead, routes it to another one (or queues it until a replacement is up, within the request timeout).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import metrics
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from reviewgen.serve.api import BackendUnavailable, log_record, make_api
from reviewgen.serve.config import ServeConfig, load_api_token
from reviewgen.serve.replica import MODEL_DEPLOYMENT

INGRESS_DEPLOYMENT = "Ingress"
# A request is tried at most this often: once, then once more on another replica after its replica died.
SCORE_ATTEMPTS = 2
RETRY_AFTER_S = 2
# Failures that mean "the replica went away", never "the request is bad": RayActorError covers
# ActorDiedError (the replica process died mid-request, what ray.kill and a crash raise) and
# ActorUnavailableError (unreachable for now); ReplicaUnavailableError is Serve's own word for it.
REPLICA_LOST = (RayActorError, ReplicaUnavailableError)
# The deployment cannot take requests at all (failed to deploy, or its queue is full): answer 503 at once.
UNAVAILABLE = (DeploymentUnavailableError, BackPressureError)
READY_CACHE_S = 0.5
LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]

logger = logging.getLogger("ray.serve")


@serve.deployment(name=INGRESS_DEPLOYMENT, logging_config={"encoding": "JSON", "enable_access_log": True})
@serve.ingress()
class IngressDeployment:
    """HTTP in front of the model replicas: auth, limits, validation, retries, readiness, per-route metrics."""

    def __init__(self, model: DeploymentHandle, config: dict[str, Any] | None = None):
        self.cfg = ServeConfig.from_dict(config)
        self.model = model
        self.token = load_api_token()
        ctx = serve.get_replica_context()
        self.app_name = ctx.app_name
        self.actor_name = ray.get_runtime_context().get_actor_name()
        self.draining = False
        self._ready_cache: tuple[float, str | None] = (0.0, "not checked yet")
        self._lock = threading.Lock()
        self._requests: collections.Counter[str] = collections.Counter()
        self._retries = 0
        self.m_requests = metrics.Counter(
            "reviewgen_requests_total", "HTTP requests by route and status", tag_keys=("route", "status")
        )
        self.m_latency = metrics.Histogram(
            "reviewgen_request_latency_s",
            "request latency (s) by route and status",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("route", "status"),
        )
        self.m_retries = metrics.Counter("reviewgen_score_retries_total", "scoring calls retried after a replica died")
        logger.info(log_record("ingress_ready", auth=self.token is not None, replica=self.actor_name))

    def __serve_build_asgi_app__(self):
        """Late-bound ingress: the app is built per replica so its models carry this config's limits."""
        return make_api(self, self.cfg, self.token)

    def drain(self) -> None:
        """Turn /readyz to 503 ahead of a shutdown (in-flight and new requests are still served)."""
        self.draining = True

    # -- ScoreBackend --------------------------------------------------------------------------------
    async def readiness(self) -> str | None:
        """None when ready, else why not: this ingress or the app is draining, a model replica is stopping
        (rollout or scale-down), or no model replica is running (still loading, or failed to load)."""
        if self.draining:
            return "draining: this server is shutting down"
        at, reason = self._ready_cache
        if time.monotonic() - at < READY_CACHE_S:
            return reason
        reason = await asyncio.to_thread(self._controller_view)
        self._ready_cache = (time.monotonic(), reason)
        return reason

    def _controller_view(self) -> str | None:
        # The controller's view, not a handle call: a handle call would wait for a replica that may never
        # come (a model that fails to load), and could not see replicas that are draining.
        app = serve.status().applications.get(self.app_name)
        if app is None or app.status == "DELETING":
            return "draining: the application is being deleted"
        dep = app.deployments.get(MODEL_DEPLOYMENT)
        states = {str(getattr(k, "value", k)): v for k, v in (dep.replica_states if dep else {}).items()}
        if states.get("STOPPING"):
            return f"draining: {states['STOPPING']} model replica(s) stopping"
        if not states.get("RUNNING"):
            detail = f" ({dep.status}: {dep.message})" if dep is not None and dep.message else ""
            return f"no model replica running: loading or failed to load{detail}"
        return None

    async def model_info(self) -> dict[str, Any]:
        info = await self._call("model_info")
        return {**info, "config": self.cfg.public_dict(), "auth": self.token is not None}

    async def stats(self) -> dict[str, Any]:
        model = await self._call("stats")
        with self._lock:
            requests = dict(self._requests)
            retries = self._retries
        return {**model, "requests": requests, "ingress": self.actor_name, "score_retries": retries}

    async def score(self, reviews: list[dict[str, Any]]) -> dict[str, Any]:
        return await self._call("score", reviews)

    def record_request(self, route: str, status: int, seconds: float) -> None:
        tags = {"route": route, "status": str(status)}
        self.m_requests.inc(tags=tags)
        self.m_latency.observe(seconds, tags=tags)
        with self._lock:
            self._requests[f"{route} {status}"] += 1
        if route == "/v1/score" or status >= 500:
            logger.info(log_record("request", route=route, status=status, latency_ms=round(seconds * 1000, 2)))

    # -- retry ---------------------------------------------------------------------------------------
    async def _call(self, method: str, *args: Any) -> Any:
        """Call a model replica; a replica that died under the call is replaced by another, once.

        Only replica loss is retried: an exception raised by the scoring code itself (a bug, or input the
        model rejects) comes back as a RayTaskError and is not retried, and client mistakes never get
        here (the API rejects them first)."""
        last: BaseException | None = None
        for attempt in range(SCORE_ATTEMPTS):
            try:
                return await getattr(self.model, method).remote(*args)
            except REPLICA_LOST as e:
                last = e
                if attempt + 1 < SCORE_ATTEMPTS:
                    with self._lock:
                        self._retries += 1
                    self.m_retries.inc()
                logger.warning(log_record("replica_lost", method=method, attempt=attempt + 1, error=type(e).__name__))
            except UNAVAILABLE as e:
                raise BackendUnavailable(f"model deployment unavailable: {type(e).__name__}", RETRY_AFTER_S) from e
        raise BackendUnavailable(
            f"the model replica was lost {SCORE_ATTEMPTS} times ({type(last).__name__}); try again", RETRY_AFTER_S
        ) from last
