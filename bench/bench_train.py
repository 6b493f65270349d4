"""Ray Train data-parallel throughput: MLE-phase tokens/s for 1 and 2 workers, scaling efficiency.

Each run is a small `TorchTrainer` whose workers build the same `GANTrainer` as `train_local` (G and D
wrapped by `ray.train.torch.prepare_model`, i.e. DDP over gloo on CPU), run `WARMUP` MLE steps, then time
`STEPS` MLE steps. We time the steps ourselves rather than running `run_distributed_training`, so worker
start-up, data loading, validation and checkpoint writes are not in the figure.

Weak scaling: every worker keeps the per-worker batch of configs/demo.yaml (32 rows), so 2 workers do twice
the work per step. Thread budget: the bench's torch thread count T is split over the workers
(T // n each, at least 1), so both runs use the same cores. Efficiency = 2-worker total tokens/s /
(2 x 1-worker tokens/s). "tokens" = every sequence position (batch x (prefix + review)), which is what the
compute scales with; loss tokens (non-pad review tokens) are reported alongside.

GPU section: measured in-process with configs/gpu.yaml's model when CUDA is available (tokens/s and model
FLOPs utilisation = 6 x params x tokens/s / peak bf16 FLOP/s); otherwise "not measured (no GPU lent)".

Run: python -m bench.bench_train [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets.
GPU_PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}
CONFIG = "demo.yaml"


def _setup(config_name: str, mle_steps: int | None = None) -> dict[str, Any]:
    """Config, tokenizer (as JSON, so workers rebuild it like run_distributed_training does), categories
    and the encoded train split, fitted once in the driver on the carried sample."""
    from bench.bench_generate import BENCH_DIR, prepared_data
    from reviewgen.core.config import RunConfig
    from reviewgen.core.encoding import build_categories, encode_frame, fit_tokenizer
    from reviewgen.data.corpus import load_split

    train_df = load_split(prepared_data(), "train")
    cfg = RunConfig.from_yaml(BENCH_DIR.parent / "configs" / config_name)
    tok = fit_tokenizer(train_df, cfg)
    cats = build_categories(train_df, cfg.discriminator.n_categories)
    cfg = cfg.finalize(vocab_size=tok.vocab_size, n_categories=len(cats))
    if mle_steps:
        cfg = cfg.override({"train.mle_steps": mle_steps})
    return {
        "cfg": cfg,
        "tok": tok,
        "tok_json": tok.tok.to_str(),
        "categories": cats,
        "data": encode_frame(train_df, tok, cats),
    }


def _worker(c: dict) -> None:
    """Ray Train worker: warm up, time MLE steps, write this rank's figures to c["out_dir"]."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from tokenizers import Tokenizer

    from reviewgen.core.config import RunConfig
    from reviewgen.core.tokenizer import ReviewTokenizer
    from reviewgen.train.batches import TensorBatches
    from reviewgen.train.trainer import GANTrainer

    torch.set_num_threads(c["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = RunConfig.from_dict(c["cfg"])
    tok = ReviewTokenizer(Tokenizer.from_str(c["tok_json"]), cfg.tokenizer.prefix_len, cfg.tokenizer.max_review_len)
    trainer = GANTrainer(
        cfg,
        tok,
        c["categories"],
        "cpu",
        wrap=lambda m, name: ray.train.torch.prepare_model(m),
        rank=rank,
        world_size=world,
    )
    b = cfg.train.batch_size
    batches = TensorBatches(ray.get(c["data_ref"]), b, cfg.train.seed, "cpu", rank, world)
    for _ in range(c["warmup"]):
        trainer.train_step(next(batches))
    if world > 1:
        dist.barrier()
    loss_tokens, positions = 0, 0
    t = time.perf_counter()
    for _ in range(c["steps"]):
        batch = next(batches)
        m = trainer.train_step(batch).metrics
        loss_tokens += int(m.get("tokens", 0))
        positions += batch["ids"].numel()
    dt = time.perf_counter() - t
    assert trainer.phase == "mle", "the timed steps left the MLE phase; raise train.mle_steps"
    Path(c["out_dir"], f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "seconds": dt,
                "tokens": positions,
                "loss_tokens": loss_tokens,
                "steps": c["steps"],
                "threads": torch.get_num_threads(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )
    ray.train.report({"done": 1})


def run_workers(setup: dict[str, Any], n: int, threads: int, warmup: int, steps: int) -> dict[str, Any]:
    """One TorchTrainer fit with n workers; per-rank and total tokens/s."""
    import ray
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = setup["cfg"].override({"train.mle_steps": warmup + steps + 1})
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        c = {
            "cfg": cfg.to_dict(),
            "tok_json": setup["tok_json"],
            "data_ref": ray.put(setup["data"]),
            "categories": setup["categories"],
            "threads": threads,
            "warmup": warmup,
            "steps": steps,
            "out_dir": tmp,
        }
        t = time.perf_counter()
        TorchTrainer(
            _worker,
            train_loop_config=c,
            scaling_config=ScalingConfig(num_workers=n, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=RayRunConfig(name=f"bench-{n}w", storage_path=str(Path(tmp) / "ray")),
        ).fit()
        wall = time.perf_counter() - t
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(n)]
    per = [r["tokens"] / r["seconds"] for r in ranks]
    return {
        "workers": n,
        "threads_per_worker": threads,
        "fit_wall_s": round(wall, 1),
        "tokens_per_s_per_worker": [round(x, 1) for x in per],
        "tokens_per_s_total": round(sum(per), 1),
        "loss_tokens_per_s_total": round(sum(r["loss_tokens"] / r["seconds"] for r in ranks), 1),
        "step_time_s": round(max(r["seconds"] for r in ranks) / steps, 4),
        "worker_peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in ranks],
    }


def gpu_section(quick: bool) -> dict[str, Any]:
    """tokens/s and MFU on the local GPU with configs/gpu.yaml's model, or 'not measured'."""
    import torch

    if not torch.cuda.is_available():
        return {"status": "not measured (no GPU lent)"}
    from reviewgen.core.models import count_params
    from reviewgen.train.batches import TensorBatches
    from reviewgen.train.trainer import GANTrainer

    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in GPU_PEAK_BF16.items() if k.lower() in name.lower()), None)
    s = _setup("gpu.yaml", mle_steps=10_000)
    trainer = GANTrainer(s["cfg"], s["tok"], s["categories"], "cuda")
    batches = TensorBatches(s["data"], s["cfg"].train.batch_size, 0, "cuda")
    warmup, steps = (3, 10) if quick else (10, 50)
    for _ in range(warmup):
        trainer.train_step(next(batches))
    torch.cuda.synchronize()
    t, positions = time.perf_counter(), 0
    for _ in range(steps):
        b = next(batches)
        trainer.train_step(b)
        positions += b["ids"].numel()
    torch.cuda.synchronize()
    tps = positions / (time.perf_counter() - t)
    params = count_params(trainer.G)
    out = {
        "status": "measured",
        "device": name,
        "generator_params": params,
        "tokens_per_s": round(tps, 1),
        "peak_bf16_flops": peak,
    }
    out["mfu"] = round(6 * params * tps / peak, 4) if peak else "unknown GPU: no peak in the table"
    return out


def main(quick: bool = False) -> dict[str, Any]:
    """1- and 2-worker MLE tokens/s on CPU, scaling efficiency, model size, and the GPU section."""
    import ray
    import torch

    from reviewgen.core.models import Generator, count_params

    total_threads = torch.get_num_threads()
    warmup, steps = (3, 10) if quick else (10, 60)
    setup = _setup(CONFIG)
    g = setup["cfg"].generator
    model = {
        "config": f"configs/{CONFIG}",
        "n_layer": g.n_layer,
        "d_model": g.d_model,
        "n_head": g.n_head,
        "vocab_size": g.vocab_size,
        "generator_params": count_params(Generator(g)),
        "batch_per_worker": setup["cfg"].train.batch_size,
        "seq_len": setup["cfg"].tokenizer.prefix_len + setup["cfg"].tokenizer.max_review_len,
    }
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False, include_dashboard=False)
    try:
        one = run_workers(setup, 1, max(1, total_threads), warmup, steps)
        two = run_workers(setup, 2, max(1, total_threads // 2), warmup, steps)
    finally:
        ray.shutdown()
    eff = two["tokens_per_s_total"] / (2 * one["tokens_per_s_total"])
    return {
        "model": model,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "thread_budget": total_threads,
        "cpu": {
            "1_worker": one,
            "2_workers": two,
            "scaling_efficiency": round(eff, 3),
            "speedup_2_vs_1": round(two["tokens_per_s_total"] / one["tokens_per_s_total"], 3),
        },
        "gpu": gpu_section(quick),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps")
    print(json.dumps(main(ap.parse_args().quick), indent=2, default=str))
