"""`ray job submit -- python jobs/generate.py --model DIR --catalog PATH --out DIR ...`

Thin entry point: the same Typer command as `reviewgen generate` (reviewgen.cli.generate), so every flag
works in both. Connects to RAY_ADDRESS when set (as inside a Ray job), else starts an embedded local Ray.
"""

import sys

from reviewgen.cli import app

if __name__ == "__main__":
    app(["generate", *sys.argv[1:]], prog_name="jobs/generate.py")
