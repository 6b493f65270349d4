"""`reviewgen demo`: the whole pipeline end to end on an embedded local Ray."""

from __future__ import annotations

from pathlib import Path

import typer

from reviewgen.cli.common import log


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Demo output directory."),
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", help="Training config for the demo model."),
    num_workers: int = typer.Option(1, "--num-workers", help="Ray Train workers for the demo training job."),
    quick: bool = typer.Option(False, "--quick", help="A much shorter schedule (smoke test)."),
):
    """End to end on an embedded local Ray: prepare the carried sample, train (Ray Train), generate for a sample
    catalog (Ray Data), score through the Serve endpoint, and write a report."""
    from reviewgen.demo import run_demo

    run_demo(out, config, num_workers=num_workers, quick=quick, log=log)
