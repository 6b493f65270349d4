"""Hashed token n-gram index of the training reviews (the copy guard).

Every window of ``n`` consecutive token ids is hashed to a uint64 (splitmix64 mixing of each token,
combined polynomially, then mixed again). The index is the sorted unique array of those hashes, so a
lookup is one ``np.searchsorted``. Size is 8 bytes per distinct n-gram: 100k reviews x 60 tokens with n=8
gives at most 5.3M windows, i.e. <= ~42 MB (less after de-duplication of repeated phrases).

On disk (``ngrams.npy`` in a checkpoint): a 1-D uint64 array whose first element is ``n`` and the rest
are the sorted hashes; written with ``np.save`` and read with ``np.load(allow_pickle=False)``.
Hash collisions (probability ~ size / 2^64 per lookup) can only cause false "copied" flags, never misses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_POLY = np.uint64(0x100000001B3)  # odd multiplier for the polynomial combine
_MAX_N = 1024


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised; uint64 arithmetic wraps modulo 2^64 as intended."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def window_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """Hash of every length-n window of a flat uint64 token array (len - n + 1 values); also the key of
    `reviewgen.score.wordlm`'s word n-gram counts."""
    m = tokens.size - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    mixed = _splitmix(tokens)
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):  # loop over window offsets, vectorised over all windows
        h = h * _POLY + mixed[j : j + m]
    return _splitmix(h)


def _as_tokens(seq: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(seq)
    if arr.ndim != 1:
        raise ValueError(f"token sequence must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token sequence must hold integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64).view(np.uint64) if arr.size else np.empty(0, dtype=np.uint64)


class NGramIndex:
    """Set of hashed token n-grams with vectorised membership tests."""

    def __init__(self, hashes: np.ndarray, n: int) -> None:
        if not 1 <= n <= _MAX_N:
            raise ValueError(f"NGramIndex: n must be in 1..{_MAX_N}, got {n}")
        self.n = int(n)
        self.hashes = np.asarray(hashes, dtype=np.uint64)

    @classmethod
    def build(cls, sequences: Iterable[Sequence[int]], n: int = 8) -> NGramIndex:
        """Index every n-token window of every sequence (windows never span two sequences)."""
        if not 1 <= n <= _MAX_N:
            raise ValueError(f"NGramIndex.build: n must be in 1..{_MAX_N}, got {n}")
        arrays = [_as_tokens(s) for s in sequences]
        arrays = [a for a in arrays if a.size >= n]
        if not arrays:
            return cls(np.empty(0, dtype=np.uint64), n)
        flat = np.concatenate(arrays)
        lengths = np.array([a.size for a in arrays], dtype=np.int64)
        hashes = window_hashes(flat, n)
        # Keep only windows that start and end inside the same sequence.
        seq_id = np.repeat(np.arange(lengths.size), lengths)
        valid = seq_id[: hashes.size] == seq_id[n - 1 :]
        return cls(np.unique(hashes[valid]), n)

    def __len__(self) -> int:
        return int(self.hashes.size)

    def save(self, path: str | Path) -> Path:
        """Write ``[n, *hashes]`` as a uint64 .npy file; returns the path."""
        path = Path(path)
        np.save(path, np.concatenate([np.array([self.n], dtype=np.uint64), self.hashes]), allow_pickle=False)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NGramIndex:
        """Read an index written by :meth:`save`."""
        arr = np.load(Path(path), allow_pickle=False)
        if arr.dtype != np.uint64 or arr.ndim != 1 or arr.size < 1:
            raise ValueError(f"{path}: expected a 1-D uint64 array [n, *hashes], got {arr.dtype} {arr.shape}")
        n = int(arr[0])
        if not 1 <= n <= _MAX_N:
            raise ValueError(f"{path}: first element (n) is {n}, expected 1..{_MAX_N}")
        hashes = arr[1:]
        if hashes.size > 1 and not (hashes[1:] > hashes[:-1]).all():
            raise ValueError(f"{path}: hashes are not sorted and unique")
        return cls(hashes, n)

    def hits(self, seq: Sequence[int] | np.ndarray) -> np.ndarray:
        """Boolean per window of ``seq`` (len - n + 1 values): True if that n-gram is in the index."""
        h = window_hashes(_as_tokens(seq), self.n)
        if h.size == 0 or self.hashes.size == 0:
            return np.zeros(h.size, dtype=bool)
        idx = np.searchsorted(self.hashes, h)
        idx[idx == self.hashes.size] = 0  # out-of-range positions cannot match; compare against any slot
        return self.hashes[idx] == h

    def longest_copy(self, seq: Sequence[int] | np.ndarray) -> int:
        """Length in tokens of the longest span covered by consecutive hitting windows (0 if none).

        k consecutive hitting windows cover n + k - 1 tokens.
        """
        hit = self.hits(seq)
        if not hit.any():
            return 0
        padded = np.r_[False, hit, False].astype(np.int8)
        edges = np.diff(padded)
        run = (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max()
        return int(self.n + run - 1)

    def copies(self, seq: Sequence[int] | np.ndarray, min_span: int | None = None) -> bool:
        """True if ``seq`` contains a span of at least ``min_span`` tokens (default n) seen in training."""
        span = self.n if min_span is None else int(min_span)
        if span < self.n:
            raise ValueError(f"copies: min_span={span} is below the index n-gram size {self.n}")
        return self.longest_copy(seq) >= span
