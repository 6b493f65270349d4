"""Byte-level BPE with condition tokens, and the fixed prefix/review token layout.

Every example is `prefix_len` prefix tokens, left-padded, then `max_review_len` review tokens, right-padded:

    <pad>.. <bos> <lang_en> <rating_4> <cat> category.. <title> title.. <sep> | review.. <eos> <pad>..

Because the review always starts at the same position, sampling, per-token rewards and loss masks need no
per-row offsets, and the KV-cache sampler can step all rows in lockstep.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from reviewgen.core.errors import ReviewgenError
from reviewgen.core.utf8 import cjk_tokens, transition_table

PAD, BOS, EOS, SEP, UNK, TITLE, CAT = "<pad>", "<bos>", "<eos>", "<sep>", "<unk>", "<title>", "<cat>"
LANGS = ("en", "zh")
SENTIMENTS = ("positive", "negative", "neutral")
SPECIAL_TOKENS = (
    [PAD, BOS, EOS, SEP, UNK, TITLE, CAT]
    + [f"<lang_{x}>" for x in LANGS]
    + [f"<rating_{k}>" for k in range(1, 6)]
    + [f"<sent_{s}>" for s in SENTIMENTS]
)
MAX_CATEGORY_TOKENS = 8
# the condition tokens that ask for a positive / a negative review (`Condition.condition_token`'s split)
POSITIVE_TOKENS = ("<rating_4>", "<rating_5>", "<sent_positive>")
NEGATIVE_TOKENS = ("<rating_1>", "<rating_2>", "<sent_negative>")


class TokenizerError(ReviewgenError, ValueError):
    """The tokenizer file is missing or unusable."""


@dataclass(frozen=True)
class Condition:
    """What the generator is asked to write about: a product and a target rating or sentiment."""

    title: str
    category: str = ""
    rating: int | None = None
    sentiment: str | None = None
    language: str = "en"

    def condition_token(self) -> str:
        rating = int(self.rating) if self.rating is not None and 1 <= int(self.rating) <= 5 else None
        # The Chinese corpus carries polarity only, so a Chinese target rating becomes its sentiment.
        if rating is not None and self.language != "zh":
            return f"<rating_{rating}>"
        s = self.sentiment if self.sentiment in SENTIMENTS else None
        if s is None:
            s = "positive" if rating is None or rating >= 4 else "negative" if rating <= 2 else "neutral"
        return f"<sent_{s}>"


class ReviewTokenizer:
    """Wraps a HF `tokenizers.Tokenizer` with the reviewgen layout."""

    def __init__(self, tok, prefix_len: int, max_review_len: int):
        self.tok = tok
        self.prefix_len = prefix_len
        self.max_review_len = max_review_len
        self.special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in self.special.items() if i is None]
        if missing:
            raise TokenizerError(f"tokenizer lacks special tokens {missing}")
        self.pad_id, self.bos_id, self.eos_id = self.special[PAD], self.special[BOS], self.special[EOS]
        self.sep_id = self.special[SEP]
        self._bytes: list[bytes | None] | None = None  # token_bytes, utf8_table and cjk_tokens, built once
        self._utf8_table: torch.Tensor | None = None
        self._cjk: torch.Tensor | None = None

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, prefix_len: int, max_review_len: int, min_frequency: int = 2
    ) -> "ReviewTokenizer":
        """Train byte-level BPE on an iterator of strings (training split only)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, prefix_len, max_review_len)

    @classmethod
    def load(cls, path: str | Path, prefix_len: int, max_review_len: int) -> "ReviewTokenizer":
        """Load tokenizer.json."""
        return cls(read_tokenizer_file(path), prefix_len, max_review_len)

    @classmethod
    def from_base(cls, path: str | Path, prefix_len: int, max_review_len: int) -> "ReviewTokenizer":
        """A pretrained base model's tokenizer.json with the reviewgen special tokens added.

        Every token of SPECIAL_TOKENS (<pad>, <bos>, <eos>, <sep>, the condition tokens...) becomes an added
        special token with a new id after the base vocabulary (one the base already has keeps its id), so
        it is never split and the base's own tokens keep their meaning. The prefix/review layout is the
        same as for a trained tokenizer. Which rows the new ids get in the embedding is the importer's
        business (reviewgen.core.hf_import)."""
        from tokenizers import AddedToken

        tok = read_tokenizer_file(path)
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
        return cls(tok, prefix_len, max_review_len)

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    # -- encoding -----------------------------------------------------------------------------------
    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_prefixes(self, conds: Sequence[Condition]) -> torch.Tensor:
        """[B, prefix_len] left-padded prefixes. Long titles are truncated, never the conditions."""
        cats = self._ids([c.category or "" for c in conds])
        titles = self._ids([c.title or "" for c in conds])
        out = np.full((len(conds), self.prefix_len), self.pad_id, dtype=np.int64)
        # 6 fixed tokens: <bos> <lang> <condition> <cat> <title> <sep>; a short prefix cuts the category too
        max_cat = max(0, min(MAX_CATEGORY_TOKENS, self.prefix_len - 6))
        for i, c in enumerate(conds):
            lang = c.language if c.language in LANGS else "en"
            head = (
                [self.bos_id, self.special[f"<lang_{lang}>"], self.special[c.condition_token()], self.special[CAT]]
                + cats[i][:max_cat]
                + [self.special[TITLE]]
            )
            room = max(0, self.prefix_len - len(head) - 1)
            seq = head + titles[i][:room] + [self.sep_id]
            out[i, self.prefix_len - len(seq) :] = seq
        return torch.from_numpy(out)

    def encode_reviews(self, texts: Sequence[str]) -> torch.Tensor:
        """[B, max_review_len] right-padded reviews ending in <eos> (no <eos> when truncated)."""
        ids = self._ids(texts)
        out = np.full((len(texts), self.max_review_len), self.pad_id, dtype=np.int64)
        for i, seq in enumerate(ids):
            seq = (
                seq[: self.max_review_len - 1] + [self.eos_id]
                if len(seq) < self.max_review_len
                else seq[: self.max_review_len]
            )
            out[i, : len(seq)] = seq
        return torch.from_numpy(out)

    def encode_examples(self, conds: Sequence[Condition], texts: Sequence[str]) -> torch.Tensor:
        """[B, prefix_len + max_review_len] full token rows."""
        return torch.cat([self.encode_prefixes(conds), self.encode_reviews(texts)], dim=1)

    def review_token_lists(self, texts: Sequence[str]) -> list[list[int]]:
        """Raw review token ids (no layout), e.g. for the memorisation index."""
        return self._ids(texts)

    # -- decoding -----------------------------------------------------------------------------------
    def token_bytes(self) -> list[bytes | None]:
        """Each id's bytes as the decoder writes them; None for special and added tokens. Byte-level BPE
        spells bytes in GPT-2's printable alphabet; a byte-fallback token (<0xNN>) is one byte; any other
        token is its text, SentencePiece's "▁" a space."""
        if self._bytes is None:
            self._bytes = self._spell_tokens()
        return self._bytes

    def _spell_tokens(self) -> list[bytes | None]:
        byte_level = "ByteLevel" in json.dumps(json.loads(self.tok.to_str()).get("decoder"))
        to_byte = {c: b for b, c in _byte_alphabet().items()}
        added = set(self.tok.get_added_tokens_decoder())
        out: list[bytes | None] = []
        for i in range(self.vocab_size):
            t = self.tok.id_to_token(i)
            if t is None or i in added:
                out.append(None)
            elif byte_level and all(c in to_byte for c in t):
                out.append(bytes(to_byte[c] for c in t))
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
                out.append(bytes([int(t[3:5], 16)]))
            else:
                out.append(t.replace("▁", " ").encode())
        return out

    def utf8_table(self) -> torch.Tensor:
        """`reviewgen.core.utf8.transition_table` of this vocabulary (built once)."""
        if self._utf8_table is None:
            self._utf8_table = transition_table(self.token_bytes())
        return self._utf8_table

    def cjk_tokens(self) -> torch.Tensor:
        """`reviewgen.core.utf8.cjk_tokens` of this vocabulary (built once)."""
        if self._cjk is None:
            self._cjk = cjk_tokens(self.token_bytes())
        return self._cjk

    def decode_reviews(self, review_ids: torch.Tensor | np.ndarray) -> list[str]:
        """Decode review token rows, stopping at <eos> and dropping special tokens."""
        rows = review_ids.tolist() if hasattr(review_ids, "tolist") else list(review_ids)
        cut = []
        for r in rows:
            if self.eos_id in r:
                r = r[: r.index(self.eos_id)]
            cut.append([t for t in r if t != self.pad_id])
        # a review cut at max length can end mid-character: drop that partial character, not the review
        return [s.rstrip("\ufffd").strip() for s in self.tok.decode_batch(cut, skip_special_tokens=True)]


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE vocabularies are written in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    extra = (b for b in range(256) if b not in keep)
    return {b: chr(b) for b in keep} | {b: chr(256 + n) for n, b in enumerate(extra)}


def read_tokenizer_file(path: str | Path):
    """A `tokenizers.Tokenizer` from tokenizer.json; TokenizerError naming the file when missing or invalid."""
    from tokenizers import Tokenizer

    p = Path(path)
    if not p.is_file():
        raise TokenizerError(f"tokenizer file not found: {p}")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # the Rust error type is not exported
        raise TokenizerError(f"{p}: not a valid tokenizer.json ({e})") from e


def review_mask(review_ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Bool mask of the tokens that belong to each review: everything up to and including <eos>."""
    is_end = (review_ids == eos_id) | (review_ids == pad_id)
    # a token is valid while no end token came strictly before it, and it is not padding
    ended_before = torch.cumsum(is_end.long(), dim=1) - is_end.long()
    return (ended_before == 0) & (review_ids != pad_id)
