"""Training phases, checkpoints, resume, scoring and config errors on the carried sample (tiny models)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from reviewgen.core.checkpoint import export_model, load_checkpoint
from reviewgen.core.config import ConfigError, RunConfig
from reviewgen.core.encoding import build_categories, encode_frame, fit_tokenizer, fixed_batches
from reviewgen.core.losses import val_nll
from reviewgen.core.model_dir import CheckpointError
from reviewgen.core.sampling import SamplingParams, counter_uniforms, sample
from reviewgen.data.corpus import load_split
from reviewgen.score.platt import apply_calibration, fit_platt
from reviewgen.score.scorer import Scorer
from reviewgen.train.batches import TensorBatches
from reviewgen.train.trainer import GANTrainer


@pytest.fixture(scope="module")
def setup(prepared_data, tiny_config):
    cfg = tiny_config()
    train = load_split(prepared_data, "train")
    tok = fit_tokenizer(train, cfg)
    cats = build_categories(train, cfg.discriminator.n_categories)
    cfg = cfg.finalize(vocab_size=tok.vocab_size, n_categories=len(cats))
    data = encode_frame(train.head(2000), tok, cats)
    return cfg, tok, cats, data


def new_trainer(setup, **train_overrides):
    cfg, tok, cats, data = setup
    cfg = RunConfig.from_dict(cfg.to_dict()).override({f"train.{k}": v for k, v in train_overrides.items()})
    return GANTrainer(cfg, tok, cats), TensorBatches(data, cfg.train.batch_size, cfg.train.seed)


def params_of(m):
    return torch.cat([p.detach().flatten().clone() for p in m.parameters()])


def test_mle_loss_falls_on_real_sample(setup):
    tr, batches = new_trainer(setup, mle_steps=60, lr_g=3e-3, warmup_steps=5)
    val = fixed_batches(setup[3], 8, 4)
    before = val_nll(tr.G, val, tr.tk)
    losses = [tr.train_step(next(batches)).metrics["g_loss"] for _ in range(60)]
    after = val_nll(tr.G, val, tr.tk)
    assert after < before - 0.5, (before, after)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert tr.phase == "disc" and tr.ref is not None


def test_phases_advance_and_adversarial_step_changes_both_models(setup):
    tr, batches = new_trainer(setup, mle_steps=2, disc_warmup_steps=2, adv_steps=3)
    for _ in range(4):
        tr.train_step(next(batches))
    assert tr.phase == "adv"
    g0, d0, ref0 = params_of(tr.G), params_of(tr.D), params_of(tr.ref)
    res = tr.train_step(next(batches))
    assert res.phase == "adv" and {"pg_loss", "kl", "reward", "r_rating", "r_category", "d_loss", "d_acc"} <= set(
        res.metrics
    )
    assert not torch.equal(g0, params_of(tr.G))
    assert not torch.equal(d0, params_of(tr.D))
    assert torch.equal(ref0, params_of(tr.ref))  # the KL anchor stays frozen
    tr.train_step(next(batches))
    tr.train_step(next(batches))
    assert tr.phase == "done"
    with pytest.raises(RuntimeError):
        tr.train_step(next(batches))


class ToyClassifier(torch.nn.Module):
    """A frozen 'classifier' for the condition-reward test: the logit of class 0 (the target) grows with the
    share of review tokens with an even id."""

    def __init__(self, prefix_len, pad_id, n_ratings=5, n_categories=8):
        super().__init__()
        self.P, self.pad, self.shape = prefix_len, pad_id, (n_ratings, n_categories)

    def forward(self, full):
        from reviewgen.core.models import DiscriminatorOutput

        review = full[:, self.P :]
        keep = review != self.pad
        frac = ((review % 2 == 0) & keep).float().sum(1) / keep.float().sum(1).clamp_min(1)
        logits = [torch.cat([8 * frac[:, None], torch.full((len(full), n - 1), 4.0)], 1) for n in self.shape]
        return DiscriminatorOutput(torch.zeros(review.shape), torch.zeros(len(full)), *logits)

    def target_prob(self, full, term):
        out = self(full)
        return (out.rating_logits if term == "rating" else out.category_logits).softmax(-1)[:, 0].mean().item()


def probe_target_prob(tr, probe, term):
    """The toy classifier's mean target probability over 16 samples per probe prefix, drawn with fixed per-row
    uniforms, so a before/after difference measures the policy, not a fresh draw."""
    pre = probe.repeat_interleave(16, dim=0)
    params = SamplingParams(tr.cfg.tokenizer.max_review_len, 1.0)
    ids = sample(
        tr.G,
        pre,
        params,
        eos_id=tr.tk.eos_id,
        pad_id=tr.tk.pad_id,
        uniforms=counter_uniforms(list(range(len(pre))), params.max_new_tokens),
    )
    return tr.cond.target_prob(torch.cat([pre, ids], 1), term)


@pytest.mark.parametrize("term", ["rating", "category"])
def test_each_condition_reward_raises_the_target_probability(setup, term):
    """A few adversarial steps with only one condition term (no anchors) raise the frozen classifier's
    probability of the target class; the realness-only run, same seed and steps, does not move it as much."""
    gains = {}
    for weight in (0.0, 10.0):
        tr, batches = new_trainer(
            setup,
            mle_steps=15,
            lr_g=3e-3,
            disc_warmup_steps=1,
            adv_steps=40,
            kl_coef=0.0,
            mle_coef=0.0,
            lr_g_adv=5e-3,
            seq_reward_weight=0.0,
            rating_reward_weight=weight if term == "rating" else 0.0,
            category_reward_weight=weight if term == "category" else 0.0,
        )
        while tr.phase != "adv":
            tr.train_step(next(batches))
        tr.cond = ToyClassifier(tr.tk.prefix_len, tr.tk.pad_id)
        probe = next(batches)["ids"][:, : tr.tk.prefix_len]
        before = probe_target_prob(tr, probe, term)
        for _ in range(30):
            b = next(batches)
            b = dict(b, rating=torch.zeros_like(b["rating"]), category=torch.zeros_like(b["category"]))
            m = tr.train_step(b).metrics
            assert f"r_{term}" in m
        gains[weight] = probe_target_prob(tr, probe, term) - before
    assert gains[10.0] > 0.05 and gains[10.0] > gains[0.0] + 0.05, gains


def test_condition_judge_reads_the_review_not_the_prompt(setup):
    """The prompt names the asked-for rating and category, so a judge that saw it could reward any review:
    the condition rewards, and the aux heads' training signal, depend on the review alone."""
    from reviewgen.core.losses import condition_rewards, disc_loss, review_only

    tr, batches = new_trainer(setup)
    P, b, b2 = tr.tk.prefix_len, next(batches), next(batches)
    n = min(len(b["ids"]), len(b2["ids"]))
    ids = b["ids"][:n]
    other = torch.cat([b2["ids"][:n, :P], ids[:, P:]], 1)  # other products and targets, the same reviews
    assert not torch.equal(ids[:, :P], other[:, :P])
    blind = review_only(ids, tr.tk)
    assert torch.equal(blind, review_only(other, tr.tk)) and torch.equal(blind[:, P:], ids[:, P:])
    assert (blind[:, : P - 1] == tr.tk.pad_id).all() and torch.equal(blind[:, P - 1], ids[:, P - 1])  # <sep>
    D = tr.D.eval()
    r, c = b["rating"][:n].clamp_min(0), b["category"][:n].clamp_min(0)
    with torch.no_grad():
        a, _ = condition_rewards(D, ids, r, c, tr.cfg.train, tr.tk)
        o, _ = condition_rewards(D, other, r, c, tr.cfg.train, tr.tk)
        assert torch.allclose(a, o)
        # the aux loss is the same whatever the prompts say; the realness loss is not
        fake = b2["ids"][:n]
        _, m1 = disc_loss(D, ids, fake, r, c, cfg=tr.cfg.train, tk=tr.tk)
        _, m2 = disc_loss(D, other, fake, r, c, cfg=tr.cfg.train, tk=tr.tk)
    assert m1["d_aux_loss"] == pytest.approx(m2["d_aux_loss"], rel=1e-5)
    assert m1["d_seq_loss"] != pytest.approx(m2["d_seq_loss"], rel=1e-5)


def test_rating_target_is_the_star_rating_or_else_the_asked_polarity(setup):
    """English prompts ask for a star rating, Chinese ones for a polarity: the rating reward is log p(stars)
    or log p(the 1-2 or 4-5 star side), and nothing for a neutral prompt."""
    from reviewgen.core.losses import Tokens, rating_target_logprob, target_polarity
    from reviewgen.core.tokenizer import Condition

    _, tok, _, _ = setup
    conds = [
        Condition("a kettle", "Kitchen", rating=5, language="en"),
        Condition("a kettle", "Kitchen", rating=2, language="en"),
        Condition("水壶", "厨房", sentiment="negative", language="zh"),
        Condition("水壶", "厨房", sentiment="positive", language="zh"),
        Condition("a kettle", "Kitchen", rating=3, language="en"),
    ]
    pre = tok.encode_prefixes(conds)
    assert target_polarity(pre, Tokens.of(tok)).tolist() == [1, 0, 0, 1, -100]
    logits = torch.log(torch.tensor([[0.1, 0.1, 0.2, 0.2, 0.4]])).expand(5, 5)
    lp, has = rating_target_logprob(
        logits, torch.tensor([4, 1, -100, -100, -100]), target_polarity(pre, Tokens.of(tok))
    )
    expect = torch.log(torch.tensor([0.4, 0.1, 0.2, 0.6, 1.0]))
    assert has.tolist() == [True, True, True, True, False] and torch.allclose(lp, expect, atol=1e-6)


def test_terminal_reward_lands_on_each_rows_last_token():
    """Returns are terminal at the last token and gamma^k * terminal k tokens earlier; the group baseline
    then subtracts the mean over the rows still writing at that position."""
    from reviewgen.core.losses import add_terminal, group_advantages

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    r = add_terminal(torch.zeros(2, 4), mask, torch.tensor([1.0, -2.0]), gamma=0.5)
    adv = group_advantages(r, mask, group_size=2, gamma=0.5)
    # returns: row 0 [0.25, 0.5, 1, 0], row 1 [-1, -2, 0, 0]
    assert torch.allclose(adv, torch.tensor([[0.625, 1.25, 0.0, 0.0], [-0.625, -1.25, 0.0, 0.0]]))


def test_group_baseline_has_zero_mean_per_prompt():
    from reviewgen.core.losses import group_advantages

    rewards = torch.rand(6, 5)
    mask = torch.ones(6, 5, dtype=torch.bool)
    adv = group_advantages(rewards, mask, group_size=3, gamma=0.9)
    assert torch.allclose(adv.view(2, 3, 5).sum(1), torch.zeros(2, 5), atol=1e-6)


def test_save_load_identical_outputs_and_resume(setup, tmp_path):
    tr, batches = new_trainer(setup, mle_steps=3, disc_warmup_steps=2, adv_steps=4)
    for _ in range(6):  # into the adversarial phase: optimizer states, reference, replay all populated
        tr.train_step(next(batches))
    tr.save(tmp_path / "ck", run_state={"loader": batches.state_dict()})
    ck = load_checkpoint(tmp_path / "ck")
    ids = next(batches)["ids"]
    with torch.no_grad():
        assert torch.equal(tr.G.eval()(ids), ck.generator(ids))
        assert torch.equal(tr.D.eval()(ids).seq_logits, ck.discriminator(ids).seq_logits)

    # resume: a fresh trainer continues at the same phase/step with the same optimizer state and RNG
    tr2, batches2 = new_trainer(setup, mle_steps=3, disc_warmup_steps=2, adv_steps=4)
    batches2.load_state_dict(tr2.resume_from(tmp_path / "ck")["loader"])
    assert (tr2.phase, tr2.step, tr2.global_step) == (tr.phase, tr.step, tr.global_step)
    # the condition rewards' frozen judge comes back as it was frozen, not as D is now
    assert tr2.cond is not None and torch.equal(params_of(tr2.cond), params_of(tr.cond))
    assert not torch.equal(params_of(tr2.cond), params_of(tr2.D))
    s1, s2 = tr.opt_g.state_dict()["state"], tr2.opt_g.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    batches.load_state_dict(batches2.state_dict())
    r1 = tr.train_step(next(batches))
    r2 = tr2.train_step(next(batches2))
    assert r1.metrics["g_loss"] == pytest.approx(r2.metrics["g_loss"], rel=1e-5)
    assert torch.allclose(params_of(tr.G), params_of(tr2.G), atol=1e-6)


def test_same_seed_same_training_on_cpu(setup):
    runs = []
    for _ in range(2):
        tr, batches = new_trainer(setup, mle_steps=2, disc_warmup_steps=1, adv_steps=1)
        for _ in range(4):
            tr.train_step(next(batches))
        runs.append((params_of(tr.G), params_of(tr.D)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_same_seed_same_samples(tiny_model):
    ck = load_checkpoint(tiny_model)
    from reviewgen.core.tokenizer import Condition

    pre = ck.tokenizer.encode_prefixes([Condition("Fire HD 8 Tablet", "Tablets", 5)] * 4)
    u = counter_uniforms([11, 12, 13, 14], ck.tokenizer.max_review_len)
    p = SamplingParams(ck.tokenizer.max_review_len, 1.0)
    a = sample(ck.generator, pre, p, eos_id=ck.tokenizer.eos_id, pad_id=ck.tokenizer.pad_id, uniforms=u)
    b = sample(ck.generator, pre, p, eos_id=ck.tokenizer.eos_id, pad_id=ck.tokenizer.pad_id, uniforms=u)
    assert torch.equal(a, b)


def test_tiny_model_layout_and_meta(tiny_model):
    for name in (
        "config.json",
        "generator.safetensors",
        "discriminator.safetensors",
        "tokenizer.json",
        "calibration.json",
        "ngrams.npy",
        "meta.json",
        "metrics.jsonl",
    ):
        assert (tiny_model / name).is_file(), name
    assert (tiny_model / "mle" / "meta.json").is_file() and (tiny_model / "state" / "train_state.pt").is_file()
    meta = json.loads((tiny_model / "meta.json").read_text())
    assert len(meta["version"]) == 16 and meta["role"] == "final"
    phases = {json.loads(line)["phase"] for line in (tiny_model / "metrics.jsonl").read_text().splitlines()}
    assert phases == {"mle", "disc", "adv"}


def test_export_version_is_content_hash(tiny_model, tmp_path):
    a = export_model(tiny_model, tmp_path / "a")
    b = export_model(tiny_model, tmp_path / "b")
    va, vb = (json.loads((d / "meta.json").read_text())["version"] for d in (a, b))
    assert va == vb and not (a / "train_state.pt").exists()
    cfg = json.loads((b / "config.json").read_text())
    cfg["run"]["train"]["seed"] = 99
    (b / "config.json").write_text(json.dumps(cfg))
    from reviewgen.core.model_dir import content_version

    assert content_version(b) != va


@pytest.mark.parametrize("damage", ["missing_dir", "no_meta", "corrupt_weights", "corrupt_config", "bad_tokenizer"])
def test_bad_checkpoints_give_named_errors(tiny_model, tmp_path, damage):
    d = tmp_path / "m"
    shutil.copytree(tiny_model, d, ignore=shutil.ignore_patterns("mle", "state"))
    target = {
        "missing_dir": None,
        "no_meta": "meta.json",
        "corrupt_weights": "generator.safetensors",
        "corrupt_config": "config.json",
        "bad_tokenizer": "tokenizer.json",
    }[damage]
    if damage == "missing_dir":
        d = tmp_path / "nope"
    elif damage == "no_meta":
        (d / target).unlink()
    else:
        (d / target).write_bytes(b"\x00garbage{")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(d)
    assert (target or "nope") in str(e.value)


def test_scorer_outputs_probabilities(tiny_model, prepared_data):
    s = Scorer(tiny_model)
    test = load_split(prepared_data, "test").head(8)
    out = s.score_frame(test)
    assert out["p_human"].between(0, 1).all() and out["rating_pred"].between(1, 5).all()
    assert len(out) == 8 and s.version == json.loads((tiny_model / "meta.json").read_text())["version"]
    res = s.score([{"text": "好评，质量不错"}, {"text": "Works great", "rating": 5, "product_title": "Echo"}])
    assert res["p_human"].shape == (2,)
    # rating_pred judges the text: the rating and product a request names do not change it
    texts = test["text"].astype(str).tolist()
    asked = [
        {"text": t, "rating": r, "product_title": "Echo Dot", "category": "Speakers"} for t in texts for r in (1, 5)
    ]
    pred = s.score(asked)["rating_pred"]
    assert (pred[0::2] == pred[1::2]).all() and (
        pred == s.score([{"text": t} for t in texts])["rating_pred"].repeat(2)
    ).all()


def test_platt_calibration_fixes_a_shifted_scorer():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(4000, generator=g) < 0.5).double()
    logits = (y * 2 - 1) * 1.5 + torch.randn(4000, generator=g, dtype=torch.float64) + 3.0  # biased towards "real"
    calib = fit_platt(logits.numpy(), y.numpy())
    p_raw, p_cal = apply_calibration(logits.numpy(), None), apply_calibration(logits.numpy(), calib)
    from reviewgen.core.metrics import ece

    assert ece(y.numpy(), p_cal) < 0.03 < ece(y.numpy(), p_raw)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="n_head"):
        RunConfig.from_dict({"generator": {"d_model": 30, "n_head": 4}}).validate()
    with pytest.raises(ConfigError, match="mle_stepz"):
        RunConfig.from_dict({"train": {"mle_stepz": 3}})
    with pytest.raises(ConfigError, match="batch_size"):
        RunConfig.from_dict({"train": {"batch_size": "many"}})
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown config key"):
        RunConfig().override({"train.nope": 1})


def test_discriminator_starts_from_generator_when_shapes_match(setup):
    cfg, tok, cats, data = setup
    same = RunConfig.from_dict(cfg.to_dict()).override(
        {
            "discriminator.d_model": cfg.generator.d_model,
            "discriminator.n_layer": cfg.generator.n_layer,
            "discriminator.n_head": cfg.generator.n_head,
            "train.mle_steps": 2,
        }
    )
    tr = GANTrainer(same, tok, cats)
    batches = TensorBatches(data, same.train.batch_size, same.train.seed)
    tr.train_step(next(batches))
    assert not torch.equal(tr.D.tok_emb.weight, tr.G.tok_emb.weight)
    tr.train_step(next(batches))  # MLE ends: D takes the pretrained LM's encoder weights
    assert tr.phase == "disc" and torch.equal(tr.D.tok_emb.weight, tr.G.tok_emb.weight)
    assert torch.equal(tr.D.blocks[0].attn.qkv.weight, tr.G.blocks[0].attn.qkv.weight)
    # a different shape (the tiny config's D has fewer layers) keeps its own initialisation
    other, b2 = new_trainer(setup, mle_steps=1)
    other.train_step(next(b2))
    assert other.phase == "disc" and not torch.equal(other.D.tok_emb.weight, other.G.tok_emb.weight)


def test_trainer_leaves_the_global_rng_alone_and_owns_its_own(setup):
    """Dropout draws from the trainer's own generator: the caller's global RNG state is untouched, and the
    training is the same whatever state the caller left the global RNG in."""
    runs = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        before = torch.get_rng_state()
        cfg, tok, cats, data = setup
        cfg = RunConfig.from_dict(cfg.to_dict()).override(
            {"generator.dropout": 0.3, "discriminator.dropout": 0.3, "train.mle_steps": 2, "train.disc_warmup_steps": 1}
        )
        tr, batches = GANTrainer(cfg, tok, cats), TensorBatches(data, cfg.train.batch_size, cfg.train.seed)
        for _ in range(4):
            tr.train_step(next(batches))
        assert torch.equal(torch.get_rng_state(), before), "the trainer changed the global RNG state"
        runs.append((params_of(tr.G), tr.state_dict()["rng_cpu"]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_time_boxed_train_leaves_a_model_that_samples_and_reruns_continue(prepared_data, tmp_path):
    """`reviewgen train --max-minutes` (tiny) stops in the MLE phase and still leaves a usable model."""
    from conftest import TINY_CONFIG
    from typer.testing import CliRunner

    from reviewgen.cli import app

    out = tmp_path / "m"
    args = [
        "train",
        "--data",
        str(prepared_data),
        "--out",
        str(out),
        "--config",
        str(TINY_CONFIG),
        "--max-minutes",
        "0.0001",
        "--set",
        "train.mle_steps=500",
        "--set",
        "train.checkpoint_every=1000",
    ]
    runner = CliRunner()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["phase"], meta["complete"], meta["role"]) == ("mle", False, "partial")
    assert (out / "calibration.json").is_file() and (out / "ngrams.npy").is_file()
    state = json.loads((out / "state" / "meta.json").read_text())
    assert state["global_step"] == meta["global_step"] >= 1
    r = runner.invoke(app, ["sample", "--model", str(out), "--title", "Echo Dot", "--rating", "5", "-n", "2"])
    assert r.exit_code == 0, r.output
    assert "p_human" in r.output or len(r.output.strip().splitlines()) >= 2

    r = runner.invoke(app, args)  # the same command again continues from OUT/state
    assert r.exit_code == 0, r.output
    steps = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["global_step"] for s in steps] == list(range(1, len(steps) + 1)), "each step logged once"
    assert steps[-1]["resumes"] == 1
    assert json.loads((out / "meta.json").read_text())["global_step"] > meta["global_step"]


def test_set_and_yaml_job_section_reach_the_configs(tmp_path):
    from reviewgen.train.job import load_train_job

    y = tmp_path / "run.yaml"
    y.write_text("train: {mle_steps: 5}\njob: {num_workers: 3, keep_checkpoints: 4, max_minutes: 2}\n")
    cfg, job = load_train_job(
        y,
        ["train.mle_steps=7", "generator.n_layer=3", "job.keep_checkpoints=5"],
        job_flags={"num_workers": None, "max_minutes": 0.5, "data_dir": tmp_path},
        run_flags={"train.seed": 9},
    )
    assert (cfg.train.mle_steps, cfg.generator.n_layer, cfg.train.seed) == (7, 3, 9)
    assert (job.num_workers, job.keep_checkpoints, job.max_minutes, job.data_dir) == (3, 5, 0.5, tmp_path)
    assert RunConfig.from_yaml(y).train.mle_steps == 5  # the run config ignores the job section
    with pytest.raises(ConfigError, match="mle_stepz"):
        load_train_job(None, ["train.mle_stepz=1"])
    y.write_text("job: {num_workerz: 2}\n")
    with pytest.raises(ConfigError, match="num_workerz"):
        load_train_job(y)
    y.write_text("trainn: {mle_steps: 2}\n")
    with pytest.raises(ConfigError, match="trainn"):
        load_train_job(y)


def test_run_config_is_frozen_and_override_copies():
    cfg = RunConfig()
    with pytest.raises(Exception):
        cfg.train.mle_steps = 3  # type: ignore[misc]
    new = cfg.override({"train.mle_steps": 3})
    assert (cfg.train.mle_steps, new.train.mle_steps) == (RunConfig().train.mle_steps, 3)
    fin = new.finalize(vocab_size=123, n_categories=5)
    assert (fin.generator.vocab_size, fin.discriminator.n_categories, new.generator.vocab_size) == (123, 5, 4000)


def test_job_script_is_the_train_command(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for flag in ("--max-minutes", "--set", "--num-workers", "--storage-path", "--stop-after-phase"):
        assert flag in r.stdout, flag
    assert len((ROOT / "jobs" / "train.py").read_text().splitlines()) < 40
