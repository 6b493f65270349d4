"""Loading a typed config: a frozen dataclass (sections may be nested dataclasses) from a mapping or a YAML
file, then `--set KEY=VALUE` items, then dotted per-flag overrides. Unknown keys are errors naming the key and
where it came from, and scalar values are coerced to the type of the field's default. Every command's
settings load this way (`load_config`); the run's sections are in `reviewgen.core.config`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from reviewgen.core.errors import ReviewgenError

T = TypeVar("T")


class ConfigError(ReviewgenError, ValueError):
    """A configuration value or file is invalid; the message names the key or file."""


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Coerce a YAML/flag value to the type of the field's default (int, float, bool, str)."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from e
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from e
    return value


def config_from_dict(cls: type[T], values: Mapping[str, Any] | None, source: str = "<dict>") -> T:
    """Build dataclass `cls` (sections may be nested dataclasses) from a mapping.

    Unknown keys are errors naming `source` and the key, so a typo never passes silently; scalar values
    are coerced to the type of the field's default."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    defaults = cls()
    out = {}
    for k, v in values.items():
        default = getattr(defaults, k)
        where = f"{source}.{k}"
        out[k] = (
            config_from_dict(type(default), v, where)
            if dataclasses.is_dataclass(default)
            else _coerce(v, default, where)
        )
    try:
        return cls(**out)
    except (TypeError, ValueError) as e:  # a section's own checks: name the section
        raise ConfigError(f"{source}: {e}") from e


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; ConfigError naming the file when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def config_from_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load dataclass `cls` from a YAML file (optionally from one top-level `section` of it)."""
    data = read_yaml_mapping(path)
    if section is not None:
        data = data.get(section) or {}
    return config_from_dict(cls, data, source=str(path) + (f":{section}" if section else ""))


def with_overrides(cfg: T, dotted: Mapping[str, Any], source: str = "flag", _prefix: str = "") -> T:
    """A copy of `cfg` with `{"train.mle_steps": 10}`-style overrides applied (None values are skipped).

    Works on frozen dataclasses: nested sections are rebuilt with `dataclasses.replace`."""
    for key, value in dotted.items():
        if value is None:
            continue
        head, _, rest = key.partition(".")
        if not dataclasses.is_dataclass(cfg) or head not in {f.name for f in dataclasses.fields(cfg)}:
            raise ConfigError(f"{source}: unknown config key {_prefix + key!r}")
        current = getattr(cfg, head)
        if rest:
            new = with_overrides(current, {rest: value}, source, f"{_prefix}{head}.")
        elif dataclasses.is_dataclass(current):
            raise ConfigError(f"{source}: {key!r} is a section; set one of its keys, e.g. {key}.<name>")
        else:
            new = _coerce(value, current, f"{source} {key}")
        cfg = dataclasses.replace(cfg, **{head: new})
    return cfg


def parse_set_options(items: Sequence[str]) -> dict[str, Any]:
    """`["train.mle_steps=100", ...]` (repeatable --set flags) to a dotted override mapping; values are YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.mle_steps=100")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
    return out


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    sets: Sequence[str] = (),
    source: str = "flag",
) -> T:
    """A command's settings `cls` in the order every command reads them: the YAML file (or the defaults;
    unknown keys are errors naming the key), then `--set KEY=VALUE` items, then the per-field flags' dotted
    `overrides` (None: the flag was not given). A section's own validation error becomes a ConfigError."""
    cfg = config_from_yaml(cls, path) if path else cls()
    try:
        cfg = with_overrides(cfg, parse_set_options(sets), "--set")
        return with_overrides(cfg, dict(overrides or {}), source)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from e
