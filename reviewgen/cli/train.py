"""`reviewgen train`: the GAN, in this process or as a Ray Train job."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from reviewgen.cli.common import log, fail, USER_ERRORS


def train(
    data: Path = typer.Option(..., "--data", help="Directory written by `reviewgen prepare`."),
    out: Path = typer.Option(..., "--out", help="Output model directory (final model; mle/ holds the MLE baseline)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (see configs/). Default: built-in defaults."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop after M minutes with a resumable "
                                                "state (in-process mode); rerun the same command to continue."),
    num_workers: int = typer.Option(0, "--num-workers", help="Ray Train data-parallel workers. 0 = train in this "
                                    "process without Ray. The global batch is train.batch_size x num_workers."),
    use_gpu: bool = typer.Option(False, "--use-gpu", help="One GPU per Ray Train worker (bf16 autocast)."),
    storage_path: Optional[str] = typer.Option(None, "--storage-path", help="Ray Train storage for checkpoints: a "
                                               "local/NFS dir, s3:// or gs://. Default: OUT/ray."),
    name: Optional[str] = typer.Option(None, "--name", help="Ray Train run name; rerunning the same name and "
                                       "storage path resumes from its latest checkpoint."),
    maxfailures: int = typer.Option(1, "--max-failures", help="Worker-group restarts allowed after a failure."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Ray Train checkpoints kept (last K)."),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Start from this training checkpoint dir "
                                               "(e.g. OUT/mle). Ray Train mode."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="CPUs reserved per Ray Train worker."),
    data_loader: str = typer.Option("ray_data", "--data-loader", help="ray_data: streamed Ray Dataset shards; "
                                    "sharded_memory: in-memory slices of one global batch (exact 1-vs-N worker "
                                    "equivalence; small data only)."),
    stop_after_phase: Optional[str] = typer.Option(None, "--stop-after-phase", help="Ray Train mode: stop "
                                                   "(resumably) after this phase ends: mle, disc or adv."),
    mle_steps: Optional[int] = typer.Option(None, help="Override train.mle_steps."),
    disc_steps: Optional[int] = typer.Option(None, help="Override train.disc_warmup_steps."),
    adv_steps: Optional[int] = typer.Option(None, help="Override train.adv_steps."),
    batch_size: Optional[int] = typer.Option(None, help="Override train.batch_size (per worker)."),
    seed: Optional[int] = typer.Option(None, help="Override train.seed."),
    device: Optional[str] = typer.Option(None, help="In-process mode: cpu or cuda (default: cuda if available)."),
):
    """Train the GAN: MLE pretraining, discriminator warm-up, adversarial training (policy gradient)."""
    from reviewgen.core.checkpoint import CheckpointError
    from reviewgen.core.config import ConfigError, RunConfig
    from reviewgen.data.corpus import DataError
    from reviewgen.train.distributed import TrainJobError

    try:
        cfg = RunConfig.from_yaml(config) if config else RunConfig()
        cfg.override({"train.mle_steps": mle_steps, "train.disc_warmup_steps": disc_steps,
                      "train.adv_steps": adv_steps, "train.batch_size": batch_size, "train.seed": seed})
        cfg.validate()
        if num_workers > 0:
            from reviewgen.train.distributed import run_distributed_training

            final = run_distributed_training(data, out, cfg, num_workers=num_workers, use_gpu=use_gpu,
                                             storage_path=storage_path, name=name, maxfailures=maxfailures,
                                             keep_checkpoints=keep_checkpoints, resume_from=resume_from,
                                             cpus_per_worker=cpus_per_worker, data_loader=data_loader,
                                             stop_after_phase=stop_after_phase, log=log)
        else:
            if use_gpu:
                device = device or "cuda"
            from reviewgen.train.trainer import train_local

            if resume_from:
                fail(ValueError("--resume-from needs --num-workers >= 1; in-process mode resumes from OUT/state"))
            final = train_local(data, out, cfg, max_minutes=max_minutes, device=device, log=log)
    except (ConfigError, DataError, CheckpointError, TrainJobError, *USER_ERRORS) as e:
        fail(e)
    log(f"done: {final}")
