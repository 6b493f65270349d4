"""Per-review signals computed by the model directory's networks (the discriminator's outputs)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from reviewgen.core.models import unwrap
from reviewgen.core.tokenizer import Condition, ReviewTokenizer


@torch.no_grad()
def discriminator_outputs(D, tok: ReviewTokenizer, conds: Sequence[Condition], texts: Sequence[str],
                          batch_size: int = 64, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sequence logits [N], predicted rating 1..5 [N]) for texts under their conditions."""
    D = unwrap(D).eval()
    logits, ratings = [], []
    for s in range(0, len(texts), batch_size):
        ids = tok.encode_examples(conds[s:s + batch_size], texts[s:s + batch_size]).to(device)
        out = D(ids)
        logits.append(out.seq_logits.float().cpu())
        ratings.append(out.rating_logits.argmax(-1).cpu() + 1)
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(logits).numpy(), torch.cat(ratings).numpy()
