"""The scorer on the tiny model: the detector's direction, the signals the Serve replica returns, texts that
get no score, and model directories from before the detector (D alone)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.encoding import conditions
from reviewgen.data.corpus import load_split
from reviewgen.score.combiner import ANY_LANGUAGE, Combiner, Detector
from reviewgen.score.fakes import DETECTOR_SETTINGS, sample_fakes
from reviewgen.score.filter import FilterConfig, ReviewFilter
from reviewgen.score.scorer import REPORTED_SIGNALS, Scorer
from reviewgen.serve.scoring import score_reviews


@pytest.fixture(scope="module")
def scorer(tiny_model) -> Scorer:
    return Scorer(tiny_model, device="cpu")


def test_model_dir_holds_the_detector_and_reference(tiny_model, scorer) -> None:
    calib = json.loads((tiny_model / "calibration.json").read_text())
    assert calib["detector"]["format"] == "reviewgen-detector/2"
    det = Detector.from_dict(calib["detector"])
    assert (tiny_model / "reference.safetensors").is_file() and scorer.ref is not None
    assert (tiny_model / "wordlm.npz").is_file() and scorer.wordlm is not None
    assert scorer.detector is not None and scorer.mode.startswith("detector: ")
    # the fit never uses a signal against its known direction
    signs = {
        "d_logit": 1,
        "mean_logprob": -1,
        "mean_log_rank": 1,
        "binoculars": 1,
        "top10_share": -1,
        "fast_detect": -1,
        "trigram_seen": 1,
        "bigram_seen": 1,
        "ngram_logprob": 1,
        "mixed_script": -1,
    }
    for c in det.combiners.values():
        assert c.info["candidate"] in c.info["worst_held_out_auroc"]
        assert all(signs.get(f, 0) * w >= 0 for f, w in zip(c.features, c.weights))


def test_samples_from_g_score_lower_than_real_reviews(tiny_model, prepared_data, scorer) -> None:
    test = load_split(prepared_data, "test")
    rows = test.sample(n=96, random_state=1)
    conds = conditions(rows)
    fakes, fake_conds = sample_fakes([scorer.G], scorer.tok, conds, DETECTOR_SETTINGS, seed=5, key_prefix="t")
    real = scorer.score_texts(conds, rows["text"].astype(str).tolist())
    fake = scorer.score_texts(fake_conds, fakes)
    assert np.nanmean(real["p_human"]) > np.nanmean(fake["p_human"])
    assert np.isfinite(real["p_human"]).mean() > 0.9


def test_unscorable_texts_get_no_score_and_a_reason(scorer) -> None:
    reviews = [
        {"text": None},
        {"text": ""},
        {"text": "a" * 100_000},
        {"text": "\U0001f600" * 50},
        {"text": "a" * 300},
        {"text": "Works well, the battery lasts two days."},
    ]
    res = scorer.score(reviews)
    assert res["reason"] == ["empty", "empty", "too_long", "no_words", "repetitive", None]
    assert np.isnan(res["p_human"][:5]).all() and 0.0 < res["p_human"][5] < 1.0
    assert (res["rating_pred"][:5] == -1).all() and 1 <= res["rating_pred"][5] <= 5


def test_score_frame_writes_signals_and_null_scores(scorer) -> None:
    import pandas as pd

    df = pd.DataFrame(
        {"text": [None, "Great fit, soft fabric and true to size.", "\U0001f44d" * 50], "title": ["Shirt"] * 3}
    )
    out = scorer.score_frame(df)
    assert {"p_human", "rating_pred", *REPORTED_SIGNALS, "score_reason"} <= set(out.columns)
    assert [None if pd.isna(x) else x for x in out["score_reason"]] == ["empty", None, "no_words"]
    assert out["p_human"].isna().tolist() == [True, False, True]
    assert out["rating_pred"].isna().tolist() == [True, False, True]
    assert np.isfinite(out.loc[1, ["d_prob", "mean_logprob", "mean_log_rank", "binoculars"]].astype(float)).all()


def test_the_replica_result_carries_signals(scorer) -> None:
    flt = ReviewFilter(FilterConfig(check_copy=False), scorer.tok)
    res = score_reviews(
        scorer,
        flt,
        [{"text": "Nice phone case, fits well and feels sturdy.", "language": "en"}, {"text": "\U0001f600" * 50}],
    )
    ok, bad = res
    assert set(ok["signals"]) == set(REPORTED_SIGNALS) and 0.0 < ok["p_human"] < 1.0
    # every model signal is a number; watermark_z is null without a watermark key (tests/test_watermark.py)
    assert all(isinstance(v, float) and math.isfinite(v) for k, v in ok["signals"].items() if k != "watermark_z")
    assert ok["signals"]["watermark_z"] is None
    assert ok["signals"]["mean_logprob"] < 0.0 < ok["signals"]["mean_log_rank"]
    assert bad["p_human"] is None and bad["signals"] is None and bad["reasons"][0] == "no_words"


def test_model_without_detector_or_reference_falls_back_to_d(tiny_model, tmp_path) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_model, old, ignore=shutil.ignore_patterns("mle", "state"))
    (old / "reference.safetensors").unlink()
    calib = json.loads((old / "calibration.json").read_text())
    calib.pop("detector")
    (old / "calibration.json").write_text(json.dumps(calib))
    s = Scorer(old, device="cpu")
    assert s.detector is None and s.mode == "discriminator-only (model predates LM statistics)"
    res = s.score([{"text": "Sturdy and cheap, recommended."}, {"text": None}])
    assert 0.0 < res["p_human"][0] < 1.0 and np.isnan(res["p_human"][1])
    assert np.isclose(res["p_human"][0], res["d_prob"][0]) and np.isnan(res["binoculars"][0])
    # a detector without the reference network it was fitted with is not used either
    (old / "calibration.json").write_text((tiny_model / "calibration.json").read_text())
    assert Scorer(old, device="cpu").mode == "discriminator-only (model has no reference.safetensors)"
    assert load_checkpoint(old).reference_state is None


def test_a_detector_reading_word_statistics_needs_wordlm(tiny_model, tmp_path) -> None:
    m = tmp_path / "m"
    shutil.copytree(tiny_model, m, ignore=shutil.ignore_patterns("mle", "state"))
    det = Detector({ANY_LANGUAGE: Combiner(("trigram_seen", "d_logit"), (0.5, 0.0), (0.2, 1.0), (3.0, 0.0), 0.0)})
    calib = json.loads((m / "calibration.json").read_text())
    (m / "calibration.json").write_text(json.dumps({**calib, "detector": det.to_dict()}))
    s = Scorer(m, device="cpu")
    assert s.mode.startswith("detector: trigram_seen")
    res = s.score([{"text": "Works well, the battery lasts two days.", "language": "en"}])
    assert np.isclose(res["p_human"][0], 1 / (1 + np.exp(-3.0 * (res["trigram_seen"][0] - 0.5) / 0.2)))
    (m / "wordlm.npz").unlink()
    assert Scorer(m, device="cpu").mode == "discriminator-only (model has no wordlm.npz)"


def test_signals_through_http(scorer) -> None:
    from starlette.testclient import TestClient

    from reviewgen.serve.api import make_api
    from reviewgen.serve.config import ServeConfig

    flt = ReviewFilter(FilterConfig(check_copy=False), scorer.tok)

    class Backend:  # the ScoreBackend protocol of reviewgen.serve.api, without Ray
        async def readiness(self):
            return None

        async def model_info(self):
            return {"model_version": scorer.version, "detector": scorer.mode}

        async def stats(self):
            return {}

        async def score(self, reviews):
            return {"model_version": scorer.version, "results": score_reviews(scorer, flt, reviews)}

        def record_request(self, route, status, seconds) -> None:
            pass

    client = TestClient(make_api(Backend(), ServeConfig(), token=None))
    r = client.post(
        "/v1/score",
        json={"reviews": [{"text": "Fits well and the colour is as pictured."}, {"text": "\U0001f600" * 50}]},
    )
    assert r.status_code == 200, r.text
    ok, bad = r.json()["results"]
    assert set(ok["signals"]) == set(REPORTED_SIGNALS) and 0.0 < ok["p_human"] < 1.0
    assert bad["p_human"] is None and bad["signals"] is None and bad["reasons"][0] == "no_words"


def test_length_batches_cover_every_row_once_and_cut_only_padding(scorer, prepared_data) -> None:
    from reviewgen.core.encoding import length_batches

    rows = load_split(prepared_data, "test").head(40)
    conds, texts = conditions(rows), rows["text"].astype(str).tolist()
    full = scorer.tok.encode_examples(conds, texts)
    seen = []
    for idx, ids in length_batches(scorer.tok, conds, texts, batch_size=16):
        seen.extend(idx.tolist())
        assert ids.shape[1] <= full.shape[1] and (ids == full[idx, : ids.shape[1]]).all()
        assert (full[idx, ids.shape[1] :] == scorer.tok.pad_id).all()
    assert sorted(seen) == list(range(len(texts)))


def test_signals_do_not_depend_on_batching_or_order(scorer, prepared_data) -> None:
    from reviewgen.score.signals import review_signals

    rows = load_split(prepared_data, "test").head(24)
    conds, texts = conditions(rows), rows["text"].astype(str).tolist()
    args = dict(ref=scorer.ref, wordlm=scorer.wordlm)
    a = review_signals(scorer.D, scorer.G, scorer.tok, conds, texts, batch_size=64, **args)
    one = review_signals(scorer.D, scorer.G, scorer.tok, conds, texts, batch_size=1, **args)
    perm = np.random.default_rng(0).permutation(len(texts))
    b = review_signals(
        scorer.D, scorer.G, scorer.tok, [conds[i] for i in perm], [texts[i] for i in perm], batch_size=5, **args
    )
    for k in a:
        np.testing.assert_allclose(a[k], one[k], rtol=1e-4, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(a[k][perm], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert np.isfinite(a["fast_detect"]).all() and np.isfinite(a["trigram_seen"]).all()


def test_weights_cast_once_for_inference_give_the_same_scores(tiny_model, scorer, prepared_data) -> None:
    """A Scorer that loads its own model stores its networks' matmul weights (not the tied embedding) and
    the LM heads in the inference dtype once; its scores equal those of a scorer over shared fp32
    networks, which autocast casts at every call."""
    import torch
    from torch import nn

    from reviewgen.core.device import inference_dtype

    dtype = inference_dtype(scorer.device)
    linears = [m for net in (scorer.D, scorer.G, scorer.ref) for m in net.modules() if isinstance(m, nn.Linear)]
    tied = scorer.G.lm_head
    assert tied.weight is scorer.G.tok_emb.weight and tied.weight.dtype == torch.float32
    assert all(m.weight.dtype == dtype for m in linears if m is not tied and m is not scorer.ref.lm_head)
    assert all(h.dtype == dtype for h in scorer._heads)
    shared = load_checkpoint(tiny_model)
    plain = Scorer.from_checkpoint(shared)
    assert all(m.weight.dtype == torch.float32 for m in shared.discriminator.modules() if isinstance(m, nn.Linear))
    rows = load_split(prepared_data, "test").head(40)
    reviews = [
        {"text": t, "product_title": p, "category": c, "language": lang}
        for t, p, c, lang in zip(rows["text"], rows["product_title"], rows["category"], rows["language"])
    ]
    a, b = scorer.score(reviews), plain.score(reviews)
    for k in ("p_human", "logit", *REPORTED_SIGNALS):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_the_stored_thresholds_flag_machine_reviews(tiny_model, prepared_data) -> None:
    """calibration.json stores p_human thresholds for 1% and 5% false accusations of the validation humans;
    the scorer flags each review against its language's, in score_texts, score_frame and the replica."""
    import pandas as pd

    calib = json.loads((tiny_model / "calibration.json").read_text())
    th = calib["thresholds"]
    assert ANY_LANGUAGE in th and all(0.0 <= t["machine_1pct"] <= t["machine_5pct"] <= 1.0 for t in th.values())
    sc = Scorer(tiny_model, device="cpu")
    rows = load_split(prepared_data, "test").head(40)
    res = sc.score_texts(conditions(rows), rows["text"].astype(str).tolist())
    for i, (p, lang) in enumerate(zip(res["p_human"], rows["language"])):
        t = th.get(lang, th[ANY_LANGUAGE])
        assert res["machine_1pct"][i] == bool(p < t["machine_1pct"])
        assert res["machine_5pct"][i] == bool(p < t["machine_5pct"])
    sc.thresholds = {ANY_LANGUAGE: {"machine_1pct": 1.0, "machine_5pct": 0.0}}  # flag all / none
    out = sc.score_frame(pd.DataFrame({"text": ["Soft and warm, true to size.", None], "language": ["en", "en"]}))
    assert out["machine_1pct"].tolist()[0] is True and out["machine_5pct"].tolist()[0] is False
    assert out["machine_1pct"].isna().tolist() == [False, True]
    flt = ReviewFilter(FilterConfig(check_copy=False), sc.tok)
    r = score_reviews(sc, flt, [{"text": "Soft and warm, true to size.", "language": "en"}])[0]
    assert r["flags"]["machine_1pct"] is True and r["flags"]["machine_5pct"] is False
    assert 0.0 <= r["signals"]["out_of_domain"] <= 1.0
