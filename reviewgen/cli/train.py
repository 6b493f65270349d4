"""`reviewgen train`: the GAN, in this process or as a Ray Train job (`jobs/train.py` runs this command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from reviewgen.cli.common import log

# Each option declared once, as the type of its parameter below.
Data = Annotated[
    Optional[Path],
    typer.Option(
        "--data",
        help="Directory written by `reviewgen prepare` (required unless the config's job: section names data_dir).",
    ),
]
Out = Annotated[
    Optional[Path],
    typer.Option(
        "--out",
        help="Output model directory (the model; mle/ holds the MLE "
        "baseline, state/ the resumable state, metrics.jsonl the step log).",
    ),
]
Config = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        help="YAML config (see configs/); its optional job: "
        "section sets this command's options. Default: built-in defaults.",
    ),
]
Sets = Annotated[
    List[str],
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Config override, repeatable, e.g. "
        "--set train.mle_steps=100 or --set job.keep_checkpoints=3 (after --config, "
        "before the other flags).",
    ),
]
MaxMinutes = Annotated[
    Optional[float],
    typer.Option(
        "--max-minutes",
        help="Time budget: stop after M minutes and "
        "still leave a usable model at OUT (phase and complete=false in "
        "meta.json) beside the resumable state; rerun to continue.",
    ),
]
NumWorkers = Annotated[
    Optional[int],
    typer.Option(
        "--num-workers",
        help="Ray Train data-parallel workers. 0 "
        "(default) = train in this process without Ray. The global batch "
        "is train.batch_size x num_workers.",
    ),
]
UseGpu = Annotated[bool, typer.Option("--use-gpu", help="One GPU per Ray Train worker (in-process: cuda).")]
StoragePath = Annotated[
    Optional[str],
    typer.Option(
        "--storage-path", help="Ray Train storage for checkpoints: a local/NFS dir, s3:// or gs://. Default: OUT/runs."
    ),
]
Name = Annotated[
    Optional[str],
    typer.Option(
        "--name",
        help="Ray Train run name (default reviewgen-train); rerunning "
        "the same name and storage path resumes from its latest checkpoint.",
    ),
]
MaxFailures = Annotated[
    Optional[int], typer.Option("--max-failures", help="Worker-group restarts allowed after a failure (default 1).")
]
KeepCheckpoints = Annotated[
    Optional[int], typer.Option("--keep-checkpoints", help="Ray Train checkpoints kept (last K; default 2).")
]
ResumeFrom = Annotated[
    Optional[Path],
    typer.Option("--resume-from", help="Start from this training checkpoint dir (e.g. OUT/mle). Ray Train mode."),
]
CpusPerWorker = Annotated[
    Optional[float], typer.Option("--cpus-per-worker", help="CPUs reserved per Ray Train worker (default 1).")
]
DataLoader = Annotated[
    Optional[str],
    typer.Option(
        "--data-loader",
        help="ray_data (default): streamed Ray Dataset "
        "shards; sharded_memory: in-memory slices of one global batch "
        "(exact 1-vs-N worker equivalence; small data only).",
    ),
]
InitFrom = Annotated[
    Optional[Path],
    typer.Option(
        "--init-from",
        help="Start G and D from this local Hugging Face "
        "model directory (config.json, *.safetensors, tokenizer.json; "
        "gpt2, llama or qwen2) and use its tokenizer. Nothing is "
        "downloaded. Ray Train mode: every worker reads it (use shared "
        "storage).",
    ),
]
StopAfterPhase = Annotated[
    Optional[str],
    typer.Option(
        "--stop-after-phase",
        help="Stop (resumably, with a usable model at OUT) after this phase ends: mle, disc or adv.",
    ),
]
MleSteps = Annotated[Optional[int], typer.Option(help="Override train.mle_steps.")]
DiscSteps = Annotated[Optional[int], typer.Option(help="Override train.disc_warmup_steps.")]
AdvSteps = Annotated[Optional[int], typer.Option(help="Override train.adv_steps.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Override train.batch_size (per worker).")]
Seed = Annotated[Optional[int], typer.Option(help="Override train.seed.")]
Device = Annotated[Optional[str], typer.Option(help="In-process mode: cpu or cuda (default: cuda if available).")]
TrackingUri = Annotated[
    Optional[str],
    typer.Option(
        "--tracking-uri",
        help="Log the config, every step's metrics and "
        "the final model version to MLflow at this URI (e.g. "
        "file:./mlruns). Needs `pip install 'reviewgen[track]'`. Off by "
        "default.",
    ),
]


def train(
    *,
    data: Data = None,
    out: Out = None,
    config: Config = None,
    set_: Sets = [],
    max_minutes: MaxMinutes = None,
    num_workers: NumWorkers = None,
    use_gpu: UseGpu = False,
    storage_path: StoragePath = None,
    name: Name = None,
    max_failures: MaxFailures = None,
    keep_checkpoints: KeepCheckpoints = None,
    resume_from: ResumeFrom = None,
    cpus_per_worker: CpusPerWorker = None,
    data_loader: DataLoader = None,
    init_from: InitFrom = None,
    stop_after_phase: StopAfterPhase = None,
    mle_steps: MleSteps = None,
    disc_steps: DiscSteps = None,
    adv_steps: AdvSteps = None,
    batch_size: BatchSize = None,
    seed: Seed = None,
    device: Device = None,
    tracking_uri: TrackingUri = None,
):
    """Train the GAN: MLE pretraining, discriminator warm-up, adversarial training (policy gradient)."""
    cfg, job = _load_job(config, set_, options=dict(locals()))  # locals(): just the options, so far
    tracker = _start_tracking(job, cfg)
    ok, final = False, None
    try:
        final = _run_job(job, cfg, tracker)
        ok = True
    finally:
        _finish_tracking(tracker, ok, final)
    log(f"done: {final}")


def _load_job(config, sets, options: dict):
    """The run config and job config: --config, then --set, then the options given (by parameter name)."""
    from reviewgen.train.job import load_train_job

    return load_train_job(config, sets, job_flags=_job_flags(options), run_flags=_run_flags(options))


def _job_flags(options: dict) -> dict:
    """The job settings the options give, by TrainJobConfig field (None = not given)."""
    return {
        "data_dir": options["data"],
        "out": options["out"],
        "max_minutes": options["max_minutes"],
        "num_workers": options["num_workers"],
        "use_gpu": options["use_gpu"] or None,
        "storage_path": options["storage_path"],
        "name": options["name"],
        "max_failures": options["max_failures"],
        "keep_checkpoints": options["keep_checkpoints"],
        "resume_from": options["resume_from"],
        "cpus_per_worker": options["cpus_per_worker"],
        "data_loader": options["data_loader"],
        "stop_after_phase": options["stop_after_phase"],
        "device": options["device"],
        "tracking_uri": options["tracking_uri"],
        "init_from": options["init_from"],
    }


def _run_flags(options: dict) -> dict:
    """The run-config overrides the options give, by dotted key (None = not given)."""
    return {
        "train.mle_steps": options["mle_steps"],
        "train.disc_warmup_steps": options["disc_steps"],
        "train.adv_steps": options["adv_steps"],
        "train.batch_size": options["batch_size"],
        "train.seed": options["seed"],
    }


def _run_job(job, cfg, tracker):
    """Train as a Ray Train job (--num-workers >= 1) or in this process; returns the written model directory."""
    from reviewgen.train.job import TrainJobError

    if job.num_workers > 0:
        from reviewgen.train.distributed import run_distributed_training

        return run_distributed_training(job, cfg, log=log, tracker=tracker)
    from reviewgen.train.local import train_local

    job.validate()
    if job.resume_from:
        raise TrainJobError("--resume-from needs --num-workers >= 1; in-process mode resumes from OUT/state")
    return train_local(
        job.data_dir,
        job.out,
        cfg,
        max_minutes=job.max_minutes,
        device=job.device or ("cuda" if job.use_gpu else None),
        log=log,
        stop_after_phase=job.stop_after_phase,
        init_from=job.init_from,
        tracker=tracker,
    )


def _start_tracking(job, cfg):
    """An MLflow run for this training job (None without --tracking-uri), with the config as params."""
    if not job.tracking_uri:
        return None
    from reviewgen.infra.tracking import Tracker

    tracker = Tracker.start(
        job.tracking_uri, "reviewgen-train", job.name or Path(job.out).name, tags={"num_workers": str(job.num_workers)}
    )
    tracker.log_params({"run": cfg.to_dict(), "job": {k: str(v) for k, v in vars(job).items()}})
    return tracker


def _finish_tracking(tracker, ok: bool, final) -> None:
    """Close the MLflow run (if any): tagged with the written model `final` when training succeeded, marked
    failed otherwise."""
    if tracker is None:
        return
    if ok:
        tracker.set_tags(_model_tags(final))
    tracker.finish(ok)


def _model_tags(model_dir) -> dict:
    """The written model's version, phase and completeness, from its meta.json."""
    from reviewgen.core.model_dir import read_meta

    meta = read_meta(model_dir)
    return {
        "model_version": meta.version,
        "phase": meta.phase,
        "complete": meta.complete,
        "model_dir": str(Path(model_dir).resolve()),
    }
