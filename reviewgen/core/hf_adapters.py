"""Export a LoRA generator's adapters as a PEFT-style adapter directory (what `peft.PeftModel.from_pretrained`
and vLLM's LoRA loading read), with no `peft` import:

    adapter_model.safetensors   lora_A/lora_B per Hugging Face module, float32
    adapter_config.json         peft_type LORA, r, lora_alpha, target_modules (HF names), base model
    tokenizer.json, tokenizer_config.json
    [base/]                     with `with_base`: the base as a Hugging Face model directory (reviewgen's
                                vocabulary rows included), the model the adapters load onto

Our fused projections are split by HF module: q|k|v into q_proj/k_proj/v_proj and gate|up into
gate_proj/up_proj, each with the fused adapter's A and its own rows of B (the same function). GPT-2's
c_attn is fused in Hugging Face too, and its Conv1D layers are marked fan_in_fan_out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.hf import HFFormatError, fused_sizes, model_type_of, weight_rules
from reviewgen.core.hf_export import _tokenizer_config, _write_json, export_hf
from reviewgen.core.lora import lora_layers
from reviewgen.infra.storage import staged_dir

PEFT_PREFIX = "base_model.model."


def adapter_tensors(G, model_type: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """PEFT tensors of generator `G`'s adapters, and the HF module names they target (sorted leaves)."""
    a, n_layer = G.arch, G.cfg.n_layer
    rules = {r.ours: r for r in weight_rules(model_type, n_layer, a.tie_embeddings)}
    sizes = fused_sizes(a, n_layer)
    prefix = PEFT_PREFIX + ("transformer." if model_type == "gpt2" else "")
    out: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for name, m in lora_layers(G):
        rule = rules[f"{name}.weight"]
        A, B = m.lora_A.detach().cpu().float(), m.lora_B.detach().cpu().float()
        pieces = B.split([sizes[n] for n in rule.theirs], dim=0) if len(rule.theirs) > 1 else (B,)
        for hf_name, b in zip(rule.theirs, pieces):
            module = hf_name.removesuffix(".weight")
            # one copy per module: safetensors stores no shared tensors
            out[f"{prefix}{module}.lora_A.weight"] = A.clone()
            out[f"{prefix}{module}.lora_B.weight"] = b.contiguous()
            targets.add(module.rsplit(".", 1)[-1])
    return out, sorted(targets)


def adapter_config(lora, targets: list[str], model_type: str, base: str) -> dict[str, Any]:
    """adapter_config.json for a LoRA of config `lora` on HF modules `targets`."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": model_type == "gpt2",
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
    }


def export_adapters(model_dir: str | Path, out_dir: str | Path, *, with_base: bool = False) -> Path:
    """Write the adapters of LoRA model directory `model_dir` as a PEFT adapter directory `out_dir`
    (replaced; written to a temp dir and renamed). HFFormatError when the generator has no adapters or
    matches no Hugging Face family."""
    from safetensors.torch import save_file

    src, dst = Path(model_dir), Path(out_dir)
    ck = load_checkpoint(src)
    G, tok = ck.generator, ck.tokenizer
    if not ck.config.generator.lora.enabled:
        raise HFFormatError(
            f"{src / 'config.json'}: the generator has no LoRA adapters (generator.lora.rank is 0); "
            "export it without --adapters"
        )
    model_type = model_type_of(G.arch, f"{src / 'config.json'}: generator")
    tensors, targets = adapter_tensors(G, model_type)
    base = ck.meta.lora_base or {}
    base_name = (
        str(dst.resolve() / "base") if with_base else str(base.get("path", "")) if base.get("kind") == "hf" else ""
    )
    with staged_dir(dst) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = adapter_config(ck.config.generator.lora, targets, model_type, base_name)
        _write_json(tmp / "adapter_config.json", config)
        tok.save(tmp / "tokenizer.json")
        _write_json(tmp / "tokenizer_config.json", _tokenizer_config(tok.prefix_len + tok.max_review_len))
        if with_base:
            export_hf(src, tmp / "base", merge=False)
    return dst
