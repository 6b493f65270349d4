"""`reviewgen serve`: the Ray Serve scoring endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from reviewgen.cli.common import log


def serve(
    model: Path = typer.Option(..., "--model", help="Exported model directory."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Bind address. Stays on loopback unless you say otherwise; set REVIEWGEN_API_TOKEN before exposing it.",
    ),
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="Serve YAML (ServeConfig fields: batching, request "
        "limits, the filter's check_copy, max_copy_span and check_pii, "
        "autoscaling, CPU/GPU per replica), at top level or under serve:.",
    ),
    set_: List[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override one ServeConfig field, "
        "repeatable, e.g. --set max_batch_size=16 --set check_copy=false "
        "--set max_copy_span=10.",
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="Deploy and return instead of serving until Ctrl-C. "
        "Against Ray that already serves the app (RAY_ADDRESS, e.g. auto), --model NEW "
        "--detach is a rolling model update.",
    ),
):
    """Serve the calibrated scorer on Ray Serve: POST /v1/score, /healthz, /readyz, /v1/model, /v1/stats, /docs.

    Ctrl-C (SIGINT) or SIGTERM drains in-flight requests, then stops the app (and Serve and Ray, when this
    command started them)."""
    from reviewgen.core.config_io import parse_set_options
    from reviewgen.infra.console import quiet_ray_loggers
    from reviewgen.serve.app import run_server
    from reviewgen.serve.config import ServeConfig

    quiet_ray_loggers()  # importing ray.serve attaches Serve's own console handler

    cfg = (ServeConfig.from_yaml(config) if config else ServeConfig()).with_overrides(parse_set_options(set_))
    run_server(str(model), host=host, port=port, config=cfg, blocking=not detach, log=log)
