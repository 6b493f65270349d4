"""Export a reviewgen generator as a Hugging Face model directory that transformers, vLLM, ray.data.llm and
TGI load (no `transformers` import needed to write it):

    config.json               model_type gpt2 | llama | qwen2, sizes, vocabulary incl. the added tokens
    generation_config.json    bos/eos/pad ids, max_new_tokens = max_review_len
    model.safetensors         the generator's weights in Hugging Face names (float32)
    tokenizer.json            the run's tokenizer, reviewgen's condition tokens as added special tokens
    tokenizer_config.json     PreTrainedTokenizerFast with <bos>/<eos>/<pad>/<unk> and the other specials
    README.md                 model card: the prompt layout, with an example, and how to watermark generations

Only the generator is exported (the discriminator and calibration stay in the reviewgen model directory).
A generator trained with LoRA adapters is exported with its adapters merged into full weights (or, with
`merge=False`, as its base alone: the base its adapters load onto; see reviewgen.core.hf_adapters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reviewgen.core.checkpoint import Checkpoint, load_checkpoint
from reviewgen.core.hf import fused_sizes, model_type_of, to_hf, weight_rules, write_config
from reviewgen.core.lora import is_adapter_key, merged_state_dict
from reviewgen.core.tokenizer import (
    BOS,
    CAT,
    EOS,
    LANGS,
    MAX_CATEGORY_TOKENS,
    PAD,
    SENTIMENTS,
    SEP,
    SPECIAL_TOKENS,
    TITLE,
    UNK,
    Condition,
    ReviewTokenizer,
)
from reviewgen.infra.storage import staged_dir

EXAMPLE = Condition(title="Fire HD 8 Tablet, 32 GB", category="Tablets", rating=5, language="en")


def export_hf(model_dir: str | Path, out_dir: str | Path, *, merge: bool = True) -> Path:
    """Write the generator of reviewgen model (or checkpoint) directory `model_dir` as a Hugging Face model
    directory `out_dir` (replaced if it exists; written to a temp dir and renamed). Returns `out_dir`.

    Raises CheckpointError for an unreadable `model_dir`, and HFFormatError when the generator's
    architecture matches no Hugging Face family (e.g. arch llama with LayerNorm)."""
    from safetensors.torch import save_file

    src, dst = Path(model_dir), Path(out_dir)
    ck = load_checkpoint(src)
    G, gc, tok = ck.generator, ck.config.generator, ck.tokenizer
    a = G.arch
    model_type = model_type_of(a, f"{src / 'config.json'}: generator")
    config = write_config(
        model_type,
        a,
        n_layer=gc.n_layer,
        d_model=gc.d_model,
        vocab_size=gc.vocab_size,
        block_size=gc.block_size,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
    )
    full = merged_state_dict(G) if merge else {k: v for k, v in G.state_dict().items() if not is_adapter_key(k)}
    state = {k: v.detach().to("cpu").float() for k, v in full.items()}
    weights = to_hf(
        weight_rules(model_type, gc.n_layer, a.tie_embeddings),
        state,
        fused_sizes(a, gc.n_layer),
        prefix="transformer." if model_type == "gpt2" else "",
    )

    with staged_dir(dst) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", config)
        _write_json(
            tmp / "generation_config.json",
            {
                "bos_token_id": tok.bos_id,
                "eos_token_id": tok.eos_id,
                "pad_token_id": tok.pad_id,
                "max_new_tokens": tok.max_review_len,
            },
        )
        tok.save(tmp / "tokenizer.json")
        _write_json(tmp / "tokenizer_config.json", _tokenizer_config(tok.prefix_len + tok.max_review_len))
        (tmp / "README.md").write_text(model_card(ck, model_type))
    return dst


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def _tokenizer_config(max_len: int) -> dict[str, Any]:
    extra = [t for t in SPECIAL_TOKENS if t not in (PAD, BOS, EOS, UNK)]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "model_max_length": max_len,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        # transformers >= 5 reads extra_special_tokens, older versions additional_special_tokens
        "extra_special_tokens": extra,
        "additional_special_tokens": extra,
    }


def model_card(ck: Checkpoint, model_type: str) -> str:
    """README.md for the exported directory: what the model is and how to build its prompt."""
    tok = ck.tokenizer
    ids = tok.encode_prefixes([EXAMPLE])[0].tolist()
    n_pad = sum(1 for i in ids if i == tok.pad_id)
    prompt = tok.tok.decode(ids, skip_special_tokens=False).replace(PAD, "").strip()
    return (
        _card_layout(ck, model_type, ids, n_pad, prompt)
        + _card_use(tok, n_pad, prompt)
        + _card_watermark(tok.max_review_len, tok.eos_id)
    )


def _card_layout(ck: Checkpoint, model_type: str, ids: list[int], n_pad: int, prompt: str) -> str:
    """The card's header and prompt layout: where the model comes from and the one token layout it was
    trained on, with the example prompt `prompt` (`n_pad` pads, then the text; token ids `ids`)."""
    tok = ck.tokenizer
    P, R = tok.prefix_len, tok.max_review_len
    base = ck.meta.base or {}
    origin = (
        f"fine-tuned from `{base.get('path')}` ({base.get('model_type')}, weights sha256 "
        f"`{str(base.get('sha256', ''))[:16]}…`)"
        if base
        else "trained from scratch"
    )
    ratings = " ".join(f"`<rating_{k}>`" for k in range(1, 6))
    sents = " ".join(f"`<sent_{s}>`" for s in SENTIMENTS)
    langs = " ".join(f"`<lang_{x}>`" for x in LANGS)
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [reviewgen, review-generation]
---

# reviewgen review generator

A conditional product-review generator exported by reviewgen (model version `{ck.version}`), {origin}.
Architecture: Hugging Face `{model_type}`, {ck.config.generator.n_layer} layers, width {ck.config.generator.d_model},
vocabulary {ck.config.generator.vocab_size}. It was trained on one fixed token layout: use it as below.

## Prompt layout

Every prompt is exactly **{P} tokens**, left-padded with `{PAD}`:

    {PAD}… {BOS} <lang> <condition> {CAT} category… {TITLE} title… {SEP}

- `<lang>`: {langs};
- `<condition>`: a target rating {ratings} for English; for Chinese (whose corpus has polarity only) a
  sentiment {sents}, a target rating mapping to positive (4-5), neutral (3) or negative (1-2);
- the category is cut to {MAX_CATEGORY_TOKENS} tokens and the title to the room left, never the condition tokens.

The model then writes the review (at most {R} tokens) and ends it with `{EOS}`.

Example: title "{EXAMPLE.title}", category "{EXAMPLE.category}", rating {EXAMPLE.rating} gives {n_pad} pads, then

    {prompt}

that is, `prompt = {PAD!r} * {n_pad} + {prompt!r}`, token ids `{ids}`.

"""


def _card_use(tok: ReviewTokenizer, n_pad: int, prompt: str) -> str:
    """The card's usage section: the example prompt through transformers, vLLM and `ray.data.llm`."""
    P, R = tok.prefix_len, tok.max_review_len
    return f"""## Use

Encode the prompt text with `add_special_tokens=False` (or send the token ids above), and attend to every
prompt token, pads included: the model saw its pads during training, and the review starts at position {P}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
import torch

tok = AutoTokenizer.from_pretrained(DIR)
model = AutoModelForCausalLM.from_pretrained(DIR)
prompt = {PAD!r} * {n_pad} + {prompt!r}
ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids  # {P} tokens
out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.9,
                     max_new_tokens={R})
print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
```

With vLLM or `ray.data.llm`, pass the ids as the prompt (`{{"prompt_token_ids": ids}}`) with
`max_tokens={R}` and `stop_token_ids=[{tok.eos_id}]`.

"""


def _card_watermark(R: int, eos_id: int) -> str:
    """The card's watermark section: how reviewgen's sampler signs reviews and how to sign with these weights
    (`R`: the longest review in tokens; `eos_id`: the end token the processor withholds)."""
    return f"""## Watermark

reviewgen's own sampler signs every review with a keyed green-list watermark (Kirchenbauer et al. 2023)
whenever a secret key is configured: after each token, a keyed hash splits the vocabulary into a green
share and a red rest, and the green logits get a bias. `reviewgen score` and the scoring endpoint detect it
from the text alone (`signals.watermark_z`, `flags.ours`), with the key and this tokenizer. These weights
carry no watermark by themselves: to sign what `generate` writes, pass reviewgen's logits processor
(no key is stored here; it comes from `REVIEWGEN_WATERMARK_KEY` or a key file):

```python
from reviewgen.core.watermark import Watermark, WatermarkLogitsProcessor

wm = Watermark.from_env()  # or Watermark.from_env(key_file=PATH)
out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens={R},
                     logits_processor=[WatermarkLogitsProcessor(wm, eos_id={eos_id}, prompt_len=ids.shape[1])])
```

transformers applies it before its temperature, top-k and top-p warpers, so the bias acts divided by the
temperature. With `eos_id` and `prompt_len` the processor also withholds the end token until the review's
watermark would be detected, as reviewgen's sampler does, so a review is not ended too short to carry it.
The guarantee has limits: a review rewritten by a person or another model loses the watermark, and anyone
holding the key can both detect and forge it, so the key must stay secret.
"""
