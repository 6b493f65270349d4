"""`ray job submit` entrypoint: deploy the review scorer on the cluster; takes every flag of `reviewgen serve`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/serve.py --model /mnt/shared/models/current [--config serve.yaml] [--set KEY=VALUE] [--detach]

With --detach the job exits once the application is running (Serve keeps it up); otherwise the job
stays attached and serves until it is stopped.
"""

from __future__ import annotations

import sys

from reviewgen.cli import app


def main(argv: list[str] | None = None) -> None:
    """Run `reviewgen serve` with these arguments (default: the command line's)."""
    app(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
