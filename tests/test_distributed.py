"""Ray Train data-parallel training: 1-vs-2-worker equivalence, resume, lost-worker recovery, bad jobs.

The reference is `train_local` (one process, batch 8); the distributed runs use 2 workers x batch 4.
Replay of old fakes is off in these configs: each worker keeps its own replay buffer, so replay mixing
is not split-invariant (see the report), while everything else must match to float tolerance.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from reviewgen.train.distributed import run_distributed_training
from reviewgen.train.job import TrainJobConfig, TrainJobError

TOL = 1e-4


def _quiet(*_):
    pass


def _cfg(tiny_config, batch_size: int, **train):
    return tiny_config().override(
        {"train.replay_frac": 0.0, "train.batch_size": batch_size, **{f"train.{k}": v for k, v in train.items()}}
    )


def _job(data, out, **kw) -> TrainJobConfig:
    return TrainJobConfig(data_dir=data, out=out, **kw)


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        f"{m}.{k}": v for m in ("generator", "discriminator") for k, v in load_file(str(d / f"{m}.safetensors")).items()
    }


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
    from reviewgen.train.local import train_local

    out = tmp_path_factory.mktemp("dist_reference")
    train_local(prepared_data, out, _cfg(tiny_config, 8), log=_quiet)
    return out


@pytest.mark.timeout(300)
def test_two_workers_match_one_and_resume_in_phase_two(ray_local, reference, prepared_data, tiny_config, tmp_path):
    out = tmp_path / "out"
    kw = dict(num_workers=2, data_loader="sharded_memory", name="eq")
    stopped = run_distributed_training(
        _job(prepared_data, out, stop_after_phase="mle", **kw), _cfg(tiny_config, 4), log=_quiet
    )
    meta = json.loads((out / "state" / "meta.json").read_text())
    assert (meta["phase"], meta["step"], meta["global_step"]) == ("disc", 0, 6)
    model = json.loads((stopped / "meta.json").read_text())  # a usable model even though training stopped
    assert (model["phase"], model["complete"], model["global_step"]) == ("disc", False, 6)
    first = _steps(out)
    assert [r["global_step"] for r in first] == list(range(1, 7))
    _assert_same_losses(first, _steps(reference))
    _assert_same_weights(out / "mle", reference / "mle")  # the MLE baseline is exported and equal

    final = run_distributed_training(_job(prepared_data, out, **kw), _cfg(tiny_config, 4), log=_quiet)
    assert final == out.resolve()
    steps = _steps(out)
    assert [r["global_step"] for r in steps] == list(range(1, 13))
    second = [r for r in steps if r["resumes"] == 1]
    assert (second[0]["phase"], second[0]["step"], second[0]["global_step"]) == ("disc", 1, 7)
    _assert_same_losses(steps, _steps(reference))
    _assert_same_weights(out, reference)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["global_step"], meta["complete"], meta["role"]) == (12, True, "final")


def _kill_a_worker_after_first_checkpoint(run_dir: Path, killed: dict) -> None:
    """Wait until Ray Train has registered a checkpoint of the run (its snapshot file appears), then kill
    one training worker process, as a lost node would. The actor table comes from the GCS: the test Ray
    runs without the dashboard that `ray.util.state.list_actors` needs."""
    import signal

    from ray._private.state import actors

    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "checkpoint_manager_snapshot.json").is_file():
        time.sleep(0.05)
    # the controller polls workers every 2 s; let it pick up the report, as a real failure comes later
    time.sleep(0.5)
    workers = [a for a in actors(actor_state_name="ALIVE").values() if a["ActorClassName"] == "RayTrainWorker"]
    if workers:
        killed["pid"] = workers[-1]["Pid"]
        os.kill(killed["pid"], signal.SIGKILL)


LORA = {"generator.lora.rank": 4, "discriminator.lora.rank": 4, "discriminator.n_layer": 2}  # D on G's base


@pytest.mark.timeout(400)
def test_lost_worker_resumes_from_latest_checkpoint(ray_local, prepared_data, tiny_config, tmp_path):
    """With LoRA adapters on G and D (one shared base): a lost worker's run resumes from its latest
    checkpoint, and the final model samples, scores and exports (merged, and as PEFT adapters)."""
    out = tmp_path / "out"
    killed: dict = {}
    # long enough (in steps) that the kill lands mid-run; a checkpoint every 20 steps
    cfg = _cfg(
        tiny_config,
        4,
        mle_steps=400,
        disc_warmup_steps=3,
        adv_steps=3,
        checkpoint_every=20,
        eval_every=50,
        log_every=50,
    ).override(LORA)
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(out / "runs" / "ft", killed))
    killer.start()
    final = run_distributed_training(
        _job(prepared_data, out, num_workers=2, name="ft", max_failures=1, data_loader="sharded_memory"),
        cfg,
        log=_quiet,
    )
    killer.join()
    assert killed.get("pid"), "no Ray Train worker was found to kill"
    steps = _steps(out)
    assert [r["global_step"] for r in steps] == list(range(1, 407)), "each step logged once, none lost"
    resumed = [r for r in steps if r["resumes"] == 1]
    assert resumed, "no step ran after a restart"
    # restarted from a registered mid-phase checkpoint, not from step 1
    assert resumed[0]["phase"] == "mle" and resumed[0]["step"] > 1 and (resumed[0]["step"] - 1) % 20 == 0
    meta = json.loads((final / "meta.json").read_text())
    assert meta["global_step"] == 406 and meta["complete"] and len(meta["version"]) == 16
    assert (out / "mle" / "train_state.pt").is_file()
    _assert_lora_model_works(final, tmp_path)


def _assert_lora_model_works(final: Path, tmp_path: Path) -> None:
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.core.hf_adapters import export_adapters
    from reviewgen.core.hf_export import export_hf
    from reviewgen.core.lora import lora_layers
    from reviewgen.core.sampling import generate_texts
    from reviewgen.core.tokenizer import Condition
    from reviewgen.score.scorer import Scorer

    assert json.loads((final / "meta.json").read_text())["lora_base"]["kind"] == "file"
    ck = load_checkpoint(final)
    assert any(m.lora_B.abs().sum() > 0 for _, m in lora_layers(ck.generator))  # the adapters trained
    assert ck.discriminator.tok_emb.weight.data_ptr() == ck.generator.tok_emb.weight.data_ptr()
    texts = generate_texts(
        ck.generator, ck.tokenizer, [Condition("Echo Dot", "Speakers", 5)], ["k"], seed=0, temperature=1.0
    )
    assert len(texts) == 1
    res = Scorer(final).score([{"text": "Works well and the battery lasts.", "language": "en"}])
    assert 0.0 <= res["p_human"][0] <= 1.0
    assert (export_hf(final, tmp_path / "hf") / "model.safetensors").is_file()
    peft_dir = export_adapters(final, tmp_path / "adapters")
    assert json.loads((peft_dir / "adapter_config.json").read_text())["target_modules"] == ["c_attn", "c_fc", "c_proj"]


@pytest.mark.timeout(300)
def test_time_budget_stops_all_workers_together_with_a_usable_model(ray_local, prepared_data, tiny_config, tmp_path):
    """A budget spent before the workers start: every rank stops after the same (first) step, and OUT
    holds a partial model that loads and samples, beside the resumable state."""
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.core.sampling import generate_texts
    from reviewgen.core.tokenizer import Condition

    out = tmp_path / "out"
    final = run_distributed_training(
        _job(prepared_data, out, num_workers=2, name="tb", max_minutes=0.001, data_loader="sharded_memory"),
        _cfg(tiny_config, 4, mle_steps=400),
        log=_quiet,
    )
    meta = json.loads((final / "meta.json").read_text())
    assert (meta["phase"], meta["complete"], meta["global_step"]) == ("mle", False, 1)
    assert json.loads((out / "state" / "meta.json").read_text())["global_step"] == 1
    ck = load_checkpoint(final)
    texts = generate_texts(
        ck.generator, ck.tokenizer, [Condition("Echo Dot", "Speakers", 5)], ["k"], seed=0, temperature=1.0
    )
    assert len(texts) == 1 and ck.calibration is not None and ck.ngram_path is not None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_workers": 0}, "num-workers"),
        ({"storage_path": "ftp://host/ray"}, "unsupported scheme 'ftp'"),
        ({"data_dir": "MISSING"}, "prepared data not found"),
        ({"use_gpu": True}, "no CUDA GPU"),
        ({"data_loader": "csv"}, "data-loader"),
        ({"resume_from": "MISSING"}, "not a resumable training checkpoint"),
    ],
)
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
    kwargs.setdefault("num_workers", 2)
    with pytest.raises(TrainJobError, match=message):
        run_distributed_training(_job(data, tmp_path / "out", **kwargs), tiny_config(), log=_quiet)
    assert not (tmp_path / "out").exists()


def test_job_entrypoint_parses_overrides_and_validates(prepared_data, tmp_path, monkeypatch):
    """jobs/train.py is `reviewgen train` with --num-workers 2 unless given; --set and flags reach the job."""
    import reviewgen.train.distributed as dist
    from jobs import train as job

    seen = {}

    def fake(job_cfg, cfg, log=print, tracker=None):
        seen.update(cfg=cfg, job=job_cfg)
        return Path(job_cfg.out)

    monkeypatch.setattr(dist, "run_distributed_training", fake)
    base = ["--data", str(prepared_data), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        job.main(base + ["--set", "train.mle_steps=7", "--data-loader", "sharded_memory", "--max-minutes", "3"])
    assert e.value.code == 0
    assert seen["cfg"].train.mle_steps == 7 and seen["job"].num_workers == 2
    assert seen["job"].data_loader == "sharded_memory" and seen["job"].max_minutes == 3.0
    with pytest.raises(SystemExit):
        job.main(base + ["--num-workers", "3"])
    assert seen["job"].num_workers == 3
    with pytest.raises(SystemExit) as e:
        job.main(base + ["--set", "train.nope=1"])
    assert e.value.code == 2
