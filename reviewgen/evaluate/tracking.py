"""An evaluation in the experiment tracker: its settings, metrics, model version and report directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reviewgen.evaluate.results import EvalResult


def log_evaluation(tracker: Any, result: EvalResult, cfg: Any, out: Path) -> None:
    """Log an evaluation to its tracking run (`reviewgen.infra.tracking.Tracker`) and finish it: the model,
    data and `cfg` (the `EvalConfig` as given) as params, every numeric metric of metrics.json but its
    "meta", the model version as a tag, and the report directory `out` (report.md, metrics.json, plots) as
    artifacts."""
    meta = result.meta
    tracker.log_params({"model": meta.model_dir, "data": meta.data_dir, "eval": vars(cfg)})
    tracker.log_metrics({k: v for k, v in result.to_dict().items() if k != "meta"}, step=0)
    tracker.log_artifacts(out, artifact_path="report")
    tracker.set_tags({"model_version": meta.model_version})
    tracker.finish()
