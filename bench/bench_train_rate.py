"""Training at the rate the hardware gives: the real entry points against timed steps.

On configs/demo.yaml's model, batch and data, with every process on the same torch thread count T (the
bench's): MLE-phase loss tokens/s (non-pad review tokens, what the loss is taken over) of

- in-process timed steps: `GANTrainer.train_step` in a loop, no Ray, nothing else (the ceiling);
- the bench's 1-worker Ray Train timed steps (`bench.bench_train.run_workers`, DDP-wrapped, in-memory
  batches): the figure the demo is held to;
- `train_local` (`reviewgen train`, in process) and `run_distributed_training` with 1 worker of T CPUs on
  the default Ray Data ingest (`reviewgen train --num-workers 1`, what `make demo` runs), both stopped
  after the MLE phase. Their rate is read from the step log: loss tokens of steps 2..N over the wall time
  between step 1's and step N's records, so evaluations, step logging, progress lines, ingest waits and
  the intermediate checkpoints are all in it.

Goals: the demo's run >= 80% of the bench's 1-worker figure; 1-worker Ray Train timed steps >= 90% of
in-process timed steps. The runs go one after another (each needs the whole machine); the two timed
figures alternate, take by take, and each keeps its best (on a shared machine the load moves by the
minute, so only figures taken side by side compare); the load average is recorded around each.
Run: python -m bench.bench_train_rate [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_DEMO_VS_BENCH = 0.8
GOAL_RAY_VS_INPROCESS = 0.9
CONFIG = "demo.yaml"
ROUNDS = {False: 3, True: 2}  # alternating takes of the two timed figures, by quick


def step_log_rate(path: Path, phase: str = "mle") -> dict[str, Any]:
    """Loss tokens/s of `phase` from a step log (metrics.jsonl): steps 2..N over the wall time between the
    first and the last step's records (the first step's own time is warm-up, outside the window)."""
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    recs = [r for r in recs if r.get("phase") == phase]
    if len(recs) < 3:
        raise ValueError(f"{path}: {len(recs)} {phase} steps logged; the rate needs at least 3")
    wall = recs[-1]["time"] - recs[0]["time"]
    tokens = sum(r.get("tokens", 0) for r in recs[1:])
    compute = sum(r.get("step_time_s", 0) for r in recs[1:])
    return {
        "steps": len(recs),
        "wall_s": round(wall, 2),
        "loss_tokens_per_s": round(tokens / wall, 1),
        "step_compute_share": round(compute / wall, 3),
    }


def inprocess_steps(setup: dict[str, Any], threads: int, warmup: int, steps: int) -> dict[str, Any]:
    """`train_step` timed in this process, no Ray: loss tokens/s and positions/s."""
    import torch

    from reviewgen.train.batches import TensorBatches
    from reviewgen.train.trainer import GANTrainer

    torch.set_num_threads(threads)
    cfg = setup["cfg"].override({"train.mle_steps": warmup + steps + 1})
    trainer = GANTrainer(cfg, setup["tok"], setup["categories"], "cpu")
    batches = TensorBatches(setup["data"], cfg.train.batch_size, cfg.train.seed, "cpu")
    for _ in range(warmup):
        trainer.train_step(next(batches))
    loss_tokens, positions, t = 0, 0, time.perf_counter()
    for _ in range(steps):
        b = next(batches)
        loss_tokens += int(trainer.train_step(b).metrics.get("tokens", 0))
        positions += b["ids"].numel()
    dt = time.perf_counter() - t
    return {
        "threads": torch.get_num_threads(),
        "loss_tokens_per_s": round(loss_tokens / dt, 1),
        "tokens_per_s": round(positions / dt, 1),
        "step_time_s": round(dt / steps, 4),
    }


def _with_load(fn, *a, **kw) -> dict[str, Any]:
    load0, t = os.getloadavg(), time.perf_counter()
    out = fn(*a, **kw)
    return out | {
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "run_wall_s": round(time.perf_counter() - t, 1),
    }


def _train_local(data_dir: Path, cfg, out: Path, threads: int) -> dict[str, Any]:
    import torch

    from reviewgen.train.local import train_local

    torch.set_num_threads(threads)
    train_local(data_dir, out, cfg, device="cpu", log=lambda msg: None, resume=False, stop_after_phase="mle")
    return step_log_rate(out / "metrics.jsonl") | {"threads": threads}


def _train_ray(data_dir: Path, cfg, out: Path, threads: int) -> dict[str, Any]:
    from reviewgen.train.distributed import run_distributed_training
    from reviewgen.train.job import TrainJobConfig

    job = TrainJobConfig(
        data_dir=data_dir,
        out=out,
        num_workers=1,
        cpus_per_worker=threads,
        storage_path=str(out / "runs"),
        name="bench-rate",
        stop_after_phase="mle",
    )
    run_distributed_training(job, cfg, log=lambda msg: None)
    return step_log_rate(out / "metrics.jsonl") | {"threads": threads, "data_loader": job.data_loader}


def _goal(name: str, value: float, goal: float) -> dict[str, Any]:
    return {
        "name": name,
        "value": round(value, 3),
        "goal": f">= {goal}",
        "verdict": "MET" if value >= goal else "NOT MET",
    }


def main(quick: bool = False) -> dict[str, Any]:
    """The four rates, their ratios and the two goals."""
    import ray
    import torch

    from bench.bench_generate import BENCH_DIR, prepared_data
    from bench.bench_train import _setup, run_workers
    from reviewgen.core.config import RunConfig
    from reviewgen.infra.runtime import ensure_ray

    threads = torch.get_num_threads()
    warmup, steps = (3, 15) if quick else (5, 40)
    setup = _setup(CONFIG)
    data_dir = Path(prepared_data())
    cfg = RunConfig.from_yaml(BENCH_DIR.parent / "configs" / CONFIG)
    mle_steps = 60 if quick else cfg.train.mle_steps  # the demo's whole MLE phase, with its cadences
    cfg = cfg.override({"train.mle_steps": mle_steps})
    # the whole runs first (train_local with no Ray running), then the timed figures in alternating takes,
    # in-process then Ray Train, each keeping its best: on a shared machine the load moves by the minute
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp:
        local = _with_load(_train_local, data_dir, cfg, Path(tmp) / "local", threads)
        ensure_ray(min_cpus=threads + 2, log=lambda msg: None, log_to_driver=False)
        try:
            demo = _with_load(_train_ray, data_dir, cfg, Path(tmp) / "ray", threads)
            inproc, ray_steps = [], []
            for _ in range(ROUNDS[quick]):
                inproc.append(_with_load(inprocess_steps, setup, threads, warmup, steps))
                ray_steps.append(_with_load(run_workers, setup, 1, threads, warmup, steps))
        finally:
            ray.shutdown()
    inproc = max(inproc, key=lambda r: r["loss_tokens_per_s"]) | {"takes": [r["loss_tokens_per_s"] for r in inproc]}
    ray_steps = max(ray_steps, key=lambda r: r["loss_tokens_per_s_total"]) | {
        "takes": [r["loss_tokens_per_s_total"] for r in ray_steps]
    }
    torch.set_num_threads(threads)
    bench_1w = ray_steps["loss_tokens_per_s_total"]
    demo_share = demo["loss_tokens_per_s"] / bench_1w
    ray_share = bench_1w / inproc["loss_tokens_per_s"]
    return {
        "config": f"configs/{CONFIG}",
        "threads": threads,
        "mle_steps": mle_steps,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "in_process_timed_steps": inproc,
        "ray_train_1_worker_timed_steps": ray_steps,
        "train_local_run": local,
        "ray_train_1_worker_run": demo,
        "ratios": {
            "demo_run_vs_bench_1_worker": round(demo_share, 3),
            "ray_timed_vs_in_process_timed": round(ray_share, 3),
            "ray_run_vs_local_run": round(demo["loss_tokens_per_s"] / local["loss_tokens_per_s"], 3),
            "local_run_vs_in_process_timed": round(local["loss_tokens_per_s"] / inproc["loss_tokens_per_s"], 3),
        },
        "goals": [
            _goal(
                "demo-config Ray Train run (1 worker) MLE loss tokens/s / bench 1-worker figure",
                demo_share,
                GOAL_DEMO_VS_BENCH,
            ),
            _goal(
                "1-worker Ray Train timed steps / in-process timed steps, same threads",
                ray_share,
                GOAL_RAY_VS_INPROCESS,
            ),
        ],
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short MLE phase and fewer timed steps")
    print(json.dumps(main(ap.parse_args().quick), indent=2, default=str))
