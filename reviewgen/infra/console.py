"""A quiet, informative console: our stage headers, progress lines and summaries on the console; Ray's own
INFO/WARNING lines, worker output and Python warnings in the run's log file.

`setup` is called once by each command-line entry point (the CLI and `jobs/*.py` run the same commands), which
owns its process: it decides where logs go before Ray starts. `--verbose` (or `RG_VERBOSE=1`) keeps today's
behaviour: everything on the console.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

VERBOSE_ENV = "RG_VERBOSE"
# Loggers Ray configures with console handlers of their own; in quiet mode they write to the log file.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "ray.air", "ray.util")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Console:
    """Where this process's logs go. `log_file` is None in verbose mode (everything on the console)."""

    verbose: bool
    log_file: Path | None

    def where(self) -> str:
        """A hint for error messages: the log file to read, if any."""
        return f" (full log: {self.log_file})" if self.log_file else ""


def verbose_from_env(flag: bool) -> bool:
    """The --verbose flag, or RG_VERBOSE=1 in the environment."""
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def setup(verbose: bool, log_dir: str | Path | None, name: str) -> Console:
    """Route logs for this process: quiet unless `verbose`; the log file is LOG_DIR/NAME-<time>.log.

    In quiet mode Ray workers' output stays in Ray's session logs (RAY_LOG_TO_DRIVER=0 for a Ray this
    process starts), Ray's Python loggers and Python warnings go to the file, and Ray Data's progress bar
    stays on the console."""
    verbose = verbose_from_env(verbose)
    if verbose:
        return Console(True, None)
    base = Path(log_dir) if log_dir else Path(os.environ.get("TMPDIR", "/tmp")) / "reviewgen-logs"
    base.mkdir(parents=True, exist_ok=True)
    log_file = base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # Python warnings become log records on the file, not console lines
    os.environ.setdefault("RAY_LOG_TO_DRIVER", "0")
    # the driver's own C++ core-worker warnings otherwise print to stderr
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    quiet_ray_loggers()
    return Console(False, log_file)


def quiet_ray_loggers() -> None:
    """Send Ray's Python loggers to the root logger's file handler instead of their console handlers.

    Ray (re)configures some loggers lazily (on import of ray.data, on ray.init, on serve.start), so entry
    points call this again after those steps; it is idempotent and does nothing in verbose mode."""
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        return
    for name in RAY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True


def echo(msg: str) -> None:
    """One console line from us (stage headers, progress, summaries), flushed at once."""
    print(msg, file=sys.stdout, flush=True)
    logging.getLogger("reviewgen").info(msg)
