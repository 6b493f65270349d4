"""`ray job submit` entrypoint: data-parallel GAN training on Ray Train.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --data DATA --out OUT --config configs/demo.yaml --num-workers 2 \
            [--use-gpu] [--storage-path s3://bucket/ray-results] [--name reviewgen-train]

Same path as `reviewgen train --num-workers N`. Starting again with the same --name and --storage-path
continues the run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from reviewgen.core.config import RunConfig
from reviewgen.train.distributed import DATA_LOADERS, STOP_PHASES, run_distributed_training


def parser() -> argparse.ArgumentParser:
    """The flags, with the same names and help texts as `reviewgen train`'s distributed options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared data dir (`reviewgen prepare` output: train/val/test.parquet)")
    p.add_argument("--out", required=True, help="output model dir (OUT; OUT/mle = MLE baseline, OUT/metrics.jsonl)")
    p.add_argument("--config", default=None, help="run config YAML (e.g. configs/demo.yaml); defaults otherwise")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable, e.g. --set train.mle_steps=100")
    p.add_argument("--num-workers", type=int, default=2,
                   help="Ray Train workers; global batch = train.batch_size (per worker) x num-workers")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (bf16 autocast)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker")
    p.add_argument("--storage-path", default=None,
                   help="Ray run storage: local/NFS path, file://, s3:// or gs:// (default OUT/runs)")
    p.add_argument("--name", default=None, help="run name; the same name + storage resumes (default reviewgen-train)")
    p.add_argument("--max-failures", type=int, default=1, help="worker-group restarts from the latest checkpoint")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept in storage (newest)")
    p.add_argument("--resume-from", default=None, help="start from this training checkpoint dir (e.g. OUT/mle)")
    p.add_argument("--data-loader", choices=DATA_LOADERS, default="ray_data",
                   help="ray_data: streamed Ray Dataset shards; sharded_memory: in-memory slices of one "
                        "global batch (exact 1-vs-N worker equivalence; small data only)")
    p.add_argument("--stop-after-phase", choices=STOP_PHASES, default=None,
                   help="stop (resumably) after this phase ends")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse flags and train; returns the exit code."""
    a = parser().parse_args(argv)
    cfg = RunConfig.from_yaml(a.config) if a.config else RunConfig()
    overrides = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser().error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    cfg.override(overrides)
    out = run_distributed_training(
        a.data, a.out, cfg, num_workers=a.num_workers, use_gpu=a.use_gpu, storage_path=a.storage_path,
        name=a.name, max_failures=a.max_failures, keep_checkpoints=a.keep_checkpoints,
        resume_from=a.resume_from, cpus_per_worker=a.cpus_per_worker, data_loader=a.data_loader,
        stop_after_phase=a.stop_after_phase)
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
