"""A word n-gram language model of the training reviews: the scorer's model of human text.

The LM statistics of `reviewgen.score.detect` ask G (and its reference, a near copy of G) how predictable a
review is. Text that G itself sampled at temperature 1 is, by construction, exactly as predictable to G as
G expects, and so is human text to a well-calibrated G: those statistics cannot tell the two apart. A model
of a different family can. A count-based word trigram model of the training reviews scores what people
actually wrote: machine text, from our generator or another one, strings words together in ways no
reviewer did (and a weak generator invents words), so fewer of its word pairs and triples were ever seen
and its n-gram log-probability is lower. Text that is *too* conventional (low temperature) sits on the
other side of human text, which the detector's two-sided features handle.

Units are lowercase Latin words, digit runs, single CJK characters and single punctuation marks. Each
n-gram is keyed by the hash of its units (`reviewgen.core.memorization.window_hashes` over a stable 64-bit
hash of each unit). The model is plain data: sorted uint64 keys and uint32 counts per table, written with
`np.savez` as wordlm.npz in the model directory and read with `allow_pickle=False`. A hash collision can
only add a count, with probability about size / 2^64 per lookup.

Statistics per review (`WordNgramLM.statistics`), over the units plus an end marker:
- `ngram_logprob`: mean log-probability under a trigram model interpolated with fixed weights with the
  bigram and add-1/2 unigram models (kept simple: the detector reads it as one feature among several);
- `bigram_seen`, `trigram_seen`: the share of the review's word pairs and triples that occur in training;
- `mixed_script`: the smaller of the shares of Latin words and of CJK characters among the review's letter
  units. People do drop a Latin brand or model name into a Chinese review, but a small multilingual
  generator switches script mid-phrase far more often (0 for a review in one script).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from reviewgen.core.errors import ReviewgenError
from reviewgen.core.memorization import window_hashes

FORMAT = 1
STATISTICS = ("ngram_logprob", "bigram_seen", "trigram_seen", "mixed_script")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNIT = re.compile(rf"[a-z]+|[0-9]+|[{_CJK}]|[^\sa-z0-9{_CJK}]")
_LATIN, _HAN = re.compile("[a-z]+"), re.compile(f"[{_CJK}]")
_BOS, _EOS = "\x02", "\x03"
# interpolation weights of the trigram, bigram and unigram estimates
_WEIGHTS = (0.5, 0.3, 0.2)
_TABLES = ("uni", "bi", "tri", "ctx1", "ctx2")
# the model counts at most this many reviews (about 8 MB of tables per 10,000)
MAX_REVIEWS = 200_000


class WordLMError(ReviewgenError, ValueError):
    """A wordlm.npz file is unreadable or malformed (the message names the file)."""


def word_units(text: str) -> list[str]:
    """The units a review is counted in: lowercase Latin words, digit runs, CJK characters, punctuation."""
    return _UNIT.findall(str(text).lower())


def _unit_ids(units: Sequence[str], cache: dict[str, int]) -> np.ndarray:
    out = np.empty(len(units), dtype=np.uint64)
    for i, u in enumerate(units):
        h = cache.get(u)
        if h is None:
            h = cache[u] = int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little")
        out[i] = h
    return out


def _windows(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Keys of every n-gram of one padded review [BOS, BOS, units..., EOS], aligned per predicted unit."""
    return {
        "uni": window_hashes(ids[2:], 1),
        "bi": window_hashes(ids[1:], 2),
        "tri": window_hashes(ids, 3),
        "ctx1": window_hashes(ids[1:-1], 1),
        "ctx2": window_hashes(ids[:-1], 2),
    }


def _padded(units: Sequence[str], cache: dict[str, int]) -> np.ndarray:
    return _unit_ids([_BOS, _BOS, *units, _EOS], cache)


class WordNgramLM:
    """Word trigram counts of a set of reviews, with vectorised lookups (module docstring)."""

    def __init__(self, tables: dict[str, tuple[np.ndarray, np.ndarray]], total: int, vocab: int):
        missing = set(_TABLES) - set(tables)
        if missing:
            raise WordLMError(f"word n-gram model lacks tables {sorted(missing)}")
        self.tables = {
            k: (np.asarray(tables[k][0], dtype=np.uint64), np.asarray(tables[k][1], dtype=np.uint32)) for k in _TABLES
        }
        self.total, self.vocab = int(total), int(vocab)

    @classmethod
    def build(cls, texts: Iterable[str]) -> "WordNgramLM":
        """Count every unigram, bigram and trigram (and their histories) of `texts`."""
        cache: dict[str, int] = {}
        parts: dict[str, list[np.ndarray]] = {k: [] for k in _TABLES}
        for t in texts:
            for k, h in _windows(_padded(word_units(t), cache)).items():
                parts[k].append(h)
        tables = {}
        for k, arrs in parts.items():
            keys, counts = np.unique(np.concatenate(arrs) if arrs else np.empty(0, np.uint64), return_counts=True)
            tables[k] = (keys, counts.astype(np.uint32))
        return cls(tables, total=int(tables["uni"][1].sum()), vocab=len(tables["uni"][0]))

    def __len__(self) -> int:
        return int(self.tables["tri"][0].size)

    def _count(self, table: str, keys: np.ndarray) -> np.ndarray:
        k, c = self.tables[table]
        if k.size == 0 or keys.size == 0:
            return np.zeros(keys.size, dtype=np.float64)
        i = np.searchsorted(k, keys)
        i[i == k.size] = 0
        return np.where(k[i] == keys, c[i], 0).astype(np.float64)

    def statistics(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """`STATISTICS` per text, one float array [N] each (module docstring). The texts' units are hashed
        one text at a time; the n-gram keys, lookups and means run once over all of them."""
        cache: dict[str, int] = {}
        out = {k: np.full(len(texts), np.nan) for k in STATISTICS}
        if not len(texts):
            return out
        padded = []
        for i, t in enumerate(texts):
            low = str(t).lower()
            # every maximal [a-z] run is one unit and every CJK character another (`_UNIT`), so the script
            # counts are two scans of the text rather than a match per unit
            latin, han = len(_LATIN.findall(low)), len(_HAN.findall(low))
            if latin + han:
                out["mixed_script"][i] = min(latin, han) / (latin + han)
            padded.append(_padded(_UNIT.findall(low), cache))
        lengths = np.array([len(x) for x in padded])
        ids = np.concatenate(padded)
        starts = np.cumsum(lengths) - lengths
        # every unit after a review's two <bos>, <eos> included, is predicted from the two before it, so
        # its n-gram windows never reach into the previous review
        q = np.nonzero(np.arange(ids.size) - np.repeat(starts, lengths) >= 2)[0]
        row = np.repeat(np.arange(len(texts)), lengths - 2)
        h1, h2, h3 = window_hashes(ids, 1), window_hashes(ids, 2), window_hashes(ids, 3)
        tri, bi, uni = self._count("tri", h3[q - 2]), self._count("bi", h2[q - 1]), self._count("uni", h1[q])
        c2, c1 = self._count("ctx2", h2[q - 2]), self._count("ctx1", h1[q - 1])
        w3, w2, w1 = _WEIGHTS
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (
                w3 * np.where(c2 > 0, tri / c2, 0.0)
                + w2 * np.where(c1 > 0, bi / c1, 0.0)
                + w1 * (uni + 0.5) / (self.total + 0.5 * (self.vocab + 1))
            )
        n = lengths - 2

        def mean(x: np.ndarray) -> np.ndarray:
            return np.bincount(row, weights=x, minlength=len(texts)) / n

        out["ngram_logprob"] = mean(np.log(p))
        out["bigram_seen"] = mean((bi > 0).astype(np.float64))
        out["trigram_seen"] = mean((tri > 0).astype(np.float64))
        return out

    def save(self, path: str | Path) -> Path:
        """Write the tables as plain arrays (`np.savez`); returns the path."""
        path = Path(path)
        arrays = {"meta": np.array([FORMAT, self.total, self.vocab], dtype=np.int64)}
        for k, (keys, counts) in self.tables.items():
            arrays[f"{k}_keys"], arrays[f"{k}_counts"] = keys, counts
        with open(path, "wb") as fh:  # a file object keeps numpy from appending ".npz" to the name
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "WordNgramLM":
        """Read a file `save` wrote (no pickle); errors name the file."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = z["meta"]
                if meta.shape != (3,) or int(meta[0]) != FORMAT:
                    raise WordLMError(f"{path}: not a word n-gram model of format {FORMAT}")
                tables = {k: (z[f"{k}_keys"], z[f"{k}_counts"]) for k in _TABLES}
        except WordLMError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise WordLMError(f"{path}: unreadable word n-gram model ({e})") from e
        for k, (keys, counts) in tables.items():
            malformed = keys.dtype != np.uint64 or keys.shape != counts.shape
            if malformed or (keys.size > 1 and not (keys[1:] > keys[:-1]).all()):
                raise WordLMError(f"{path}: table {k!r} is not sorted unique uint64 keys with one count each")
        return cls(tables, total=int(meta[1]), vocab=int(meta[2]))


def build_wordlm(texts: Sequence[str], seed: int = 0) -> WordNgramLM:
    """The scorer's word n-gram model of the training reviews: all of them, or a seeded sample of
    `MAX_REVIEWS` from a bigger corpus (so the model directory stays small)."""
    if len(texts) > MAX_REVIEWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), MAX_REVIEWS, replace=False))
        texts = [texts[i] for i in keep]
    return WordNgramLM.build(texts)
