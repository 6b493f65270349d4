"""The one training loop, for `train_local` and for every Ray Train worker.

`run_loop` advances a `GANTrainer` through its phases and owns everything around the steps: evaluation
cadence, checkpoint cadence, the MLE baseline at the end of phase 1, the step log, progress lines, the
time budget and `stop_after_phase`. Where results go is the `Sink`'s business: the local sink writes
OUT/state, OUT/mle and OUT/metrics.jsonl; the Ray Train sink reduces metrics across ranks and reports
checkpoints to Ray Train. Every decision that changes how many checkpoints are written (time budget,
phase ends, cadence) is the same on every rank, because a Ray Train report is a barrier.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from reviewgen.core.losses import val_nll
from reviewgen.core.model_dir import Meta

SUMMARY_KEYS = ("g_loss", "d_loss", "d_acc", "val_nll", "tokens_per_s", "samples_per_s")


class Sink(Protocol):
    """Where the loop's results go. `is_chief`: this process logs, evaluates and owns the files."""

    is_chief: bool

    def reduce(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """This step's metrics for the global batch (identity in one process)."""

    def agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (a stop decision all ranks share)."""

    def progress(self, msg: str) -> None:
        """Show one progress line (chief only)."""

    def record(self, rec: dict[str, Any]) -> None:
        """Add one line to the step log (chief only)."""

    def checkpoint(
        self, trainer, run_state: dict[str, Any], meta: Meta, summary: dict[str, Any], baseline_meta: Meta | None
    ) -> None:
        """Persist a resumable checkpoint (every rank calls it, at the same steps); with `baseline_meta`,
        also the MLE baseline."""


@dataclass(frozen=True)
class LoopSettings:
    """How long to run and what to stamp on checkpoints."""

    deadline: float | None = None  # time.time() at which the run stops with a checkpoint (the time budget)
    stop_after_phase: str | None = None
    data_hash: str = "unknown"
    resumes: int = 0  # earlier attempts of this run (restarts and reruns)
    elapsed: float = 0.0  # seconds the earlier attempts trained


@dataclass(frozen=True)
class LoopResult:
    stopped: str  # "done", "phase" (stop_after_phase) or "time" (time budget)
    phase: str
    step: int
    global_step: int


class StepLog:
    """The step log (metrics.jsonl). Lines past the resume point belong to steps that run again, so
    they are dropped when the log is opened."""

    def __init__(
        self, read: Callable[[], str | None], write: Callable[[str], None], keep_through_step: int, tracker=None
    ):
        self._write, self.tracker = write, tracker  # tracker: reviewgen.infra.tracking.Tracker or None
        self.lines = [
            ln
            for ln in (read() or "").splitlines()
            if ln.strip() and json.loads(ln).get("global_step", 0) <= keep_through_step
        ]

    def add(self, rec: dict[str, Any]) -> None:
        self.lines.append(json.dumps(rec))
        if self.tracker is not None:
            self.tracker.log_metrics(rec, step=int(rec.get("global_step", 0)))

    def flush(self) -> None:
        self._write("\n".join(self.lines) + ("\n" if self.lines else ""))


def format_progress(
    phase: str,
    step: int,
    total: int,
    m: dict,
    elapsed: float,
    remaining_steps: int,
    *,
    budget_left: float | None = None,
) -> str:
    """One progress line: phase, step, losses, throughput, ETA (and the time budget left, if any)."""
    # the latest step's time: phases cost very differently per step, so a run-long average misleads
    rate = m.get("step_time_s") or elapsed / max(1, step)
    eta = remaining_steps * rate
    keys = ("g_loss", "pg_loss", "kl", "reward", "r_rating", "r_category", "d_loss", "d_acc", "val_nll")
    parts = " ".join(f"{k}={m[k]:.3f}" for k in keys if k in m)
    budget = f" budget left {max(0.0, budget_left) / 60:.1f} min" if budget_left is not None else ""
    return f"[{phase} {step}/{total}] {parts} tok/s={m.get('tokens_per_s', 0):.0f} ETA {eta / 60:.1f} min{budget}"


class _LoopRun:
    """One call of `run_loop`: the trainer, where its results go, and what the loop keeps between steps (the
    latest metrics for checkpoint summaries, the latest validation NLL, the global step last saved)."""

    def __init__(
        self, trainer, loader_state: Callable[[], dict], val_batches: list, sink: Sink, settings: LoopSettings
    ):
        self.trainer, self.loader_state, self.val_batches = trainer, loader_state, val_batches
        self.sink, self.settings = sink, settings
        t = trainer.cfg.train
        self.total = t.mle_steps + t.disc_warmup_steps + t.adv_steps
        self.t0 = time.time()
        self.last: dict[str, Any] = {}
        self.last_val: float | None = None
        self.saved_at: int | None = None

    def checkpoint(self, baseline: bool) -> None:
        """Save the current position through the sink; with `baseline`, also the MLE baseline."""
        trainer, settings = self.trainer, self.settings
        summary = {
            "phase": trainer.phase,
            "step": trainer.step,
            "global_step": trainer.global_step,
            "resumes": settings.resumes,
            **{k: self.last.get(k) for k in SUMMARY_KEYS},
        }
        run_state = {
            "loader": self.loader_state(),
            "resumes": settings.resumes,
            "elapsed": settings.elapsed + time.time() - self.t0,
        }
        base = (
            Meta(data_hash=settings.data_hash, role="mle_baseline", metrics={"val_nll": self.last_val})
            if baseline
            else None
        )
        self.sink.checkpoint(trainer, run_state, Meta(data_hash=settings.data_hash, metrics=summary), summary, base)
        self.saved_at = trainer.global_step

    def step(self, batch: dict) -> bool:
        """One training step with its evaluation, step log, progress line and checkpoint cadence. True when the
        time budget is spent (every rank agrees; the position is saved)."""
        trainer, sink, t = self.trainer, self.sink, self.trainer.cfg.train
        res = trainer.train_step(batch)
        m = sink.reduce(res.metrics)
        if sink.is_chief and (res.phase_done or res.step % t.eval_every == 0):
            self.last_val = m["val_nll"] = val_nll(trainer.G, self.val_batches, trainer.tk)
        self.last.update({k: v for k, v in m.items() if isinstance(v, (int, float))})
        if sink.is_chief:
            self._report(res, m)
        deadline = self.settings.deadline
        out_of_time = deadline is not None and sink.agree(time.time() > deadline)
        baseline = res.phase_done and res.phase == "mle"
        if baseline or res.phase_done or res.step % t.checkpoint_every == 0 or out_of_time:
            self.checkpoint(baseline)
        if baseline and sink.is_chief:
            sink.progress(f"MLE baseline saved (val NLL {self.last_val:.3f})")
        if out_of_time and sink.is_chief:
            sink.progress(
                f"time budget reached in phase {trainer.phase} "
                f"(step {trainer.step}, global step {trainer.global_step}); state saved"
            )
        return out_of_time

    def _report(self, res, m: dict[str, Any]) -> None:
        """The chief's step log line for this step, and its progress line at the log cadence or a phase end."""
        trainer, settings, deadline = self.trainer, self.settings, self.settings.deadline
        self.sink.record(
            {
                "phase": res.phase,
                "step": res.step,
                "global_step": trainer.global_step,
                "time": settings.elapsed + time.time() - self.t0,
                "resumes": settings.resumes,
                "world_size": trainer.world,
                **m,
            }
        )
        if res.step % trainer.cfg.train.log_every == 0 or res.phase_done:
            self.sink.progress(
                format_progress(
                    res.phase,
                    res.step,
                    trainer.phase_length(res.phase),
                    m,
                    time.time() - self.t0,
                    self.total - trainer.global_step,
                    budget_left=None if deadline is None else deadline - time.time(),
                )
            )


def run_loop(
    trainer,
    batches: Iterator[dict],
    loader_state: Callable[[], dict],
    val_batches: list,
    sink: Sink,
    settings: LoopSettings,
) -> LoopResult:
    """Train until the last phase ends, `stop_after_phase` has ended, or the time budget is spent.

    Always leaves a checkpoint of the final position through the sink, so a rerun continues there."""
    run = _LoopRun(trainer, loader_state, val_batches, sink, settings)
    stopped = "done"
    while trainer.phase != "done":
        if settings.stop_after_phase and trainer.has_finished(settings.stop_after_phase):
            stopped = "phase"
            break
        if run.step(next(batches)):
            stopped = "time"
            break
    if run.saved_at != trainer.global_step:
        run.checkpoint(False)
    return LoopResult(stopped, trainer.phase, trainer.step, trainer.global_step)


class LocalSink:
    """The loop's sink in one process: OUT/state (resumable), OUT/mle (baseline), OUT/metrics.jsonl."""

    is_chief = True

    def __init__(self, out: Path, keep_through_step: int, log: Callable[[str], None], tracker=None):
        self.out, self.log = out, log
        path = out / "metrics.jsonl"
        self.steps = StepLog(
            lambda: path.read_text() if path.is_file() else None, path.write_text, keep_through_step, tracker
        )

    def reduce(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return dict(metrics)

    def agree(self, flag: bool) -> bool:
        return flag

    def progress(self, msg: str) -> None:
        self.steps.flush()
        self.log(msg)

    def record(self, rec: dict[str, Any]) -> None:
        self.steps.add(rec)

    def checkpoint(self, trainer, run_state: dict, meta: Meta, summary: dict, baseline_meta: Meta | None) -> None:
        trainer.save(self.out / "state", meta=meta, run_state=run_state)
        if baseline_meta is not None:
            trainer.save(self.out / "mle", meta=baseline_meta, run_state=run_state)
        self.steps.flush()
