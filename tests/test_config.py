"""The one config mechanism: typed dataclasses from YAML or dicts, unknown keys rejected, flag overrides."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from reviewgen.core.config_io import ConfigError, config_from_dict, config_from_yaml, parse_set_options, with_overrides


@dataclass(frozen=True)
class Inner:
    steps: int = 3
    lr: float = 0.1
    on: bool = False


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_nested_values_are_coerced_and_typos_named():
    cfg = config_from_dict(Outer, {"name": "y", "inner": {"steps": "7", "lr": 1, "on": "true"}})
    assert cfg == Outer("y", Inner(7, 1.0, True))
    with pytest.raises(ConfigError, match=r"src\.inner: unknown key\(s\) \['stepz'\]"):
        config_from_dict(Outer, {"inner": {"stepz": 1}}, source="src")
    with pytest.raises(ConfigError, match="expected an integer"):
        config_from_dict(Outer, {"inner": {"steps": 1.5}})


def test_overrides_copy_frozen_configs(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("job:\n  inner: {steps: 5}\n")
    cfg = config_from_yaml(Outer, p, section="job")
    new = with_overrides(cfg, {"inner.lr": 0.5, "name": None, **parse_set_options(["inner.on=yes"])})
    assert (cfg.inner.lr, new.inner.lr, new.inner.steps, new.inner.on) == (0.1, 0.5, 5, True)
    with pytest.raises(FrozenInstanceError):
        new.name = "z"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown config key 'inner.nope'"):
        with_overrides(cfg, {"inner.nope": 1})
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_set_options(["inner.on"])
