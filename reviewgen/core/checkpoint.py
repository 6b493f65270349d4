"""Checkpoint directories: plain data that loads without pickle. This module owns the directory: nothing
else opens its config.json, meta.json or calibration.json.

    config.json, generator.safetensors, discriminator.safetensors, [reference.safetensors],
    tokenizer.json, [train_state.pt], [calibration.json], [ngrams.npy], [wordlm.npz], meta.json

With LoRA adapters (generator.lora.rank > 0) the weight files hold the adapters (and D's heads) only, and
meta.json's "lora_base" names the frozen base, verified on load (see reviewgen.core.base_ref); the
reference network is that base, so there is no reference.safetensors.

meta.json is written last, so a directory without it is an interrupted write, not a checkpoint. It reads as
`Meta`, calibration.json as `Calibration`; both refuse a key they do not know, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
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
META_FILE, CONFIG_FILE, CALIBRATION_FILE, NGRAM_FILE = "meta.json", "config.json", "calibration.json", "ngrams.npy"


class CheckpointError(ReviewgenError, ValueError):
    """A checkpoint directory is missing, incomplete, or corrupt; the message names the file."""


class BaseMismatchError(CheckpointError):
    """A LoRA model's base weights are missing or differ (by hash) from the ones its adapters were trained on."""


# -- meta.json and calibration.json -------------------------------------------------------------------------

_NUMBER = (int, float)


def _check_fields(cls, d: Any, source: str, types: Mapping[str, tuple[type, ...]]) -> dict[str, Any]:
    """`d`'s entries, after checking it is a JSON object whose keys are fields of `cls` with the JSON types
    `types` gives (None always allowed); CheckpointError naming `source` and the key otherwise."""
    if not isinstance(d, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise CheckpointError(f"{source}: unknown key(s) {unknown} (written by another version of reviewgen?)")
    for k, v in d.items():
        want = types.get(k)
        if v is not None and want is not None and (not isinstance(v, want) or isinstance(v, bool) and bool not in want):
            raise CheckpointError(f"{source}: {k!r} must be {' or '.join(t.__name__ for t in want)}, got {v!r}")
    return dict(d)


@dataclass(frozen=True)
class Meta:
    """meta.json: what a directory is (format, content version) and how it was made: the data it was
    trained on, its role ("final", "partial", "mle_baseline"; none for resumable state), whether training
    completed and the phase and steps it reached, its metrics, the 1..5 star shares of its training
    reviews, the base it started from (`base`, `reviewgen.core.hf_import`), the frozen base of its LoRA
    adapters (`lora_base`, `reviewgen.core.base_ref`), and the directory it was exported or adapted from."""

    format: int = FORMAT_VERSION
    version: str = ""
    created_at: str | None = None
    data_hash: str | None = None
    role: str | None = None
    complete: bool | None = None
    phase: str | None = None
    step: int | None = None
    global_step: int | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    rating_distribution: tuple[float, ...] | None = None
    base: Mapping[str, Any] | None = None
    lora_base: Mapping[str, Any] | None = None
    exported_from: str | None = None
    adapted_from: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of meta.json (None fields and empty metrics left out)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["rating_distribution"] is not None:
            d["rating_distribution"] = list(d["rating_distribution"])
        return {k: v for k, v in d.items() if v is not None and not (k == "metrics" and not v)}

    @classmethod
    def from_dict(cls, d: Any, source: str = META_FILE) -> "Meta":
        """The `Meta` of a meta.json object; CheckpointError naming `source` for another format, an unknown
        key or a wrongly typed value."""
        d = _check_fields(cls, d, source, {
            "format": (int,), "version": (str,), "created_at": (str,), "data_hash": (str,), "role": (str,),
            "complete": (bool,), "phase": (str,), "step": (int,), "global_step": (int,), "metrics": (dict,),
            "rating_distribution": (list,), "base": (dict,), "lora_base": (dict,), "exported_from": (str,),
            "adapted_from": (dict,)})
        if d.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{source}: unsupported checkpoint format {d.get('format')!r}")
        if not d.get("version"):
            raise CheckpointError(f"{source}: no content 'version'")
        if d.get("rating_distribution") is not None:
            dist = d["rating_distribution"]
            if len(dist) != 5 or not all(isinstance(x, _NUMBER) and not isinstance(x, bool) for x in dist):
                raise CheckpointError(f"{source}: 'rating_distribution' must be 5 numbers, got {dist!r}")
            d["rating_distribution"] = tuple(float(x) for x in dist)
        d["metrics"] = d.get("metrics") or {}
        return cls(**d)


@dataclass(frozen=True)
class CalibrationFit:
    """How a calibration was fitted: its rows (human and machine-written), the sampling settings and
    temperatures of the machine rows, D's ECE before and after Platt scaling, the rows whose signals were
    not finite, and, for a refit, where it came from and the checkpoints that sampled the machine rows."""

    n: int
    temperatures: tuple[float, ...] = ()
    settings: tuple[str, ...] = ()
    ece_raw: float = math.nan
    ece: float = math.nan
    nonfinite_signals: Mapping[str, int] = field(default_factory=dict)
    rows_left_out: int = 0
    source: str | None = None
    checkpoints: tuple[str, ...] = ()


_FIT_TYPES: dict[str, tuple[type, ...]] = {
    "n": (int,), "temperatures": (list,), "settings": (list,), "ece_raw": _NUMBER, "ece": _NUMBER,
    "nonfinite_signals": (dict,), "rows_left_out": (int,), "source": (str,), "checkpoints": (list,)}


@dataclass(frozen=True)
class Calibration:
    """calibration.json: the scorer's fitted parts. D's Platt scaling (`scale`, `bias`: its fallback p_human),
    how it was fitted (`fit`, None when the fit failed), the detector document (`detector`: plain JSON that
    `reviewgen.score.combiner.Detector.from_dict` parses; None without LM statistics or when its fit failed,
    with the reason in `detector_error`), the p_human thresholds per language and false-accusation rate
    (`reviewgen.score.thresholds`), and the document of a shop's adapted models (`adapted`, read by
    `reviewgen.score.adapted.AdaptedDetector.load`). On disk the fit's fields sit beside the others."""

    scale: float = 1.0
    bias: float = 0.0
    fit: CalibrationFit | None = None
    detector: Mapping[str, Any] | None = None
    detector_error: str | None = None
    thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    adapted: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of calibration.json."""
        d: dict[str, Any] = {"scale": float(self.scale), "bias": float(self.bias)}
        if self.fit is not None:
            f = self.fit
            d.update(n=f.n, temperatures=list(f.temperatures), settings=list(f.settings), ece_raw=f.ece_raw,
                     ece=f.ece, nonfinite_signals=dict(f.nonfinite_signals), rows_left_out=f.rows_left_out)
            if f.source is not None:
                d.update(source=f.source, checkpoints=list(f.checkpoints))
        extra = {"detector": self.detector, "detector_error": self.detector_error, "adapted": self.adapted}
        d.update({k: v for k, v in extra.items() if v is not None})
        d["thresholds"] = {k: dict(v) for k, v in self.thresholds.items()}
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = CALIBRATION_FILE) -> "Calibration":
        """The `Calibration` of a calibration.json object; CheckpointError naming `source` for an unknown key
        or a wrongly typed value."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
        own = {k: v for k, v in d.items() if k not in _FIT_TYPES}
        own = _check_fields(cls, own, source, {"scale": _NUMBER, "bias": _NUMBER, "detector": (dict,),
                                               "detector_error": (str,), "thresholds": (dict,), "adapted": (dict,)})
        if "fit" in own:
            raise CheckpointError(f"{source}: unknown key(s) ['fit']")
        fit = {k: v for k, v in d.items() if k in _FIT_TYPES}
        _check_fields(CalibrationFit, fit, source, _FIT_TYPES)
        if fit and "n" not in fit:
            raise CheckpointError(f"{source}: fit statistics without 'n'")
        scale, bias = own.get("scale"), own.get("bias")
        return cls(scale=1.0 if scale is None else float(scale), bias=0.0 if bias is None else float(bias),
                   fit=CalibrationFit(**{k: tuple(v) if isinstance(v, list) else v for k, v in fit.items()})
                   if fit else None,
                   detector=own.get("detector"), detector_error=own.get("detector_error"),
                   thresholds=own.get("thresholds") or {}, adapted=own.get("adapted"))


def _plain(o: Any) -> Any:
    """`json.dumps` fallback: numpy scalars and arrays as numbers and lists, anything else as its string."""
    if isinstance(o, np.generic):
        return o.item()
    return o.tolist() if isinstance(o, np.ndarray) else str(o)


def _json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, default=_plain)


def _write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    """Write `doc` as JSON through a temporary file and a rename, so no reader sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(_json(doc))
    os.replace(tmp, path)


def is_model_dir(path: str | Path) -> bool:
    """True for a complete checkpoint directory: its config.json and meta.json (written last) are there."""
    p = Path(path)
    return (p / CONFIG_FILE).is_file() and (p / META_FILE).is_file()


def read_meta(path: str | Path) -> Meta:
    """The directory's meta.json; CheckpointError naming the file when it is missing, corrupt or unknown."""
    p = Path(path) / META_FILE
    return Meta.from_dict(_read_json(p), str(p))


def _read_config_doc(p: Path) -> tuple[RunConfig, list[str]]:
    """config.json's run config and categories; CheckpointError naming the file."""
    f = p / CONFIG_FILE
    doc = _read_json(f)
    if doc.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{f}: unsupported checkpoint format {doc.get('format')!r}")
    try:
        return RunConfig.from_dict(doc["run"], source=str(f)), list(doc.get("categories", []))
    except (KeyError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{f}: invalid config ({e})") from e


def read_run_config(path: str | Path) -> RunConfig:
    """The run config in the directory's config.json."""
    return _read_config_doc(Path(path))[0]


def read_calibration(path: str | Path) -> Calibration | None:
    """The directory's calibration.json, or None without one."""
    p = Path(path) / CALIBRATION_FILE
    return Calibration.from_dict(_read_json(p), str(p)) if p.is_file() else None


def write_calibration(path: str | Path, calibration: Calibration, meta: Meta | None = None) -> Meta:
    """Store `calibration` as the directory's calibration.json, then meta.json (`meta`, default the directory's
    own) with the new content version: the version hashes calibration.json, so a changed scorer is a new
    version. Both writes are atomic. Returns the meta written."""
    p = Path(path)
    meta = meta if meta is not None else read_meta(p)
    _write_json_atomic(p / CALIBRATION_FILE, calibration.to_dict())
    meta = replace(meta, version=content_version(p))
    _write_json_atomic(p / META_FILE, meta.to_dict())
    return meta


def ngram_order(path: str | Path) -> int | None:
    """n of the directory's n-gram index (ngrams.npy, see `reviewgen.core.memorization`), read from its first
    element without loading the rest; None without an index or with an empty one."""
    f = Path(path) / NGRAM_FILE
    if not f.is_file():
        return None
    try:
        arr = np.load(f, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: not a readable n-gram index ({e})") from e
    if arr.ndim != 1 or arr.dtype != np.uint64:
        raise CheckpointError(f"{f}: expected a 1-D uint64 array [n, *hashes], got {arr.dtype} {arr.shape}")
    return int(arr[0]) if arr.size else None


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


def content_version(path: Path) -> str:
    """A content hash over config and weights: the exported model's version id."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, *WEIGHT_FILES, BASE_FILE, CALIBRATION_FILE, "wordlm.npz"):
        f = path / name
        if f.is_file():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def save_checkpoint(path: str | Path, *, config: RunConfig, categories: list[str], tokenizer: ReviewTokenizer,
                    generator: torch.nn.Module, discriminator: torch.nn.Module,
                    meta: Meta | None = None, reference: torch.nn.Module | dict | None = None,
                    train_state: dict[str, Any] | None = None, calibration: Calibration | None = None,
                    ngram_file: str | Path | None = None, wordlm_file: str | Path | None = None) -> Path:
    """Write a checkpoint atomically (temp dir + rename) with `meta`'s record of how it was made; the format,
    content version, creation time and (with LoRA) the base reference are filled in here. Returns the path."""
    from safetensors.torch import save_file

    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / CONFIG_FILE).write_text(json.dumps(
        {"format": FORMAT_VERSION, "run": config.to_dict(), "categories": list(categories)}, indent=2))
    meta = meta if meta is not None else Meta()
    lora_g, lora_d = config.generator.lora.enabled, config.discriminator.lora.enabled
    if lora_g:  # the adapters, and a verified reference to the base they sit on
        meta = replace(meta, lora_base=write_base(tmp, generator, dict(meta.base) if meta.base else None))
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
        (tmp / CALIBRATION_FILE).write_text(_json(calibration.to_dict()))
    if ngram_file is not None and Path(ngram_file).is_file():
        shutil.copyfile(ngram_file, tmp / NGRAM_FILE)
    if wordlm_file is not None and Path(wordlm_file).is_file():
        shutil.copyfile(wordlm_file, tmp / "wordlm.npz")
    meta = replace(meta, format=FORMAT_VERSION, version=content_version(tmp),
                   created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (tmp / META_FILE).write_text(_json(meta.to_dict()))
    # Move files in one by one rather than renaming the directory: a run directory keeps its
    # sub-directories (mle/, state/) beside the model files. meta.json goes first out and last in,
    # so a crash in between leaves no directory that looks complete.
    final.mkdir(parents=True, exist_ok=True)
    (final / META_FILE).unlink(missing_ok=True)
    for name in ("reference.safetensors", BASE_FILE, "train_state.pt", CALIBRATION_FILE, NGRAM_FILE, "wordlm.npz"):
        if not (tmp / name).exists():
            (final / name).unlink(missing_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == META_FILE):
        os.replace(f, final / f.name)
    tmp.rmdir()
    return final


def _read_json(p: Path) -> dict:
    """A JSON object file; CheckpointError naming it when it is missing, corrupt or not an object."""
    if not p.is_file():
        raise CheckpointError(f"checkpoint file missing: {p}")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: corrupt JSON ({e})") from e
    if not isinstance(doc, dict):
        raise CheckpointError(f"{p}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _read_weights(p: Path, device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not p.is_file():
        raise CheckpointError(f"checkpoint file missing: {p}")
    try:
        return load_file(str(p), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{p}: corrupt weights ({e})") from e


def _build_models(p: Path, meta: Meta, config: RunConfig, tok: ReviewTokenizer,
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
    config, categories = _read_config_doc(p)
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
    return Checkpoint(path=p, config=config, categories=categories, tokenizer=tok,
                      generator=gen, discriminator=disc, meta=meta, calibration=calib,
                      reference_state=ref, train_state=state)


def export_model(src: str | Path, dst: str | Path) -> Path:
    """Copy the serving files of a checkpoint (no optimizer state; the scorer's reference network included)
    to a model directory named by nothing but its content: the generate and score jobs take this directory."""
    src, dst = Path(src), Path(dst)
    ck_meta = read_meta(src)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # lexical-*.npz: the models of calibration.json's "adapted" entry (`reviewgen calibrate`)
    for name in (CONFIG_FILE, *WEIGHT_FILES, BASE_FILE, "reference.safetensors", "tokenizer.json", CALIBRATION_FILE,
                 NGRAM_FILE, "wordlm.npz", *sorted(f.name for f in src.glob("lexical[-_]*.npz"))):
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)
    meta = replace(ck_meta, created_at=None, version=content_version(tmp), exported_from=str(src))
    (tmp / META_FILE).write_text(_json(meta.to_dict()))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst
