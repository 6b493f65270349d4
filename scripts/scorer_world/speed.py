"""In-process scoring rate of one checkout on a model: `Scorer.score` over 512 test reviews, best of 3 calls.

    python scripts/scorer_world/speed.py CHECKOUT MODEL DATA   # e.g. a git worktree of an older commit

Run it for two checkouts in turn, on the same model, with nothing else running.
"""

import os
import sys
import time


def main(root: str, model: str, data: str) -> None:
    root = os.path.abspath(root)
    sys.path.insert(0, root)
    import reviewgen  # the checkout's own package

    assert reviewgen.__file__.startswith(root), reviewgen.__file__
    import torch

    from reviewgen.data.corpus import load_split
    from reviewgen.score.scorer import Scorer

    torch.set_num_threads(2)
    df = load_split(data, "test").head(512)
    cols = zip(df["text"].astype(str), df["product_title"], df["category"], df["language"])
    revs = [{"text": t, "product_title": p, "category": c, "language": lang} for t, p, c, lang in cols]
    s = Scorer(model)
    s.score(revs[:64])  # warm-up
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        s.score(revs)
        best = min(best, time.perf_counter() - t)
    print(f"{root}: {len(revs) / best:.1f} reviews/s (best of 3)")


if __name__ == "__main__":
    main(*sys.argv[1:])
