"""Hugging Face <-> reviewgen translation tables: config.json fields and weight names, both ways.

Plain data and tensor reshuffles only (no `transformers` import): hf_import reads a base model directory
with them, hf_export writes one. Supported model types:

    gpt2   GPT2LMHeadModel     arch gpt2: learned positions, LayerNorm, GELU, biases, Conv1D weights
    llama  LlamaForCausalLM    arch llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases
    qwen2  Qwen2ForCausalLM    arch llama with q/k/v biases

Weights map by name. Our attention projects q, k and v with one fused matrix laid out [q | k | v] and
the SwiGLU gate and up projections with one laid out [gate | up]: a rule with several HF names
concatenates them along the output dimension (and splits them back on export). GPT-2's Conv1D weights
are stored [in, out], the transpose of nn.Linear's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from reviewgen.core.config import LLAMA3_ROPE_KEYS, GeneratorConfig
from reviewgen.core.errors import ReviewgenError
from reviewgen.core.models import Arch

MODEL_TYPES = ("gpt2", "llama", "qwen2")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
GPT2_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
# tensors some checkpoints carry that are derived from the config, not weights
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


class HFFormatError(ReviewgenError, ValueError):
    """A Hugging Face config or weight set that reviewgen cannot use; the message names the field or tensor."""


@dataclass(frozen=True)
class Rule:
    """Our tensor `ours` is the HF tensors `theirs` concatenated along dim 0 (each transposed first when
    `transpose`, as GPT-2 Conv1D weights are)."""

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False


def _field(cfg: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is ...:
        raise HFFormatError(f"{where}: missing field {key!r}")
    return default


def _first(value: Any) -> int | None:
    # eos_token_id may be a list (e.g. Llama 3 instruct): the first one ends a document
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


@dataclass(frozen=True)
class BaseConfig:
    """What a base model's config.json says, in our terms."""

    model_type: str
    fields: dict[str, Any]  # GeneratorConfig/DiscriminatorConfig fields: shape and architecture
    vocab_size: int  # rows of the base embedding
    max_positions: int
    bos_id: int | None
    eos_id: int | None


def read_config(cfg: Mapping[str, Any], where: str) -> BaseConfig:
    """Translate a config.json mapping; HFFormatError naming `where` and the field when unsupported."""
    mt = cfg.get("model_type")
    if mt not in MODEL_TYPES:
        raise HFFormatError(f"{where}: model_type {mt!r} is not supported; supported: {list(MODEL_TYPES)}")
    fields, d, max_pos = _gpt2_fields(cfg, where) if mt == "gpt2" else _llama_fields(cfg, where, mt)
    if d % fields["n_head"]:
        raise HFFormatError(f"{where}: hidden size {d} is not divisible by the number of heads {fields['n_head']}")
    try:
        GeneratorConfig(**fields)  # validates the architecture fields
    except ValueError as e:  # e.g. num_key_value_heads not dividing num_attention_heads
        raise HFFormatError(f"{where}: {e}") from e
    return BaseConfig(
        model_type=mt,
        fields=fields,
        vocab_size=int(_field(cfg, "vocab_size", where)),
        max_positions=max_pos,
        bos_id=_first(cfg.get("bos_token_id")),
        eos_id=_first(cfg.get("eos_token_id")),
    )


def _gpt2_fields(cfg: Mapping[str, Any], where: str) -> tuple[dict[str, Any], int, int]:
    """A GPT-2 config.json as (generator fields, hidden size, max positions); HFFormatError for the
    activations and attention options our GPT-2 block does not compute."""
    act = _field(cfg, "activation_function", where, "gelu_new")
    if act not in GPT2_GELU:
        raise HFFormatError(f"{where}: activation_function {act!r} is not supported; supported: {list(GPT2_GELU)}")
    for key, ok in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if cfg.get(key, ok) != ok:
            raise HFFormatError(f"{where}: {key}={cfg[key]!r} is not supported (only {ok})")
    d = int(_field(cfg, "n_embd", where))
    fields = dict(
        arch="gpt2",
        n_layer=int(_field(cfg, "n_layer", where)),
        n_head=int(_field(cfg, "n_head", where)),
        d_model=d,
        n_kv_head=None,
        norm="layernorm",
        norm_eps=float(_field(cfg, "layer_norm_epsilon", where, 1e-5)),
        mlp="gelu",
        intermediate_size=int(_field(cfg, "n_inner", where, 4 * d)),
        pos="learned",
        bias=True,
        qkv_bias=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        gelu_approximate=GPT2_GELU[act],
    )
    return fields, d, int(_field(cfg, "n_positions", where))


def _llama_fields(cfg: Mapping[str, Any], where: str, mt: str) -> tuple[dict[str, Any], int, int]:
    """A Llama or Qwen2 config.json as (generator fields, hidden size, max positions); HFFormatError for the
    activations, biases, head sizes, rope scalings and sliding windows our Llama block does not compute."""
    act = _field(cfg, "hidden_act", where, "silu")
    if act != "silu":
        raise HFFormatError(f"{where}: hidden_act {act!r} is not supported (only 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise HFFormatError(f"{where}: {key}=true is not supported")
    d, heads = int(_field(cfg, "hidden_size", where)), int(_field(cfg, "num_attention_heads", where))
    if cfg.get("head_dim") not in (None, d // heads):
        raise HFFormatError(
            f"{where}: head_dim={cfg['head_dim']} is not supported (only hidden_size / num_attention_heads)"
        )
    # transformers >= 5 nests the rotary settings in rope_parameters; older files have rope_theta and rope_scaling
    rope = dict(cfg.get("rope_scaling") or {}, **(cfg.get("rope_parameters") or {}))
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ("default", "llama3"):
        raise HFFormatError(f"{where}: rope scaling {rope_type!r} is not supported (only default and llama3)")
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in rope]
    if rope_type == "llama3" and missing:
        raise HFFormatError(f"{where}: llama3 rope scaling lacks {missing}")
    scaling = {k: rope[k] for k in LLAMA3_ROPE_KEYS} if rope_type == "llama3" else None
    if cfg.get("use_sliding_window"):
        raise HFFormatError(f"{where}: use_sliding_window=true is not supported")
    fields = dict(
        arch="llama",
        n_layer=int(_field(cfg, "num_hidden_layers", where)),
        n_head=heads,
        d_model=d,
        n_kv_head=int(_field(cfg, "num_key_value_heads", where, heads)),
        norm="rmsnorm",
        norm_eps=float(_field(cfg, "rms_norm_eps", where, 1e-6)),
        mlp="swiglu",
        intermediate_size=int(_field(cfg, "intermediate_size", where)),
        pos="rope",
        rope_theta=float(rope.get("rope_theta") or _field(cfg, "rope_theta", where, 10000.0)),
        rope_scaling=scaling,
        bias=False,
        qkv_bias=mt == "qwen2",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        gelu_approximate="none",
    )
    return fields, d, int(_field(cfg, "max_position_embeddings", where))


def model_type_of(a: Arch, where: str) -> str:
    """The HF model_type that computes exactly what architecture `a` computes; HFFormatError otherwise."""
    gpt2 = dict(norm="layernorm", mlp="gelu", pos="learned", bias=True, qkv_bias=True)
    llama = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)
    if all(getattr(a, k) == v for k, v in gpt2.items()) and a.n_kv_head == a.n_head:
        return "gpt2"
    if all(getattr(a, k) == v for k, v in llama.items()):
        return "qwen2" if a.qkv_bias else "llama"
    raise HFFormatError(f"{where}: this architecture ({a}) matches no Hugging Face family of {list(MODEL_TYPES)}")


def write_config(
    model_type: str,
    a: Arch,
    *,
    n_layer: int,
    d_model: int,
    vocab_size: int,
    block_size: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> dict[str, Any]:
    """config.json for a model of architecture `a` (the inverse of read_config)."""
    common = dict(
        architectures=[ARCHITECTURES[model_type]],
        model_type=model_type,
        vocab_size=vocab_size,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=a.tie_embeddings,
        dtype="float32",
        use_cache=True,
    )
    if model_type == "gpt2":
        act = {"tanh": "gelu_new", "none": "gelu"}[a.gelu_approximate]
        return dict(
            common,
            n_layer=n_layer,
            n_head=a.n_head,
            n_embd=d_model,
            n_inner=a.intermediate_size,
            n_positions=block_size,
            activation_function=act,
            layer_norm_epsilon=a.norm_eps,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    out = dict(
        common,
        num_hidden_layers=n_layer,
        num_attention_heads=a.n_head,
        num_key_value_heads=a.n_kv_head,
        hidden_size=d_model,
        head_dim=a.head_dim,
        intermediate_size=a.intermediate_size,
        max_position_embeddings=block_size,
        rms_norm_eps=a.norm_eps,
        hidden_act="silu",
        attention_dropout=0.0,
        **_rope_config(a),
    )
    if model_type == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    else:
        out.update(use_sliding_window=False, sliding_window=None)
    return out


def _rope_config(a: Arch) -> dict[str, Any]:
    # both spellings: transformers >= 5 reads rope_parameters, older readers (e.g. vLLM's) rope_theta/rope_scaling
    scaling = dict(zip(LLAMA3_ROPE_KEYS, a.rope_scaling), rope_type="llama3") if a.rope_scaling else None
    scaling = scaling and dict(
        scaling, original_max_position_embeddings=int(scaling["original_max_position_embeddings"])
    )
    return {
        "rope_theta": a.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": dict(scaling or {"rope_type": "default"}, rope_theta=a.rope_theta),
    }


def weight_rules(model_type: str, n_layer: int, tied: bool) -> list[Rule]:
    """Our parameter name <- HF tensor names, for every weight of a Generator's trunk and head."""
    rules: list[Rule] = []
    if model_type == "gpt2":
        rules += [Rule("tok_emb.weight", ("wte.weight",)), Rule("pos_emb.weight", ("wpe.weight",))]
        for i in range(n_layer):
            h = f"h.{i}."
            for ours, theirs, conv in (
                ("ln1", "ln_1", False),
                ("attn.qkv", "attn.c_attn", True),
                ("attn.proj", "attn.c_proj", True),
                ("ln2", "ln_2", False),
                ("mlp.0", "mlp.c_fc", True),
                ("mlp.2", "mlp.c_proj", True),
            ):
                rules.append(Rule(f"blocks.{i}.{ours}.weight", (h + theirs + ".weight",), conv))
                rules.append(Rule(f"blocks.{i}.{ours}.bias", (h + theirs + ".bias",)))
        rules += [Rule("ln_f.weight", ("ln_f.weight",)), Rule("ln_f.bias", ("ln_f.bias",))]
    else:
        rules.append(Rule("tok_emb.weight", ("model.embed_tokens.weight",)))
        for i in range(n_layer):
            h = f"model.layers.{i}."
            qkv = tuple(f"{h}self_attn.{x}_proj" for x in "qkv")
            rules += [
                Rule(f"blocks.{i}.ln1.weight", (h + "input_layernorm.weight",)),
                Rule(f"blocks.{i}.attn.qkv.weight", tuple(n + ".weight" for n in qkv)),
                Rule(f"blocks.{i}.attn.proj.weight", (h + "self_attn.o_proj.weight",)),
                Rule(f"blocks.{i}.ln2.weight", (h + "post_attention_layernorm.weight",)),
                Rule(f"blocks.{i}.mlp.gate_up.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight")),
                Rule(f"blocks.{i}.mlp.down.weight", (h + "mlp.down_proj.weight",)),
            ]
            if model_type == "qwen2":
                rules.append(Rule(f"blocks.{i}.attn.qkv.bias", tuple(n + ".bias" for n in qkv)))
        rules.append(Rule("ln_f.weight", ("model.norm.weight",)))
    if not tied:
        rules.append(Rule("lm_head.weight", ("lm_head.weight",)))
    return rules


def hf_key(name: str, model_type: str) -> str:
    """A stored HF tensor name in the form weight_rules uses: GPT-2 files are saved both with and without
    the `transformer.` prefix of GPT2LMHeadModel."""
    return name.removeprefix("transformer.") if model_type == "gpt2" else name


def from_hf(rules: list[Rule], get) -> dict[str, torch.Tensor]:
    """Our state dict from HF tensors; `get(name)` returns one HF tensor (and raises when it is missing)."""
    out = {}
    for r in rules:
        parts = [get(n) for n in r.theirs]
        parts = [p.t() if r.transpose else p for p in parts]
        out[r.ours] = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)).contiguous()
    return out


def to_hf(
    rules: list[Rule], state: Mapping[str, torch.Tensor], sizes: Mapping[str, list[int]], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """HF tensors from our state dict; `sizes[hf_name]` gives the output-dimension share of each piece of a
    fused tensor (q, k, v and gate, up). `prefix` goes before the trunk's names (GPT-2's `transformer.`)."""
    out = {}
    for r in rules:
        t = state[r.ours]
        parts = t.split([sizes[n] for n in r.theirs], dim=0) if len(r.theirs) > 1 else (t,)
        for name, p in zip(r.theirs, parts):
            out[name if name == "lm_head.weight" else prefix + name] = (p.t() if r.transpose else p).contiguous()
    return out


def fused_sizes(a: Arch, n_layer: int) -> dict[str, int]:
    """Output rows of each piece of our fused q|k|v and gate|up tensors, by HF name."""
    q, kv, w = a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.intermediate_size
    out = {}
    for i in range(n_layer):
        h = f"model.layers.{i}."
        for suffix in (".weight", ".bias"):
            out.update(
                {
                    h + "self_attn.q_proj" + suffix: q,
                    h + "self_attn.k_proj" + suffix: kv,
                    h + "self_attn.v_proj" + suffix: kv,
                }
            )
        out.update({h + "mlp.gate_proj.weight": w, h + "mlp.up_proj.weight": w})
    return out
