"""Checkpoint directories: plain data that loads without pickle.

    config.json, generator.safetensors, discriminator.safetensors, [reference.safetensors],
    tokenizer.json, [train_state.pt], [calibration.json], [ngrams.npy], [wordlm.npz], meta.json

With LoRA adapters (generator.lora.rank > 0) the weight files hold the adapters (and D's heads) only, and
meta.json's "lora_base" names the frozen base, verified on load (see reviewgen.core.base_ref); the
reference network is that base, so there is no reference.safetensors.

meta.json is written last, so a directory without it is an interrupted write, not a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reviewgen.core.base_ref import BASE_FILE, BaseRefError, own_state, read_base, write_base
from reviewgen.core.build import discriminator_from_state, generator_from_state
from reviewgen.core.config import ConfigError, RunConfig
from reviewgen.core.errors import ReviewgenError
from reviewgen.core.lora import is_adapter_key
from reviewgen.core.models import Discriminator, Generator, unwrap
from reviewgen.core.tokenizer import ReviewTokenizer, TokenizerError

FORMAT_VERSION = 1
WEIGHT_FILES = ("generator.safetensors", "discriminator.safetensors")


class CheckpointError(ReviewgenError, ValueError):
    """A checkpoint directory is missing, incomplete, or corrupt; the message names the file."""


class BaseMismatchError(CheckpointError):
    """A LoRA model's base weights are missing or differ (by hash) from the ones its adapters were trained on."""


@dataclass
class Checkpoint:
    path: Path
    config: RunConfig
    categories: list[str]
    tokenizer: ReviewTokenizer
    generator: Generator
    discriminator: Discriminator
    meta: dict[str, Any]
    calibration: dict[str, float] | None = None
    reference_state: dict[str, torch.Tensor] | None = None
    train_state: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.meta.get("version", "unknown")

    @property
    def ngram_path(self) -> Path | None:
        p = self.path / "ngrams.npy"
        return p if p.is_file() else None

    @property
    def wordlm_path(self) -> Path | None:
        """The word n-gram model of the training reviews (the scorer's), or None in an older directory."""
        p = self.path / "wordlm.npz"
        return p if p.is_file() else None


def _untied(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage: a tied head is saved once (as tok_emb) and re-tied on load;
    # an untied head (e.g. a Llama base) is a weight of its own and is kept
    head, emb = sd.get("lm_head.weight"), sd.get("tok_emb.weight")
    if head is not None and emb is not None and head.data_ptr() == emb.data_ptr():
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    return sd


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = _untied(unwrap(model).state_dict())
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def content_version(path: Path) -> str:
    """A content hash over config and weights: the exported model's version id."""
    h = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES, BASE_FILE, "calibration.json", "wordlm.npz"):
        f = path / name
        if f.is_file():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def save_checkpoint(path: str | Path, *, config: RunConfig, categories: list[str], tokenizer: ReviewTokenizer,
                    generator: torch.nn.Module, discriminator: torch.nn.Module,
                    meta: dict[str, Any] | None = None, reference: torch.nn.Module | dict | None = None,
                    train_state: dict[str, Any] | None = None, calibration: dict[str, float] | None = None,
                    ngram_file: str | Path | None = None, wordlm_file: str | Path | None = None) -> Path:
    """Write a checkpoint atomically (temp dir + rename). Returns the final path."""
    from safetensors.torch import save_file

    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(
        {"format": FORMAT_VERSION, "run": config.to_dict(), "categories": list(categories)}, indent=2))
    meta = dict(meta or {})
    lora_g, lora_d = config.generator.lora.enabled, config.discriminator.lora.enabled
    if lora_g:  # the adapters, and a verified reference to the base they sit on
        meta["lora_base"] = write_base(tmp, generator, meta.get("base"))
        reference = None  # the reference is the base itself
    save_file(own_state(generator) if lora_g else _state(generator), str(tmp / "generator.safetensors"))
    save_file(own_state(discriminator) if lora_d else _state(discriminator), str(tmp / "discriminator.safetensors"))
    if reference is not None:
        ref = _untied(reference) if isinstance(reference, dict) else _state(reference)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in ref.items()}, str(tmp / "reference.safetensors"))
    tokenizer.save(tmp / "tokenizer.json")
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")
    if calibration is not None:
        (tmp / "calibration.json").write_text(json.dumps(calibration, indent=2))
    if ngram_file is not None and Path(ngram_file).is_file():
        shutil.copyfile(ngram_file, tmp / "ngrams.npy")
    if wordlm_file is not None and Path(wordlm_file).is_file():
        shutil.copyfile(wordlm_file, tmp / "wordlm.npz")
    meta.update(format=FORMAT_VERSION, version=content_version(tmp),
                created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    # Move files in one by one rather than renaming the directory: a run directory keeps its
    # sub-directories (mle/, state/) beside the model files. meta.json goes first out and last in,
    # so a crash in between leaves no directory that looks complete.
    final.mkdir(parents=True, exist_ok=True)
    (final / "meta.json").unlink(missing_ok=True)
    for name in ("reference.safetensors", BASE_FILE, "train_state.pt", "calibration.json", "ngrams.npy", "wordlm.npz"):
        if not (tmp / name).exists():
            (final / name).unlink(missing_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "meta.json"):
        os.replace(f, final / f.name)
    tmp.rmdir()
    return final


def _read_json(p: Path) -> dict:
    if not p.is_file():
        raise CheckpointError(f"checkpoint file missing: {p}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: corrupt JSON ({e})") from e


def _read_weights(p: Path, device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not p.is_file():
        raise CheckpointError(f"checkpoint file missing: {p}")
    try:
        return load_file(str(p), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{p}: corrupt weights ({e})") from e


def _build_models(p: Path, meta: dict, config: RunConfig, tok: ReviewTokenizer,
                  device) -> tuple[Generator, Discriminator, dict[str, torch.Tensor] | None]:
    """G and D built around the directory's weights with no random-init copy (`reviewgen.core.build`); with
    LoRA, G's file holds its adapters and the verified base is read beside them, shared with D when D has
    adapters too. Returns the models and, with LoRA, G's base tensors (the reference network)."""
    lora_g, lora_d = config.generator.lora.enabled, config.discriminator.lora.enabled
    g_state = _read_weights(p / "generator.safetensors", device)
    if lora_g:
        g_state = {**_read_base(p, meta, config, device), **g_state}
    try:
        gen = generator_from_state(config.generator, g_state, complete=True)
    except ValueError as e:
        err = BaseMismatchError if lora_g else CheckpointError
        raise err(f"{p / 'generator.safetensors'}: weights do not match the config ({e})") from e
    d_state = _read_weights(p / "discriminator.safetensors", device)
    try:
        disc = discriminator_from_state(config.discriminator, config.tokenizer.prefix_len, tok.pad_id, d_state,
                                        share_with=gen if lora_d else None, complete=True)
    except ValueError as e:
        raise CheckpointError(f"{p / 'discriminator.safetensors'}: weights do not match the config ({e})") from e
    base = {k: v for k, v in gen.state_dict().items() if not is_adapter_key(k)} if lora_g else None
    return gen, disc, base


def _read_base(p: Path, meta: dict, config: RunConfig, device) -> dict[str, torch.Tensor]:
    """The verified base a LoRA directory names; BaseMismatchError when it is missing or changed."""
    t = config.tokenizer
    try:
        return read_base(p, meta.get("lora_base"), t.prefix_len, t.max_review_len, device)
    except BaseRefError as e:
        raise BaseMismatchError(str(e)) from e


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, train_state: bool = False) -> Checkpoint:
    """Load a checkpoint directory; raises CheckpointError naming the missing or corrupt file."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {p}")
    meta = _read_json(p / "meta.json")
    cfg_doc = _read_json(p / "config.json")
    if cfg_doc.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{p / 'config.json'}: unsupported checkpoint format {cfg_doc.get('format')!r}")
    try:
        config = RunConfig.from_dict(cfg_doc["run"], source=str(p / "config.json"))
    except (KeyError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{p / 'config.json'}: invalid config ({e})") from e
    try:
        tok = ReviewTokenizer.load(p / "tokenizer.json", config.tokenizer.prefix_len, config.tokenizer.max_review_len)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    gen, disc, base = _build_models(p, meta, config, tok, device)
    gen.to(device).eval()
    disc.to(device).eval()
    calib = _read_json(p / "calibration.json") if (p / "calibration.json").is_file() else None
    ref = base
    if base is None and (p / "reference.safetensors").is_file():
        try:
            ref = load_file(str(p / "reference.safetensors"), device=str(device))
        except Exception as e:
            raise CheckpointError(f"{p / 'reference.safetensors'}: corrupt weights ({e})") from e
    state = None
    if train_state and (p / "train_state.pt").is_file():
        try:
            state = torch.load(p / "train_state.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{p / 'train_state.pt'}: corrupt training state ({e})") from e
    return Checkpoint(path=p, config=config, categories=list(cfg_doc.get("categories", [])), tokenizer=tok,
                      generator=gen, discriminator=disc, meta=meta, calibration=calib,
                      reference_state=ref, train_state=state)


def export_model(src: str | Path, dst: str | Path) -> Path:
    """Copy the serving files of a checkpoint (no optimizer state; the scorer's reference network included)
    to a model directory named by nothing but its content: the generate and score jobs take this directory."""
    src, dst = Path(src), Path(dst)
    ck_meta = _read_json(src / "meta.json")
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # lexical-*.npz: the models of calibration.json's "adapted" entry (`reviewgen calibrate`)
    for name in ("config.json", *WEIGHT_FILES, BASE_FILE, "reference.safetensors", "tokenizer.json", "calibration.json",
                 "ngrams.npy", "wordlm.npz", *sorted(f.name for f in src.glob("lexical[-_]*.npz"))):
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)
    meta = {k: v for k, v in ck_meta.items() if k not in ("created_at",)}
    meta["version"] = content_version(tmp)
    meta["exported_from"] = str(src)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst
