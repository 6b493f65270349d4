"""The frozen base of a model directory trained with LoRA adapters: written once as a reference, verified
on load.

With adapters on, generator.safetensors holds G's adapters only and discriminator.safetensors D's adapters
and heads; the base they sit on is named in meta.json's "lora_base":

    {"kind": "hf",   "path": "/models/Qwen2.5-7B", "sha256": ...}   the --init-from base directory, read
                                                                     again with the run's tokenizer layout
    {"kind": "file", "path": "base.safetensors",   "sha256": ...}   a base trained here (no --init-from),
                                                                     stored beside the adapters

The hash is over the base's weight files; a base that changed since training is a `BaseRefError`
(`reviewgen.core.checkpoint.BaseMismatchError` when met by load_checkpoint).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from reviewgen.core.errors import ReviewgenError
from reviewgen.core.hf_import import HFImportError, load_hf_base
from reviewgen.core.lora import is_adapter_key
from reviewgen.core.models import unwrap

BASE_FILE = "base.safetensors"


class BaseRefError(ReviewgenError, ValueError):
    """The base weights a LoRA model directory names are missing or differ from the ones it was trained on."""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def own_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA model directory stores of `model`: its adapters and its heads (D's), not the base."""
    m = unwrap(model)
    heads = getattr(m, "HEADS", ())
    return {
        k: v.detach().to("cpu").contiguous()
        for k, v in m.state_dict().items()
        if is_adapter_key(k) or k.startswith(heads)
    }


def base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The generator's frozen base (every tensor but the adapters; a tied head saved once, as tok_emb)."""
    m = unwrap(model)
    sd = {k: v for k, v in m.state_dict().items() if not is_adapter_key(k)}
    if m.arch.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def write_base(directory: Path, generator: torch.nn.Module, hf_base: dict[str, Any] | None) -> dict[str, Any]:
    """The "lora_base" record for a directory being written: the --init-from base (`hf_base`, meta.json's
    "base") by reference, or else G's base written to `directory`/base.safetensors."""
    from safetensors.torch import save_file

    if hf_base and hf_base.get("path") and hf_base.get("sha256"):
        return {"kind": "hf", "path": str(hf_base["path"]), "sha256": str(hf_base["sha256"])}
    save_file(base_state(generator), str(directory / BASE_FILE))
    return {"kind": "file", "path": BASE_FILE, "sha256": _file_sha256(directory / BASE_FILE)}


def read_base(
    directory: Path, record: dict[str, Any] | None, prefix_len: int, max_review_len: int, device
) -> dict[str, torch.Tensor]:
    """The base state a LoRA directory names, after checking its hash; BaseRefError otherwise."""
    from safetensors.torch import load_file

    if not record or record.get("kind") not in ("hf", "file"):
        raise BaseRefError(f"{directory / 'meta.json'}: a LoRA model needs a 'lora_base' record, got {record!r}")
    want = str(record.get("sha256"))
    if record["kind"] == "file":
        path = directory / record["path"]
        if not path.is_file():
            raise BaseRefError(f"{directory}: base weights {path} are missing")
        got = _file_sha256(path)
        state = load_file(str(path), device=str(device)) if got == want else None
    else:
        try:
            hf = load_hf_base(record["path"], prefix_len=prefix_len, max_review_len=max_review_len)
        except HFImportError as e:
            raise BaseRefError(f"{directory}: its base {record['path']} cannot be read ({e})") from e
        got, state = hf.sha256, hf.state
    if got != want:
        raise BaseRefError(
            f"{directory}: the base weights at {record['path']} have sha256 {got[:16]}, but "
            f"the adapters were trained on {want[:16]}; restore that base"
        )
    return {k: v.to(device) for k, v in state.items()}
