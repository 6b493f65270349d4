"""Device choice for every stage (training, sampling, scoring)."""

from __future__ import annotations

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
