"""Whole characters only: a sampler guard that keeps byte-level tokens from writing broken UTF-8, and English
reviews from writing Chinese.

A byte-level BPE vocabulary holds tokens that are parts of a UTF-8 character (a Chinese character is three
bytes, often split over two tokens). A sampler that picks them freely can write a byte sequence that is not
UTF-8, and the decoded review shows U+FFFD (the filter's `broken_text`). The guard tracks per row how many
continuation bytes the text still owes, masks every token that would break the sequence, and allows <eos>
only between characters. A row may also forbid a set of tokens outright: a small model trained on English and
Chinese reviews mixes Chinese characters into English ones, so English rows forbid every token that starts a
CJK character (`cjk_tokens`). Each step costs one [B, V] gather and masked fill.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

# the continuation bytes a row still owes: 0 (between characters) to 3, and four states owing 2 or 3 bytes
# whose next byte has a narrower range (no overlong forms, no surrogates, nothing past U+10FFFF)
STATES = 8
_NEXT = {1: (0x80, 0xBF, 0), 2: (0x80, 0xBF, 1), 3: (0x80, 0xBF, 2)}  # state: (lowest, highest byte, state after)
_NEXT |= {4: (0xA0, 0xBF, 1), 5: (0x80, 0x9F, 1), 6: (0x90, 0xBF, 2), 7: (0x80, 0x8F, 2)}
_LEAD = {0xE0: 4, 0xED: 5, 0xF0: 6, 0xF4: 7}


def _after(state: int, data: bytes) -> int:
    """The state after `data` from `state`, or -1 where the bytes are not UTF-8."""
    for b in data:
        if state > 0:
            lo, hi, state = _NEXT[state]
            if not lo <= b <= hi:
                return -1
        elif b < 0x80:
            continue
        elif 0xC2 <= b <= 0xDF:
            state = 1
        elif 0xE0 <= b <= 0xF4:
            state = _LEAD.get(b, 2 if b <= 0xEF else 3)
        else:
            return -1  # a continuation byte between characters, or a byte UTF-8 never uses
    return state


# lead bytes of the characters an English review has no use for: CJK punctuation, kana and ideographs
# (U+3000-U+9FFF), and U+F000-U+FFFF (compatibility ideographs, fullwidth forms)
CJK_LEADS = frozenset(range(0xE3, 0xEA)) | {0xEF}


def cjk_tokens(token_bytes: Sequence[bytes | None]) -> torch.Tensor:
    """[V] bool: the tokens holding a CJK lead byte (the continuation bytes alone cannot follow without one)."""
    return torch.tensor([b is not None and any(x in CJK_LEADS for x in b) for b in token_bytes], dtype=torch.bool)


def transition_table(token_bytes: Sequence[bytes | None]) -> torch.Tensor:
    """[V, STATES] int64: each token's state after it from each state, -1 where it is not allowed. A token
    with no bytes of its own (None: <eos> and the other special tokens) is allowed between characters only."""
    rows = [[_after(s, b) if b is not None else (0 if s == 0 else -1) for s in range(STATES)] for b in token_bytes]
    return torch.tensor(rows, dtype=torch.long)


class Utf8Guard:
    """Per-row UTF-8 state over a batch: `apply` masks the tokens a row may not write next (those that would
    break its open character, and the row's `forbid` [B, V] tokens), `update` advances the states by the picked
    tokens, `select` follows the sampler's batch compaction."""

    def __init__(self, table: torch.Tensor, batch: int, device: torch.device | str, forbid: torch.Tensor | None = None):
        self.table = table.to(device)
        self.allowed = (self.table >= 0).t().contiguous()  # [STATES, V]
        self.state = torch.zeros(batch, dtype=torch.long, device=device)
        self.forbid = forbid.to(device) if forbid is not None else None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [B, V] with the tokens a row may not write at -inf (in place)."""
        blocked = ~self.allowed[self.state]
        if self.forbid is not None:
            blocked |= self.forbid
        return logits.masked_fill_(blocked, -math.inf)

    def update(self, tok: torch.Tensor) -> None:
        """Advance each row's state by its token `tok` [B] (a finished row's state no longer matters)."""
        self.state = self.table[tok, self.state].clamp_min(0)

    def select(self, keep: torch.Tensor) -> None:
        self.state = self.state[keep]
        if self.forbid is not None:
            self.forbid = self.forbid[keep]
