"""A quiet, informative console: our stage headers, progress lines and summaries on the console; Ray's own
INFO/WARNING lines, worker output and Python warnings in the run's log file.

`setup` is called once by each command-line entry point (the CLI and `jobs/*.py` run the same commands), which
owns its process: it decides where logs go before Ray starts. `--verbose` (or `RG_VERBOSE=1`) keeps today's
behaviour: everything on the console.
"""

from __future__ import annotations

import io
import logging
import os
import re
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
        return f" (full log: {self.log_file})" if self.log_file and self.log_file.exists() else ""


_active = Console(True, None)  # logging is process-wide; this mirrors what `setup` did to it


def active() -> Console:
    """The console set up for this process (verbose, no log file, until `setup` runs)."""
    return _active


def verbose_from_env(flag: bool) -> bool:
    """The --verbose flag, or RG_VERBOSE=1 in the environment."""
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def setup(verbose: bool, log_dir: str | Path | None, name: str) -> Console:
    """Route logs for this process: quiet unless `verbose`; the log file is LOG_DIR/NAME-<time>.log.

    In quiet mode Ray workers' output stays in Ray's session logs (RAY_LOG_TO_DRIVER=0 for a Ray this
    process starts), Ray's Python loggers and Python warnings go to the file, and Ray Data's progress bar
    stays on the console."""
    global _active
    verbose = verbose_from_env(verbose)
    if verbose:
        _active = Console(True, None)
        return _active
    base = Path(log_dir) if log_dir else Path(os.environ.get("TMPDIR", "/tmp")) / "reviewgen-logs"
    log_file = (base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log").resolve()
    handler = _RunLogHandler(log_file)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RunLogHandler)]:
        root.removeHandler(old)  # one run log per process, also when a test invokes several commands
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # Python warnings become log records on the file, not console lines
    os.environ.setdefault("RAY_LOG_TO_DRIVER", "0")
    quiet_ray_loggers()
    # Ray's driver prints raylet errors and warnings ("(raylet) ...") straight to stdout, whatever
    # log_to_driver says; such lines go to the file, everything else passes through untouched.
    for stream in ("stdout", "stderr"):
        current = getattr(sys, stream)
        if not isinstance(current, _PrefixRouter):
            setattr(sys, stream, _PrefixRouter(current, logging.getLogger("ray.console")))
    _active = Console(False, log_file)
    return _active


# "(raylet) ..." or "(SomeActor pid=123) ...", possibly behind ANSI colour codes
_RAY_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)*\((raylet|autoscaler|([\w:.\-]+ )?pid=\d+)[^)]*\)")
_MAYBE_PREFIX = ("(", "\x1b[2m", "\x1b[3")


class _PrefixRouter(io.TextIOBase):
    """A text stream that sends lines carrying a Ray worker prefix to a logger and passes the rest on.

    Text is passed on as it comes (progress bars redraw with carriage returns); only a line that starts
    like a Ray prefix is held until its end to decide where it goes. It presents the wrapped stream's
    encoding, descriptor and tty-ness, so libraries that inspect sys.stdout treat it as the console."""

    def __init__(self, stream, logger: logging.Logger):
        super().__init__()
        self._stream, self._logger, self._held = stream, logger, ""

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", "utf-8")

    @property
    def errors(self):
        return getattr(self._stream, "errors", "strict")

    @property
    def buffer(self):
        return self._stream.buffer

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode(self.encoding or "utf-8", "replace")
        n = len(text)
        while text:
            if self._held or text.startswith(_MAYBE_PREFIX):
                end = text.find("\n")
                if end < 0:
                    self._held += text
                    break
                line, text = self._held + text[:end], text[end + 1 :]
                self._held = ""
                if _RAY_PREFIX.match(line):
                    self._logger.info(line)
                else:
                    self._stream.write(line + "\n")
                continue
            cut = text.find("\n")
            chunk, text = (text, "") if cut < 0 else (text[: cut + 1], text[cut + 1 :])
            self._stream.write(chunk)
        return n

    def flush(self) -> None:
        self._stream.flush()


class _RunLogHandler(logging.FileHandler):
    """The run's log file, created (with its directory) only when the first record arrives, so that
    `--help` or a command that logs nothing leaves no file behind."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8", delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def quiet_ray_loggers() -> None:
    """Send Ray's Python loggers to the root logger's file handler instead of their console handlers.

    Ray (re)configures some loggers lazily (on import of ray.data, on ray.init, on serve.start), so entry
    points call this again after those steps; it is idempotent and does nothing in verbose mode."""
    root = logging.getLogger()
    if not any(isinstance(h, _RunLogHandler) for h in root.handlers):
        return
    for name in RAY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True


def log_exception(e: BaseException) -> None:
    """Write an unexpected error's traceback to the log file (the console gets one line naming it)."""
    logging.getLogger("reviewgen").error("unexpected error", exc_info=(type(e), e, e.__traceback__))


def echo(msg: str) -> None:
    """One console line from us (stage headers, progress, summaries), flushed at once."""
    print(msg, file=sys.stdout, flush=True)
    logging.getLogger("reviewgen").info(msg)
