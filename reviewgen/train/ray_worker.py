"""The Ray Train worker: the one training loop (`reviewgen.train.loop`) with a Ray Train sink.

Each worker builds the same `GANTrainer` as `train_local`, with G and D wrapped in DDP, and runs
`run_loop`. The sink reduces metrics across ranks, agrees stop decisions across ranks, and reports a
checkpoint from rank 0 while every rank calls `ray.train.report` at the same steps (it is a barrier).
"""

from __future__ import annotations

import functools
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint
from tokenizers import Tokenizer

from reviewgen.core.config import RunConfig
from reviewgen.core.encoding import encode_frame, fixed_batches
from reviewgen.core.hf_import import HFBase, HFImportError, load_hf_base
from reviewgen.core.lora import ddp_ignore_frozen
from reviewgen.core.model_dir import Meta
from reviewgen.core.tokenizer import ReviewTokenizer
from reviewgen.infra.progress import send as send_progress
from reviewgen.infra.storage import exists, filesystem, read_text, write_text
from reviewgen.infra.tracking import Tracker
from reviewgen.train.batches import TensorBatches
from reviewgen.train.loop import LoopSettings, StepLog, run_loop
from reviewgen.train.trainer import GANTrainer

# metrics summed over ranks (the rest are averaged)
SUMMED = {"tokens", "tokens_per_s", "samples_per_s"}


# -- storage (local, NFS, or a pyarrow URI) -----------------------------------------------------------


def upload_dir(local: Path, fs, path: str) -> None:
    """Replace directory `path` on `fs` with a copy of the local directory."""
    if exists(fs, path):
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_dir(fs, path: str, local: Path) -> None:
    """Copy directory `path` on `fs` into the local directory."""
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


# -- tokenizer shipping ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def shipped_tokenizer(tok_json: str, prefix_len: int, max_review_len: int) -> ReviewTokenizer:
    """Rebuild the driver's tokenizer from its JSON (cached: Ray Data calls this once per batch)."""
    return ReviewTokenizer(Tokenizer.from_str(tok_json), prefix_len, max_review_len)


def encode_batch(
    df, *, tok_json: str, prefix_len: int, max_review_len: int, categories: list[str]
) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` function: a pandas batch of reviews -> ids/rating/category arrays."""
    return encode_frame(df, shipped_tokenizer(tok_json, prefix_len, max_review_len), categories)


# -- the sink -----------------------------------------------------------------------------------------------


class RayTrainSink:
    """Ray Train reporting for `run_loop`: rank 0 owns the step log (in storage) and the checkpoints."""

    def __init__(
        self,
        rank: int,
        world: int,
        device,
        storage: str,
        name: str,
        *,
        keep_through_step: int,
        relay=None,
        tracker=None,
    ):
        self.is_chief, self.world, self.device = rank == 0, world, device
        self.relay = relay  # the driver's console (reviewgen.infra.progress); None: the worker's log
        self.fs, root = filesystem(storage)
        self.run = f"{root}/{name}"
        log = f"{self.run}/metrics.jsonl"
        self.steps = (
            StepLog(
                lambda: read_text(self.fs, log), lambda text: write_text(self.fs, log, text), keep_through_step, tracker
            )
            if self.is_chief
            else None
        )

    def reduce(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Global-batch metrics: means over ranks, throughput and token counts summed."""
        if self.world == 1 or not dist.is_initialized():
            return dict(metrics)
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        vec = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(vec)
        return dict(metrics) | {
            k: (float(v) if k in SUMMED else float(v) / self.world) for k, v in zip(keys, vec.tolist())
        }

    def agree(self, flag: bool) -> bool:
        if self.world == 1 or not dist.is_initialized():
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def progress(self, msg: str) -> None:
        self.steps.flush()
        if self.relay is not None:
            send_progress(self.relay, msg)
        else:
            # through Ray Train's worker logger: plain prints reach the driver twice
            logging.getLogger("ray.train").info(msg)

    def record(self, rec: dict[str, Any]) -> None:
        self.steps.add(rec)

    def checkpoint(
        self, trainer: GANTrainer, run_state: dict, meta: Meta, summary: dict, baseline_meta: Meta | None
    ) -> None:
        name = f"checkpoint_{trainer.global_step:07d}_a{summary['resumes']}"
        if not self.is_chief:
            ray.train.report(summary, checkpoint_dir_name=name)
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = trainer.save(Path(tmp) / "ckpt", meta=meta, run_state=run_state)
            if baseline_meta is not None:
                mle = trainer.save(Path(tmp) / "mle", meta=baseline_meta, run_state=run_state)
                upload_dir(mle, self.fs, f"{self.run}/mle_baseline")
            self.steps.flush()
            ray.train.report(summary, checkpoint=Checkpoint.from_directory(str(path)), checkpoint_dir_name=name)


# -- the worker ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """Everything the driver hands each Ray Train worker (`train_loop_config={"spec": ...}`), typed on both
    sides; Ray pickles it once per worker."""

    config: RunConfig
    tok_json: str  # the run's tokenizer, as tokenizer.json text
    categories: tuple[str, ...]
    val: dict[str, np.ndarray]  # encoded validation rows, evaluated on rank 0
    val_batch_size: int  # the global batch, so val NLL compares across worker counts
    storage: str  # Ray Train storage path (local, NFS or a pyarrow URI)
    name: str  # the run name under `storage`
    data_loader: str  # "ray_data" (a dataset shard) or "sharded_memory" (`train_ref`)
    data_hash: str
    threads: int  # intra-op threads: the CPUs this worker reserved
    resume_from: str | None = None
    stop_after_phase: str | None = None
    deadline: float | None = None  # epoch seconds; every rank stops at the same step once past it
    tracking: tuple[str, str] | None = None  # (MLflow URI, run id) that rank 0 logs to
    base: dict[str, Any] | None = None  # the --init-from base record fresh workers load
    train_ref: Any = None  # ObjectRef of the encoded training rows (sharded_memory)
    progress: Any = None  # the driver's progress relay handle


def _batches(s: WorkerSpec, rank: int, world: int, device, state: dict) -> tuple[Iterator[dict], Callable[[], dict]]:
    """(iterator over this worker's batches, function returning the loader state to checkpoint)."""
    cfg = s.config
    b = cfg.train.batch_size
    if s.data_loader == "sharded_memory":
        tb = TensorBatches(ray.get(s.train_ref), b, cfg.train.seed, device, rank, world)
        if state:
            tb.load_state_dict(state)
        return tb, tb.state_dict
    shard = ray.train.get_dataset_shard("train")
    pos = {"epoch": int(state.get("epoch", 0))}

    def cycle() -> Iterator[dict]:
        # a resumed run starts a fresh epoch: Ray Data's streaming shards cannot seek to a row
        while True:
            n = 0
            for batch in shard.iter_torch_batches(
                batch_size=b,
                drop_last=True,
                device=device,
                local_shuffle_buffer_size=4 * b,
                local_shuffle_seed=cfg.train.seed + pos["epoch"],
            ):
                n += 1
                yield {k: batch[k].long() for k in ("ids", "rating", "category")}
            if n == 0:
                raise RuntimeError(
                    f"rank {rank}: its shard of train.parquet has fewer than "
                    f"batch_size={b} rows; use fewer workers or a smaller batch"
                )
            pos["epoch"] += 1

    return cycle(), lambda: dict(pos)


def _wrap(module: torch.nn.Module, name: str) -> torch.nn.Module:
    # D has no buffers; skipping their broadcast also keeps D's step free of extra collectives
    kw = {"broadcast_buffers": False} if name == "discriminator" else None
    ddp_ignore_frozen(module)  # a LoRA base: DDP carries the adapters (and D's heads) only
    return ray.train.torch.prepare_model(module, parallel_strategy_kwargs=kw)


def _base(cfg: RunConfig, base: dict) -> HFBase:
    """Read the --init-from base on this worker, checking it is the one the driver set the run up from."""
    t = cfg.tokenizer
    hf = load_hf_base(base["path"], prefix_len=t.prefix_len, max_review_len=t.max_review_len)
    if hf.sha256 != base["sha256"]:
        raise HFImportError(
            f"{base['path']}: the base weights on this worker differ from the driver's "
            f"(sha256 {hf.sha256[:12]} vs {base['sha256'][:12]}); every node must see the same files"
        )
    return hf


def train_loop(c: dict) -> dict:
    """Ray Train worker function: resume if there is a checkpoint, then the one training loop."""
    s: WorkerSpec = c["spec"]
    cfg = s.config
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, s.threads))  # Ray's default for a worker process is 1
    tok = shipped_tokenizer(s.tok_json, cfg.tokenizer.prefix_len, cfg.tokenizer.max_review_len)
    device = ray.train.torch.get_device()
    ckpt = ray.train.get_checkpoint()
    fresh = ckpt is None and not s.resume_from  # else a checkpoint holds every weight
    base = _base(cfg, s.base) if fresh and s.base else None
    trainer = GANTrainer(cfg, tok, list(s.categories), device, wrap=_wrap, rank=rank, world_size=world, base=base)
    run: dict = {}
    if ckpt is not None:  # a restart after a failure, or the same run started again: it wins over --resume-from
        with ckpt.as_directory() as d:
            run = trainer.resume_from(d)
    elif s.resume_from:
        run = trainer.resume_from(s.resume_from)
    batches, loader_state = _batches(s, rank, world, device, run.get("loader", {}))
    # rank 0 logs to the driver's MLflow run (reviewgen.infra.tracking), when one was started
    tracker = Tracker.attach(*s.tracking) if s.tracking and rank == 0 else None
    sink = RayTrainSink(
        rank, world, device, s.storage, s.name, keep_through_step=trainer.global_step, relay=s.progress, tracker=tracker
    )
    val_batches = fixed_batches(s.val, s.val_batch_size, cfg.train.val_batches, device) if rank == 0 else []
    settings = LoopSettings(
        deadline=s.deadline,
        stop_after_phase=s.stop_after_phase,
        data_hash=s.data_hash,
        resumes=int(run.get("resumes", -1)) + 1 if run else 0,
        elapsed=float(run.get("elapsed", 0.0)),
    )
    if rank == 0:
        sink.progress(
            f"[rank 0] {trainer.describe()}; world {world}; phase {trainer.phase} step {trainer.step} "
            f"(global {trainer.global_step}); attempt {settings.resumes}"
        )
    return asdict(run_loop(trainer, batches, loader_state, val_batches, sink, settings))
