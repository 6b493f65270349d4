"""Seeded, resumable batches over in-memory training tensors (the in-process and sharded-memory loaders)."""

from __future__ import annotations

import math

import numpy as np
import torch

from reviewgen.core.encoding import to_tensor
from reviewgen.core.errors import InputError


class TensorBatches:
    """Seeded, resumable shuffling batches over in-memory tensors.

    With `world_size > 1`, each rank takes its contiguous slice of the same global batch, so N workers
    with batch B/N see exactly the rows one worker with batch B sees."""

    def __init__(
        self, data: dict[str, np.ndarray], batch_size: int, seed: int, device="cpu", rank: int = 0, world_size: int = 1
    ):
        self.data = {k: to_tensor(v) for k, v in data.items()}
        self.n = len(next(iter(self.data.values())))
        if self.n == 0:
            raise InputError("no training rows")
        self.batch_size, self.seed, self.device = batch_size, seed, torch.device(device)
        self.rank, self.world = rank, world_size
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        global_bs = self.batch_size * self.world
        if self.pos + global_bs > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        idx = self._perm[self.pos : self.pos + global_bs].repeat(math.ceil(global_bs / self.n))[:global_bs]
        self.pos += global_bs
        idx = idx[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return {k: v[idx].to(self.device) for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
        self._perm = self._permutation()
