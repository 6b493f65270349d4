"""A checkpoint's weights: save, load and export a model directory (its files and records:
`reviewgen.core.model_dir`), as plain data that loads without pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from reviewgen.core.base_ref import BASE_FILE, BaseRefError, own_state, read_base, write_base
from reviewgen.core.build import discriminator_from_state, generator_from_state
from reviewgen.core.config import RunConfig
from reviewgen.core.lora import is_adapter_key
from reviewgen.core.model_dir import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    META_FILE,
    NGRAM_FILE,
    WEIGHT_FILES,
    Calibration,
    CheckpointError,
    Meta,
    content_version,
    read_calibration,
    read_config,
    read_meta,
    record_json,
)
from reviewgen.core.models import Discriminator, Generator, unwrap
from reviewgen.core.tokenizer import ReviewTokenizer, TokenizerError
from reviewgen.infra.storage import staged_dir


class BaseMismatchError(CheckpointError):
    """A LoRA model's base weights are missing or differ (by hash) from the ones its adapters were trained on."""


# -- the checkpoint ----------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint directory: its run config, categories, tokenizer and networks, its meta.json and
    calibration.json records, the reference network's weights and (for resuming) the training state."""

    path: Path
    config: RunConfig
    categories: list[str]
    tokenizer: ReviewTokenizer
    generator: Generator
    discriminator: Discriminator
    meta: Meta
    calibration: Calibration | None = None
    reference_state: dict[str, torch.Tensor] | None = None
    train_state: dict[str, Any] | None = None

    @property
    def version(self) -> str:
        """The content version meta.json records."""
        return self.meta.version

    @property
    def ngram_path(self) -> Path | None:
        """The n-gram index of the training reviews (the output filter's copy check), or None."""
        p = self.path / NGRAM_FILE
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


def save_checkpoint(
    path: str | Path,
    *,
    config: RunConfig,
    categories: list[str],
    tokenizer: ReviewTokenizer,
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    meta: Meta | None = None,
    reference: torch.nn.Module | dict | None = None,
    train_state: dict[str, Any] | None = None,
    calibration: Calibration | None = None,
    ngram_file: str | Path | None = None,
    wordlm_file: str | Path | None = None,
) -> Path:
    """Write a checkpoint atomically (temp dir + rename) with `meta`'s record of how it was made; the format,
    content version, creation time and (with LoRA) the base reference are filled in here. Returns the path."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / CONFIG_FILE).write_text(
        json.dumps({"format": FORMAT_VERSION, "run": config.to_dict(), "categories": list(categories)}, indent=2)
    )
    meta = _write_weights(
        tmp,
        config,
        meta if meta is not None else Meta(),
        generator=generator,
        discriminator=discriminator,
        reference=reference,
    )
    tokenizer.save(tmp / "tokenizer.json")
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")
    if calibration is not None:
        (tmp / CALIBRATION_FILE).write_text(record_json(calibration.to_dict()))
    if ngram_file is not None and Path(ngram_file).is_file():
        shutil.copyfile(ngram_file, tmp / NGRAM_FILE)
    if wordlm_file is not None and Path(wordlm_file).is_file():
        shutil.copyfile(wordlm_file, tmp / "wordlm.npz")
    meta = replace(
        meta,
        format=FORMAT_VERSION,
        version=content_version(tmp),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    (tmp / META_FILE).write_text(record_json(meta.to_dict()))
    _move_into(tmp, final)
    return final


def _write_weights(
    tmp: Path,
    config: RunConfig,
    meta: Meta,
    *,
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    reference: torch.nn.Module | dict | None,
) -> Meta:
    """Write the networks' safetensors files into `tmp`. With LoRA, G's file holds only its adapters, the
    base is written as a verified reference (recorded on the returned meta) and stands in for the reference
    network; D's file holds only its own weights when it has adapters too."""
    from safetensors.torch import save_file

    lora_g, lora_d = config.generator.lora.enabled, config.discriminator.lora.enabled
    if lora_g:  # the adapters, and a verified reference to the base they sit on
        meta = replace(meta, lora_base=write_base(tmp, generator, dict(meta.base) if meta.base else None))
        reference = None  # the reference is the base itself
    save_file(own_state(generator) if lora_g else _state(generator), str(tmp / "generator.safetensors"))
    save_file(own_state(discriminator) if lora_d else _state(discriminator), str(tmp / "discriminator.safetensors"))
    if reference is not None:
        ref = _untied(reference) if isinstance(reference, dict) else _state(reference)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in ref.items()}, str(tmp / "reference.safetensors"))
    return meta


def _move_into(tmp: Path, final: Path) -> None:
    """Move a written checkpoint from `tmp` into `final`, removing the optional files it no longer has.

    Files move in one by one rather than renaming the directory: a run directory keeps its sub-directories
    (mle/, state/) beside the model files. meta.json goes first out and last in, so a crash in between
    leaves no directory that looks complete."""
    final.mkdir(parents=True, exist_ok=True)
    (final / META_FILE).unlink(missing_ok=True)
    for name in ("reference.safetensors", BASE_FILE, "train_state.pt", CALIBRATION_FILE, NGRAM_FILE, "wordlm.npz"):
        if not (tmp / name).exists():
            (final / name).unlink(missing_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == META_FILE):
        os.replace(f, final / f.name)
    tmp.rmdir()


def _read_weights(p: Path, device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not p.is_file():
        raise CheckpointError(f"checkpoint file missing: {p}")
    try:
        return load_file(str(p), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{p}: corrupt weights ({e})") from e


def _build_models(
    p: Path, meta: Meta, config: RunConfig, tok: ReviewTokenizer, device
) -> tuple[Generator, Discriminator, dict[str, torch.Tensor] | None]:
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
        disc = discriminator_from_state(
            config.discriminator,
            config.tokenizer.prefix_len,
            tok.pad_id,
            d_state,
            share_with=gen if lora_d else None,
            complete=True,
        )
    except ValueError as e:
        raise CheckpointError(f"{p / 'discriminator.safetensors'}: weights do not match the config ({e})") from e
    base = {k: v for k, v in gen.state_dict().items() if not is_adapter_key(k)} if lora_g else None
    return gen, disc, base


def _read_base(p: Path, meta: Meta, config: RunConfig, device) -> dict[str, torch.Tensor]:
    """The verified base a LoRA directory names; BaseMismatchError when it is missing or changed."""
    t = config.tokenizer
    try:
        return read_base(p, dict(meta.lora_base) if meta.lora_base else None, t.prefix_len, t.max_review_len, device)
    except BaseRefError as e:
        raise BaseMismatchError(str(e)) from e


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, train_state: bool = False) -> Checkpoint:
    """Load a checkpoint directory; raises CheckpointError naming the missing or corrupt file."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {p}")
    meta = read_meta(p)
    config, categories = read_config(p)
    calib = read_calibration(p)
    try:
        tok = ReviewTokenizer.load(p / "tokenizer.json", config.tokenizer.prefix_len, config.tokenizer.max_review_len)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    gen, disc, base = _build_models(p, meta, config, tok, device)
    gen.to(device).eval()
    disc.to(device).eval()
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
    return Checkpoint(
        path=p,
        config=config,
        categories=categories,
        tokenizer=tok,
        generator=gen,
        discriminator=disc,
        meta=meta,
        calibration=calib,
        reference_state=ref,
        train_state=state,
    )


def export_model(src: str | Path, dst: str | Path) -> Path:
    """Copy the serving files of a checkpoint (no optimizer state; the scorer's reference network included)
    to a model directory named by nothing but its content: the generate and score jobs take this directory."""
    src, dst = Path(src), Path(dst)
    ck_meta = read_meta(src)
    with staged_dir(dst) as tmp:
        _copy_serving_files(src, tmp)
        meta = replace(ck_meta, created_at=None, version=content_version(tmp), exported_from=str(src))
        (tmp / META_FILE).write_text(record_json(meta.to_dict()))
    return dst


def _copy_serving_files(src: Path, tmp: Path) -> None:
    """The files a model directory serves with, copied from a checkpoint (no training state)."""
    # lexical-*.npz: the models of calibration.json's "adapted" entry (`reviewgen calibrate`)
    for name in (
        CONFIG_FILE,
        *WEIGHT_FILES,
        BASE_FILE,
        "reference.safetensors",
        "tokenizer.json",
        CALIBRATION_FILE,
        NGRAM_FILE,
        "wordlm.npz",
        *sorted(f.name for f in src.glob("lexical[-_]*.npz")),
    ):
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)
