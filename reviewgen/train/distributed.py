"""Data-parallel GAN training on Ray Train (V2 API): the driver.

The driver validates the job (before Ray is touched), fits the tokenizer and category vocabulary once,
and starts a `TorchTrainer` whose workers run the one training loop (`reviewgen.train.ray_worker`); the
global batch is `train.batch_size * num_workers`.

Storage layout (`storage_path/name`, default OUT/runs/reviewgen-train; a local dir, NFS, or s3:// / gs://):

    checkpoint_*/       Ray Train checkpoints (the core checkpoint format), the newest K kept
    setup/              tokenizer.json + setup.json: the run's fitted (or --init-from base) tokenizer,
                        categories, config and base record, reused when the same name is started again,
                        so a resumed run tokenizes alike; fresh workers load the base weights it names
    mle_baseline/       the phase-1 end checkpoint (the MLE baseline), kept outside Ray's rotation
    metrics.jsonl       one line per step, written by rank 0 (steps re-run after a failure replace
                        the lines of the lost attempt)

After `fit`, the driver writes OUT as `train_local` does: the model (final, or partial with its phase in
meta.json when the time budget or `stop_after_phase` ended the run first), OUT/state (the last
checkpoint), OUT/mle (the MLE baseline) and OUT/metrics.jsonl.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import ray
import ray.data
import ray.train
import torch
from ray.train.torch import TorchTrainer

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.config import RunConfig
from reviewgen.core.encoding import encode_frame
from reviewgen.data.corpus import load_split
from reviewgen.infra.progress import ProgressRelay
from reviewgen.infra.runtime import ensure_ray
from reviewgen.infra.storage import exists, filesystem, read_text, write_local_atomic, write_text
from reviewgen.train.export import data_hash_of, finalize_model
from reviewgen.train.job import TrainJobConfig, TrainJobError
from reviewgen.train.ray_worker import WorkerSpec, download_dir, encode_batch, shipped_tokenizer, train_loop
from reviewgen.train.run_setup import RunSetup, setup_run
from reviewgen.train.trainer import GANTrainer

READ_COLUMNS = ["product_title", "category", "rating", "sentiment", "language", "text"]


def _run_setup(job: TrainJobConfig, cfg: RunConfig, train_df, log) -> RunSetup:
    """The run's set-up (`setup_run`): from --resume-from, from an earlier start of the same run name (its
    stored config, tokenizer, categories and base record), or fresh, then stored, so restarts and reruns
    tokenize identically. The base record tells fresh workers which base weights to load; the driver reads
    only the base's header."""
    if job.resume_from is not None:
        return setup_run(train_df, cfg, checkpoint=job.resume_from, log=log)
    fs, root = filesystem(job.storage)
    setup = f"{root}/{job.run_name}/setup"
    doc = read_text(fs, f"{setup}/setup.json")
    if doc is not None:
        d = json.loads(doc)
        run_cfg = RunConfig.from_dict(d["config"], source=f"{setup}/setup.json")
        tok = shipped_tokenizer(
            read_text(fs, f"{setup}/tokenizer.json"), run_cfg.tokenizer.prefix_len, run_cfg.tokenizer.max_review_len
        )
        log(f"run {job.run_name!r} exists in {job.storage}: continuing it with its stored config and tokenizer")
        return RunSetup(run_cfg, tok, list(d["categories"]), d.get("base"))
    run = setup_run(train_df, cfg, init_from=job.init_from, weights=False, log=log)
    with tempfile.TemporaryDirectory() as tmp:
        run.tokenizer.save(Path(tmp) / "tokenizer.json")
        write_text(fs, f"{setup}/tokenizer.json", (Path(tmp) / "tokenizer.json").read_text())
    write_text(
        fs,
        f"{setup}/setup.json",
        json.dumps(
            {"config": run.config.to_dict(), "categories": run.categories, **({"base": run.base} if run.base else {})}
        ),
    )
    return run


def _connect(job: TrainJobConfig, log) -> None:
    """Use the current Ray, else RAY_ADDRESS, else an embedded local Ray; GPU check before the trainer."""
    # workers plus room for Ray Data's read tasks (the 2-core deadlock)
    ensure_ray(min_cpus=job.num_workers * job.cpus_per_worker + 2, log=log)
    res = ray.cluster_resources()
    if job.use_gpu and res.get("GPU", 0) < job.num_workers:
        raise TrainJobError(
            f"--use-gpu with {job.num_workers} workers, but the Ray cluster has {res.get('GPU', 0):g} GPU(s)"
        )
    if res.get("CPU", 0) < job.num_workers * job.cpus_per_worker + (1 if job.data_loader == "ray_data" else 0):
        log(
            f"warning: the cluster has {res.get('CPU', 0):g} CPUs for {job.num_workers} workers x "
            f"{job.cpus_per_worker:g} CPUs plus data reading; it may wait for an autoscaler or hang"
        )


def run_distributed_training(
    job: TrainJobConfig, cfg: RunConfig, log: Callable[[str], None] = print, tracker=None
) -> Path:
    """Train with Ray Train data parallelism and write OUT like `train_local`; returns OUT.

    Starting again with the same `job.name` and `job.storage_path` continues the run from its latest
    checkpoint. With `job.max_minutes`, all workers stop at the same step once the budget (counted from
    this call) is spent, and OUT gets the model reached so far. With a `tracker`
    (reviewgen.infra.tracking), rank 0 logs every step's metrics to its run."""
    deadline = time.time() + 60 * job.max_minutes if job.max_minutes else None
    job.validate()
    if job.num_workers < 1:
        raise TrainJobError(f"--num-workers must be >= 1 for Ray Train, got {job.num_workers}")
    cfg.validate()
    if job.use_gpu and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized() and not torch.cuda.is_available():
        raise TrainJobError("--use-gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False)")
    return _run(job, cfg, deadline, log, tracker)


def _run(job: TrainJobConfig, cfg: RunConfig, deadline: float | None, log, tracker=None) -> Path:
    """Set the run up, fit it on Ray Train, and export OUT from its last checkpoint."""
    out = Path(job.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(job.data_dir).resolve()
    train_df, val_df = load_split(data_dir, "train"), load_split(data_dir, "val")
    setup = _run_setup(job, cfg, train_df, log)
    _connect(job, log)
    spec = _worker_spec(job, setup, val_df, data_dir=data_dir, deadline=deadline, tracker=tracker)
    spec, datasets = _train_data(job, setup, spec, train_df, data_dir)
    t = setup.config.train
    log(
        f"Ray Train: {job.num_workers} worker(s), per-worker batch {t.batch_size} "
        f"(global {t.batch_size * job.num_workers}), "
        f"data {job.data_loader}, storage {job.storage}/{job.run_name}"
    )
    result = _fit(job, spec, datasets, log)
    if result.checkpoint is None:
        raise TrainJobError(f"run {job.run_name!r} produced no checkpoint (see the worker logs under {job.storage})")
    return _export(job, result.checkpoint, out, train_df, val_df, log)


def _worker_spec(
    job: TrainJobConfig, setup: RunSetup, val_df, *, data_dir: Path, deadline: float | None, tracker
) -> WorkerSpec:
    """What every worker needs besides its training data: the run's config, tokenizer and categories, the
    validation batches, where to keep checkpoints, when to stop, and where to log metrics."""
    cfg, tok, categories = setup.config, setup.tokenizer, setup.categories
    global_bs = cfg.train.batch_size * job.num_workers
    # validation on the global batch size, so val NLL is comparable across worker counts
    val = encode_frame(val_df.head(global_bs * cfg.train.val_batches), tok, categories)
    return WorkerSpec(
        config=cfg,
        tok_json=tok.tok.to_str(),
        categories=tuple(categories),
        val=dict(val),
        val_batch_size=global_bs,
        storage=job.storage,
        name=job.run_name,
        data_loader=job.data_loader,
        data_hash=data_hash_of(data_dir),
        threads=max(1, int(job.cpus_per_worker)),
        stop_after_phase=job.stop_after_phase,
        deadline=deadline,
        resume_from=str(Path(job.resume_from).resolve()) if job.resume_from else None,
        base=setup.base,
        tracking=(tracker.uri, tracker.run_id) if tracker is not None else None,
    )


def _train_data(
    job: TrainJobConfig, setup: RunSetup, spec: WorkerSpec, train_df, data_dir: Path
) -> tuple[WorkerSpec, dict | None]:
    """The training data as the job's loader hands it to the workers: `sharded_memory` puts the encoded frame
    in the object store (on the spec); `ray_data` reads and encodes the parquet file as a Ray Dataset."""
    cfg, categories = setup.config, setup.categories
    if job.data_loader == "sharded_memory":
        return replace(spec, train_ref=ray.put(encode_frame(train_df, setup.tokenizer, categories))), None
    ds = ray.data.read_parquet(str(data_dir / "train.parquet"), columns=READ_COLUMNS)
    ds = ds.map_batches(
        encode_batch,
        batch_format="pandas",
        batch_size=512,
        fn_kwargs={
            "tok_json": spec.tok_json,
            "prefix_len": cfg.tokenizer.prefix_len,
            "max_review_len": cfg.tokenizer.max_review_len,
            "categories": categories,
        },
    )
    return spec, {"train": ds}


def _fit(job: TrainJobConfig, spec: WorkerSpec, datasets: dict | None, log):
    """Run the workers under a Ray Train `TorchTrainer` and return its result; workers' progress lines reach
    this console through a relay, whatever happens to the worker logs."""
    resources = {"CPU": job.cpus_per_worker} | ({"GPU": 1} if job.use_gpu else {})
    t0 = time.time()
    with ProgressRelay(log) as relay:
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"spec": replace(spec, progress=relay.handle)},
            datasets=datasets,
            scaling_config=ray.train.ScalingConfig(
                num_workers=job.num_workers, use_gpu=job.use_gpu, resources_per_worker=resources
            ),
            run_config=ray.train.RunConfig(
                name=job.run_name,
                storage_path=job.storage,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.keep_checkpoints),
                failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
            ),
        )
        result = trainer.fit()
    log(f"fit finished in {time.time() - t0:.1f} s")
    return result


def _export(job: TrainJobConfig, checkpoint, out: Path, train_df, val_df, log) -> Path:
    """Copy the MLE baseline, the step log and the last checkpoint (OUT/state) into OUT; write the model
    (final, or partial when the run stopped early) into OUT."""
    fs, root = filesystem(job.storage)
    run = f"{root}/{job.run_name}"
    if exists(fs, f"{run}/mle_baseline/meta.json"):
        shutil.rmtree(out / "mle", ignore_errors=True)
        download_dir(fs, f"{run}/mle_baseline", out / "mle")
    metrics = read_text(fs, f"{run}/metrics.jsonl")
    if metrics is not None:
        write_local_atomic(out / "metrics.jsonl", metrics)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(checkpoint.to_directory(str(Path(tmp) / "ckpt")))
        shutil.rmtree(out / "state", ignore_errors=True)
        shutil.copytree(local, out / "state")
    ck = load_checkpoint(out / "state", "cpu")
    trainer = GANTrainer(ck.config, ck.tokenizer, ck.categories, "cpu")
    trainer.resume_from(out / "state")
    if trainer.phase != "done":
        log(
            f"stopped in phase {trainer.phase} at global step {trainer.global_step}; resumable state in "
            f"{out / 'state'}; start the same run name again to continue"
        )
    return finalize_model(trainer, out, train_df, val_df, data_hash_of(Path(job.data_dir)), log=log)
