"""The scoring endpoint's settings (`ServeConfig`) and its API token source; no Ray, no FastAPI."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from reviewgen.core.config import ConfigError, config_from_dict, read_yaml_mapping, with_overrides

TOKEN_ENV = "REVIEWGEN_API_TOKEN"
TOKEN_FILE_ENV = "REVIEWGEN_API_TOKEN_FILE"


class ServeConfigError(ConfigError):
    """A bad serving configuration (names the field)."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything configurable about the scoring endpoint (batching, limits, flags, scaling, resources).

    Loaded from YAML (fields at top level or under `serve:`) and `--set KEY=VALUE` flags with
    `reviewgen.core.config`; unknown keys are rejected. Frozen: derive variants with `dataclasses.replace`."""

    # batching
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    max_ongoing_requests: int = 64
    # ingress (the thin FastAPI deployment in front of the model replicas)
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.1
    # draining: a replica being stopped (scale-down, rollout, shutdown) finishes its queue first, checking
    # every wait_loop seconds, for at most timeout seconds (Serve's graceful_shutdown_* options)
    graceful_shutdown_wait_loop_s: float = 0.5
    graceful_shutdown_timeout_s: float = 20.0
    # rollouts (a new model_dir): extra replicas, in % of the target, started before old ones stop; 100
    # means a replacement is up before its old replica drains, so a one-replica app never has a gap
    max_surge_percent: int = 100
    # request limits
    max_reviews_per_request: int = 64
    max_text_chars: int = 4000
    max_field_chars: int = 512
    max_body_bytes: int = 1_048_576
    request_timeout_s: float = 30.0
    # flags (the output filter's copy and PII checks, named as in `FilterConfig`; the replica reports them,
    # never rejects)
    check_copy: bool = True
    max_copy_span: int | None = None  # copied when this many training tokens repeat (None: the index's n)
    check_pii: bool = True
    log_review_text: bool = False
    # autoscaling (Serve autoscaling_config)
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 8.0
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 120.0
    metrics_interval_s: float | None = None
    look_back_period_s: float | None = None
    # resources (Serve ray_actor_options)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    device: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ServeConfigError naming the first bad field."""
        positive = (
            "max_batch_size",
            "max_ongoing_requests",
            "max_reviews_per_request",
            "max_text_chars",
            "max_field_chars",
            "max_body_bytes",
            "request_timeout_s",
            "max_replicas",
            "target_ongoing_requests",
            "ingress_replicas",
            "graceful_shutdown_wait_loop_s",
            "graceful_shutdown_timeout_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ServeConfigError(f"serve config: {name} must be > 0, got {getattr(self, name)!r}")
        for name in (
            "batch_wait_timeout_s",
            "upscale_delay_s",
            "downscale_delay_s",
            "num_cpus",
            "num_gpus",
            "min_replicas",
            "ingress_num_cpus",
        ):
            if getattr(self, name) < 0:
                raise ServeConfigError(f"serve config: {name} must be >= 0, got {getattr(self, name)!r}")
        span = self.max_copy_span
        if span is not None and (isinstance(span, bool) or not isinstance(span, int) or span < 1):
            raise ServeConfigError(f"serve config: max_copy_span must be an integer >= 1 or null, got {span!r}")
        if isinstance(self.max_surge_percent, bool) or not 0 <= self.max_surge_percent <= 100:
            raise ServeConfigError(f"serve config: max_surge_percent must be 0..100, got {self.max_surge_percent!r}")
        if self.min_replicas > self.max_replicas:
            raise ServeConfigError(
                f"serve config: min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})"
            )
        if self.max_ongoing_requests < self.max_batch_size:
            # A replica never sees more than max_ongoing_requests at once, so bigger batches can't form.
            raise ServeConfigError(
                f"serve config: max_ongoing_requests ({self.max_ongoing_requests}) must be "
                f">= max_batch_size ({self.max_batch_size})"
            )
        if not isinstance(self.env_vars, dict) or not all(isinstance(v, str) for v in self.env_vars.values()):
            raise ServeConfigError("serve config: env_vars must map names to strings")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str = "serve config") -> ServeConfig:
        """Build from a plain mapping (`config_from_dict`); unknown keys are an error that names them."""
        try:
            return config_from_dict(cls, d, source)
        except ServeConfigError:
            raise
        except ConfigError as e:
            raise ServeConfigError(str(e)) from e

    @classmethod
    def from_yaml(cls, path: str | Path) -> ServeConfig:
        """Read a YAML mapping of fields, at top level or under a top-level `serve:` key."""
        data = read_yaml_mapping(path)
        if "serve" in data:
            return cls.from_dict(data["serve"], f"{path}:serve")
        return cls.from_dict(data, str(path))

    def with_overrides(self, dotted: Mapping[str, Any]) -> ServeConfig:
        """A copy with `{"max_batch_size": 8}`-style overrides (e.g. from `--set` flags) applied."""
        try:
            return with_overrides(self, dotted, source="--set")
        except ServeConfigError:
            raise
        except ConfigError as e:
            raise ServeConfigError(str(e)) from e

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML friendly)."""
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """to_dict() without env var values (they may hold secrets)."""
        d = self.to_dict()
        d["env_vars"] = sorted(self.env_vars)
        return d

    def autoscaling_config(self) -> dict[str, Any]:
        """Serve autoscaling_config."""
        out: dict[str, Any] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }
        for name in ("metrics_interval_s", "look_back_period_s"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def ray_actor_options(self) -> dict[str, Any]:
        """Serve ray_actor_options of a model replica (num_gpus and runtime_env only when used)."""
        out: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            out["num_gpus"] = self.num_gpus
        if self.env_vars:
            out["runtime_env"] = {"env_vars": dict(self.env_vars)}
        return out

    def ingress_actor_options(self) -> dict[str, Any]:
        """Serve ray_actor_options of an ingress replica (no GPU; the same env, which carries the token)."""
        out: dict[str, Any] = {"num_cpus": self.ingress_num_cpus}
        if self.env_vars:
            out["runtime_env"] = {"env_vars": dict(self.env_vars)}
        return out

    def rollout_options(self) -> dict[str, Any]:
        """Serve's rollout and graceful-shutdown deployment options (both deployments drain the same way)."""
        return {
            "max_surge_percent": self.max_surge_percent,
            "graceful_shutdown_wait_loop_s": self.graceful_shutdown_wait_loop_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }


def load_api_token(environ: dict[str, str] | None = None) -> str | None:
    """The configured bearer token: $REVIEWGEN_API_TOKEN, else the file named by $REVIEWGEN_API_TOKEN_FILE.

    A named token file that cannot be read is an error (never silently run without auth)."""
    env = os.environ if environ is None else environ
    token = (env.get(TOKEN_ENV) or "").strip()
    if token:
        return token
    path = (env.get(TOKEN_FILE_ENV) or "").strip()
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ServeConfigError(f"{TOKEN_FILE_ENV}={path}: cannot read token file ({e})") from e
    if not token:
        raise ServeConfigError(f"{TOKEN_FILE_ENV}={path}: token file is empty")
    return token
