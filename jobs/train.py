"""`ray job submit` entrypoint: `reviewgen train` with every flag, on Ray Train with 2 workers by default.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --data DATA --out OUT --config configs/demo.yaml [--num-workers 2] \
            [--use-gpu] [--storage-path s3://bucket/ray-results] [--name reviewgen-train] [--max-minutes M]

Same command as `reviewgen train` (see `--help`), except that --num-workers defaults to 2. Starting again
with the same --name and --storage-path (default OUT/runs) continues the run from its latest checkpoint.
"""

from __future__ import annotations

import sys

from reviewgen.cli import app


def main(argv: list[str] | None = None) -> None:
    """Run `reviewgen train` with these flags (and --num-workers 2 unless given)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" not in args and not any(a == "--num-workers" or a.startswith("--num-workers=") for a in args):
        args += ["--num-workers", "2"]
    app(["train", *args], prog_name="jobs/train.py")


if __name__ == "__main__":
    main()
