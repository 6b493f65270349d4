"""Progress lines from Ray workers to the driver's console.

With a quiet console, Ray workers' stdout and logs stay in Ray's session logs (they are not forwarded to the
driver, which is what keeps Ray's own chatter off the console). Our own progress lines from a Ray Train worker
still belong on the console, so they travel through a tiny actor: workers `put` lines (fire and forget), and a
driver thread drains and prints them while the driver blocks in `fit()`. It works the same on a laptop and on
a multi-node cluster, where the driver cannot read the workers' files.
"""

from __future__ import annotations

import threading
from typing import Callable

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class _LineBuffer:
    """Lines put by workers, handed out in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, line: str) -> None:
        self.lines.append(line)

    def drain(self) -> list[str]:
        out, self.lines = self.lines, []
        return out


def send(relay, line: str) -> None:
    """From a worker: queue one line for the driver's console (no wait)."""
    relay.put.remote(line)


class ProgressRelay:
    """Driver side: `with ProgressRelay(echo) as relay:` pass `relay.handle` to workers; lines are printed
    with `echo` every `interval_s` seconds and once more on exit."""

    def __init__(self, echo: Callable[[str], None], interval_s: float = 0.5):
        self.echo, self.interval_s = echo, interval_s
        self.handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "ProgressRelay":
        self.handle = _LineBuffer.remote()
        self._thread = threading.Thread(target=self._pump, name="progress-relay", daemon=True)
        self._thread.start()
        return self

    def _flush(self) -> None:
        for line in ray.get(self.handle.drain.remote()):
            self.echo(line)

    def _pump(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._flush()
            except ray.exceptions.RayError:
                return  # the relay died with its job; the final flush reports what it can

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._flush()
        except ray.exceptions.RayError:
            pass
        ray.kill(self.handle)
