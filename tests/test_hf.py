"""Pretrained Hugging Face bases in and out: tiny random transformers models (GPT-2, Llama, Qwen2) saved to
temp dirs, loaded through reviewgen's importer, compared with transformers on logits and greedy decoding,
exported back and reloaded by transformers. Offline: nothing is fetched."""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from reviewgen.core.checkpoint import load_checkpoint, save_checkpoint
from reviewgen.core.config import RunConfig, TokenizerConfig
from reviewgen.core.hf_export import EXAMPLE, export_hf
from reviewgen.core.hf_import import HFImportError, init_from_hf, load_hf_base
from reviewgen.core.model_dir import Meta
from reviewgen.core.sampling import SamplingParams, sample
from reviewgen.core.tokenizer import Condition

P, R = 12, 10
TEXTS = [
    "Great tablet, the battery lasts all day.",
    "Terrible charger, broke after a week!",
    "The speaker sounds clear and the setup was easy.",
    "Cheap case, the color faded quickly.",
] * 10
FAMILIES = ("gpt2", "llama", "qwen2", "llama3")  # llama3: Llama with Llama 3 rope scaling and a tied head
MODEL_TYPE = {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen2", "llama3": "llama"}
ATOL = 1e-4
BASE_EOS = "<|endoftext|>"


def _tokenizer_json(path) -> int:
    """A tiny byte-level BPE like GPT-2's, with one document-end token; returns its size."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        TEXTS,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=[BASE_EOS],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.save(str(path))
    return tok.get_vocab_size()


def _hf_model(family: str, vocab: int):
    """A tiny random model whose logits are far apart (greedy decoding has no near ties)."""
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, **common)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cls, mcls = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        }[family]
        # llama: untied head; qwen2: tied head and an embedding padded beyond the tokenizer (as Qwen2.5 has);
        # llama3: its rope scaling slows the long wavelengths and interpolates the middle band (head_dim 8)
        rope = {"rope_type": "default", "rope_theta": 500.0}
        if family == "llama3":
            rope = dict(
                rope,
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            )
        cfg = cls(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_size=32,
            intermediate_size=64,
            max_position_embeddings=64,
            rope_parameters=rope,
            rms_norm_eps=1e-6,
            tie_word_embeddings=family != "llama",
            **dict(common, vocab_size=vocab + 16 * (family == "qwen2")),
        )
        model = mcls(cfg)
    torch.manual_seed({"gpt2": 1, "llama": 2, "qwen2": 3, "llama3": 4}[family])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
        model.get_input_embeddings().weight[vocab:] = 0.0  # padding rows no token maps to (dropped on import)
    return model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def base(request, tmp_path_factory):
    family = request.param
    d = tmp_path_factory.mktemp(f"base_{family}")
    vocab = _tokenizer_json(d / "tokenizer.json")
    model = _hf_model(family, vocab)
    model.save_pretrained(d)
    return family, d, model, vocab


def _run_cfg() -> RunConfig:
    return RunConfig(tokenizer=TokenizerConfig(prefix_len=P, max_review_len=R))


def test_import_gives_transformers_logits(base, record_property):
    family, d, hf, vocab = base
    init = init_from_hf(d, _run_cfg())
    G = init.generator.eval()
    assert init.config.generator.arch == ("gpt2" if family == "gpt2" else "llama")
    x = torch.randint(0, vocab, (2, P + R), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = G(x)[..., :vocab], hf(x).logits[..., :vocab]
    diff = (ours - theirs).abs().max().item()
    record_property(f"max_abs_diff_{family}", diff)
    print(f"{family}: import max |logit diff| = {diff:.2e}")
    assert diff < ATOL
    # D holds the same trunk; its heads are new
    assert torch.equal(init.discriminator.blocks[0].attn.qkv.weight, G.blocks[0].attn.qkv.weight)


def test_greedy_kv_cache_sampling_equals_transformers_generate(base):
    family, d, hf, vocab = base
    G = init_from_hf(d, _run_cfg()).generator
    prompts = torch.randint(1, vocab, (3, P), generator=torch.Generator().manual_seed(1))
    ours = sample(G, prompts, SamplingParams(R, temperature=0.0, precision="fp32"), eos_id=-1, pad_id=0)
    # transformers decodes over the same grown vocabulary: the added tokens' rows copied in
    hf = copy.deepcopy(hf)
    hf.resize_token_embeddings(G.tok_emb.weight.shape[0])
    with torch.no_grad():
        hf.get_input_embeddings().weight.copy_(G.tok_emb.weight)
        hf.get_output_embeddings().weight.copy_(G.lm_head.weight)
        theirs = hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=False,
            max_new_tokens=R,
            min_new_tokens=R,
            eos_token_id=None,
            pad_token_id=0,
        )[:, P:]
    assert torch.equal(ours, theirs)


def test_new_tokens_are_special_and_start_from_the_base(base):
    family, d, hf, vocab = base
    b = load_hf_base(d, prefix_len=P, max_review_len=R)
    tok = b.tokenizer
    assert tok.vocab_size > vocab and b.fields["vocab_size"] == tok.vocab_size
    assert b.state["tok_emb.weight"].shape[0] == tok.vocab_size
    rating = tok.special["<rating_5>"]
    assert tok.tok.encode("<rating_5>", add_special_tokens=False).ids == [rating]
    emb = b.state["tok_emb.weight"]
    base_emb = hf.get_input_embeddings().weight.detach()
    ids = torch.arange(vocab, tok.vocab_size)
    new = emb[vocab:][(ids != tok.eos_id) & (ids != tok.bos_id)]  # the added rows but <bos> and <eos>
    assert torch.cdist(new, new).add(torch.eye(len(new)) * 1e9).min() > 0  # distinct: a frozen embedding tells
    spread = base_emb[:vocab].std(0)  # them apart; and typical: within the base's spread of its mean
    assert ((new.mean(0) - base_emb[:vocab].mean(0)).abs() < spread).all()
    assert 0.7 < (new.std(0) / spread).mean() < 1.3
    assert torch.equal(emb[tok.eos_id], base_emb[0])  # <eos> starts as the base's end of text
    assert torch.equal(emb[:vocab], base_emb[:vocab])
    if family == "llama":  # untied: the output head grows the same way
        head, base_head = b.state["lm_head.weight"], hf.get_output_embeddings().weight.detach()
        assert not torch.equal(head[rating], emb[rating]) and torch.isfinite(head[vocab:]).all()
        assert torch.equal(head[tok.eos_id], base_head[0])
    else:
        assert "lm_head.weight" not in b.state
    meta = b.meta()
    assert meta["model_type"] == MODEL_TYPE[family] and len(meta["sha256"]) == 64


def test_export_round_trip_through_transformers(base, tmp_path):
    family, d, hf, vocab = base
    init = init_from_hf(d, _run_cfg())
    assert init.config.finalize(init.tokenizer.vocab_size) == init.config  # consistent as the trainer finalizes it
    run_dir = save_checkpoint(
        tmp_path / "run",
        config=init.config,
        categories=["a", "b", "c"],
        tokenizer=init.tokenizer,
        generator=init.generator,
        discriminator=init.discriminator,
        meta=Meta(base=init.meta),
    )
    out = export_hf(run_dir, tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert back.config.model_type == MODEL_TYPE[family]
    G = load_checkpoint(run_dir).generator.eval()
    tok = init.tokenizer
    x = tok.encode_examples(
        [Condition("Fire HD 8", "Tablets", 5), Condition("Echo", "Speakers", 1)], ["Great tablet.", "Broke."]
    )
    with torch.no_grad():
        ours, theirs = G(x), back(x).logits
    assert ours.shape == theirs.shape
    diff = (ours - theirs).abs().max().item()
    print(f"{family}: export max |logit diff| = {diff:.2e}")
    assert diff < ATOL
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode("<rating_5>", add_special_tokens=False) == [tok.special["<rating_5>"]]
    assert hf_tok.eos_token_id == tok.eos_id and hf_tok.pad_token_id == tok.pad_id
    card = (out / "README.md").read_text()
    # the card's example prompt, as a user copies it: `prompt = '<pad>' * N + '<bos>...'`
    pad, n, rest = re.search(r"^prompt = '(.+?)' \* (\d+) \+ (.+)$", card, re.M).groups()
    prompt = pad * int(n) + ast.literal_eval(rest)
    assert hf_tok.encode(prompt, add_special_tokens=False) == tok.encode_prefixes([EXAMPLE])[0].tolist()
    # the exported directory is itself a base: training can start again from it, with the same model
    again = init_from_hf(out, _run_cfg())
    assert again.tokenizer.vocab_size == tok.vocab_size
    with torch.no_grad():
        assert (again.generator.eval()(x) - ours).abs().max().item() < ATOL


def test_scratch_models_export(tmp_path):
    """Models trained from scratch export too: gpt2 (exact GELU) and a llama-family config."""
    from reviewgen.core.tokenizer import ReviewTokenizer

    tok = ReviewTokenizer.train(TEXTS, vocab_size=300, prefix_len=P, max_review_len=R, min_frequency=1)
    for arch in ("gpt2", "llama"):
        cfg = RunConfig(tokenizer=TokenizerConfig(prefix_len=P, max_review_len=R))
        cfg = cfg.override(
            {
                "generator.arch": arch,
                "generator.n_layer": 2,
                "generator.d_model": 32,
                "generator.n_head": 4,
                "generator.n_kv_head": 2 if arch == "llama" else None,
                "discriminator.d_model": 32,
                "discriminator.n_layer": 1,
            }
        )
        cfg = cfg.finalize(tok.vocab_size, n_categories=2)
        from reviewgen.core.models import Discriminator, Generator

        torch.manual_seed(0)
        G, D = Generator(cfg.generator), Discriminator(cfg.discriminator, P, tok.pad_id)
        run = save_checkpoint(
            tmp_path / f"run_{arch}", config=cfg, categories=["a", "b"], tokenizer=tok, generator=G, discriminator=D
        )
        out = export_hf(run, tmp_path / f"hf_{arch}")
        back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        x = tok.encode_examples([Condition("Kindle", "E-Readers", 4)], ["Love it."])
        with torch.no_grad():
            assert (G.eval()(x) - back(x).logits).abs().max().item() < ATOL


@pytest.fixture()
def gpt2_dir(tmp_path):
    d = tmp_path / "gpt2"
    vocab = _tokenizer_json(tmp_path / "tokenizer.json")
    _hf_model("gpt2", vocab).save_pretrained(d)
    shutil.copy(tmp_path / "tokenizer.json", d / "tokenizer.json")
    return d


def _load(d):
    return load_hf_base(d, prefix_len=P, max_review_len=R)


def test_missing_directory_and_hub_names_are_named_errors(tmp_path):
    with pytest.raises(HFImportError, match="not found.*nothing is downloaded"):
        _load(tmp_path / "nope")
    for hub in ("gpt2", "Qwen/Qwen2.5-0.5B"):
        with pytest.raises(HFImportError, match=f"{hub}.*Hub name.*nothing is downloaded"):
            _load(hub)


def test_missing_config_and_unsupported_model_type(gpt2_dir):
    cfg = json.loads((gpt2_dir / "config.json").read_text())
    (gpt2_dir / "config.json").write_text(json.dumps(dict(cfg, model_type="bert")))
    with pytest.raises(HFImportError, match=r"config\.json.*model_type 'bert' is not supported"):
        _load(gpt2_dir)
    (gpt2_dir / "config.json").write_text(json.dumps(dict(cfg, activation_function="relu")))
    with pytest.raises(HFImportError, match=r"config\.json.*activation_function 'relu'"):
        _load(gpt2_dir)
    (gpt2_dir / "config.json").unlink()
    with pytest.raises(HFImportError, match=r"config\.json: missing"):
        _load(gpt2_dir)


def test_missing_and_misshapen_tensors(gpt2_dir):
    from safetensors.torch import load_file, save_file

    f = gpt2_dir / "model.safetensors"
    sd = load_file(str(f))
    key = next(k for k in sd if k.endswith("h.1.mlp.c_fc.weight"))
    save_file({k: v for k, v in sd.items() if k != key}, str(f))
    with pytest.raises(HFImportError, match=r"tensor 'h\.1\.mlp\.c_fc\.weight' is missing from model\.safetensors"):
        _load(gpt2_dir)
    save_file(dict(sd, **{key: torch.zeros(32, 100)}), str(f))
    with pytest.raises(
        HFImportError, match=r"model\.safetensors: tensor h\.1\.mlp\.c_fc\.weight \(32, 100\) has the wrong shape"
    ):
        _load(gpt2_dir)
    (gpt2_dir / "tokenizer.json").unlink()
    with pytest.raises(HFImportError, match=r"tokenizer\.json"):
        _load(gpt2_dir)


def test_sharded_weights_load(gpt2_dir):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(gpt2_dir / "model.safetensors"))
    keys = sorted(sd)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(gpt2_dir / name))
    (gpt2_dir / "model.safetensors").unlink()
    (gpt2_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: name for name, ks in shards.items() for k in ks}})
    )
    b = _load(gpt2_dir)
    assert b.meta()["weight_files"] == sorted(shards)
    (gpt2_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        HFImportError, match="index.json: names weight file model-00002-of-00002.safetensors, which is missing"
    ):
        _load(gpt2_dir)


def test_gpt2_hub_layout_without_prefix_and_with_mask_buffers(gpt2_dir):
    """The Hub's gpt2 files name tensors without `transformer.` and carry causal-mask buffers."""
    from safetensors.torch import load_file, save_file

    f = gpt2_dir / "model.safetensors"
    sd = {k.removeprefix("transformer."): v for k, v in load_file(str(f)).items()}
    sd["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    save_file(sd, str(f))
    assert _load(gpt2_dir).state["blocks.0.attn.qkv.weight"].shape == (96, 32)
    save_file(dict(sd, **{"h.0.attn.c_proj.lora": torch.zeros(2)}), str(f))
    with pytest.raises(HFImportError, match=r"model\.safetensors: unexpected tensor 'h\.0\.attn\.c_proj\.lora'"):
        _load(gpt2_dir)


# -- LoRA adapters on an imported base -------------------------------------------------------------


def _lora_cfg() -> RunConfig:
    return _run_cfg().override({"generator.lora.rank": 4, "generator.lora.alpha": 8.0, "discriminator.lora.rank": 4})


def test_lora_merge_and_peft_adapters_match_transformers(base, tmp_path):
    """Adapters trained (here: randomised) on an imported base: the merged export and the PEFT adapter
    directory on the exported base both give our LoRA generator's logits in transformers."""
    from reviewgen.core.checkpoint import BaseMismatchError
    from reviewgen.core.hf_adapters import export_adapters
    from reviewgen.core.lora import lora_layers

    family, d, hf, vocab = base
    own_base = tmp_path / "base"
    shutil.copytree(d, own_base)
    init = init_from_hf(own_base, _lora_cfg())
    G = init.generator.eval()
    x = torch.randint(0, vocab, (2, P + R), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(G(x)[..., :vocab], _base_of(init)(x)[..., :vocab])  # fresh: the base
        g = torch.Generator().manual_seed(5)
        for _, m in lora_layers(G):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)
    run_dir = save_checkpoint(
        tmp_path / "run",
        config=init.config,
        categories=["a", "b", "c"],
        tokenizer=init.tokenizer,
        generator=G,
        discriminator=init.discriminator,
        meta=Meta(base=init.meta),
    )
    assert json.loads((run_dir / "meta.json").read_text())["lora_base"]["kind"] == "hf"
    ours = load_checkpoint(run_dir).generator.eval()
    tok = init.tokenizer
    x = tok.encode_examples(
        [Condition("Fire HD 8", "Tablets", 5), Condition("Echo", "Speakers", 1)], ["Great tablet.", "Broke."]
    )
    with torch.no_grad():
        want = ours(x)
        assert torch.equal(want, G(x))
        merged = transformers.AutoModelForCausalLM.from_pretrained(export_hf(run_dir, tmp_path / "hf")).eval()
        assert (merged(x).logits - want).abs().max().item() < ATOL
    out = export_adapters(run_dir, tmp_path / "adapters", with_base=True)
    doc = json.loads((out / "adapter_config.json").read_text())
    expect = {"gpt2": ["c_attn", "c_fc", "c_proj"]}.get(
        family, ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    )
    assert doc["peft_type"] == "LORA" and doc["r"] == 4 and doc["lora_alpha"] == 8.0 and doc["target_modules"] == expect
    from safetensors.torch import load_file

    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    try:
        import peft
    except ImportError:  # schema check only
        peft = None
    if peft is not None:
        back = transformers.AutoModelForCausalLM.from_pretrained(out / "base")
        lora = peft.PeftModel.from_pretrained(back, out).eval()
        with torch.no_grad():
            assert (lora(x).logits - want).abs().max().item() < ATOL
    # the base the adapters were trained on is verified by hash
    weights = sorted(own_base.glob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(BaseMismatchError, match="sha256|cannot be read"):
        load_checkpoint(run_dir)


def _base_of(init):
    from reviewgen.core.models import base_view

    return base_view(init.generator)
