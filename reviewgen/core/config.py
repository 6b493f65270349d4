"""Typed configuration: one dataclass per concern, loaded from YAML and overridden by flags
(`reviewgen.core.config_io`).

A config file mirrors the dataclasses:

    generator: {n_layer: 4, n_head: 4, d_model: 256}
    discriminator: {n_layer: 2}
    train: {mle_steps: 600, batch_size: 32}
    tokenizer: {vocab_size: 4000}
    job: {num_workers: 2}          # optional: the train job's settings (TrainJobConfig)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

# the generic loading (reviewgen.core.config_io); the commands' settings modules import its names from here
from reviewgen.core.config_io import ConfigError, config_from_dict, read_yaml_mapping, with_overrides

JOB_SECTION = "job"  # the run YAML's optional section for the train job's settings


ARCH_CHOICES = {
    "arch": ("gpt2", "llama"),
    "norm": (None, "layernorm", "rmsnorm"),
    "mlp": (None, "gelu", "swiglu"),
    "pos": (None, "learned", "rope"),
    "gelu_approximate": ("none", "tanh"),
}

LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_arch(cfg) -> None:
    """ConfigError naming the architecture field of a Generator/DiscriminatorConfig that is invalid."""
    for key, allowed in ARCH_CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key}={getattr(cfg, key)!r} is not one of {[a for a in allowed if a]}")
    scaling = cfg.rope_scaling
    if scaling is not None and (not isinstance(scaling, dict) or set(scaling) != set(LLAMA3_ROPE_KEYS)):
        raise ConfigError(
            f"rope_scaling must be a mapping with exactly the keys {list(LLAMA3_ROPE_KEYS)}, got {scaling!r}"
        )
    kv = cfg.n_kv_head
    if kv is not None and (kv < 1 or cfg.n_head % kv):
        raise ConfigError(f"n_kv_head={kv} must divide n_head={cfg.n_head}")


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 4000
    min_frequency: int = 2
    prefix_len: int = 40  # condition tokens + category + title, left-padded to this length
    max_review_len: int = 96  # review tokens incl. <eos>, right-padded


LORA_TARGETS = ("qkv", "proj", "mlp_in", "mlp_out")  # fused q|k|v, attention output, MLP in (gate|up) and out
LORA_BASE_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021) on a trunk's projections; rank 0 = off (full fine-tuning). With
    adapters on, the base weights (embeddings, norms, every projection) are frozen and only the adapters
    (and D's heads) train; the generator, its reference and the discriminator then share one base."""

    rank: int = 0
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input
    targets: tuple[str, ...] = LORA_TARGETS  # which projections of every block get an adapter
    base_dtype: str = "float32"  # "bfloat16": the blocks' frozen matmul weights stored in bf16

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 0:
            raise ConfigError(f"lora.rank must be >= 0, got {self.rank}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or (self.rank and not self.targets):
            raise ConfigError(
                f"lora.targets must be a non-empty subset of {list(LORA_TARGETS)}, got {list(self.targets)}"
            )
        if self.base_dtype not in LORA_BASE_DTYPES:
            raise ConfigError(f"lora.base_dtype must be one of {list(LORA_BASE_DTYPES)}, got {self.base_dtype!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


@dataclass(frozen=True)
class ArchConfig:
    """Architecture family switches shared by the generator and the discriminator (one trunk class)."""

    # Architecture family (see reviewgen.core.models.Arch); None takes the family's default. The defaults
    # are today's GPT-2-shaped model, so older checkpoints load unchanged.
    arch: str = "gpt2"  # "gpt2": learned positions, LayerNorm, GELU | "llama": RoPE, RMSNorm, SwiGLU
    n_kv_head: int | None = None  # grouped-query attention: key/value heads (None = n_head)
    norm: str | None = None  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str | None = None  # "gelu" | "swiglu"
    intermediate_size: int | None = None  # MLP width; None = 4 * d_model (gelu), ~8/3 * d_model (swiglu)
    pos: str | None = None  # "learned" | "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama 3 frequency scaling: {factor, low_freq_factor, high_freq_factor,
    #                                   original_max_position_embeddings}, as in its config.json
    bias: bool | None = None  # biases of linear layers and LayerNorms (gpt2 yes, llama no)
    qkv_bias: bool | None = None  # q/k/v biases only (Qwen2 = llama + qkv_bias); None = bias
    tie_embeddings: bool = True  # output head shares the token embedding
    gelu_approximate: str = "none"  # "tanh" for GPT-2 checkpoints (their "gelu_new")
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # adapters on the blocks' projections (rank 0 = off)
    gradient_checkpointing: bool = False  # recompute each block's activations in the backward pass

    def __post_init__(self):
        check_arch(self)


@dataclass(frozen=True)
class GeneratorConfig(ArchConfig):
    vocab_size: int = 4000
    block_size: int = 136  # prefix_len + max_review_len
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    dropout: float = 0.1


@dataclass(frozen=True)
class DiscriminatorConfig(ArchConfig):
    vocab_size: int = 4000
    block_size: int = 136
    n_layer: int = 3
    n_head: int = 4
    d_model: int = 192
    dropout: float = 0.2  # stronger than G: D must not win by memorising
    n_ratings: int = 5
    n_categories: int = 32


@dataclass(frozen=True)
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
    # condition rewards at each review's end: log p(target rating / category) under D's heads frozen at the
    # end of D's warm-up, read from the review alone; a polarity-only target (Chinese) is rewarded by the
    # probability of its side, 1-2 or 4-5 stars (0 turns a term off; both 0 = realness only)
    rating_reward_weight: float = 0.5
    category_reward_weight: float = 0.5
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


# the fields that fix a trunk's weights: D can share G's frozen base only when they all agree
TRUNK_FIELDS = (
    "arch",
    "n_kv_head",
    "norm",
    "norm_eps",
    "mlp",
    "intermediate_size",
    "pos",
    "rope_theta",
    "rope_scaling",
    "bias",
    "qkv_bias",
    "gelu_approximate",
    "vocab_size",
    "block_size",
    "n_layer",
    "n_head",
    "d_model",
)


def check_shared_base(g: GeneratorConfig, d: DiscriminatorConfig) -> None:
    """ConfigError unless D's adapters can sit on G's frozen base: D's LoRA needs G's, and the same trunk."""
    if not d.lora.enabled:
        return
    if not g.lora.enabled:
        raise ConfigError("discriminator.lora.rank > 0 needs generator.lora.rank > 0 (D's adapters sit on G's base)")
    diff = [k for k in TRUNK_FIELDS if getattr(g, k) != getattr(d, k)]
    if diff:
        raise ConfigError(
            f"discriminator.lora: D shares G's base, so discriminator.{diff[0]}={getattr(d, diff[0])!r} "
            f"must equal generator.{diff[0]}={getattr(g, diff[0])!r}"
        )


@dataclass(frozen=True)
class RunConfig:
    """The whole configuration of a training run."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def finalize(self, vocab_size: int | None = None, n_categories: int | None = None) -> "RunConfig":
        """A copy with the values that must agree between sections propagated (vocab, block size,
        categories); validated."""
        block = self.tokenizer.prefix_len + self.tokenizer.max_review_len
        v = vocab_size or self.tokenizer.vocab_size
        disc = replace(self.discriminator, vocab_size=v, block_size=block)
        if n_categories is not None:
            disc = replace(disc, n_categories=n_categories)
        cfg = replace(self, generator=replace(self.generator, vocab_size=v, block_size=block), discriminator=disc)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid key."""
        for sec in (self.generator, self.discriminator):
            name = type(sec).__name__
            if sec.d_model % sec.n_head:
                raise ConfigError(f"{name}.d_model={sec.d_model} must be divisible by n_head={sec.n_head}")
            if sec.n_layer < 1:
                raise ConfigError(f"{name}.n_layer must be >= 1")
        check_shared_base(self.generator, self.discriminator)
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
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "RunConfig":
        """Build from nested dicts; unknown sections and keys are errors (typos must not pass silently)."""
        return config_from_dict(cls, d, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        """Load a run YAML file. Its optional `job:` section holds the train job's settings (read by the
        train job's own config); any other unknown section is an error."""
        data = read_yaml_mapping(path)
        data.pop(JOB_SECTION, None)
        return config_from_dict(cls, data, source=str(path))

    def override(self, dotted: Mapping[str, Any], source: str = "flag") -> "RunConfig":
        """A copy with `{"train.mle_steps": 10}`-style overrides applied (None values are skipped)."""
        return with_overrides(self, dotted, source)

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
