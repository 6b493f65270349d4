"""Ray Train data-parallel training: 1-vs-2-worker equivalence, resume, lost-worker recovery, bad jobs.

The reference is `train_local` (one process, batch 8); the distributed runs use 2 workers x batch 4.
Replay of old fakes is off in these configs: each worker keeps its own replay buffer, so replay mixing
is not split-invariant (see the report), while everything else must match to float tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reviewgen.train.distributed import TrainJobError, run_distributed_training

TOL = 1e-4


def _quiet(*_):
    pass


def _cfg(tiny_config, batch_size: int):
    return tiny_config().override({"train.replay_frac": 0.0, "train.batch_size": batch_size})


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{m}.{k}": v for m in ("generator", "discriminator")
            for k, v in load_file(str(d / f"{m}.safetensors")).items()}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < TOL, f"{a} vs {b}: max parameter difference {worst:.2e}"


def _steps(d: Path) -> list[dict]:
    return [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _assert_same_losses(got: list[dict], ref: list[dict]) -> None:
    by_step = {r["global_step"]: r for r in ref}
    for r in got:
        exp = by_step[r["global_step"]]
        assert (r["phase"], r["step"]) == (exp["phase"], exp["step"])
        for k in ("g_loss", "d_loss", "d_acc", "val_nll", "kl", "pg_loss"):
            if k in exp:
                assert abs(r[k] - exp[k]) < TOL, f"global step {r['global_step']} {k}: {r[k]} vs {exp[k]}"


@pytest.fixture(scope="module")
def reference(prepared_data, tiny_config, tmp_path_factory) -> Path:
    """One process, global batch 8, all phases."""
    from reviewgen.train.trainer import train_local

    out = tmp_path_factory.mktemp("dist_reference")
    train_local(prepared_data, out, _cfg(tiny_config, 8), log=_quiet)
    return out


@pytest.mark.timeout(300)
def test_two_workers_match_one_and_resume_in_phase_two(ray_local, reference, prepared_data, tiny_config, tmp_path):
    out = tmp_path / "out"
    kw = dict(num_workers=2, data_loader="sharded_memory", name="eq", log=_quiet)
    state = run_distributed_training(prepared_data, out, _cfg(tiny_config, 4), stop_after_phase="mle", **kw)
    meta = json.loads((state / "meta.json").read_text())
    assert (meta["phase"], meta["step"], meta["global_step"]) == ("disc", 0, 6)
    first = _steps(out)
    assert [r["global_step"] for r in first] == list(range(1, 7))
    _assert_same_losses(first, _steps(reference))
    _assert_same_weights(out / "mle", reference / "mle")  # the MLE baseline is exported and equal

    final = run_distributed_training(prepared_data, out, _cfg(tiny_config, 4), **kw)
    assert final == out.resolve()
    steps = _steps(out)
    assert [r["global_step"] for r in steps] == list(range(1, 13))
    second = [r for r in steps if r["resumes"] == 1]
    assert (second[0]["phase"], second[0]["step"], second[0]["global_step"]) == ("disc", 1, 7)
    _assert_same_losses(steps, _steps(reference))
    _assert_same_weights(out, reference)
    assert json.loads((out / "meta.json").read_text())["global_step"] == 12


@pytest.mark.timeout(300)
def test_lost_worker_resumes_from_latest_checkpoint(ray_local, prepared_data, tiny_config, tmp_path):
    out = tmp_path / "out"
    final = run_distributed_training(prepared_data, out, _cfg(tiny_config, 4), num_workers=2, name="ft",
                                     max_failures=1, fail_at_step=5, log=_quiet)
    assert (out / "runs" / "ft" / ".fail_injected_at_5").is_file(), "the test hook never fired"
    steps = _steps(out)
    assert [r["global_step"] for r in steps] == list(range(1, 13)), "each step logged once, none lost"
    resumed = [r for r in steps if r["resumes"] == 1]
    assert resumed, "no step ran after a restart"
    # restarted from a mid-phase checkpoint (3 is the one before the failure), not from step 1
    assert resumed[0]["phase"] == "mle" and 1 < resumed[0]["step"] <= 5
    meta = json.loads((final / "meta.json").read_text())
    assert meta["global_step"] == 12 and len(meta["version"]) == 16
    assert (out / "mle" / "train_state.pt").is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({"num_workers": 0}, "num-workers"),
    ({"storage_path": "ftp://host/ray"}, "unsupported scheme 'ftp'"),
    ({"data_dir": "MISSING"}, "prepared data not found"),
    ({"use_gpu": True}, "no CUDA GPU"),
    ({"data_loader": "csv"}, "data-loader"),
    ({"resume_from": "MISSING"}, "not a resumable training checkpoint"),
])
def test_bad_jobs_fail_before_ray(kwargs, message, prepared_data, tiny_config, tmp_path, monkeypatch):
    import ray

    import reviewgen.train.distributed as dist

    def touched(*a, **k):
        raise AssertionError("Ray was touched before the job was validated")

    monkeypatch.setattr(ray, "init", touched)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "_run", touched)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    kwargs = {k: (tmp_path / "nope" if v == "MISSING" else v) for k, v in kwargs.items()}
    data = kwargs.pop("data_dir", prepared_data)
    with pytest.raises(TrainJobError, match=message):
        run_distributed_training(data, tmp_path / "out", tiny_config(), log=_quiet, **kwargs)
    assert not (tmp_path / "out").exists()


def test_job_entrypoint_parses_overrides_and_validates(prepared_data, tmp_path, monkeypatch):
    from jobs import train as job

    seen = {}

    def fake(data, out, cfg, **kw):
        seen.update(cfg=cfg, **kw)
        return Path(out)

    monkeypatch.setattr(job, "run_distributed_training", fake)
    job.main(["--data", str(prepared_data), "--out", str(tmp_path), "--num-workers", "3",
              "--set", "train.mle_steps=7", "--data-loader", "sharded_memory"])
    assert seen["cfg"].train.mle_steps == 7 and seen["num_workers"] == 3
    assert seen["data_loader"] == "sharded_memory"
    with pytest.raises(SystemExit):
        job.main(["--data", str(prepared_data), "--out", str(tmp_path), "--data-loader", "csv"])
