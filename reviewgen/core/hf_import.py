"""Start from a pretrained base model: a local Hugging Face model directory (config.json, *.safetensors,
tokenizer.json) mapped by name into reviewgen's Generator and Discriminator, with no `transformers` import.

    base = load_hf_base("/models/Qwen2.5-0.5B", prefix_len=40, max_review_len=96)
    init = init_from_hf("/models/Qwen2.5-0.5B", run_cfg)   # config, tokenizer, G, D, meta

Vocabulary. The base tokenizer is kept, and reviewgen's special tokens (<pad>, <bos>, <eos>, <sep>, the
language, rating, sentiment, category and title markers) are added to it as new special tokens, so the base
tokens keep their ids and meaning. The embedding (and an untied output head) gets one row per tokenizer id:
rows some bases keep beyond their tokenizer (padding up to a round size) are dropped, and the new tokens'
rows start as distinct typical rows (the mean embedding plus seeded noise at the base's per-dimension spread),
except <bos> and <eos>, which start as copies of the base's own
beginning- and end-of-text rows when config.json names them: the base then already knows where a review
starts and, above all, when to stop. Nothing is ever downloaded: the directory must exist locally.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reviewgen.core.build import discriminator_on, generator_from_state, trunk_state
from reviewgen.core.config import GeneratorConfig, RunConfig
from reviewgen.core.errors import ReviewgenError
from reviewgen.core.hf import IGNORED_SUFFIXES, HFFormatError, from_hf, hf_key, read_config, weight_rules
from reviewgen.core.lora import is_adapter_key
from reviewgen.core.models import Discriminator, Generator
from reviewgen.core.tokenizer import ReviewTokenizer, TokenizerError, read_tokenizer_file

INDEX_FILE = "model.safetensors.index.json"


class HFImportError(ReviewgenError, ValueError):
    """A base model directory that is missing, unsupported or mismatched; the message names the file and
    the field or tensor."""


@dataclass(frozen=True)
class HFBase:
    """A base model read into reviewgen's terms."""

    path: Path
    model_type: str  # "gpt2" | "llama" | "qwen2"
    fields: dict[str, Any]  # GeneratorConfig/DiscriminatorConfig fields (architecture, shape, vocab_size)
    max_positions: int  # longest sequence the base supports (learned positions cannot grow)
    state: dict[str, torch.Tensor]  # Generator state in our names, vocabulary grown; {} when read without weights
    tokenizer: ReviewTokenizer
    sha256: str  # over the weight files, in name order

    def meta(self) -> dict[str, Any]:
        """What a run's meta.json records about the base it started from."""
        return {
            "path": str(self.path),
            "model_type": self.model_type,
            "arch": self.fields["arch"],
            "sha256": self.sha256,
            "weight_files": sorted(p.name for p in _weight_files(self.path)),
        }


@dataclass
class HFInit:
    """A run ready to train from a base: its config (architecture sections from the base), tokenizer, the
    base itself, and both models on first use. G takes the base's tensors (`base.state` is then empty); D's
    trunk shares them under LoRA, else copies them; D's heads are new."""

    config: RunConfig
    tokenizer: ReviewTokenizer
    base: HFBase  # its state is empty when read with weights=False

    @property
    def meta(self) -> dict[str, Any]:
        """Put under meta.json's "base" key."""
        return self.base.meta()

    @functools.cached_property
    def generator(self) -> Generator:
        return generator_from_state(self.config.generator, self.base.state)

    @functools.cached_property
    def discriminator(self) -> Discriminator:
        cfg, G = self.config, self.generator
        if cfg.discriminator.lora.enabled:
            return discriminator_on(G, cfg.discriminator, cfg.tokenizer.prefix_len, self.tokenizer.pad_id)
        D = Discriminator(cfg.discriminator, cfg.tokenizer.prefix_len, self.tokenizer.pad_id)
        _load(D, trunk_state(G), allowed_missing=Discriminator.HEADS, where=self.base.path)  # a copy: D trains its own
        return D


def _directory(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        return p.resolve()
    if p.exists():
        raise HFImportError(f"base model path is not a directory: {p}")
    hub_like = not p.is_absolute() and not str(path).startswith(".") and len(p.parts) <= 2
    hint = (
        f"{str(path)!r} looks like a Hugging Face Hub name, but nothing is downloaded: download it yourself "
        "(e.g. `huggingface-cli download NAME --local-dir DIR`) and pass that local directory"
        if hub_like
        else "a local Hugging Face model directory is needed; nothing is downloaded"
    )
    raise HFImportError(f"base model directory not found: {p} ({hint})")


def _weight_files(p: Path) -> list[Path]:
    index = p / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HFImportError(f"{index}: not a safetensors index (needs a 'weight_map' field): {e}") from e
        files = [p / f for f in sorted(set(weight_map.values()))]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise HFImportError(f"{index}: names weight file {missing[0].name}, which is missing")
        return files
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise HFImportError(f"{p}: no *.safetensors weight files (pytorch_model.bin is not read: it needs pickle)")
    return files


def _sha256(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _read_tensors(files: list[Path], model_type: str) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    from safetensors.torch import load_file

    tensors, origin = {}, {}
    for f in files:
        try:
            part = load_file(str(f))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise HFImportError(f"{f}: unreadable safetensors file ({e})") from e
        for name, t in part.items():
            if name.endswith(IGNORED_SUFFIXES):
                continue
            key = hf_key(name, model_type)
            tensors[key], origin[key] = t, f
    return tensors, origin


def _expected_shapes(fields: dict[str, Any], vocab: int, block: int) -> dict[str, tuple[int, ...]]:
    cfg = GeneratorConfig(**fields, vocab_size=vocab, block_size=block, dropout=0.0)
    with torch.device("meta"):  # shapes only: no memory, no random init
        g = Generator(cfg)
    return {k: tuple(v.shape) for k, v in g.state_dict().items()}


def _grow_vocab(w: torch.Tensor, tok: ReviewTokenizer, n_base: int, base_ids: dict[str, int | None]) -> torch.Tensor:
    rows = torch.empty(tok.vocab_size, w.shape[1], dtype=w.dtype)
    rows[:n_base] = w[:n_base]
    # a typical row each: the base's mean plus seeded noise at its per-dimension spread. Distinct rows matter:
    # under LoRA the embedding stays frozen, and identical rows would make every rating, category and
    # language marker look the same to G. The fixed seed gives every worker the same weights.
    base = w[:n_base].float()
    noise = torch.randn(tok.vocab_size - n_base, w.shape[1], generator=torch.Generator().manual_seed(0))
    rows[n_base:] = (base.mean(dim=0) + noise * base.std(dim=0)).to(w.dtype)
    for ours, theirs in ((tok.bos_id, base_ids["bos"]), (tok.eos_id, base_ids["eos"])):
        if ours >= n_base and theirs is not None and 0 <= theirs < n_base:
            rows[ours] = w[theirs]
    return rows


def load_hf_base(path: str | Path, *, prefix_len: int, max_review_len: int, weights: bool = True) -> HFBase:
    """Read a local Hugging Face model directory (gpt2, llama or qwen2) into reviewgen's terms: its config,
    tokenizer and weight hash, and with `weights` its tensors (in the files' dtype; each consumer casts).

    Raises HFImportError naming the file and the field or tensor when the directory is missing (or a Hub
    name was given: nothing is downloaded), unsupported, or does not match its config."""
    p = _directory(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise HFImportError(f"{cfg_file}: missing (a Hugging Face model directory has config.json)")
    try:
        raw = json.loads(cfg_file.read_text())
        base = read_config(raw, str(cfg_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFImportError(f"{cfg_file}: not valid JSON ({e})") from e
    except (HFFormatError, TypeError, ValueError) as e:
        raise HFImportError(str(e) if isinstance(e, HFFormatError) else f"{cfg_file}: {e}") from e
    block = prefix_len + max_review_len
    if base.fields["pos"] == "learned" and base.max_positions < block:
        raise HFImportError(
            f"{cfg_file}: n_positions={base.max_positions} is shorter than prefix_len + max_review_len = {block}"
        )
    try:
        n_base = read_tokenizer_file(p / "tokenizer.json").get_vocab_size()
        tok = ReviewTokenizer.from_base(p / "tokenizer.json", prefix_len, max_review_len)
    except TokenizerError as e:
        raise HFImportError(f"{e} (a base model directory needs the fast tokenizer's tokenizer.json)") from e
    if n_base > base.vocab_size:
        raise HFImportError(
            f"{p / 'tokenizer.json'}: {n_base} tokens, but config.json vocab_size is "
            f"{base.vocab_size}: the embedding has no row for some token ids"
        )
    files = _weight_files(p)
    fields = dict(base.fields, vocab_size=tok.vocab_size)
    state = _read_state(p, base, files, tok, n_base, block) if weights else {}
    return HFBase(
        path=p,
        model_type=base.model_type,
        fields=fields,
        max_positions=base.max_positions,
        state=state,
        tokenizer=tok,
        sha256=_sha256(files),
    )


def _read_state(
    p: Path, base, files: list[Path], tok: ReviewTokenizer, n_base: int, block: int
) -> dict[str, torch.Tensor]:
    """The base's tensors in our names, checked against its config, the vocabulary grown for our tokens."""
    tensors, origin = _read_tensors(files, base.model_type)
    tied = base.fields["tie_embeddings"]
    rules = weight_rules(base.model_type, base.fields["n_layer"], tied)
    where = INDEX_FILE if (p / INDEX_FILE).is_file() else ", ".join(f.name for f in files)

    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise HFImportError(
                f"{p}: tensor {name!r} is missing from {where} (config.json model_type "
                f"{base.model_type!r}, n_layer {base.fields['n_layer']})"
            )
        return tensors[name]

    state = from_hf(rules, get)
    used = {n for r in rules for n in r.theirs}
    extra = sorted(set(tensors) - used - ({"lm_head.weight"} if tied else set()))
    if extra:
        raise HFImportError(
            f"{origin[extra[0]]}: unexpected tensor {extra[0]!r} for model_type "
            f"{base.model_type!r} ({len(extra)} unexpected in all)"
        )
    expected = _expected_shapes(base.fields, base.vocab_size, base.max_positions)
    for r in rules:
        if tuple(state[r.ours].shape) != expected[r.ours]:
            shapes = ", ".join(f"{n} {tuple(tensors[n].shape)}" for n in r.theirs)
            raise HFImportError(
                f"{origin[r.theirs[0]]}: tensor {shapes} has the wrong shape for config.json "
                f"(expected {expected[r.ours]} as {r.ours})"
            )
    if base.fields["pos"] == "learned":
        state["pos_emb.weight"] = state["pos_emb.weight"][:block]  # the review layout uses `block` positions
    base_ids = {"bos": base.bos_id, "eos": base.eos_id}
    for key in ("tok_emb.weight",) + (() if tied else ("lm_head.weight",)):
        state[key] = _grow_vocab(state[key].float(), tok, n_base, base_ids)
    return state


def _load(model: torch.nn.Module, state: dict[str, torch.Tensor], allowed_missing: tuple[str, ...], where) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(allowed_missing) and not is_adapter_key(k)]  # adapters: fresh
    if missing or unexpected:
        raise HFImportError(
            f"{where}: the base weights do not fit {type(model).__name__} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def init_from_hf(path: str | Path, cfg: RunConfig, *, weights: bool = True) -> HFInit:
    """Everything `train --init-from DIR` needs: `cfg` with its generator and discriminator sections taking
    the base's architecture and shape (dropout, D's heads and the rest are kept), the base tokenizer with
    reviewgen's tokens, the base, and G and D built from it on first use. `weights=False` reads only the
    config and tokenizer (a driver that sets a run up; its workers read the weights). Raises HFImportError
    (see load_hf_base)."""
    t = cfg.tokenizer
    base = load_hf_base(path, prefix_len=t.prefix_len, max_review_len=t.max_review_len, weights=weights)
    shape = dict(base.fields, block_size=t.prefix_len + t.max_review_len)
    run = dataclasses.replace(
        cfg,
        tokenizer=dataclasses.replace(t, vocab_size=base.tokenizer.vocab_size),
        generator=dataclasses.replace(cfg.generator, **shape),
        discriminator=dataclasses.replace(cfg.discriminator, **shape),
    )
    return HFInit(config=run, tokenizer=base.tokenizer, base=base)
