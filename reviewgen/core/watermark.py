"""A keyed green-list watermark (Kirchenbauer et al. 2023, "A Watermark for Large Language Models").

At each sampling step a keyed hash of the previous token and of each candidate token colours the vocabulary:
a share `gamma` of it is green, the rest red, and `delta` is added to the green logits. A text from the
watermarked sampler holds more green tokens than chance; detection needs the key and the tokenizer, not
the model: it counts the green tokens among T scored (previous, token) pairs and reports the one-sided
z = (green - gamma T) / sqrt(T gamma (1 - gamma)). Whether a text is ours is decided on the exact binomial
tail of its green count instead, since the normal approximation overstates the evidence of a short text.

The colour of (key, previous token p, token t) is a pure function of integers: splitmix64 of the key and the
id gives each token a 32-bit value r(t) and each previous token an odd multiplier m(p) and an offset o(p);
the pair is green when m(p) r(t) + o(p) mod 2^32 falls in the lowest gamma share (multiply-add hashing: distinct
pairs are close to pairwise independent). Integer arithmetic wraps alike on CPU and CUDA, so a pair has one
colour everywhere; a step costs one batched int32 multiply-add and compare per vocabulary entry. Keys (see
`load_keys`) are never written anywhere: lineage and logs carry a key's id, a short hash of it.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from reviewgen.core.errors import ReviewgenError

KEY_ENV = "REVIEWGEN_WATERMARK_KEY"
OLD_KEYS_ENV = "REVIEWGEN_WATERMARK_OLD_KEYS"
KEY_FILE_ENV = "REVIEWGEN_WATERMARK_KEY_FILE"
MIN_KEY_CHARS = 16  # a key short enough to guess could be recovered from its published id
SCHEME = "greenlist-prev1-muladd32"


# splitmix64's constants, as the signed int64 values torch stores
_GOLDEN, _M1, _M2 = (x - (1 << 64) for x in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _lsr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _lsr(z, 30)) * _M1
    z = (z ^ _lsr(z, 27)) * _M2
    return z ^ _lsr(z, 31)


def _int32(x: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of int64 `x` as int32 (two's complement), without relying on a narrowing cast."""
    return (((x & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000).to(torch.int32)


class WatermarkKeyError(ReviewgenError, ValueError):
    """A watermark key is missing, unreadable or too short."""


@dataclass(frozen=True)
class WatermarkConfig:
    """The scheme's settings. `gamma`: the green share of the vocabulary; `delta`: the logit bias on green
    tokens; `threshold_z`: a text is ours when the chance of so many green tokens in an unwatermarked text (the
    exact binomial tail) is at most the standard normal tail at this z (with K keys tried, K times that);
    `dedupe_pairs`: score each distinct (previous, token) pair once, so a repeated phrase cannot inflate z.
    `hold_eos_z`: the sampler withholds <eos> from a review until its green count so far would be detected at
    this z (the same exact tail; above threshold_z, a margin for repeated pairs and re-tokenisation), so a
    review is continued rather than ended too short to carry the mark; None: <eos> is never held.
    Generation and detection must use the same gamma. The defaults come from the (gamma, delta) grid of
    the watermark bench: see the README's watermark section and bench/results/watermark/."""

    gamma: float = 0.1
    delta: float = 4.0
    threshold_z: float = 4.0
    dedupe_pairs: bool = True
    hold_eos_z: float | None = 4.5

    def __post_init__(self) -> None:
        if not (
            0.0 < self.gamma < 1.0
            and math.isfinite(self.delta)
            and self.delta >= 0
            and math.isfinite(self.threshold_z)
            and (self.hold_eos_z is None or math.isfinite(self.hold_eos_z))
        ):
            raise ValueError(f"watermark: needs 0 < gamma < 1, delta >= 0 and a finite threshold_z, got {self}")


class WatermarkKey:
    """A secret key. Only what is derived from it is kept: `key_id` (sha256 of the key, 16 hex digits) and the
    hash seeds (int64: previous token, token). Its repr shows only the id, so a key in a log line, an exception
    or a Ray task's arguments does not show the secret (a pickle carries the seeds, which act as the key)."""

    __slots__ = ("key_id", "seeds")

    def __init__(self, secret: str | bytes):
        raw = (secret.encode() if isinstance(secret, str) else bytes(secret)).strip()
        if len(raw) < MIN_KEY_CHARS:
            raise WatermarkKeyError(
                f"a watermark key needs at least {MIN_KEY_CHARS} characters, got {len(raw)} "
                "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        self.key_id = hashlib.sha256(b"reviewgen-watermark-id\x00" + raw).hexdigest()[:16]
        d = hashlib.sha256(b"reviewgen-watermark-seed\x00" + raw).digest()
        self.seeds = tuple(int.from_bytes(d[i : i + 8], "little", signed=True) for i in (0, 8))

    def __repr__(self) -> str:
        return f"WatermarkKey(id={self.key_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WatermarkKey) and other.key_id == self.key_id

    def __hash__(self) -> int:
        return hash(self.key_id)


def load_keys(key_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> list[WatermarkKey]:
    """The configured keys, signing key first; [] when none is configured. `key_file` (else
    `REVIEWGEN_WATERMARK_KEY_FILE`): one key per line, blank lines and `#` comments skipped; without a file,
    `REVIEWGEN_WATERMARK_KEY`. `REVIEWGEN_WATERMARK_OLD_KEYS` adds keys for detection only (and only beside
    a signing key: with none, nothing is configured and the result is [])."""
    env = os.environ if environ is None else environ
    path = key_file or env.get(KEY_FILE_ENV) or None
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise WatermarkKeyError(f"watermark key file {path}: cannot read it ({e.strerror or e})") from None
        secrets = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not secrets:
            raise WatermarkKeyError(f"watermark key file {path} holds no key")
    else:
        secrets = [env[KEY_ENV].strip()] if env.get(KEY_ENV, "").strip() else []
    if not secrets:
        return []  # older keys alone sign nothing: no key is configured
    secrets += env.get(OLD_KEYS_ENV, "").replace(",", " ").split()
    return list(dict.fromkeys(WatermarkKey(s) for s in secrets))


@dataclass(frozen=True)
class Detection:
    """Per text: `z` and `p_value` (the exact binomial tail; both NaN when nothing was scored), `green` and
    `n_scored` (T) under the key with the largest z, and that key's id (None when nothing was scored)."""

    z: np.ndarray
    p_value: np.ndarray
    green: np.ndarray
    n_scored: np.ndarray
    key_id: list[str | None]
    max_p: float  # the largest p_value that counts as ours

    @property
    def ours(self) -> list[bool]:
        """p_value at most `max_p` (a text with nothing to score is not ours)."""
        return [bool(p <= self.max_p) for p in self.p_value]


class Watermark:
    """Keys plus the scheme's settings: `bias_logits` for sampling (with the first key), `z_scores` and
    `detect_texts` for detection (with every key). Picklable; its repr shows key ids only."""

    def __init__(self, keys: WatermarkKey | Sequence[WatermarkKey], config: WatermarkConfig | None = None):
        keys = [keys] if isinstance(keys, WatermarkKey) else list(dict.fromkeys(keys))
        if not keys:
            raise WatermarkKeyError("a watermark needs at least one key")
        self.keys, self.config = tuple(keys), config or WatermarkConfig()
        self._cut = int(round(self.config.gamma * (1 << 32))) - (1 << 31)  # green: a pair's int32 value below
        self._token_hash: dict[tuple, torch.Tensor] = {}  # per (key, device, n): token values, prev tables
        self._needed: dict[tuple[int, float], torch.Tensor] = {}

    @classmethod
    def from_env(
        cls,
        key_file: str | Path | None = None,
        config: WatermarkConfig | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> "Watermark | None":
        """A watermark over `load_keys(...)`, or None when no key is configured."""
        keys = load_keys(key_file, environ)
        return cls(keys, config) if keys else None

    def __getstate__(self) -> dict[str, Any]:
        return {"keys": self.keys, "config": self.config}  # the per-device caches stay behind

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["keys"], state["config"])

    def __repr__(self) -> str:
        return f"Watermark(key_ids={list(self.key_ids)}, config={self.config})"

    @property
    def key_id(self) -> str:
        """The signing key's id."""
        return self.keys[0].key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.keys)

    def lineage(self) -> dict[str, Any]:
        """What a manifest records: the scheme, its settings and the signing key's id (never the key)."""
        c = self.config
        return {
            "scheme": SCHEME,
            "key_id": self.key_id,
            "gamma": c.gamma,
            "delta": c.delta,
            "threshold_z": c.threshold_z,
            "max_p": _normal_tail(c.threshold_z),
            "dedupe_pairs": c.dedupe_pairs,
            "hold_eos_z": c.hold_eos_z,
        }

    def _token_values(self, key: WatermarkKey, tokens: torch.Tensor) -> torch.Tensor:
        return _int32(_mix(tokens.long() ^ key.seeds[1]))

    def _tokens(self, key: WatermarkKey, n: int, device: torch.device) -> torch.Tensor:
        """The token values of ids 0..n-1, cached per (key, device, n)."""
        k = (key.key_id, str(device), n)
        if k not in self._token_hash:
            self._token_hash[k] = self._token_values(key, torch.arange(n, device=device))
        return self._token_hash[k]

    def _prev_table(self, key: WatermarkKey, n: int, device: torch.device) -> torch.Tensor:
        """[2, n] int32: `_prev_values` of ids 0..n-1 (multipliers, offsets), cached per (key, device, n): a
        sampling step then gathers its rows' values instead of hashing them again."""
        k = ("prev", key.key_id, str(device), n)
        if k not in self._token_hash:
            self._token_hash[k] = torch.stack(self._prev_values(key, torch.arange(n, device=device)))
        return self._token_hash[k]

    def _prev_values(self, key: WatermarkKey, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(odd multiplier, offset) int32 per previous token."""
        h = _mix(prev.long() ^ key.seeds[0])
        return _int32(h) | 1, _int32(_lsr(h, 32))

    def green(self, prev: torch.Tensor, tokens: torch.Tensor, key: WatermarkKey | None = None) -> torch.Tensor:
        """Bool colours of (prev, token) pairs, broadcast elementwise (ids >= 0)."""
        key = key or self.keys[0]
        m, o = self._prev_values(key, prev)
        return self._token_values(key, tokens) * m + o < self._cut

    def green_mask(self, prev: torch.Tensor, vocab_size: int, key: WatermarkKey | None = None) -> torch.Tensor:
        """[B, vocab_size] bool: the green list after each row's previous token `prev` [B]."""
        key = key or self.keys[0]
        m, o = self._prev_values(key, prev.reshape(-1, 1))
        return self._tokens(key, vocab_size, prev.device)[None, :] * m + o < self._cut

    def bias_logits(self, logits: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """`logits` [B, V] with delta added to the signing key's green tokens after `prev` [B] (a new tensor)."""
        key, V = self.keys[0], logits.shape[-1]
        m, o = self._prev_table(key, V, logits.device)[:, prev.to(logits.device).reshape(-1, 1)]  # ids < V
        green = self._tokens(key, V, logits.device)[None, :] * m
        green.add_(o).lt_(self._cut)  # green_mask's colours, in place, as 0/1 int32
        return logits.add(green, alpha=self.config.delta)

    def green_needed(self, max_len: int, z: float) -> torch.Tensor:
        """[max_len + 1] int64: per scored length T, the fewest green tokens whose exact tail is at most the
        normal tail at `z` (T + 1 where no count reaches it). Built once per (max_len, z)."""
        if (max_len, z) not in self._needed:
            t = torch.arange(max_len + 1, dtype=torch.float64)[:, None]
            k = t.t()
            log_pmf = _log_binomial_pmf(k, t, self.config.gamma)
            log_tail = torch.logcumsumexp(log_pmf.flip(1), dim=1).flip(1)  # log P(G >= k) per row T
            ok = (k <= t) & (log_tail <= math.log(_normal_tail(z)))
            self._needed[(max_len, z)] = torch.where(ok.any(dim=1), ok.long().argmax(dim=1), t[:, 0].long() + 1)
        return self._needed[(max_len, z)]

    def z_scores(
        self,
        seqs: torch.Tensor | Sequence[Sequence[int]],
        mask: torch.Tensor | None = None,
        *,
        first_prev: int | None = None,
    ) -> Detection:
        """Detect in token sequences: a padded [N, L] tensor with a bool `mask` of its scored tokens, or lists
        of ids. Each token's colour depends on the token before it; the first token is scored after
        `first_prev` (the prompt's last token, e.g. <sep>), or not at all when it is None."""
        ids, valid = _padded(seqs, mask)
        n = ids.shape[0]
        if first_prev is not None:
            ids = torch.cat([torch.full((n, 1), int(first_prev), dtype=torch.long), ids], dim=1)
            valid = torch.cat([torch.zeros((n, 1), dtype=torch.bool), valid], dim=1)
        rows = torch.arange(n)[:, None].expand(-1, max(ids.shape[1] - 1, 0))
        scored = valid[:, 1:]
        pairs = torch.stack([rows[scored], ids[:, :-1][scored], ids[:, 1:][scored]], dim=1)
        if self.config.dedupe_pairs:
            pairs = torch.unique(pairs, dim=0)
        t, gamma = torch.bincount(pairs[:, 0], minlength=n).double(), self.config.gamma
        # [keys, N] green counts and z-scores; the best key per text
        g = torch.stack(
            [
                torch.bincount(
                    pairs[:, 0], weights=self.green(pairs[:, 1], pairs[:, 2], k).double(), minlength=n
                ).double()
                for k in self.keys
            ]
        )
        z = (g - gamma * t) / torch.sqrt(t * gamma * (1 - gamma)).clamp_min(1e-12)
        best, which = z.max(dim=0)
        best_g = g.gather(0, which[None]).squeeze(0)
        none = t == 0
        p = torch.where(none, math.nan, _binomial_tail(best_g, t, gamma))
        return Detection(
            z=torch.where(none, math.nan, best).numpy(),
            p_value=p.numpy(),
            green=best_g.long().numpy(),
            n_scored=t.long().numpy(),
            max_p=_normal_tail(self.config.threshold_z),
            key_id=[None if none[i] else self.keys[int(which[i])].key_id for i in range(n)],
        )

    def detect_texts(self, tok, texts: Sequence[str | None]) -> Detection:
        """Detect in review texts with a `ReviewTokenizer`: the review tokens as the model sees them, the
        first scored after <sep>, the prompt's last token."""
        ids = tok.review_token_lists([t if isinstance(t, str) else "" for t in texts]) if len(texts) else []
        return self.z_scores(ids, first_prev=tok.sep_id)


def _normal_tail(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _log_binomial_pmf(k: torch.Tensor, t: torch.Tensor, p: float) -> torch.Tensor:
    """log P(G = k) for G ~ Binomial(t, p), broadcast over float64 `k` and `t`; -inf where k > t."""
    log_pmf = (
        torch.lgamma(t + 1)
        - torch.lgamma(k + 1)
        - torch.lgamma((t - k).clamp_min(0) + 1)
        + k * math.log(p)
        + (t - k) * math.log1p(-p)
    )
    return torch.where(k <= t, log_pmf, -math.inf)


def _binomial_tail(g: torch.Tensor, t: torch.Tensor, p: float) -> torch.Tensor:
    """P(G >= g) for G ~ Binomial(t, p), per element (float64), computed once per distinct (t, g)."""
    tg, inverse = torch.unique(torch.stack([t, g], dim=1), dim=0, return_inverse=True)
    k = torch.arange(int(tg[:, 0].max()) + 1 if len(tg) else 1, dtype=torch.float64)
    tt, gg = tg[:, :1], tg[:, 1:]
    log_pmf = torch.where(k >= gg, _log_binomial_pmf(k, tt, p), -math.inf)
    return torch.logsumexp(log_pmf, dim=1).exp()[inverse]


def _padded(
    seqs: torch.Tensor | Sequence[Sequence[int]], mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, L] int64 on CPU, bool mask [N, L]) from a padded tensor (+ mask) or lists of ids."""
    if isinstance(seqs, (torch.Tensor, np.ndarray)):
        ids = torch.as_tensor(seqs).long().cpu()
        valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().cpu()
        return ids, valid
    rows = [torch.as_tensor(list(s), dtype=torch.long) for s in seqs]
    if not rows:
        return torch.zeros((0, 0), dtype=torch.long), torch.zeros((0, 0), dtype=torch.bool)
    pad = torch.nn.utils.rnn.pad_sequence
    return pad(rows, batch_first=True), pad([torch.ones(len(r), dtype=torch.bool) for r in rows], batch_first=True)


class WatermarkLogitsProcessor:
    """The watermark as a Hugging Face logits processor (no transformers import): `processor(input_ids,
    scores)` adds delta to the green logits after each row's last token, for `model.generate(...,
    logits_processor=[processor])`. transformers runs it before its temperature, so the bias acts as delta / T.
    Given `eos_id` and `prompt_len` (the prompt's length, ending in <sep>), it also withholds <eos> as
    reviewgen's sampler does (`hold_eos_z`), so that a review is not ended too short to carry the mark."""

    def __init__(self, watermark: Watermark, eos_id: int | None = None, prompt_len: int | None = None):
        self.watermark, self.eos_id, self.prompt_len = watermark, eos_id, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = self.watermark.bias_logits(scores, input_ids[:, -1])
        z = self.watermark.config.hold_eos_z
        if z is None or self.eos_id is None or self.prompt_len is None:
            return scores
        review = input_ids[:, self.prompt_len - 1 :]  # <sep>, then the review so far (no <eos> in a live row)
        n = review.shape[1] - 1
        need = self.watermark.green_needed(max(64, 1 << n.bit_length()), z)[n]  # tables of 64, 128, ... tokens
        held = self.watermark.green(review[:, :-1], review[:, 1:]).sum(dim=1) < need
        scores[:, self.eos_id] = scores[:, self.eos_id].masked_fill(held, -math.inf)
        return scores
