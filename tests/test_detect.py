"""LM statistics on hand-built next-token distributions whose answers are known."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from reviewgen.score.combiner import Combiner, CombinerError, fit_combiner
from reviewgen.score.detect import lm_statistics


def test_all_mass_on_the_next_token_gives_rank_zero_and_full_top1():
    V, R = 50, 6
    targets = torch.tensor([[3, 7, 7, 1, 0, 0]])
    logits = torch.full((1, R, V), -30.0)
    logits[0, torch.arange(R), targets[0]] = 30.0
    mask = torch.tensor([[True, True, True, True, False, False]])
    s = lm_statistics(logits, targets, mask)
    assert s.mean_log_rank[0] == 0.0 and s.top1_share[0] == 1.0 and s.top10_share[0] == 1.0
    assert abs(s.mean_logprob[0]) < 1e-6 and s.mean_entropy[0] < 1e-6 and s.n_tokens[0] == 4


def test_ranks_entropy_and_the_binoculars_ratio():
    V = 20
    # descending logits: token k has rank k; masked positions must not count
    logits = torch.arange(V, 0, -1, dtype=torch.float32).expand(1, 3, V).clone()
    targets = torch.tensor([[0, 4, 15]])
    s = lm_statistics(logits, targets, torch.tensor([[True, True, False]]))
    assert math.isclose(s.mean_log_rank[0], (math.log1p(0) + math.log1p(4)) / 2, rel_tol=1e-6)
    assert s.top1_share[0] == 0.5 and s.top10_share[0] == 1.0
    logp = torch.log_softmax(logits[0, 0], -1)
    assert math.isclose(s.mean_logprob[0], float(logp[0] + logp[4]) / 2, rel_tol=1e-5)
    # uniform G: log-perplexity = entropy = log V, so the ratio against itself is exactly 1
    u = lm_statistics(torch.zeros(2, 4, V), torch.randint(0, V, (2, 4)), torch.ones(2, 4, dtype=torch.bool))
    assert np.allclose(u.mean_entropy, math.log(V)) and np.allclose(u.binoculars, 1.0)
    # a peaked reference makes the cross term the surprise of its favourite token under G
    ref = torch.full((1, 3, V), -30.0)
    ref[..., 2] = 30.0
    b = lm_statistics(logits, targets, torch.tensor([[True, True, False]]), ref_logits=ref)
    assert math.isclose(b.binoculars[0], -s.mean_logprob[0] / float(-logp[2]), rel_tol=1e-5)


def test_a_row_without_tokens_is_nan_not_zero():
    s = lm_statistics(torch.zeros(1, 2, 5), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool))
    assert np.isnan(s.mean_logprob[0]) and np.isnan(s.binoculars[0]) and s.n_tokens[0] == 0


def test_combiner_learns_the_direction_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    y = np.r_[np.ones(n), np.zeros(n)]
    # machine text: higher log-prob, lower log-rank; "noise" carries no signal
    sig = {
        "mean_logprob": np.r_[rng.normal(-4, 1, n), rng.normal(-2.5, 1, n)],
        "mean_log_rank": np.r_[rng.normal(2.0, 0.5, n), rng.normal(1.2, 0.5, n)],
        "noise": rng.normal(0, 1, 2 * n),
    }
    sig["mean_logprob"][0] = np.nan  # rows with a non-finite signal are left out of the fit
    c = fit_combiner(sig, y, ["mean_logprob", "mean_log_rank", "noise"])
    p = c.predict(sig)
    assert np.nanmean(p[:n]) > 0.7 > 0.3 > np.nanmean(p[n:]) and np.isnan(p[0])
    assert c.weights[0] < 0 < c.weights[1] and abs(c.weights[2]) < abs(c.weights[1]) / 5
    c.save(tmp_path / "detector.json")
    back = Combiner.load(tmp_path / "detector.json")
    assert np.allclose(back.predict(sig), p, equal_nan=True) and back.info["n"] == 2 * n - 1
    with pytest.raises(CombinerError, match=r"needs signals \['noise'\]"):
        back.predict({"mean_logprob": sig["mean_logprob"], "mean_log_rank": sig["mean_log_rank"]})


def test_two_sided_features_catch_text_too_predictable_or_too_surprising(tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    # human log-rank sits in a band; machine text is on either side of it (low temperature / gibberish)
    x = np.r_[rng.normal(2.0, 0.3, n), rng.normal(1.0, 0.3, n // 2), rng.normal(3.0, 0.3, n // 2)]
    y = np.r_[np.ones(n), np.zeros(n)]
    one = fit_combiner({"mean_log_rank": x}, y, ["mean_log_rank"])
    two = fit_combiner({"mean_log_rank": x}, y, ["mean_log_rank", "sq:mean_log_rank"], signs={"sq:mean_log_rank": -1})
    from reviewgen.core.metrics import auroc

    assert auroc(y, one.predict({"mean_log_rank": x})) < 0.7 < 0.95 < auroc(y, two.predict({"mean_log_rank": x}))
    assert two.centers["mean_log_rank"][0] == pytest.approx(2.0, abs=0.1) and two.weights[1] < 0
    back = Combiner.from_dict(json.loads(two.to_json()))
    assert np.allclose(back.predict({"mean_log_rank": x}), two.predict({"mean_log_rank": x}))
    bad = two.to_dict()
    bad["centers"] = {}
    with pytest.raises(CombinerError, match="no centre"):
        Combiner.from_dict(bad)


def test_fast_detect_discrepancy_by_hand():
    # G gives p = (0.8, 0.2) at every position; the text takes the likely token R times
    R = 5
    logits = torch.log(torch.tensor([0.8, 0.2])).expand(1, R, 2).clone()
    targets = torch.zeros(1, R, dtype=torch.long)
    s = lm_statistics(logits, targets, torch.ones(1, R, dtype=torch.bool))
    mu = 0.8 * math.log(0.8) + 0.2 * math.log(0.2)
    var = 0.8 * math.log(0.8) ** 2 + 0.2 * math.log(0.2) ** 2 - mu**2
    assert math.isclose(s.fast_detect[0], R * (math.log(0.8) - mu) / math.sqrt(R * var), rel_tol=1e-5)
    # the unlikely token every time is more surprising than G expects: negative
    stats = lm_statistics(logits, torch.ones(1, R, dtype=torch.long), torch.ones(1, R, dtype=torch.bool))
    assert stats.fast_detect[0] < 0
    # with a reference, the expectation is over the reference's next-token distribution
    ref = torch.log(torch.tensor([0.5, 0.5])).expand(1, R, 2).clone()
    r = lm_statistics(logits, targets, torch.ones(1, R, dtype=torch.bool), ref_logits=ref)
    mu_r = 0.5 * (math.log(0.8) + math.log(0.2))
    var_r = 0.5 * (math.log(0.8) ** 2 + math.log(0.2) ** 2) - mu_r**2
    assert math.isclose(r.fast_detect[0], R * (math.log(0.8) - mu_r) / math.sqrt(R * var_r), rel_tol=1e-5)


def test_detector_scores_each_language_with_its_own_combiner():
    from reviewgen.score.combiner import ANY_LANGUAGE, Detector

    def const(bias: float) -> Combiner:
        return Combiner(("x",), (0.0,), (1.0,), (0.0,), bias)

    det = Detector({ANY_LANGUAGE: const(0.0), "en": const(2.0), "zh": const(-2.0)})
    z = det.logit({"x": np.zeros(4)}, ["en", "zh", "fr", None])
    assert z.tolist() == [2.0, -2.0, 0.0, 0.0]
    again = Detector.from_dict(json.loads(json.dumps(det.to_dict())))
    assert again.logit({"x": np.zeros(2)}, ["zh", "en"]).tolist() == [-2.0, 2.0]
    # a bare combiner is not a detector document: refused, naming the source and the format it needs
    with pytest.raises(CombinerError, match="calibration.json: format 'reviewgen-combiner/3' is not 'reviewgen-det"):
        Detector.from_dict(const(1.5).to_dict(), source="calibration.json")
    with pytest.raises(CombinerError, match="by_language"):
        Detector.from_dict({"format": "reviewgen-detector/2", "by_language": {"en": const(0.0).to_dict()}})


def test_out_of_fold_logits_show_the_overfit_that_in_sample_ones_hide():
    from reviewgen.core.metrics import auroc
    from reviewgen.score.combiner import Candidate
    from reviewgen.score.detector_fit import out_of_fold_logits
    from reviewgen.score.platt import fit_platt

    rng = np.random.default_rng(1)
    n = 60  # few rows, many noise features: an in-sample fit separates them better than new rows
    y = np.r_[np.ones(n), np.zeros(n)]
    sig = {f"f{i}": rng.normal(0, 1, 2 * n) for i in range(12)}
    sig["f0"] = sig["f0"] + y
    cand = Candidate("all", tuple(sig), 1e-4)
    z_oof = out_of_fold_logits(sig, y, cand, folds=5, seed=0)
    z_in = fit_combiner(sig, y, cand.features, l2=cand.l2).logit(sig)
    assert np.isfinite(z_oof).all()
    assert auroc(y, z_oof) < auroc(y, z_in)
    # the Platt step on out-of-fold logits shrinks them; on in-sample ones it would not
    assert fit_platt(z_oof, y, l2=0.0)["scale"] < 1.0 < fit_platt(z_in, y, l2=0.0)["scale"]


def test_the_l2_strength_is_chosen_by_out_of_fold_log_loss():
    from reviewgen.core.metrics import auroc
    from reviewgen.score.combiner import Candidate
    from reviewgen.score.detector_fit import L2_SCALES, choose_l2, fit_language_combiner

    rng = np.random.default_rng(3)
    n = 400
    y = np.r_[np.ones(n), np.zeros(n)]
    nuisance, signal = rng.normal(0, 3, 2 * n), 1.5 * y + rng.normal(0, 1, 2 * n)
    # "b" carries the signal under a nuisance that "a" measures alone: only a fit free to give "a" a weight
    # of its own (a weak L2) can subtract it; a strong L2 leaves "a" near 0, as it is uncorrelated with y
    sig = {"a": nuisance, "b": signal + nuisance}
    strong = Candidate("c", ("a", "b"), 1.0)
    chosen, z, platt, losses = choose_l2(sig, y, strong, seed=0)
    assert set(losses) == {f"{k:g}" for k in L2_SCALES}
    assert chosen.l2 < strong.l2 and losses[f"{chosen.l2:g}"] < losses["1"] - 0.05
    assert auroc(y, z) > 0.8 and platt["scale"] > 0
    # the language fit records the multiple it chose, and the training log line names it
    from reviewgen.score.calibration import describe_detector
    from reviewgen.score.combiner import Detector

    groups = ["human"] * n + ["G:plain", "ref:truncated"] * (n // 2)
    fitted = fit_language_combiner(sig, y, groups, [strong], seed=0)
    assert fitted.info["l2_scale"] == chosen.l2 / strong.l2 < 1
    assert f"L2 x{chosen.l2:g}" in describe_detector(Detector({"*": fitted}).to_dict())
    # with nothing to subtract and a light L2, every strength predicts alike and the strongest is kept
    same, _, _, flat = choose_l2({"b": signal}, y, Candidate("c", ("b",), 0.01), seed=0)
    assert same.l2 == 0.01 and max(flat.values()) - min(flat.values()) < 1e-3


def test_platt_with_smoothed_targets_stays_finite_on_separated_logits():
    from reviewgen.score.platt import apply_calibration, fit_platt

    z = np.r_[np.linspace(2, 6, 50), np.linspace(-6, -2, 50)]  # perfectly separated
    y = np.r_[np.ones(50), np.zeros(50)]
    smooth = fit_platt(z, y, l2=0.0, smooth_targets=True)
    hard = fit_platt(z, y, l2=0.0)
    assert 0 < smooth["scale"] < 0.5 * hard["scale"]
    # the fitted rows average Platt's targets, 51/52 and 1/52, instead of 1 and 0
    p = apply_calibration(z, smooth)
    assert abs(p[:50].mean() - 51 / 52) < 0.01 and abs(p[50:].mean() - 1 / 52) < 0.01


def _tiny_lm(seed: int, vocab: int, block: int):
    from reviewgen.core.config import GeneratorConfig
    from reviewgen.core.models import Generator

    torch.manual_seed(seed)
    return Generator(
        GeneratorConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, d_model=32, dropout=0.0)
    ).eval()


@pytest.mark.parametrize("bf16", [False, True])
def test_chunked_projection_at_review_tokens_matches_full_logits(monkeypatch, bf16):
    """batch_lm_statistics (projection only at review tokens, in chunks, under the inference precision)
    equals lm_statistics on the models' full fp32 logits, and so do chunks of one position."""
    from types import SimpleNamespace

    import reviewgen.core.device as device
    import reviewgen.score.detect as detect
    from reviewgen.core.losses import review_logits
    from reviewgen.core.tokenizer import review_mask

    V, P, R = 300, 6, 10
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: bf16)
    G, ref = _tiny_lm(0, V, P + R), _tiny_lm(1, V, P + R)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V, (5, P + R), generator=gen)
    ids[0, P + 4] = 2  # <eos> ends row 0 early; the pads after it must not count
    ids[0, P + 5 :] = 0
    ids[3, P] = 2  # a review that is only <eos>
    ids[3, P + 1 :] = 0
    tok = SimpleNamespace(prefix_len=P, eos_id=2, pad_id=0)
    targets = ids[:, P:]
    with torch.inference_mode():
        dense = detect.lm_statistics(
            review_logits(G, ids, P), targets, review_mask(targets, 2, 0), review_logits(ref, ids, P)
        ).as_dict()
        fused = detect.batch_lm_statistics(G, tok, ids, ref).as_dict()
        monkeypatch.setattr(detect, "CHUNK_ELEMENTS", {"cpu": 1, "cuda": 1})
        tiny_chunks = detect.batch_lm_statistics(G, tok, ids, ref).as_dict()
    assert fused["n_tokens"].tolist() == [5, R, R, 1, R]
    tol = dict(rtol=2e-2, atol=2e-2) if bf16 else dict(rtol=1e-5, atol=1e-5)
    for k in dense:
        if bf16 and k in ("top1_share", "top10_share", "mean_log_rank"):
            continue  # ranks among near-equal logits may swap under bf16; checked in fp32
        np.testing.assert_allclose(fused[k], dense[k], err_msg=k, **tol)
        np.testing.assert_allclose(tiny_chunks[k], fused[k], rtol=1e-5, atol=1e-5, err_msg=k)
    # the bf16 case really ran in bf16: its log-probs move, by far less than the tolerance
    moved = np.abs(fused["mean_logprob"] - dense["mean_logprob"]).max()
    assert (moved > 1e-5) if bf16 else (moved < 1e-5)


def test_a_fit_on_three_machine_reviews_per_human_keeps_the_one_to_one_prior():
    from reviewgen.score.detector_fit import fit_detector
    from reviewgen.score.platt import prior_shift

    rng = np.random.default_rng(3)

    def draw(n_human: int, n_machine: int):
        y = np.r_[np.ones(n_human), np.zeros(n_machine)]
        sig = {
            "mean_log_rank": rng.normal(0, 1, len(y)) + 1.2 * y,
            "binoculars": rng.normal(0, 1, len(y)) + 0.6 * y,
            "mean_logprob": rng.normal(0, 1, len(y)),
        }
        return sig, y

    sig, y = draw(400, 1200)
    groups = ["human"] * 400 + ["G:plain"] * 600 + ["ref:truncated"] * 600
    assert math.isclose(prior_shift(y), math.log(3))
    det = fit_detector(sig, y, groups)
    assert math.isclose(det.combiners["*"].info["prior_shift"], math.log(3))
    # on new balanced rows, p_human averages 1/2 for a 1:1 prior (0.31 without the shift)
    test_sig, test_y = draw(4000, 4000)
    p = 1.0 / (1.0 + np.exp(-det.logit(test_sig, [None] * len(test_y))))
    assert abs(p.mean() - 0.5) < 0.03


def test_inference_precision_follows_the_hardware(monkeypatch):
    import reviewgen.core.device as device

    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    with device.autocast(cpu, device.inference_dtype(cpu)):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        # training keeps fp32 on CPU, also inside an inference region
        with device.autocast(cpu, device.training_dtype(cpu)):
            assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    with device.autocast(cpu, device.inference_dtype(cpu)):
        assert not torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")  # nothing left behind
    assert device.training_dtype(torch.device("cuda")) == torch.bfloat16 == device.inference_dtype(torch.device("cuda"))


def _with_lookalike_humans(rng, n: int, share: float):
    """One signal; a `share` of the human rows is drawn from the machine rows' distribution."""
    lookalike = rng.random(n) < share
    human = np.where(lookalike, rng.normal(-2.0, 1.0, n), rng.normal(2.0, 1.0, n))
    return {"mean_log_rank": np.r_[human, rng.normal(-2.0, 1.0, n)]}, np.r_[np.ones(n), np.zeros(n)]


def test_a_floor_keeps_lookalike_human_reviews_from_scores_near_zero():
    """Short, generic human reviews read like machine text. With 6% of the humans drawn from the machine
    distribution, a text that looks machine-written is human about 6% of the time: the floored Platt step
    says so, the plain one claims near-certainty, and the floor also lowers the ECE on new rows."""
    from reviewgen.core.metrics import ece
    from reviewgen.score.combiner import Candidate
    from reviewgen.score.detector_fit import fit_language_combiner
    from reviewgen.score.platt import fit_platt

    rng = np.random.default_rng(5)
    sig, y = _with_lookalike_humans(rng, 3000, 0.06)
    z = sig["mean_log_rank"]
    floored, plain = fit_platt(z, y, l2=0.0, floor=True), fit_platt(z, y, l2=0.0)
    assert 0.045 < floored["floor"] < 0.07 and floored["ceiling"] > 0.995 and "floor" not in plain
    c = fit_language_combiner(
        sig, y, ["human"] * 3000 + ["G:plain"] * 3000, [Candidate("log-rank", ("mean_log_rank",), 0.01)]
    )
    assert 0.045 < c.floor < 0.07 and c.ceiling > 0.995 and c.offset == pytest.approx(0.0, abs=1e-12)
    new, y_new = _with_lookalike_humans(rng, 20000, 0.06)
    p = c.predict(new)
    machine_like = new["mean_log_rank"] < -2.0
    # among texts that look machine-written, the human share and the mean p_human agree
    assert abs(p[machine_like].mean() - y_new[machine_like].mean()) < 0.015
    no_floor = replace(c, floor=0.0, ceiling=1.0)
    p0 = no_floor.predict(new)
    assert p0[machine_like].mean() < 0.5 * y_new[machine_like].mean()
    assert ece(y_new, p) < ece(y_new, p0)


def test_a_floored_combiner_round_trips_and_other_formats_are_refused(tmp_path):
    from reviewgen.score.combiner import COMBINER_FORMAT, Detector

    c = Combiner(("mean_log_rank",), (0.0,), (1.0,), (2.0,), 0.5, floor=0.02, ceiling=0.99, offset=math.log(3))
    x = {"mean_log_rank": np.array([-40.0, -1.0, 0.0, 3.0, 40.0, np.nan])}
    z = c.logit(x)
    q = 0.02 + 0.97 / (1.0 + np.exp(-(2.0 * x["mean_log_rank"][:5] + 0.5)))
    assert np.allclose(z[:5], np.log(q / (1 - q)) + math.log(3)) and np.isnan(z[5])
    # the bounds hold the logit in [logit(floor), logit(ceiling)] (plus the offset) however far out a text is
    assert np.allclose(z[[0, 4]] - math.log(3), [math.log(0.02 / 0.98), math.log(0.99 / 0.01)])
    only_floor = replace(c, ceiling=1.0)
    assert not np.allclose(only_floor.logit(x)[:5], z[:5])
    assert only_floor.logit(x)[4] > 40 * 2 - 1  # no ceiling: unbounded above
    d = c.to_dict()
    plain = Combiner(c.features, c.mean, c.scale, c.weights, c.bias)
    assert d["format"] == plain.to_dict()["format"] == COMBINER_FORMAT  # one tag, whatever the fields
    back = Combiner.from_dict(json.loads(json.dumps(d)))
    assert np.allclose(back.logit(x), z, equal_nan=True)
    assert np.allclose(Detector({"*": back}).logit(x, ["en"] * 6), z, equal_nan=True)
    for old in ("reviewgen-detector/1", "reviewgen-combiner/2"):  # tags of a combiner no release wrote
        with pytest.raises(CombinerError, match=f"combiner.json: format '{old}' is not"):
            Combiner.from_dict(dict(d, format=old), source="combiner.json")
    with pytest.raises(CombinerError, match="floor"):
        Combiner.from_dict(dict(d, floor=0.5))


def test_out_of_domain_moves_a_human_claim_to_the_prior_on_a_hand_built_shift(tmp_path):
    """Signals far from every human fit row get out_of_domain 1 and p_human 0.5 where the combiner would
    claim a human; typical human rows stay in the domain; a machine verdict stands wherever it is."""
    from reviewgen.score.combiner import COMBINER_FORMAT, fit_domain

    rng = np.random.default_rng(0)
    human = {"a": rng.normal(0, 1, 400), "b": rng.normal(0, 1, 400)}
    machine = {"a": rng.normal(-3, 1, 400), "b": rng.normal(0, 1, 400)}
    sig = {k: np.r_[human[k], machine[k]] for k in human}
    y = np.r_[np.ones(400), np.zeros(400)]
    c = fit_combiner(sig, y, ("a", "b"), l2=1e-3)
    domain, radius = fit_domain(sig, y, ("a", "b"), 0.99)
    assert abs(domain["a"][0]) < 0.2 and 0.8 < domain["a"][1] < 1.2 and radius > 1.0
    d = replace(c, domain=domain, domain_radius=radius)
    fresh = {"a": rng.normal(0, 1, 2000), "b": rng.normal(0, 1, 2000)}
    assert (d.out_of_domain(fresh) > 0).mean() < 0.03  # new human rows: in the domain
    assert np.allclose(d.predict(fresh)[d.out_of_domain(fresh) == 0], c.predict(fresh)[d.out_of_domain(fresh) == 0])
    far = {"a": np.full(5, 9.0), "b": np.full(5, 9.0)}  # "more human than human" on a, far off on b
    assert c.predict(far).min() > 0.99
    assert np.allclose(d.out_of_domain(far), 1.0) and np.allclose(d.predict(far), 0.5)
    far_machine = {"a": np.full(5, -12.0), "b": np.full(5, 0.0)}
    assert np.allclose(d.predict(far_machine), c.predict(far_machine)) and d.predict(far_machine).max() < 0.01
    # plain data with the combiner's format tag
    doc = json.loads(d.to_json())
    assert doc["format"] == COMBINER_FORMAT and Combiner.from_dict(doc).out_of_domain(far).tolist() == [1.0] * 5
    with pytest.raises(CombinerError, match="positive radius"):
        Combiner.from_dict({**doc, "domain_radius": 0.0})


def test_machine_thresholds_accuse_at_most_their_share_of_humans():
    from reviewgen.core.metrics import machine_threshold, tpr_at_fpr
    from reviewgen.score.thresholds import machine_thresholds

    rng = np.random.default_rng(1)
    h, m = rng.uniform(0, 1, 1000), rng.uniform(0, 0.2, 500)
    t = machine_threshold(h, 0.01)
    assert (h < t).mean() <= 0.01 and (h <= t).mean() >= 0.01
    assert tpr_at_fpr(np.r_[np.ones(1000), np.zeros(500)], np.r_[h, m], 0.01) == pytest.approx((m < t).mean())
    th = machine_thresholds(np.r_[h, h[:100] * 0.5], ["en"] * 1000 + ["zh"] * 100)
    assert set(th) == {"*", "en", "zh"} and th["en"]["machine_1pct"] == pytest.approx(t)
    assert th["zh"]["machine_1pct"] < th["zh"]["machine_5pct"]
    with pytest.raises(ValueError, match="finite"):
        machine_threshold([0.5, float("nan")], 0.01)


def test_thresholds_from_out_of_fold_scores_keep_to_their_share_of_new_humans():
    """A small fit set that a combiner separates in sample puts every human near p = 1, so a threshold taken
    there accuses far more new humans than its share; the out-of-fold one does not."""
    from reviewgen.core.metrics import machine_threshold
    from reviewgen.score.combiner import Candidate
    from reviewgen.score.detector_fit import out_of_fold_logits
    from reviewgen.score.platt import apply_calibration, fit_platt, prior_shift
    from reviewgen.score.thresholds import oof_thresholds

    rng = np.random.default_rng(3)
    names = tuple(f"f{i}" for i in range(40))

    def draw(n, shift):
        return {k: rng.normal(shift if k == "f0" else 0.0, 1.0, n) for k in names}

    h, m = draw(40, 0.8), draw(240, -0.8)
    sig, y = {k: np.r_[h[k], m[k]] for k in names}, np.r_[np.ones(40), np.zeros(240)]
    shift = prior_shift(y)
    z = out_of_fold_logits(sig, y, Candidate("noisy", names, 1e-4), seed=0)
    platt = fit_platt(z, y, smooth_targets=True, floor=True)
    oof = oof_thresholds(z, y, platt, shift)
    c = fit_combiner(sig, y, names, l2=1e-4)
    naive = machine_threshold(1.0 / (1.0 + np.exp(-(c.logit(sig)[y == 1] + shift))), 0.05)
    new = draw(4000, 0.8)
    assert (1.0 / (1.0 + np.exp(-(c.logit(new) + shift))) < naive).mean() > 0.15  # 3x its share or more
    q = np.clip(apply_calibration(c.logit(new), platt), 1e-12, 1 - 1e-12)  # the scorer's Platt-scaled p_human
    p_new = 1.0 / (1.0 + np.exp(-(np.log(q / (1 - q)) + shift)))
    assert oof["machine_1pct"] <= oof["machine_5pct"] and (p_new < oof["machine_5pct"]).mean() <= 0.05
