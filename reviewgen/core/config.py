"""Typed configuration: one dataclass per concern, loaded from YAML and overridden by flags.

A config file mirrors the dataclasses:

    generator: {n_layer: 4, n_head: 4, d_model: 256}
    discriminator: {n_layer: 2}
    train: {mle_steps: 600, batch_size: 32}
    tokenizer: {vocab_size: 4000}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key or file."""


@dataclass
class TokenizerConfig:
    vocab_size: int = 4000
    min_frequency: int = 2
    prefix_len: int = 40  # condition tokens + category + title, left-padded to this length
    max_review_len: int = 96  # review tokens incl. <eos>, right-padded


@dataclass
class GeneratorConfig:
    vocab_size: int = 4000
    block_size: int = 136  # prefix_len + max_review_len
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    dropout: float = 0.1


@dataclass
class DiscriminatorConfig:
    vocab_size: int = 4000
    block_size: int = 136
    n_layer: int = 3
    n_head: int = 4
    d_model: int = 192
    dropout: float = 0.2  # stronger than G: D must not win by memorising
    n_ratings: int = 5
    n_categories: int = 32


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 32  # per worker; global batch = batch_size * num_workers
    mle_steps: int = 600
    disc_warmup_steps: int = 100
    adv_steps: int = 200
    lr_g: float = 1e-3
    lr_g_adv: float = 5e-5
    lr_d: float = 3e-4
    weight_decay: float = 0.01
    d_weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    # adversarial phase
    group_size: int = 4  # samples per prompt; the group mean is the policy-gradient baseline
    sample_temperature: float = 1.0
    sample_top_k: int = 0
    sample_top_p: float = 1.0
    gamma: float = 0.95  # discount for per-token return-to-go
    seq_reward_weight: float = 0.5  # mixes the sequence-level D score into every token's reward
    kl_coef: float = 0.05  # KL anchor to the frozen MLE generator
    mle_coef: float = 0.5  # MLE anchor on real reviews, against collapse
    d_steps_per_g_step: int = 1
    replay_size: int = 2048  # old fake samples replayed to D
    replay_frac: float = 0.25
    d_init_from_generator: bool = True  # D starts from the MLE generator's weights when their shapes match
    aux_loss_weight: float = 0.5  # D's rating and category heads
    token_loss_weight: float = 0.5
    # bookkeeping
    eval_every: int = 100
    checkpoint_every: int = 200
    val_batches: int = 8
    log_every: int = 20
    ngram_n: int = 8  # memorisation index window


@dataclass
class RunConfig:
    """The whole configuration of a training run."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def finalize(self, vocab_size: int | None = None, n_categories: int | None = None) -> "RunConfig":
        """Propagate values that must agree between sections (vocab, block size, categories)."""
        block = self.tokenizer.prefix_len + self.tokenizer.max_review_len
        v = vocab_size or self.tokenizer.vocab_size
        for m in (self.generator, self.discriminator):
            m.vocab_size = v
            m.block_size = block
        if n_categories is not None:
            self.discriminator.n_categories = n_categories
        self.validate()
        return self

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid key."""
        for sec in (self.generator, self.discriminator):
            name = type(sec).__name__
            if sec.d_model % sec.n_head:
                raise ConfigError(f"{name}.d_model={sec.d_model} must be divisible by n_head={sec.n_head}")
            if sec.n_layer < 1:
                raise ConfigError(f"{name}.n_layer must be >= 1")
        t = self.train
        for key in ("batch_size", "group_size"):
            if getattr(t, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
        for key in ("mle_steps", "disc_warmup_steps", "adv_steps"):
            if getattr(t, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0")
        if self.tokenizer.prefix_len < 8 or self.tokenizer.max_review_len < 4:
            raise ConfigError("tokenizer.prefix_len must be >= 8 and max_review_len >= 4")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "RunConfig":
        """Build from nested dicts; unknown keys are errors (typos must not pass silently)."""
        sections = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected {sorted(sections)}")
        kwargs = {}
        for name, f in sections.items():
            sec_cls = f.default_factory  # type: ignore[misc]
            kwargs[name] = _build_section(sec_cls, d.get(name) or {}, f"{source}:{name}")
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        """Load a YAML config file."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        return cls.from_dict(data, source=str(p))

    def override(self, dotted: dict[str, Any]) -> "RunConfig":
        """Apply `{"train.mle_steps": 10}`-style overrides (from CLI flags)."""
        for key, value in dotted.items():
            if value is None:
                continue
            sec_name, _, attr = key.partition(".")
            sec = getattr(self, sec_name, None)
            if sec is None or not hasattr(sec, attr):
                raise ConfigError(f"unknown config key {key!r}")
            setattr(sec, attr, value)
        return self

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _build_section(sec_cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(sec_cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    out = {}
    for k, v in values.items():
        default = getattr(sec_cls(), k)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            out[k] = v
            continue
        try:
            out[k] = type(default)(v) if not (isinstance(default, int) and isinstance(v, float) and not v.is_integer()) else v
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}.{k}: expected {type(default).__name__}, got {v!r}") from e
        if isinstance(default, int) and isinstance(out[k], float):
            raise ConfigError(f"{where}.{k}: expected an integer, got {v!r}")
    return sec_cls(**out)
