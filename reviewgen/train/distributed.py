"""Data-parallel GAN training on Ray Train (V2 API).

The driver validates the job (before Ray is touched), fits the tokenizer and category vocabulary once,
and starts a `TorchTrainer`. Every worker runs the same `GANTrainer` as `train_local`, with G and D
wrapped in DDP through the trainer's `wrap` hook; the global batch is `train.batch_size * num_workers`.

Storage layout (`storage_path/name`, a local dir, NFS, or s3:// / gs://):

    checkpoint_*/       Ray Train checkpoints (the core checkpoint format), the newest K kept
    setup/              tokenizer.json + setup.json: the run's fitted tokenizer, categories and config,
                        reused when the same name is started again, so a resumed run tokenizes alike
    mle_baseline/       the phase-1 end checkpoint (the MLE baseline), kept outside Ray's rotation
    metrics.jsonl       one line per step, written by rank 0 (steps re-run after a failure replace
                        the lines of the lost attempt)

After `fit`, the driver finalizes the last checkpoint (calibration + n-gram index) into OUT, the model
directory with a content-hash version in meta.json; OUT/mle is the MLE baseline and OUT/metrics.jsonl the
step log, as with `train_local`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import numpy as np

from reviewgen.core.config import RunConfig
from reviewgen.infra.runtime import ensure_ray
from reviewgen.infra.storage import exists, filesystem, read_text, write_text

DATA_LOADERS = ("ray_data", "sharded_memory")
# schemes pyarrow.fs (and so Ray Train storage) understands without extra plugins
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs")
FAIL_ENV = "REVIEWGEN_TEST_FAIL_AT_STEP"
STOP_PHASES = ("mle", "disc", "adv")
DEFAULT_NAME = "reviewgen-train"
READ_COLUMNS = ["product_title", "category", "rating", "sentiment", "language", "text"]


class TrainJobError(ValueError):
    """A distributed training job is misconfigured; raised before Ray is touched where possible."""


@dataclass
class TrainJobConfig:
    """Settings of one distributed training job (everything except the model/train config)."""

    data_dir: Path
    out: Path
    num_workers: int = 2
    use_gpu: bool = False
    storage_path: str | None = None  # default: OUT/runs
    name: str | None = None  # default: reviewgen-train
    max_failures: int = 1
    keep_checkpoints: int = 2
    resume_from: Path | None = None
    cpus_per_worker: float = 1.0
    data_loader: str = "ray_data"
    stop_after_phase: str | None = None
    fail_at_step: int | None = None  # test hook: the last rank exits once at this global step

    @property
    def run_name(self) -> str:
        return self.name or DEFAULT_NAME

    @property
    def storage(self) -> str:
        """Storage root as Ray wants it: an absolute local path or a URI."""
        if self.storage_path is None:
            return str(Path(self.out).resolve() / "runs")
        s = str(self.storage_path)
        if s.startswith("file://"):
            return str(Path(urlparse(s).path).resolve())
        return s if "://" in s else str(Path(s).expanduser().resolve())

    def validate(self) -> None:
        """Raise TrainJobError naming the first bad setting. Touches neither Ray nor the network."""
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise TrainJobError(f"--num-workers must be >= 1, got {self.num_workers!r}")
        if self.cpus_per_worker <= 0:
            raise TrainJobError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise TrainJobError(f"--max-failures must be >= 0 (or -1 for unlimited), got {self.max_failures}")
        if self.keep_checkpoints < 1:
            raise TrainJobError(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.data_loader not in DATA_LOADERS:
            raise TrainJobError(f"--data-loader must be one of {DATA_LOADERS}, got {self.data_loader!r}")
        if self.stop_after_phase is not None and self.stop_after_phase not in STOP_PHASES:
            raise TrainJobError(f"--stop-after-phase must be one of {STOP_PHASES}, got {self.stop_after_phase!r}")
        if self.storage_path is not None and "://" in str(self.storage_path):
            scheme = urlparse(str(self.storage_path)).scheme
            if scheme not in STORAGE_SCHEMES:
                raise TrainJobError(f"--storage-path {self.storage_path!r}: unsupported scheme {scheme!r}; "
                                    f"use a local/NFS path or one of {[s + '://' for s in STORAGE_SCHEMES]}")
        d = Path(self.data_dir)
        for split in ("train", "val"):
            if not (d / f"{split}.parquet").is_file():
                raise TrainJobError(f"{d / f'{split}.parquet'}: prepared data not found "
                                    "(run `reviewgen prepare` first and pass its output dir)")
        if self.resume_from is not None and not (Path(self.resume_from) / "train_state.pt").is_file():
            raise TrainJobError(f"--resume-from {self.resume_from}: not a resumable training checkpoint "
                                "(no train_state.pt; exported models cannot be resumed)")
        if self.name is not None and (not self.name or "/" in self.name):
            raise TrainJobError(f"--name {self.name!r}: must be a non-empty name without '/'")


# -- storage (local, NFS, or a pyarrow URI) -----------------------------------------------------------

def _upload_dir(local: Path, fs, path: str) -> None:
    import pyarrow.fs as pafs

    if exists(fs, path):
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def _download_dir(fs, path: str, local: Path) -> None:
    import pyarrow.fs as pafs

    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


# -- tokenizer shipping ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _tokenizer(tok_json: str, prefix_len: int, max_review_len: int):
    """Rebuild the driver's tokenizer from its JSON (cached: Ray Data calls this once per batch)."""
    from tokenizers import Tokenizer

    from reviewgen.core.tokenizer import ReviewTokenizer

    return ReviewTokenizer(Tokenizer.from_str(tok_json), prefix_len, max_review_len)


def encode_batch(df, *, tok_json: str, prefix_len: int, max_review_len: int,
                 categories: list[str]) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` function: a pandas batch of reviews -> ids/rating/category arrays."""
    from reviewgen.core.encoding import encode_frame

    return encode_frame(df, _tokenizer(tok_json, prefix_len, max_review_len), categories)


# -- driver ---------------------------------------------------------------------------------------------

def _run_setup(job: TrainJobConfig, cfg: RunConfig, train_df, log) -> tuple[RunConfig, Any, list[str]]:
    """The run's (config, tokenizer, categories): from --resume-from, from an earlier start of the same
    run name, or fitted now (and stored, so restarts and reruns tokenize identically)."""
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.core.encoding import build_categories, fit_tokenizer

    if job.resume_from is not None:
        ck = load_checkpoint(job.resume_from, "cpu")
        log(f"starting from checkpoint {job.resume_from} (phase {ck.meta.get('phase')}, step {ck.meta.get('step')})")
        return ck.config, ck.tokenizer, ck.categories
    fs, root = filesystem(job.storage)
    setup = f"{root}/{job.run_name}/setup"
    doc = read_text(fs, f"{setup}/setup.json")
    if doc is not None:
        d = json.loads(doc)
        run_cfg = RunConfig.from_dict(d["config"], source=f"{setup}/setup.json")
        tok = _tokenizer(read_text(fs, f"{setup}/tokenizer.json"), run_cfg.tokenizer.prefix_len,
                         run_cfg.tokenizer.max_review_len)
        log(f"run {job.run_name!r} exists in {job.storage}: continuing it with its stored config and tokenizer")
        return run_cfg, tok, list(d["categories"])
    tok = fit_tokenizer(train_df, cfg)
    categories = build_categories(train_df, cfg.discriminator.n_categories)
    cfg.finalize(vocab_size=tok.vocab_size, n_categories=len(categories))
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(Path(tmp) / "tokenizer.json")
        write_text(fs, f"{setup}/tokenizer.json", (Path(tmp) / "tokenizer.json").read_text())
    write_text(fs, f"{setup}/setup.json", json.dumps({"config": cfg.to_dict(), "categories": categories}))
    return cfg, tok, categories


def _connect(job: TrainJobConfig, log) -> None:
    """Use the current Ray, else RAY_ADDRESS, else an embedded local Ray; GPU check before the trainer."""
    import ray
    import torch

    address = os.environ.get("RAY_ADDRESS")
    if job.use_gpu and not ray.is_initialized() and not address and not torch.cuda.is_available():
        raise TrainJobError("--use-gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False)")
    # workers plus room for Ray Data's read tasks (the 2-core deadlock in RAY_NOTES)
    ensure_ray(min_cpus=job.num_workers * job.cpus_per_worker + 2, log=log)
    res = ray.cluster_resources()
    if job.use_gpu and res.get("GPU", 0) < job.num_workers:
        raise TrainJobError(f"--use-gpu with {job.num_workers} workers, but the Ray cluster has "
                            f"{res.get('GPU', 0):g} GPU(s)")
    if res.get("CPU", 0) < job.num_workers * job.cpus_per_worker + (1 if job.data_loader == "ray_data" else 0):
        log(f"warning: the cluster has {res.get('CPU', 0):g} CPUs for {job.num_workers} workers x "
            f"{job.cpus_per_worker:g} CPUs plus data reading; it may wait for an autoscaler or hang")


def run_distributed_training(data_dir: str | Path, out: str | Path, cfg: RunConfig, *, num_workers: int = 2,
                             use_gpu: bool = False, storage_path: str | None = None, name: str | None = None,
                             max_failures: int = 1, keep_checkpoints: int = 2,
                             resume_from: str | Path | None = None, cpus_per_worker: float = 1.0,
                             data_loader: str = "ray_data", stop_after_phase: str | None = None,
                             fail_at_step: int | None = None, log: Callable[[str], None] = print) -> Path:
    """Train with Ray Train data parallelism and write OUT like `train_local`.

    Returns OUT (the finalized model dir), or OUT/state (the latest resumable checkpoint) when stopped
    early by `stop_after_phase`. Starting again with the same `name` and `storage_path` continues from the
    run's latest checkpoint. `fail_at_step` (or env REVIEWGEN_TEST_FAIL_AT_STEP) is a test hook: the last
    rank exits once at that global step, to exercise recovery."""
    if fail_at_step is None and os.environ.get(FAIL_ENV):
        fail_at_step = int(os.environ[FAIL_ENV])
    job = TrainJobConfig(Path(data_dir), Path(out), num_workers, use_gpu, storage_path, name, max_failures,
                         keep_checkpoints, Path(resume_from) if resume_from else None, cpus_per_worker,
                         data_loader, stop_after_phase, fail_at_step)
    job.validate()
    cfg.validate()
    if use_gpu and not os.environ.get("RAY_ADDRESS"):
        import ray
        import torch

        if not ray.is_initialized() and not torch.cuda.is_available():
            raise TrainJobError("--use-gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False)")
    return _run(job, cfg, log)


def _run(job: TrainJobConfig, cfg: RunConfig, log) -> Path:
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from reviewgen.data.corpus import load_split
    from reviewgen.core.encoding import encode_frame
    from reviewgen.train.trainer import data_hash_of

    out = Path(job.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(job.data_dir).resolve()
    train_df, val_df = load_split(data_dir, "train"), load_split(data_dir, "val")
    cfg, tok, categories = _run_setup(job, cfg, train_df, log)
    _connect(job, log)
    t = cfg.train
    global_bs = t.batch_size * job.num_workers
    # validation on the global batch size, so val NLL is comparable across worker counts
    val = encode_frame(val_df.head(global_bs * t.val_batches), tok, categories)
    loop_cfg: dict[str, Any] = {
        "cfg": cfg.to_dict(), "tok_json": tok.tok.to_str(), "categories": categories,
        "val": {k: v for k, v in val.items()}, "val_batch_size": global_bs,
        "storage": job.storage, "name": job.run_name, "data_loader": job.data_loader,
        "resume_from": str(Path(job.resume_from).resolve()) if job.resume_from else None,
        "stop_after_phase": job.stop_after_phase, "fail_at_step": job.fail_at_step,
        "data_hash": data_hash_of(data_dir),
    }
    datasets = None
    if job.data_loader == "sharded_memory":
        loop_cfg["train_ref"] = ray.put(encode_frame(train_df, tok, categories))
    else:
        ds = ray.data.read_parquet(str(data_dir / "train.parquet"), columns=READ_COLUMNS)
        ds = ds.map_batches(encode_batch, batch_format="pandas", batch_size=512, fn_kwargs={
            "tok_json": loop_cfg["tok_json"], "prefix_len": cfg.tokenizer.prefix_len,
            "max_review_len": cfg.tokenizer.max_review_len, "categories": categories})
        datasets = {"train": ds}
    resources = {"CPU": job.cpus_per_worker} | ({"GPU": 1} if job.use_gpu else {})
    trainer = TorchTrainer(
        _train_loop, train_loop_config=loop_cfg, datasets=datasets,
        scaling_config=ray.train.ScalingConfig(num_workers=job.num_workers, use_gpu=job.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=job.run_name, storage_path=job.storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=job.max_failures)))
    log(f"Ray Train: {job.num_workers} worker(s), per-worker batch {t.batch_size} (global {global_bs}), "
        f"data {job.data_loader}, storage {job.storage}/{job.run_name}")
    t0 = time.time()
    result = trainer.fit()
    log(f"fit finished in {time.time() - t0:.1f} s: {result.return_value}")
    if result.checkpoint is None:
        raise TrainJobError(f"run {job.run_name!r} produced no checkpoint (see the worker logs under {job.storage})")
    return _export(job, result.checkpoint, out, train_df, val_df, log)


def _export(job: TrainJobConfig, checkpoint, out: Path, train_df, val_df, log) -> Path:
    """Copy the MLE baseline and the step log into OUT; finalize the last checkpoint into OUT."""
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.train.trainer import GANTrainer, data_hash_of, finalize_model

    fs, root = filesystem(job.storage)
    run = f"{root}/{job.run_name}"
    if exists(fs, f"{run}/mle_baseline/meta.json"):
        shutil.rmtree(out / "mle", ignore_errors=True)
        _download_dir(fs, f"{run}/mle_baseline", out / "mle")
    metrics = read_text(fs, f"{run}/metrics.jsonl")
    if metrics is not None:
        (out / "metrics.jsonl").write_text(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(checkpoint.to_directory(str(Path(tmp) / "ckpt")))
        ck = load_checkpoint(local, "cpu")
        if ck.meta.get("phase") != "done":
            shutil.rmtree(out / "state", ignore_errors=True)
            shutil.copytree(local, out / "state")
            log(f"stopped in phase {ck.meta.get('phase')} at global step {ck.meta.get('global_step')}; "
                f"resumable state in {out / 'state'}; start the same run name again to continue")
            return out / "state"
        trainer = GANTrainer(ck.config, ck.tokenizer, ck.categories, "cpu")
        trainer.resume_from(local)
    return finalize_model(trainer, out, train_df, val_df, data_hash_of(Path(job.data_dir)), log=log)


# -- worker ---------------------------------------------------------------------------------------------

def _reduce_metrics(m: dict[str, Any], world: int) -> dict[str, Any]:
    """Global-batch metrics: means over ranks, throughput and token counts summed."""
    import torch
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return dict(m)
    keys = sorted(k for k, v in m.items() if isinstance(v, (int, float)))
    vec = torch.tensor([float(m[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(vec)
    summed = {"tokens", "tokens_per_s", "samples_per_s"}
    return dict(m) | {k: (float(v) if k in summed else float(v) / world) for k, v in zip(keys, vec.tolist())}


class _History:
    """Rank 0's step log in storage: earlier attempts' lines past the resume point are dropped."""

    def __init__(self, fs, path: str, keep_through_step: int):
        self.fs, self.path = fs, path
        old = read_text(fs, path) or ""
        self.lines = [ln for ln in old.splitlines()
                      if ln.strip() and json.loads(ln).get("global_step", 0) <= keep_through_step]

    def add(self, rec: dict) -> None:
        self.lines.append(json.dumps(rec))

    def flush(self) -> None:
        write_text(self.fs, self.path, "\n".join(self.lines) + ("\n" if self.lines else ""))


def _batches(c: dict, cfg: RunConfig, rank: int, world: int, device, state: dict):
    """(iterator over this worker's batches, function returning the loader state to checkpoint)."""
    import ray
    import ray.train

    from reviewgen.train.trainer import TensorBatches

    b = cfg.train.batch_size
    if c["data_loader"] == "sharded_memory":
        tb = TensorBatches(ray.get(c["train_ref"]), b, cfg.train.seed, device, rank, world)
        if state:
            tb.load_state_dict(state)
        return tb, tb.state_dict
    shard = ray.train.get_dataset_shard("train")
    pos = {"epoch": int(state.get("epoch", 0))}

    def cycle() -> Iterator[dict]:
        # a resumed run starts a fresh epoch: Ray Data's streaming shards cannot seek to a row
        while True:
            n = 0
            for batch in shard.iter_torch_batches(batch_size=b, drop_last=True, device=device,
                                                  local_shuffle_buffer_size=4 * b,
                                                  local_shuffle_seed=cfg.train.seed + pos["epoch"]):
                n += 1
                yield {k: batch[k].long() for k in ("ids", "rating", "category")}
            if n == 0:
                raise RuntimeError(f"rank {rank}: its shard of train.parquet has fewer than "
                                   f"batch_size={b} rows; use fewer workers or a smaller batch")
            pos["epoch"] += 1

    return cycle(), lambda: dict(pos)


def _progress(msg: str, *_, **__) -> None:
    """Progress from rank 0 through Ray Train's worker logger: plain prints reach the driver twice."""
    import logging

    logging.getLogger("ray.train").info(msg)


def _maybe_fail(c: dict, fs, run: str, global_step: int, rank: int, world: int) -> None:
    """Test hook: the last rank exits hard once, at the configured global step (first attempt only)."""
    if c.get("fail_at_step") is None or global_step != int(c["fail_at_step"]) or rank != world - 1:
        return
    marker = f"{run}/.fail_injected_at_{global_step}"
    if exists(fs, marker):
        return
    write_text(fs, marker, "1")
    # Ray Train V2's controller collects reports on its health-check poll (2 s by default); a worker that
    # dies before the next poll also loses the checkpoint reported just before. Real failures come long
    # after the last report, so wait out two polls to test that case, not Ray's race.
    time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)) + 1)
    print(f"[reviewgen test hook] rank {rank} exiting at global step {global_step}", flush=True)
    os._exit(1)


def _train_loop(c: dict) -> dict:
    """Ray Train worker function."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from reviewgen.core.losses import val_nll
    from reviewgen.core.encoding import fixed_batches
    from reviewgen.train.trainer import PHASES, GANTrainer, format_progress

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = RunConfig.from_dict(c["cfg"])
    tok = _tokenizer(c["tok_json"], cfg.tokenizer.prefix_len, cfg.tokenizer.max_review_len)
    device = ray.train.torch.get_device()

    def wrap(module, name):
        # D has no buffers; skipping their broadcast also keeps D's step free of extra collectives
        kw = {"broadcast_buffers": False} if name == "discriminator" else None
        return ray.train.torch.prepare_model(module, parallel_strategy_kwargs=kw)

    trainer = GANTrainer(cfg, tok, c["categories"], device, wrap=wrap, rank=rank, world_size=world)
    saved: dict = {}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # a restart after a failure, or the same run started again: it wins over --resume-from
        with ckpt.as_directory() as d:
            saved = trainer.resume_from(d)
    elif c["resume_from"]:
        saved = trainer.resume_from(c["resume_from"])
    resumes = int(saved.get("resumes", -1)) + 1 if saved else 0
    elapsed0 = float(saved.get("elapsed", 0.0))
    # our checkpoints nest the loader state; a train_local checkpoint (--resume-from) stores it bare
    lstate = saved.get("loader", {}) if "resumes" in saved else saved
    batches, loader_state = _batches(c, cfg, rank, world, device, lstate)
    fs, root = filesystem(c["storage"])
    run = f"{root}/{c['name']}"
    history = _History(fs, f"{run}/metrics.jsonl", trainer.global_step) if rank == 0 else None
    val_batches = fixed_batches(c["val"], c["val_batch_size"], cfg.train.val_batches, device) if rank == 0 else []
    if rank == 0:
        _progress(f"[rank 0] {trainer.describe()}; world {world}; phase {trainer.phase} step {trainer.step} "
              f"(global {trainer.global_step}); attempt {resumes}", flush=True)
    t = cfg.train
    total = t.mle_steps + t.disc_warmup_steps + t.adv_steps
    stop = c.get("stop_after_phase")
    t0, last, reports = time.time(), {}, 0

    def report(phase_done_mle: bool) -> None:
        nonlocal reports
        metrics = {"phase": trainer.phase, "step": trainer.step, "global_step": trainer.global_step,
                   "resumes": resumes, **{k: last.get(k) for k in (
                       "g_loss", "d_loss", "d_acc", "val_nll", "tokens_per_s", "samples_per_s")}}
        name = f"checkpoint_{trainer.global_step:07d}_a{resumes}"
        if rank != 0:
            ray.train.report(metrics, checkpoint_dir_name=name)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                extra = {"loader": loader_state(), "resumes": resumes, "elapsed": elapsed0 + time.time() - t0}
                path = trainer.save(Path(tmp) / "ckpt", meta={"data_hash": c["data_hash"], "metrics": metrics},
                                    loader_state=extra)
                if phase_done_mle:
                    mle = trainer.save(Path(tmp) / "mle", meta={
                        "data_hash": c["data_hash"], "role": "mle_baseline",
                        "metrics": {"val_nll": last.get("val_nll")}}, loader_state=extra)
                    _upload_dir(mle, fs, f"{run}/mle_baseline")
                history.flush()
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(path)), checkpoint_dir_name=name)
        reports += 1

    while trainer.phase != "done":
        if stop and PHASES.index(trainer.phase) > PHASES.index(stop):
            break
        _maybe_fail(c, fs, run, trainer.global_step + 1, rank, world)
        res = trainer.train_step(next(batches))
        m = _reduce_metrics(res.metrics, world)
        if rank == 0 and (res.phase_done or res.step % t.eval_every == 0):
            m["val_nll"] = val_nll(trainer.G, val_batches, trainer.tk)
        last.update({k: v for k, v in m.items() if isinstance(v, (int, float))})
        if rank == 0:
            history.add({"phase": res.phase, "step": res.step, "global_step": trainer.global_step,
                         "time": elapsed0 + time.time() - t0, "resumes": resumes, "world_size": world, **m})
            if res.step % t.log_every == 0 or res.phase_done:
                _progress(format_progress(res.phase, res.step, trainer.phase_length(res.phase), m,
                                      time.time() - t0, total - trainer.global_step), flush=True)
        if res.phase_done or res.step % t.checkpoint_every == 0:
            report(res.phase_done and res.phase == "mle")
        elif rank == 0 and res.step % t.log_every == 0:
            history.flush()
    if reports == 0:  # nothing left to do (a finished or stopped run started again): still hand back a checkpoint
        report(False)
    return {"phase": trainer.phase, "step": trainer.step, "global_step": trainer.global_step, "resumes": resumes}
