"""The console a newcomer sees: `reviewgen demo --quick` prints our stage headers, progress and summary,
and no Ray worker lines or warnings; those go to the run's log file."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reviewgen.infra.console import _PrefixRouter

ROOT = Path(__file__).resolve().parents[1]
# Ray's own log lines ("INFO 2026-11-24 11:15:16,948 serve 23479 -- ..." or "2026-... INFO worker.py:..")
RAY_LOG_LINE = re.compile(
    r"^\s*(INFO|WARNING|DEBUG)\s+\d{4}-\d\d-\d\d"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING|DEBUG)"
)
WORKER_PREFIX = re.compile(r"^\s*(\x1b\[[0-9;]*m)*\((raylet|([\w:.\-]+ )?pid=\d+)")


# the demo's generator and tokenizer (so its quick model writes reviews the filter accepts) with a smaller
# discriminator, batch and review length: the console, not the model, is under test
QUICK_CONFIG = """
tokenizer: {vocab_size: 8000, prefix_len: 24, max_review_len: 32}
generator: {n_layer: 3, n_head: 4, d_model: 160, dropout: 0.0}
discriminator: {n_layer: 1, n_head: 2, d_model: 64, dropout: 0.0, n_categories: 32}
train: {batch_size: 16, group_size: 2, lr_g: 0.002, lr_d: 0.0003, warmup_steps: 30}
"""


@pytest.mark.slow
def test_quick_demo_console_is_quiet(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RG_", "REVIEWGEN_"))}
    env.update(RG_LOG_DIR=str(tmp_path / "logs"), RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT))
    (tmp_path / "quick.yaml").write_text(QUICK_CONFIG)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from reviewgen.cli import app; app()",
            "demo",
            "--quick",
            "--out",
            str(tmp_path / "demo"),
            "--config",
            str(tmp_path / "quick.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(lines[-40:])
    noisy = [ln for ln in lines if WORKER_PREFIX.search(ln) or RAY_LOG_LINE.search(ln) or "warning" in ln.lower()]
    assert not noisy, "lines that belong in the log file:\n" + "\n".join(noisy[:20])
    text = "\n".join(lines)
    for header in ("== 1/5", "== 2/5", "== 3/5", "== 4/5", "== 5/5", "demo finished"):
        assert header in text
    assert re.search(r"\bmle\b.*step", text), "training progress from the Ray Train worker is missing"
    logs = list((tmp_path / "logs").glob("demo-*.log"))
    assert len(logs) == 1 and "ray" in logs[0].read_text().lower()
    # the demo signs with a fresh key; the endpoint finds the mark in the generated reviews, not in real ones,
    # and the key itself stays in its file
    demo = tmp_path / "demo"
    report = (demo / "report.md").read_text()
    rows = [ln for ln in report.splitlines() if ln.startswith(("| human |", "| generated |"))]
    assert any(r.startswith("| generated |") for r in rows)
    assert all(("| True (" in r) == r.startswith("| generated |") for r in rows), rows
    key = (demo / "demo-watermark.key").read_text().strip()
    written = [f for f in demo.rglob("*") if f.is_file() and f.name != "demo-watermark.key" and f.stat().st_size < 1e7]
    assert not [f for f in [*written, logs[0]] if key.encode() in f.read_bytes()] and key not in text


def test_ray_prefixed_lines_go_to_the_log_and_the_rest_passes_through():
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test.console.router")
    logger.addHandler(Keep())
    logger.propagate = False
    logger.setLevel(logging.INFO)
    out = io.StringIO()
    router = _PrefixRouter(out, logger)
    router.write("== 1/5 prepare\n\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes\n(pid=12) hi\n")
    router.write("progress 10%\r")  # a progress bar redraw passes at once, without waiting for a newline
    assert out.getvalue() == "== 1/5 prepare\nprogress 10%\r"
    router.write("progress 20%\n\x1b[36m(RayTrainWorker pid=5)\x1b[0m step 1")
    router.write(" of 3\n(not a Ray prefix) kept\n")
    assert out.getvalue().endswith("progress 20%\n(not a Ray prefix) kept\n")
    assert records == [
        "\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes",
        "(pid=12) hi",
        "\x1b[36m(RayTrainWorker pid=5)\x1b[0m step 1 of 3",
    ]
