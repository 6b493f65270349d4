"""Experiment tracking on MLflow (the optional `track` extra: `pip install reviewgen[track]`).

Runs are written through an explicit `MlflowClient` bound to the user's tracking URI, never through
MLflow's process-global "active run", so a library call cannot leak a run or a URI into its caller.
A run id can be handed to another process (a Ray Train worker, a resumed job) to keep logging to the
same run.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping

from reviewgen.core.errors import ReviewgenError

EXTRA_HINT = "install the tracking extra: pip install 'reviewgen[track]' (MLflow)"
# MLflow 3 refuses its file store unless this is set; a local `file:` store is what the flag documents.
_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"


class TrackingError(ReviewgenError, RuntimeError):
    """Tracking was asked for but cannot work (extra missing, bad URI); the message says what to do."""


def _mlflow(uri: str):
    """MLflow's client module and entities, imported only when tracking is asked for (an optional extra)."""
    try:
        import mlflow.entities as entities
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise TrackingError(f"--tracking-uri {uri}: MLflow is not installed; {EXTRA_HINT}") from e
    return MlflowClient, entities


def _client(uri: str):
    client_cls, _ = _mlflow(uri)
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault(_FILE_STORE_ENV, "true")
    return client_cls(tracking_uri=uri)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys (`{"train": {"lr": 1}}` -> `{"train.lr": 1}`)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _name(key: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", key)[:250]


class Tracker:
    """One MLflow run. Create with `Tracker.start` (a new run) or `Tracker.attach` (an existing run id)."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._client = _client(uri)
        self._entities = _mlflow(uri)[1]

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> "Tracker":
        """Create (or reuse by name) the experiment and start a new run in it."""
        client = _client(uri)
        try:
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
            run = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
        except Exception as e:  # noqa: BLE001 - MLflow raises many types for a bad store; name the URI
            raise TrackingError(f"--tracking-uri {uri}: cannot open the tracking store: {e}") from e
        return cls(uri, run.info.run_id)

    @classmethod
    def attach(cls, uri: str, run_id: str) -> "Tracker":
        """Keep logging to an existing run (another process started it)."""
        return cls(uri, run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (possibly nested) config as params; values longer than MLflow allows are cut."""
        flat = flatten(params)
        items = [(k, json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)) for k, v in flat.items()]
        params = [self._entities.Param(_name(k), v[:6000]) for k, v in items]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self.run_id, params=params[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the finite numeric values of `metrics` at `step` (strings and NaN are skipped)."""
        ts = int(time.time() * 1000)
        batch = [
            self._entities.Metric(_name(k), float(v), ts, int(step))
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            self._client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set string tags on the run (e.g. the final model version)."""
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, str(v))

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Attach a file or a whole directory."""
        p = Path(path)
        if p.is_dir():
            self._client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(p), artifact_path)

    def finish(self, ok: bool = True) -> None:
        """Mark the run FINISHED (or FAILED)."""
        self._client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
