"""The train job's settings (`reviewgen train`, `jobs/train.py`): one frozen dataclass, loaded from the run
YAML's optional `job:` section, then `--set KEY=VALUE`, then explicit flags. No Ray here: the in-process
mode and the job's validation must not need it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

from reviewgen.core.config import JOB_SECTION, RunConfig
from reviewgen.core.config_io import ConfigError, config_from_dict, parse_set_options, read_yaml_mapping, with_overrides

DATA_LOADERS = ("ray_data", "sharded_memory")
# schemes pyarrow.fs (and so Ray Train storage) understands without extra plugins
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs")
STOP_PHASES = ("mle", "disc", "adv")
DEFAULT_NAME = "reviewgen-train"


class TrainJobError(ConfigError):
    """A training job is misconfigured (or, after the fit, produced nothing); raised before Ray is touched where
    possible. One family with every other settings error, so callers catch `ConfigError` alone."""


def _path(v: Any) -> Path | None:
    return None if v is None or v == "" else Path(v)


@dataclass(frozen=True)
class TrainJobConfig:
    """Settings of one training job (everything except the model/train config, which is RunConfig)."""

    data_dir: Path | None = None
    out: Path | None = None
    num_workers: int = 0  # 0: train in this process without Ray
    use_gpu: bool = False
    storage_path: str | None = None  # default: OUT/runs
    name: str | None = None  # default: reviewgen-train
    max_failures: int = 1
    keep_checkpoints: int = 2
    resume_from: Path | None = None
    cpus_per_worker: float = 1.0
    data_loader: str = "ray_data"
    stop_after_phase: str | None = None
    max_minutes: float | None = None
    device: str | None = None  # in-process mode: cpu or cuda
    tracking_uri: str | None = None  # MLflow tracking URI (e.g. file:./mlruns); None: no tracking
    # a local Hugging Face model directory (config.json, *.safetensors, tokenizer.json) G and D start from;
    # in Ray Train mode every worker reads it, so it must be on storage all nodes mount
    init_from: Path | None = None

    def __post_init__(self):
        # YAML and --set values arrive untyped where the default is None
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen)
        for key in ("data_dir", "out", "resume_from", "init_from"):
            set_(key, _path(getattr(self, key)))
        if self.storage_path is not None:
            set_("storage_path", str(self.storage_path))
        if self.max_minutes is not None:
            try:
                set_("max_minutes", float(self.max_minutes))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"max_minutes: expected a number, got {self.max_minutes!r}") from e

    @property
    def run_name(self) -> str:
        return self.name or DEFAULT_NAME

    @property
    def storage(self) -> str:
        """Storage root as Ray wants it: an absolute local path or a URI (default OUT/runs)."""
        if self.storage_path is None:
            return str(Path(self.out).resolve() / "runs")
        s = str(self.storage_path)
        if s.startswith("file://"):
            return str(Path(urlparse(s).path).resolve())
        return s if "://" in s else str(Path(s).expanduser().resolve())

    def validate(self) -> None:
        """Raise TrainJobError naming the first bad setting. Touches neither Ray nor the network."""
        if self.data_dir is None or self.out is None:
            raise TrainJobError("--data and --out are required")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise TrainJobError(f"--num-workers must be >= 0 (0 = in this process), got {self.num_workers!r}")
        if self.cpus_per_worker <= 0:
            raise TrainJobError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise TrainJobError(f"--max-failures must be >= 0 (or -1 for unlimited), got {self.max_failures}")
        if self.keep_checkpoints < 1:
            raise TrainJobError(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise TrainJobError(f"--max-minutes must be > 0, got {self.max_minutes}")
        if self.data_loader not in DATA_LOADERS:
            raise TrainJobError(f"--data-loader must be one of {DATA_LOADERS}, got {self.data_loader!r}")
        if self.stop_after_phase is not None and self.stop_after_phase not in STOP_PHASES:
            raise TrainJobError(f"--stop-after-phase must be one of {STOP_PHASES}, got {self.stop_after_phase!r}")
        if self.storage_path is not None and "://" in str(self.storage_path):
            scheme = urlparse(str(self.storage_path)).scheme
            if scheme not in STORAGE_SCHEMES:
                raise TrainJobError(
                    f"--storage-path {self.storage_path!r}: unsupported scheme {scheme!r}; "
                    f"use a local/NFS path or one of {[s + '://' for s in STORAGE_SCHEMES]}"
                )
        d = Path(self.data_dir)
        for split in ("train", "val"):
            if not (d / f"{split}.parquet").is_file():
                raise TrainJobError(
                    f"{d / f'{split}.parquet'}: prepared data not found "
                    "(run `reviewgen prepare` first and pass its output dir)"
                )
        if self.resume_from is not None and not (Path(self.resume_from) / "train_state.pt").is_file():
            raise TrainJobError(
                f"--resume-from {self.resume_from}: not a resumable training checkpoint "
                "(no train_state.pt; exported models cannot be resumed)"
            )
        if self.name is not None and (not self.name or "/" in self.name):
            raise TrainJobError(f"--name {self.name!r}: must be a non-empty name without '/'")


def load_train_job(
    config: str | Path | None,
    sets: Sequence[str] = (),
    job_flags: Mapping[str, Any] | None = None,
    run_flags: Mapping[str, Any] | None = None,
) -> tuple[RunConfig, TrainJobConfig]:
    """The run config and job config of one train command.

    Precedence, lowest first: defaults, the YAML file (run sections plus its optional `job:` section),
    `--set KEY=VALUE` (`job.<field>` keys go to the job, the rest to the run config), then explicit flags
    (`job_flags` by TrainJobConfig field, `run_flags` as dotted run-config keys; None = not given).
    Unknown keys anywhere raise ConfigError naming the key and its source."""
    data = read_yaml_mapping(config) if config else {}
    src = str(config) if config else "<defaults>"
    job = config_from_dict(TrainJobConfig, data.pop(JOB_SECTION, None), f"{src}:{JOB_SECTION}")
    cfg = config_from_dict(RunConfig, data, src)
    sets_ = parse_set_options(list(sets))
    prefix = JOB_SECTION + "."
    job = with_overrides(job, {k[len(prefix) :]: v for k, v in sets_.items() if k.startswith(prefix)}, "--set job")
    cfg = with_overrides(cfg, {k: v for k, v in sets_.items() if not k.startswith(prefix)}, "--set")
    known = {f.name for f in fields(TrainJobConfig)}
    unknown = set(job_flags or {}) - known
    if unknown:
        raise ConfigError(f"unknown job setting(s) {sorted(unknown)}")
    job = with_overrides(job, dict(job_flags or {}), "flag")
    cfg = with_overrides(cfg, dict(run_flags or {}), "flag")
    cfg.validate()
    return cfg, job
