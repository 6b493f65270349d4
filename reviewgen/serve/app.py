"""Ray Serve application of the review scorer: a thin FastAPI ingress (`reviewgen.serve.ingress`) in front of
batched model replicas (`reviewgen.serve.replica`), with autoscaling, retries and graceful draining.

Run it with `reviewgen serve --model DIR`, `python jobs/serve.py --model DIR`, or
`serve deploy cluster/serve_config.yaml` (import path `reviewgen.serve:app_builder`; the YAML is generated
by `build_serve_config()` via scripts/build_serve_config.py). The HTTP API lives in `reviewgen.serve.api`.

Model updates: deploying the same app name with a new `model_dir` (`serve deploy`, `reviewgen serve --model
NEW` against a running cluster, or a RayService serveConfigV2 change) is a rolling update of the model
deployment only. Serve starts each replacement before its old replica stops (max_surge_percent), and the
old replica finishes its queue first (graceful_shutdown_*). A request that an old replica rejects while
quiescing is routed to another replica by Serve, and one whose replica dies is retried by the ingress. Each
response names the model_version that scored it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray import serve

from reviewgen.core.model_dir import is_model_dir, ngram_order
from reviewgen.infra.runtime import ensure_ray
from reviewgen.serve.config import TOKEN_ENV, TOKEN_FILE_ENV, ServeConfig, ServeConfigError, load_api_token
from reviewgen.serve.ingress import INGRESS_DEPLOYMENT, IngressDeployment
from reviewgen.serve.replica import MODEL_DEPLOYMENT, ScorerDeployment
from reviewgen.serve.scoring import filter_config

APP_NAME = "scorer"
DEFAULT_CLUSTER_MODEL_DIR = "/mnt/shared/models/current"
# ServeConfig fields that become Serve deployment options rather than app_builder args.
DEPLOYMENT_FIELDS = frozenset(
    {
        "min_replicas",
        "max_replicas",
        "target_ongoing_requests",
        "upscale_delay_s",
        "downscale_delay_s",
        "metrics_interval_s",
        "look_back_period_s",
        "num_cpus",
        "num_gpus",
        "env_vars",
        "ingress_replicas",
        "ingress_num_cpus",
        "graceful_shutdown_wait_loop_s",
        "graceful_shutdown_timeout_s",
        "max_surge_percent",
    }
)


def build_app(model_dir: str | Path, config: ServeConfig | None = None):
    """The bound Serve application for a model directory (deployment options from the config)."""
    cfg = config or ServeConfig()
    model_dir = Path(model_dir).expanduser().resolve()
    if not is_model_dir(model_dir):
        raise ServeConfigError(f"{model_dir}: not a model directory (no config.json or meta.json); export one first")
    # a max_copy_span below the model's n-gram size fails here, before Ray, not in every replica
    filter_config(cfg).resolved(ngram_order(model_dir))
    opts: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": cfg.ray_actor_options(),
        **cfg.rollout_options(),
    }
    if cfg.min_replicas == cfg.max_replicas:
        opts["num_replicas"] = cfg.min_replicas
    else:
        opts["autoscaling_config"] = cfg.autoscaling_config()
    model = ScorerDeployment.options(**opts).bind(str(model_dir), cfg.to_dict())
    # The ingress holds every request the model replicas can take at once (it only waits on them).
    return IngressDeployment.options(
        num_replicas=cfg.ingress_replicas,
        ray_actor_options=cfg.ingress_actor_options(),
        max_ongoing_requests=cfg.max_ongoing_requests * cfg.max_replicas,
        **cfg.rollout_options(),
    ).bind(model, cfg.to_dict())


def app_builder(args: dict[str, Any]):
    """Application builder for `serve run` / `serve deploy` (import path reviewgen.serve:app_builder).

    args: {"model_dir": DIR, **ServeConfig fields}."""
    args = dict(args or {})
    model_dir = args.pop("model_dir", None)
    if not model_dir:
        raise ServeConfigError("app_builder: args.model_dir is required (the exported model directory)")
    return build_app(model_dir, ServeConfig.from_dict(args))


def build_serve_config(
    model_dir: str = DEFAULT_CLUSTER_MODEL_DIR,
    config: ServeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = APP_NAME,
    route_prefix: str = "/",
) -> dict[str, Any]:
    """A Serve config (the `serve deploy` YAML) for this deployment.

    args carry only the non-default serving fields; scaling and resources go in the deployment block."""
    cfg = config or ServeConfig()
    default = ServeConfig().to_dict()
    args: dict[str, Any] = {"model_dir": str(model_dir)}
    for k, v in cfg.to_dict().items():
        if k not in DEPLOYMENT_FIELDS and v != default[k]:
            args[k] = v
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": int(port), "request_timeout_s": _proxy_timeout(cfg)},
        "applications": [
            {
                "name": app_name,
                "route_prefix": route_prefix,
                "import_path": "reviewgen.serve:app_builder",
                "args": args,
                "deployments": [
                    {
                        "name": INGRESS_DEPLOYMENT,
                        "num_replicas": cfg.ingress_replicas,
                        "ray_actor_options": cfg.ingress_actor_options(),
                        **cfg.rollout_options(),
                    },
                    {
                        "name": MODEL_DEPLOYMENT,
                        "autoscaling_config": cfg.autoscaling_config(),
                        "ray_actor_options": cfg.ray_actor_options(),
                        **cfg.rollout_options(),
                    },
                ],
            }
        ],
    }


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


def run_server(
    model_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
    blocking: bool = True,
    log: Callable[[str], None] = print,
    app_name: str = APP_NAME,
    route_prefix: str = "/",
) -> str:
    """Start Serve (HTTP on host:port) and deploy the scorer; returns the base URL.

    Connects to the Ray cluster in $RAY_ADDRESS if set, else starts a local one. An app of the same name
    already running there is updated in place (a rolling, zero-downtime model update). With blocking=True it
    serves until SIGINT (Ctrl-C) or SIGTERM, then drains and stops (`shutdown_server`). A token in
    $REVIEWGEN_API_TOKEN(_FILE) is forwarded to the replicas (as the file path when one is used)."""

    cfg = config or ServeConfig()
    token = load_api_token()
    env = dict(cfg.env_vars)
    for name in (TOKEN_FILE_ENV, TOKEN_ENV):
        if os.environ.get(name) and name not in env:
            env[name] = os.environ[name]
            break
    cfg = dataclasses.replace(cfg, env_vars=env)
    if token is None and not _is_loopback(host):
        log(f"WARNING: serving on {host} without auth; set {TOKEN_ENV} or {TOKEN_FILE_ENV} or bind to 127.0.0.1")
    app = build_app(model_dir, cfg)
    started = ensure_ray(log=log, log_to_driver=False)
    # After ray.init: its C++ failure handler takes SIGTERM (prints a stack and aborts the driver), and
    # ours must replace it. A Ctrl-C during ray.init itself is a plain KeyboardInterrupt.
    stop = _StopSignal() if blocking else None
    try:
        serve.start(http_options={"host": host, "port": int(port), "request_timeout_s": _proxy_timeout(cfg)})
        t0 = time.time()
        serve.run(app, name=app_name, route_prefix=route_prefix, blocking=False)
        url = f"http://{host}:{port}{route_prefix.rstrip('/')}"
        log(
            f"scorer up in {time.time() - t0:.1f}s at {url}/v1/score (docs {url}/docs, auth {'on' if token else 'off'})"
        )
        if stop is not None:
            stop.wait()
            log(f"{stop.name} received: draining in-flight requests (at most {cfg.graceful_shutdown_timeout_s}s)")
    finally:
        if blocking:
            try:
                shutdown_server(app_name, stop_ray=started == "local", log=log)
            finally:
                if stop is not None:  # kept through the drain, so a second signal skips it
                    stop.restore()
    return url


class _StopSignal:
    """SIGINT and SIGTERM both ask for the same graceful stop; a second signal stops at once."""

    def __init__(self):
        self._event = threading.Event()
        self.name = ""
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, _frame) -> None:
        if self._event.is_set():
            raise KeyboardInterrupt  # impatient second Ctrl-C: skip the drain
        self.name = signal.Signals(signum).name
        self._event.set()

    def wait(self) -> None:
        # Short waits keep the main thread responsive to signals.
        while not self._event.wait(0.5):
            pass

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def shutdown_server(app_name: str = APP_NAME, *, stop_ray: bool, log: Callable[[str], None] = print) -> None:
    """Drain and stop: /readyz turns 503, the app is deleted (Serve lets every replica finish its queue),
    and with `stop_ray` (the local Ray this process started) Serve and Ray stop too. On a shared cluster
    only this app goes; Serve and the other apps stay."""
    t0 = time.time()
    try:
        if ray.is_initialized():
            try:
                serve.get_deployment_handle(INGRESS_DEPLOYMENT, app_name).drain.remote().result(timeout_s=5)
            except Exception as e:  # the app may already be gone; the drain below still holds
                log(f"could not mark the ingress draining ({type(e).__name__})")
            serve.delete(app_name)
            if stop_ray:
                serve.shutdown()
    finally:
        if stop_ray and ray.is_initialized():
            ray.shutdown()
    log(f"stopped in {time.time() - t0:.1f}s")
