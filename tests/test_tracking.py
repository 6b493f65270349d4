"""Experiment tracking against a temporary MLflow file store, read back through MLflow's own client."""

from __future__ import annotations

import sys

import mlflow
import pytest

from reviewgen.infra import tracking
from reviewgen.infra.tracking import Tracker, TrackingError


def test_params_metrics_tags_and_artifacts_round_trip(tmp_path):
    uri = f"file:{tmp_path / 'mlruns'}"
    t = Tracker.start(uri, "reviewgen-test", "run-a", tags={"stage": "train"})
    t.log_params({"train": {"lr_g": 0.001, "mle_steps": 5}, "name": "x"})
    for step in range(3):
        t.log_metrics({"loss": 1.0 / (step + 1), "phase": "mle", "nan": float("nan")}, step=step)
    (tmp_path / "report.md").write_text("# report\n")
    Tracker.attach(uri, t.run_id).log_artifacts(tmp_path / "report.md")
    t.set_tags({"model_version": "abc123"})
    t.finish()
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(t.run_id)
    assert run.data.params == {"train.lr_g": "0.001", "train.mle_steps": "5", "name": "x"}
    assert [m.value for m in client.get_metric_history(t.run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert "nan" not in run.data.metrics and "phase" not in run.data.metrics
    assert run.data.tags["model_version"] == "abc123" and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(t.run_id)] == ["report.md"]


def test_missing_extra_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(TrackingError, match=r"pip install 'reviewgen\[track\]'"):
        tracking.Tracker.start("file:/nowhere", "e", "r")


def test_train_logs_params_every_step_and_the_model_version(prepared_data, tmp_path):
    import json

    from typer.testing import CliRunner

    from reviewgen.cli import app

    uri = f"file:{tmp_path / 'mlruns'}"
    out = tmp_path / "model"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(prepared_data),
            "--out",
            str(out),
            "--config",
            "configs/tiny.yaml",
            "--mle-steps",
            "4",
            "--disc-steps",
            "2",
            "--adv-steps",
            "2",
            "--set",
            "train.log_every=1",
            "--tracking-uri",
            uri,
        ],
    )
    assert res.exit_code == 0, res.output
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("reviewgen-train")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["run.train.mle_steps"] == "4" and run.data.params["job.num_workers"] == "0"
    history = client.get_metric_history(run.info.run_id, "g_loss")
    assert len(history) >= 4 and sorted({m.step for m in history}) == sorted(m.step for m in history)
    meta = json.loads((out / "meta.json").read_text())
    assert run.data.tags["model_version"] == meta["version"] and run.info.status == "FINISHED"
