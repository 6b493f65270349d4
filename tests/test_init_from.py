"""`reviewgen train --init-from DIR` (in this process and on Ray Train), `reviewgen export --format hf`, and
every config in configs/ loading with the real loaders. Tiny random transformers bases saved to temp dirs;
nothing is fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers
from conftest import ROOT, TINY_CONFIG
from test_hf import _hf_model, _tokenizer_json
from typer.testing import CliRunner

from reviewgen.cli import app
from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.sampling import generate_texts
from reviewgen.core.tokenizer import Condition

ATOL = 1e-4
# every phase, a few steps each (the tiny config's own schedule), tiny batches
STEPS = [
    "--set",
    "train.mle_steps=3",
    "--set",
    "train.disc_warmup_steps=2",
    "--set",
    "train.adv_steps=2",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.val_batches=1",
]


def _base(d: Path, family: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer_json(d / "tokenizer.json")
    _hf_model(family, vocab).save_pretrained(d)
    return d


@pytest.fixture(scope="module", params=("gpt2", "qwen2"))
def base(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, _base(tmp_path_factory.mktemp(f"init_{request.param}"), request.param)


def _train(args: list[str]):
    return CliRunner().invoke(app, ["train", "--config", str(TINY_CONFIG), *STEPS, *args])


def test_train_init_from_runs_every_phase_and_the_model_samples(base, prepared_data, tmp_path):
    family, d = base
    out = tmp_path / "m"
    r = _train(["--data", str(prepared_data), "--out", str(out), "--init-from", str(d)])
    assert r.exit_code == 0, r.output
    assert "starting from base" in r.output
    ck = load_checkpoint(out)
    meta = ck.meta
    assert meta.complete and meta.phase == "done"
    hf_cfg = json.loads((d / "config.json").read_text())
    assert meta.base["path"] == str(d.resolve()) and meta.base["model_type"] == family
    assert len(meta.base["sha256"]) == 64
    # the base tokenizer with our specials replaced BPE training; the shape is the base's
    assert ck.tokenizer.vocab_size > 300 and ck.tokenizer.tok.token_to_id("<rating_5>") is not None
    assert ck.config.generator.arch == ("gpt2" if family == "gpt2" else "llama")
    assert ck.config.generator.d_model == hf_cfg.get("n_embd", hf_cfg.get("hidden_size")) == 32
    assert ck.config.discriminator.d_model == 32
    for sub in ("mle", "state"):  # the MLE baseline and the resumable state remember the base too
        assert json.loads((out / sub / "meta.json").read_text())["base"]["sha256"] == meta.base["sha256"]
    steps = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["phase"] for s in steps] == ["mle"] * 3 + ["disc"] * 2 + ["adv"] * 2
    texts = generate_texts(
        ck.generator,
        ck.tokenizer,
        [Condition("Echo Dot", "Speakers", 5, language="en")] * 2,
        ["a", "b"],
        temperature=1.0,
    )
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_init_from_starts_from_the_base_weights(base, prepared_data, tmp_path):
    """Zero steps of training: G is the base itself (transformers' logits on the base tokens)."""
    family, d = base
    out = tmp_path / "z"
    r = _train(
        [
            "--data",
            str(prepared_data),
            "--out",
            str(out),
            "--init-from",
            str(d),
            "--stop-after-phase",
            "mle",
            "--set",
            "train.mle_steps=1",
            "--set",
            "train.lr_g=0.0",
            "--set",
            "train.warmup_steps=1",
        ]
    )
    assert r.exit_code == 0, r.output
    G = load_checkpoint(out).generator.eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    vocab = hf.get_input_embeddings().weight.shape[0] - (16 if family == "qwen2" else 0)
    x = torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (G(x)[..., :vocab] - hf(x).logits[..., :vocab]).abs().max().item()
    # AdamW's weight decay moves the weights by lr * wd = 0 with lr 0: only float noise is left
    assert diff < ATOL


def test_new_condition_tokens_start_distinct_and_alike_on_every_worker(base, tiny_config):
    """The added markers (ratings, categories, languages) get distinct rows, the same on every load: under
    LoRA the embedding stays frozen, so identical rows would leave G unable to tell a 1-star from a 5-star
    request."""
    from reviewgen.core.hf_import import init_from_hf

    family, d = base
    a, b = init_from_hf(d, tiny_config()), init_from_hf(d, tiny_config())
    tok = a.tokenizer
    emb = a.generator.tok_emb.weight.detach()
    assert torch.equal(emb, b.generator.tok_emb.weight.detach())
    stars = [tok.tok.token_to_id(f"<rating_{r}>") for r in range(1, 6)]
    assert all(i is not None for i in stars), stars
    rows = emb[stars]
    gaps = torch.cdist(rows, rows) + torch.eye(5) * 1e9
    assert gaps.min() > 0.5 * emb[: min(stars)].std(0).norm(), gaps.min()
    # so G's next-token distribution already depends on the requested rating before any training
    x = torch.randint(0, min(stars), (1, 12), generator=torch.Generator().manual_seed(0))
    one, five = x.clone(), x.clone()
    one[0, 5], five[0, 5] = stars[0], stars[4]
    with torch.no_grad():
        assert (a.generator.eval()(one)[0, -1] - a.generator(five)[0, -1]).abs().max() > 1e-3


def test_without_an_mle_phase_the_base_is_the_reference(base):
    """mle_steps 0: the trainer enters the disc phase at construction; the KL reference and D's trunk must
    still be the base, not the random init."""
    from reviewgen.core.config import RunConfig
    from reviewgen.core.hf_import import load_hf_base
    from reviewgen.train.run_setup import setup_run
    from reviewgen.train.trainer import GANTrainer

    _, d = base
    cfg = RunConfig.from_yaml(TINY_CONFIG).override({"train.mle_steps": 0})
    run = setup_run(pd.DataFrame({"category": ["a", "b"]}), cfg, init_from=d, log=lambda _: None)
    cfg, tok, cats, init = run.config, run.tokenizer, run.categories, run.init
    t = cfg.tokenizer
    tr = GANTrainer(cfg, tok, cats, base=load_hf_base(d, prefix_len=t.prefix_len, max_review_len=t.max_review_len))
    assert tr.phase == "disc" and tr.ref is not None
    for k, v in init.generator.state_dict().items():
        assert torch.equal(tr.ref.state_dict()[k], v) and torch.equal(tr.G.state_dict()[k], v)
    assert torch.equal(tr.D.state_dict()["tok_emb.weight"], init.generator.state_dict()["tok_emb.weight"])
    assert tr.base == init.meta


def test_yaml_job_section_carries_init_from(tmp_path):
    from reviewgen.train.job import load_train_job

    y = tmp_path / "run.yaml"
    y.write_text("train: {mle_steps: 5}\njob: {init_from: /mnt/shared/models/gpt2, num_workers: 2}\n")
    _, job = load_train_job(y)
    assert job.init_from == Path("/mnt/shared/models/gpt2") and job.num_workers == 2
    _, job = load_train_job(y, ["job.init_from=/elsewhere"])
    assert job.init_from == Path("/elsewhere")


def test_bad_base_directories_are_named_errors_through_the_cli(prepared_data, tmp_path):
    out = str(tmp_path / "m")
    r = _train(["--data", str(prepared_data), "--out", out, "--init-from", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "not found" in r.output and "nothing is downloaded" in r.output
    r = _train(["--data", str(prepared_data), "--out", out, "--init-from", "Qwen/Qwen2.5-0.5B"])
    assert r.exit_code == 2 and "Hub name" in r.output and "nothing is downloaded" in r.output
    d = _base(tmp_path / "bad", "gpt2")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, model_type="bert")))
    r = _train(["--data", str(prepared_data), "--out", out, "--init-from", str(d)])
    assert r.exit_code == 2 and "config.json" in r.output and "model_type" in r.output
    assert not (tmp_path / "m" / "meta.json").exists()


def test_export_hf_gives_our_logits_back_through_transformers(tiny_model, tmp_path):
    hf_dir = tmp_path / "hf"
    r = CliRunner().invoke(app, ["export", "--model", str(tiny_model), "--format", "hf", "--out", str(hf_dir)])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(tiny_model)
    back = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    x = ck.tokenizer.encode_examples(
        [Condition("Echo Dot", "Speakers", 5), Condition("Kindle", "E-Readers", 2)], ["Great sound.", "Screen broke."]
    )
    with torch.no_grad():
        assert (ck.generator.eval()(x) - back(x).logits).abs().max().item() < ATOL
    assert tok.encode("<rating_5>", add_special_tokens=False) == [ck.tokenizer.special["<rating_5>"]]
    assert (hf_dir / "README.md").is_file()


def test_export_default_format_and_checkpoint_alias_unchanged(tiny_model, tmp_path):
    r = CliRunner().invoke(app, ["export", "--checkpoint", str(tiny_model), "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e" / "meta.json").read_text())["version"]
    assert (tmp_path / "e" / "generator.safetensors").is_file()
    r = CliRunner().invoke(
        app, ["export", "--model", str(tiny_model), "--format", "onnx", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 2 and "--format" in r.output


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path):
    """A typo in any shipped config fails here, not on a cluster."""
    from reviewgen.train.job import load_train_job

    cfg, job = load_train_job(path)
    cfg.finalize(vocab_size=cfg.tokenizer.vocab_size)
    if job.init_from is not None:
        assert job.init_from.is_absolute(), "a base path for a cluster job must not depend on the working dir"


@pytest.mark.timeout(400)
def test_ray_train_workers_start_from_the_same_base(ray_local, prepared_data, tiny_config, tmp_path):
    """2 Ray Train workers x batch 4 from a base equal one process x batch 8 from it: had a worker started
    elsewhere, its gradients would pull the averaged update away."""
    from test_distributed import _assert_same_losses, _cfg, _steps, _weights

    from reviewgen.train.distributed import run_distributed_training
    from reviewgen.train.job import TrainJobConfig
    from reviewgen.train.local import train_local

    d = _base(tmp_path / "base", "gpt2")
    one = train_local(
        prepared_data,
        tmp_path / "one",
        _cfg(tiny_config, 8, mle_steps=3),
        init_from=d,
        stop_after_phase="mle",
        log=lambda *_: None,
    )
    job = TrainJobConfig(
        data_dir=prepared_data,
        out=tmp_path / "two",
        num_workers=2,
        data_loader="sharded_memory",
        name="init",
        stop_after_phase="mle",
        init_from=d,
    )
    two = run_distributed_training(job, _cfg(tiny_config, 4, mle_steps=3), log=lambda *_: None)
    _assert_same_losses(_steps(two), _steps(one))
    # the key bias gets a gradient that is zero up to float noise (softmax ignores a shift shared by all
    # keys), which Adam scales up to a full step of either sign: compare everything else
    a, b = _weights(two / "mle"), _weights(one / "mle")
    for k in a:
        keep = torch.ones_like(a[k], dtype=torch.bool)
        if k.endswith("attn.qkv.bias"):
            keep[32:64] = False
        assert (a[k] - b[k])[keep].abs().max().item() < ATOL, k
    meta = json.loads((two / "meta.json").read_text())
    assert meta["base"] == json.loads((one / "meta.json").read_text())["base"]
    assert json.loads((two / "runs" / "init" / "setup" / "setup.json").read_text())["base"]["path"] == str(d.resolve())


def test_a_base_whose_statistics_overflow_still_gives_a_model(prepared_data, tmp_path):
    """A random base with weights scaled so far that the scorer's statistics overflow: the training run must
    still write its model; the non-finite signals are counted and left out of the detector fit, or, where
    nothing is left to fit, the model scores with D alone and says why."""
    from reviewgen.score.scorer import Scorer

    d = _base(tmp_path / "hot", "gpt2")
    state = {}
    from safetensors.torch import load_file, save_file

    for f in d.glob("*.safetensors"):
        state = load_file(f)
        save_file({k: v * 1e19 if k.endswith("wte.weight") else v for k, v in state.items()}, f)
    out = tmp_path / "m"
    r = _train(["--data", str(prepared_data), "--out", str(out), "--init-from", str(d)])
    assert r.exit_code == 0, r.output
    calib = json.loads((out / "calibration.json").read_text())
    assert calib.get("nonfinite_signals") or calib.get("detector_error"), calib.keys()
    scorer = Scorer(out)
    if "detector_error" in calib:
        assert scorer.mode.startswith("discriminator-only (detector fit failed")
    res = scorer.score([{"text": "Works well and the battery lasts.", "language": "en"}])
    assert res["reason"] == [None]
