"""A lexical detector: hashed TF-IDF word and character n-grams under an L2-regularised logistic model.

It learns what a shop's labelled fakes *say* and how they spell it (stock phrases, punctuation habits), which
the scorer's zero-shot statistics cannot see. Words are runs of letters and digits, and every CJK character
is a word of its own, so word bigrams also work for Chinese. Character n-grams are taken within each
whitespace-separated chunk padded with a space (like scikit-learn's "char_wb"); in unspaced Chinese that
chunk is the whole run. N-grams are hashed into a fixed number of buckets, so no vocabulary is stored: a
word by CRC-32 of its UTF-8 bytes, a character n-gram by a polynomial over its code points, both finished by
MurmurHash3's 64-bit mixer; every step is fixed arithmetic (never Python's salted `hash()`), so a bucket is
the same in every process, and the character hashes are computed for a whole batch at once with numpy.
Fitted with torch's LBFGS on a sparse matrix; saved as a pickle-free .npz. Needs numpy and torch only.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reviewgen.core.errors import ReviewgenError

FORMAT = "reviewgen-lexical/1"
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# one CJK character, or a run of letters/digits that holds none
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_WS = re.compile(r"\s+")
_U64 = np.uint64
_PRIME = _U64(0x100000001B3)  # the FNV-1a 64-bit prime: the polynomial's base
_SPACE = _U64(ord(" "))


class LexicalError(ReviewgenError, ValueError):
    """A lexical model file is unreadable or does not match its settings."""


@dataclass(frozen=True)
class LexicalSettings:
    """How texts become features and how strongly the weights are held to zero. `l2` is the penalty on the
    mean log loss times the row count, i.e. scikit-learn's 1 / C."""

    buckets: int = 1 << 18
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 4)
    lowercase: bool = True
    l2: float = 1.0
    max_iter: int = 300

    def __post_init__(self) -> None:
        if self.buckets < 2 or self.buckets & (self.buckets - 1):
            raise LexicalError(f"buckets must be a power of two, got {self.buckets}")
        if not (1 <= self.word_ngrams[0] <= self.word_ngrams[1] and 1 <= self.char_ngrams[0] <= self.char_ngrams[1]):
            raise LexicalError(f"n-gram ranges must be (lo, hi) with 1 <= lo <= hi, got {self}")

    def to_json(self) -> str:
        """The settings as a JSON object."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LexicalSettings":
        """The settings `to_json` wrote."""
        d = json.loads(text)
        return cls(**{**d, "word_ngrams": tuple(d["word_ngrams"]), "char_ngrams": tuple(d["char_ngrams"])})


def _mix(h: np.ndarray, kind: int) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser of h xor a per-kind seed: spreads a polynomial hash over every bit."""
    h = h ^ _U64(0x9E3779B97F4A7C15 * (kind + 1) % (1 << 64))
    h = (h ^ (h >> _U64(33))) * _U64(0xFF51AFD7ED558CCD)
    h = (h ^ (h >> _U64(33))) * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


def _ngram_hashes(
    codes: np.ndarray, doc: np.ndarray, lo: int, hi: int, kind: int, valid=None
) -> tuple[np.ndarray, np.ndarray]:
    """(doc, 64-bit hash) of every n-gram, lo <= n <= hi, of the sequence `codes` that stays within one doc
    (and passes `valid(start, n)`); an n-gram of kind k and length n is seeded with 8 * n + k."""
    docs, hashes = [], []
    h = np.zeros(len(codes), dtype=_U64)
    for n in range(1, hi + 1):
        m = len(codes) - n + 1
        if m <= 0:
            break
        h = h[:m] * _PRIME + codes[n - 1 :]  # the polynomial over codes[i:i+n]
        if n < lo:
            continue
        ok = doc[:m] == doc[n - 1 :]
        if valid is not None:
            ok &= valid(m, n)
        docs.append(doc[:m][ok])
        hashes.append(_mix(h[ok], 8 * n + kind))
    return (np.concatenate(docs), np.concatenate(hashes)) if docs else (np.zeros(0, np.int64), np.zeros(0, _U64))


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(_U64)


def _word_hashes(texts: Sequence[str], settings: LexicalSettings) -> tuple[np.ndarray, np.ndarray]:
    cache: dict[str, int] = {}
    words, doc = [], []
    for i, t in enumerate(texts):
        ws = _WORD.findall(t)
        words.extend(
            cache[w] if w in cache else cache.setdefault(w, zlib.crc32(w.encode("utf-8", "surrogatepass"))) for w in ws
        )
        doc.extend([i] * len(ws))
    return _ngram_hashes(np.asarray(words, dtype=_U64), np.asarray(doc, dtype=np.int64), *settings.word_ngrams, 0)


def _char_hashes(texts: Sequence[str], settings: LexicalSettings) -> tuple[np.ndarray, np.ndarray]:
    # each text as " chunk chunk ... ": a window that holds a space only at its ends lies in one padded chunk
    padded = [f" {t.strip()} " if t.strip() else "" for t in texts]  # whitespace runs are single spaces
    codes = _code_points("".join(padded))
    doc = np.repeat(np.arange(len(texts)), [len(p) for p in padded])
    cum = np.r_[0, np.cumsum(codes == _SPACE)]  # spaces before each position

    def interior(m: int, n: int) -> np.ndarray:  # no space in codes[i+1 : i+n-1]
        return cum[np.arange(m) + n - 1] - cum[np.arange(m) + 1] == 0

    return _ngram_hashes(codes, doc, *settings.char_ngrams, 1, interior)


def _prepare(texts: Sequence[str], settings: LexicalSettings) -> list[str]:
    out = [_WS.sub(" ", t) if isinstance(t, str) else "" for t in texts]
    return [t.lower() for t in out] if settings.lowercase else out


def gram_bucket(gram: str, kind: str, settings: LexicalSettings) -> int:
    """The bucket of one n-gram: kind "word" (words separated by single spaces) or "char"."""
    if kind == "word":
        d, h = _word_hashes([gram], LexicalSettings(settings.buckets, (len(gram.split()),) * 2))
    elif kind == "char":
        codes = _code_points(gram)
        d, h = _ngram_hashes(codes, np.zeros(len(codes), np.int64), len(gram), len(gram), 1)
    else:
        raise LexicalError(f"kind must be 'word' or 'char', got {kind!r}")
    return int(h[0] & _U64(settings.buckets - 1))


@dataclass(frozen=True, eq=False)
class HashedCounts:
    """N-gram counts per text in compressed-row form: row i's buckets are indices[indptr[i]:indptr[i+1]]."""

    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray

    @property
    def rows(self) -> int:
        """The number of texts."""
        return len(self.indptr) - 1

    def row_ids(self) -> np.ndarray:
        """The row of every stored entry."""
        return np.repeat(np.arange(self.rows), np.diff(self.indptr))

    def take(self, rows: np.ndarray) -> "HashedCounts":
        """The counts of the given rows, in that order (a fold of a cross-validation)."""
        rows = np.asarray(rows, dtype=np.int64)
        lens = np.diff(self.indptr)[rows]
        ends = np.cumsum(lens)
        pos = np.repeat(self.indptr[rows] - (ends - lens), lens) + np.arange(int(lens.sum()))
        return HashedCounts(np.r_[0, ends].astype(np.int64), self.indices[pos], self.counts[pos])


def hash_counts(texts: Sequence[str], settings: LexicalSettings) -> HashedCounts:
    """The hashed word and character n-gram counts of `texts` (a non-string counts as empty text)."""
    prepared = _prepare(texts, settings)
    wd, wh = _word_hashes(prepared, settings)
    cd, ch = _char_hashes(prepared, settings)
    doc = np.r_[wd, cd].astype(np.int64)
    b = (np.r_[wh, ch] & _U64(settings.buckets - 1)).astype(np.int64)
    keys, counts = np.unique(doc * settings.buckets + b, return_counts=True)
    indptr = np.searchsorted(keys // settings.buckets, np.arange(len(prepared) + 1))
    return HashedCounts(indptr.astype(np.int64), keys % settings.buckets, counts.astype(np.float64))


def tfidf_values(counts: HashedCounts, idf: np.ndarray) -> np.ndarray:
    """The stored entries' TF-IDF values: sublinear tf (1 + log count) times idf, each row scaled to unit L2."""
    v = (1.0 + np.log(counts.counts)) * idf[counts.indices]
    rows = counts.row_ids()
    norm = np.sqrt(np.bincount(rows, weights=v * v, minlength=counts.rows))
    return v / np.maximum(norm, 1e-12)[rows]


@dataclass(frozen=True, eq=False)
class LexicalModel:
    """logit = bias + weights . tfidf(text); positive means human-written."""

    settings: LexicalSettings
    idf: np.ndarray
    weights: np.ndarray
    bias: float

    def logit_counts(self, counts: HashedCounts) -> np.ndarray:
        """The logit of every row of already hashed counts."""
        v = tfidf_values(counts, self.idf) * self.weights[counts.indices]
        return np.bincount(counts.row_ids(), weights=v, minlength=counts.rows) + self.bias

    def logit(self, texts: Sequence[str]) -> np.ndarray:
        """The logit of every text."""
        return self.logit_counts(hash_counts(texts, self.settings))

    def save(self, path: str | Path) -> None:
        """Write a pickle-free .npz (to exactly `path`)."""
        with open(path, "wb") as fh:
            np.savez_compressed(
                fh,
                format=np.array(FORMAT),
                settings=np.array(self.settings.to_json()),
                idf=self.idf.astype(np.float32),
                weights=self.weights.astype(np.float32),
                bias=np.array([self.bias], dtype=np.float64),
            )

    @classmethod
    def load(cls, path: str | Path) -> "LexicalModel":
        """Read what `save` wrote; errors name the file."""
        try:
            with np.load(path, allow_pickle=False) as z:
                fmt = str(z["format"])
                if fmt != FORMAT:
                    raise LexicalError(f"{path}: format {fmt!r} is not {FORMAT!r}")
                settings = LexicalSettings.from_json(str(z["settings"]))
                idf, w, b = z["idf"].astype(np.float64), z["weights"].astype(np.float64), float(z["bias"][0])
        except LexicalError:
            raise
        except (OSError, KeyError, ValueError, TypeError, IndexError) as e:
            raise LexicalError(f"{path}: not a readable lexical model ({type(e).__name__}: {e})") from e
        if idf.shape != (settings.buckets,) or w.shape != (settings.buckets,):
            raise LexicalError(f"{path}: idf and weights must hold {settings.buckets} values")
        return cls(settings, idf, w, b)


def fit_lexical(
    counts: HashedCounts, labels: np.ndarray, settings: LexicalSettings = LexicalSettings()
) -> LexicalModel:
    """Fit smoothed idf, log((1 + n) / (1 + df)) + 1, and the logistic model on hashed counts (`labels`:
    1 = human, 0 = machine-written). Only the buckets the fit set has are optimised; the rest keep weight 0."""
    y = np.asarray(labels, dtype=np.float64)
    if counts.rows != len(y) or len(np.unique(y)) < 2:
        raise LexicalError(
            f"fit_lexical needs one label per row and both classes ({counts.rows} rows, {len(y)} labels)"
        )
    idf = np.log((1.0 + counts.rows) / (1.0 + np.bincount(counts.indices, minlength=settings.buckets))) + 1.0
    used, cols = np.unique(counts.indices, return_inverse=True)
    rows, vals = counts.row_ids(), tfidf_values(counts, idf)
    w = torch.zeros(len(used) + 1, dtype=torch.float64)
    wn = w.numpy()  # shares w's memory: the sparse products run in numpy
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=settings.max_iter, history_size=20, line_search_fn="strong_wolfe")
    penalty = settings.l2 / len(y)  # of 0.5 * |w|^2

    def closure():
        # the loss and its gradient in closed form, from two sparse products
        z = np.bincount(rows, weights=vals * wn[1:][cols], minlength=len(y)) + wn[0]
        r = (0.5 + 0.5 * np.tanh(0.5 * z) - y) / len(y)  # sigmoid without overflow
        g = np.bincount(cols, weights=vals * r[rows], minlength=len(used)) + penalty * wn[1:]
        w.grad = torch.as_tensor(np.r_[r.sum(), g])
        loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * penalty * float(wn[1:] @ wn[1:])
        return torch.tensor(loss, dtype=torch.float64)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # LBFGS's vector steps are short: OpenMP threads cost more than they save
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    full = np.zeros(settings.buckets)
    full[used] = wn[1:]
    return LexicalModel(settings, idf, full, float(wn[0]))
