"""`ray job submit` entrypoint: deploy the review scorer on the cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/serve.py --model /mnt/shared/models/current [--config serve.yaml] [--detach]

With --detach the job exits once the application is running (Serve keeps it up); otherwise the job
stays attached and serves until it is stopped.
"""

from __future__ import annotations

import argparse
import sys

from reviewgen.serve.app import run_server
from reviewgen.serve.api import ServeConfig


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run the scorer; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="exported model directory (config.json, *.safetensors, ...)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--config", default=None, help="YAML of ServeConfig fields (batching, limits, scaling)")
    p.add_argument("--detach", action="store_true", help="exit after deploying instead of blocking")
    a = p.parse_args(argv)
    cfg = ServeConfig.from_yaml(a.config) if a.config else ServeConfig()
    run_server(a.model, host=a.host, port=a.port, config=cfg, blocking=not a.detach)
    return 0


if __name__ == "__main__":
    sys.exit(main())
