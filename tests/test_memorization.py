"""NGramIndex tests: planted copies, exact span lengths, sequence boundaries, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reviewgen.core.memorization import NGramIndex

N = 8


@pytest.fixture(scope="module")
def train() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 5000, size=int(rng.integers(20, 80))) for _ in range(60)]


@pytest.fixture(scope="module")
def index(train: list[np.ndarray]) -> NGramIndex:
    return NGramIndex.build(train, n=N)


def novel(k: int, seed: int = 1) -> np.ndarray:
    # Token ids >= 10000 never occur in training, so these windows cannot hit.
    return np.random.default_rng(seed).integers(10_000, 20_000, size=k)


def test_size_counts_distinct_windows(train: list[np.ndarray], index: NGramIndex) -> None:
    windows = {tuple(s[i : i + N]) for s in train for i in range(len(s) - N + 1)}
    assert len(index) == len(windows)
    assert index.hashes.dtype == np.uint64
    assert (np.diff(index.hashes.astype(object)) > 0).all()  # sorted, unique


def test_flags_planted_eight_token_copy(train: list[np.ndarray], index: NGramIndex) -> None:
    seq = np.r_[novel(10), train[3][5 : 5 + N], novel(10, 2)]
    hits = index.hits(seq)
    assert hits.shape == (len(seq) - N + 1,)
    assert hits.sum() == 1 and hits[10]
    assert index.copies(seq)
    assert index.longest_copy(seq) == N
    assert not index.copies(seq, min_span=N + 1)


def test_novel_text_passes(train: list[np.ndarray], index: NGramIndex) -> None:
    seq = novel(50)
    assert not index.hits(seq).any()
    assert index.longest_copy(seq) == 0
    assert not index.copies(seq)
    # 7 copied tokens are below n and must not be flagged.
    assert not index.copies(np.r_[novel(5), train[0][:7], novel(5, 3)])


def test_longest_copy_exact_on_constructed_example(train: list[np.ndarray], index: NGramIndex) -> None:
    seq = np.r_[train[1][:9], novel(6), train[2][3:15], novel(4, 5), train[4][:8]]
    assert index.longest_copy(seq) == 12
    assert index.copies(seq, min_span=12)
    assert not index.copies(seq, min_span=13)
    # Lists of Python ints are accepted too.
    assert index.longest_copy([int(t) for t in train[5]]) == len(train[5])


def test_windows_do_not_span_sequence_boundaries(train: list[np.ndarray], index: NGramIndex) -> None:
    straddle = np.r_[train[0][-4:], train[1][:4]]
    assert not index.hits(straddle).any()


def test_short_sequences(index: NGramIndex) -> None:
    assert index.hits([1, 2, 3]).shape == (0,)
    assert index.longest_copy([]) == 0
    empty = NGramIndex.build([[1, 2, 3]], n=N)
    assert len(empty) == 0 and not empty.copies(novel(20))


def test_save_load_round_trip(tmp_path: Path, train: list[np.ndarray], index: NGramIndex) -> None:
    path = index.save(tmp_path / "ngrams.npy")
    raw = np.load(path, allow_pickle=False)
    assert raw.dtype == np.uint64 and int(raw[0]) == N  # n is stored as the first element
    loaded = NGramIndex.load(path)
    assert loaded.n == N and len(loaded) == len(index)
    np.testing.assert_array_equal(loaded.hashes, index.hashes)
    seq = np.r_[novel(3), train[7][:10]]
    np.testing.assert_array_equal(loaded.hits(seq), index.hits(seq))


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="bad.npy"):
        NGramIndex.load(bad)
    unsorted = tmp_path / "unsorted.npy"
    np.save(unsorted, np.array([8, 5, 3], dtype=np.uint64))
    with pytest.raises(ValueError, match="sorted"):
        NGramIndex.load(unsorted)


def test_min_span_below_n_raises(index: NGramIndex) -> None:
    with pytest.raises(ValueError, match="min_span"):
        index.copies([1] * 20, min_span=N - 1)


def test_other_n_and_distinct_hashes_for_permuted_windows() -> None:
    idx = NGramIndex.build([[1, 2, 3, 4]], n=3)
    assert len(idx) == 2
    assert idx.copies([9, 1, 2, 3, 9])
    assert not idx.hits([3, 2, 1]).any()  # order matters
    assert not idx.hits([1, 2, 4]).any()
