"""`ray job submit -- python jobs/generate.py --model DIR --catalog PATH --out DIR ...`

Thin entry point: the same Ray Data pipeline as `reviewgen generate` (reviewgen.generate.pipeline.run_generation).
Connects to RAY_ADDRESS when set (as inside a Ray job), else starts an embedded local Ray.
"""

from reviewgen.generate.pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())
