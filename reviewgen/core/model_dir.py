"""A model directory and its typed records. Nothing else opens its config.json, meta.json or calibration.json.

    config.json, generator.safetensors, discriminator.safetensors, [reference.safetensors],
    tokenizer.json, [train_state.pt], [calibration.json], [ngrams.npy], [wordlm.npz], meta.json

With LoRA adapters (generator.lora.rank > 0) the weight files hold the adapters (and D's heads) only, and
meta.json's "lora_base" names the frozen base, verified on load (see reviewgen.core.base_ref); the
reference network is that base, so there is no reference.safetensors.

meta.json is written last, so a directory without it is an interrupted write, not a checkpoint. It reads as
`Meta`, calibration.json as `Calibration`; both refuse a key they do not know, naming the file. The weights
are written and read by `reviewgen.core.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from reviewgen.core.base_ref import BASE_FILE
from reviewgen.core.config import ConfigError, RunConfig
from reviewgen.core.errors import ReviewgenError
from reviewgen.infra.storage import write_local_atomic

FORMAT_VERSION = 1
WEIGHT_FILES = ("generator.safetensors", "discriminator.safetensors")
META_FILE, CONFIG_FILE, CALIBRATION_FILE, NGRAM_FILE = "meta.json", "config.json", "calibration.json", "ngrams.npy"


class CheckpointError(ReviewgenError, ValueError):
    """A checkpoint directory is missing, incomplete, or corrupt; the message names the file."""


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
        d = _check_fields(
            cls,
            d,
            source,
            {
                "format": (int,),
                "version": (str,),
                "created_at": (str,),
                "data_hash": (str,),
                "role": (str,),
                "complete": (bool,),
                "phase": (str,),
                "step": (int,),
                "global_step": (int,),
                "metrics": (dict,),
                "rating_distribution": (list,),
                "base": (dict,),
                "lora_base": (dict,),
                "exported_from": (str,),
                "adapted_from": (dict,),
            },
        )
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
    "n": (int,),
    "temperatures": (list,),
    "settings": (list,),
    "ece_raw": _NUMBER,
    "ece": _NUMBER,
    "nonfinite_signals": (dict,),
    "rows_left_out": (int,),
    "source": (str,),
    "checkpoints": (list,),
}


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
            d.update(
                n=f.n,
                temperatures=list(f.temperatures),
                settings=list(f.settings),
                ece_raw=f.ece_raw,
                ece=f.ece,
                nonfinite_signals=dict(f.nonfinite_signals),
                rows_left_out=f.rows_left_out,
            )
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
        own = _check_fields(
            cls,
            own,
            source,
            {
                "scale": _NUMBER,
                "bias": _NUMBER,
                "detector": (dict,),
                "detector_error": (str,),
                "thresholds": (dict,),
                "adapted": (dict,),
            },
        )
        if "fit" in own:
            raise CheckpointError(f"{source}: unknown key(s) ['fit']")
        fit = {k: v for k, v in d.items() if k in _FIT_TYPES}
        _check_fields(CalibrationFit, fit, source, _FIT_TYPES)
        if fit and "n" not in fit:
            raise CheckpointError(f"{source}: fit statistics without 'n'")
        scale, bias = own.get("scale"), own.get("bias")
        return cls(
            scale=1.0 if scale is None else float(scale),
            bias=0.0 if bias is None else float(bias),
            fit=CalibrationFit(**{k: tuple(v) if isinstance(v, list) else v for k, v in fit.items()}) if fit else None,
            detector=own.get("detector"),
            detector_error=own.get("detector_error"),
            thresholds=own.get("thresholds") or {},
            adapted=own.get("adapted"),
        )


def _plain(o: Any) -> Any:
    """`json.dumps` fallback: numpy scalars and arrays as numbers and lists, anything else as its string."""
    if isinstance(o, np.generic):
        return o.item()
    return o.tolist() if isinstance(o, np.ndarray) else str(o)


def record_json(doc: Mapping[str, Any]) -> str:
    """The JSON text of a record (numpy values as plain numbers)."""
    return json.dumps(doc, indent=2, default=_plain)


def _write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    """Write `doc` as JSON so that no reader sees half a file (`reviewgen.infra.storage.write_local_atomic`)."""
    write_local_atomic(path, record_json(doc))


def is_model_dir(path: str | Path) -> bool:
    """True for a complete checkpoint directory: its config.json and meta.json (written last) are there."""
    p = Path(path)
    return (p / CONFIG_FILE).is_file() and (p / META_FILE).is_file()


def read_meta(path: str | Path) -> Meta:
    """The directory's meta.json; CheckpointError naming the file when it is missing, corrupt or unknown."""
    p = Path(path) / META_FILE
    return Meta.from_dict(_read_json(p), str(p))


def read_config(path: str | Path) -> tuple[RunConfig, list[str]]:
    """config.json's run config and categories; CheckpointError naming the file."""
    f = Path(path) / CONFIG_FILE
    doc = _read_json(f)
    if doc.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{f}: unsupported checkpoint format {doc.get('format')!r}")
    try:
        return RunConfig.from_dict(doc["run"], source=str(f)), list(doc.get("categories", []))
    except (KeyError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{f}: invalid config ({e})") from e


def read_run_config(path: str | Path) -> RunConfig:
    """The run config in the directory's config.json."""
    return read_config(path)[0]


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
