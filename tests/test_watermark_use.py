"""The keyed watermark where it is used: the scorer's, endpoint's and command line's fields, the nightly job's
refusal without a key, its run identity and actor, and the exported model's logits processor in transformers
(the scheme itself: tests/test_watermark.py)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from reviewgen.core import watermark as wmk
from reviewgen.core.sampling import SamplingParams, sample
from reviewgen.core.tokenizer import Condition, ReviewTokenizer
from reviewgen.core.watermark import Watermark, WatermarkConfig, WatermarkKey, WatermarkLogitsProcessor

_G = WatermarkConfig().gamma
ALL_GREEN_Z = math.sqrt(30 * (1 - _G) / _G)  # z of 30 distinct pairs, all green

KEY_A, KEY_B = "a-secret-key-for-tests-0001", "another-secret-key-for-tests-2"


pytestmark = pytest.mark.usefixtures("one_thread")


def _clean_tokens(tok: ReviewTokenizer) -> list[int]:
    """Tokens of one ASCII word (with or without its leading space) that encode back to themselves."""
    words = {i: tok.tok.decode([i]) for i in range(tok.vocab_size)}
    return [
        i
        for i, w in words.items()
        if w.strip().isascii()
        and w.strip().isalpha()
        and len(w.strip()) > 1
        and tok.tok.encode(w, add_special_tokens=False).ids == [i]
    ]


def signed_text(wm: Watermark, tok: ReviewTokenizer, n: int, green: bool = True) -> str:
    """A hand-built review of `n` whole-word tokens, every pair after <sep> of the given colour under wm's first
    key, that the tokenizer reads back as the same tokens (what a real model's review does)."""
    words = {i: tok.tok.decode([i]) for i in range(tok.vocab_size)}
    clean = _clean_tokens(tok)
    first = torch.tensor([i for i in clean if not words[i].startswith(" ")])
    rest = torch.tensor([i for i in clean if words[i].startswith(" ")])
    seq, prev, seen = [], tok.sep_id, set()
    for k in range(n):
        cand = first if k == 0 else rest
        ok = cand[wm.green(torch.full_like(cand, prev), cand) == green].tolist()
        t = next(t for t in ok if (prev, t) not in seen)
        seen.add((prev, t))
        seq.append(t)
        prev = t
    text = tok.tok.decode(seq)
    assert tok.review_token_lists([text])[0] == seq
    return text


@pytest.fixture(scope="module")
def signed_reviews(tiny_model):
    """Reviews of 30 tokens under the tiny model's tokenizer: all green under KEY_A, all red under KEY_A, all
    green under an unrelated key; and their conditions."""
    from reviewgen.core.checkpoint import load_checkpoint

    tok = load_checkpoint(tiny_model).tokenizer
    a, other = Watermark(WatermarkKey(KEY_A)), Watermark(WatermarkKey(KEY_A + "-unrelated"))
    texts = [signed_text(a, tok, 30), signed_text(a, tok, 30, green=False), signed_text(other, tok, 30)]
    return tok, [Condition("Wireless speaker", "Audio", 4)] * 3, texts


def _no_keys(monkeypatch):
    for name in (wmk.KEY_ENV, wmk.KEY_FILE_ENV, wmk.OLD_KEYS_ENV):
        monkeypatch.delenv(name, raising=False)


def test_scorer_fields_are_null_without_a_key_and_found_with_one(tiny_model, signed_reviews, monkeypatch):
    from reviewgen.score.scorer import Scorer

    _no_keys(monkeypatch)
    _, conds, texts = signed_reviews
    df = pd.DataFrame({"text": texts, "product_title": [c.title for c in conds]})
    scorer = Scorer(tiny_model)
    assert scorer.watermark is None
    out = scorer.score_frame(df)
    assert out["watermark_z"].isna().all() and out["ours"].isna().all()
    # rotation: the current key is B, the first text was signed with the older A
    monkeypatch.setenv(wmk.KEY_ENV, KEY_B)
    monkeypatch.setenv(wmk.OLD_KEYS_ENV, KEY_A)
    scorer = Scorer(tiny_model)
    res = scorer.score_texts(conds, texts)
    assert res["ours"] == [True, False, False] and res["watermark_key_id"][0] == WatermarkKey(KEY_A).key_id
    assert res["watermark_z"][0] == pytest.approx(ALL_GREEN_Z) and res["watermark_z"][2] < 4
    out = scorer.score_frame(df)
    assert out["ours"].dtype == "boolean" and out["ours"].tolist() == [True, False, False]
    assert out["watermark_z"].iloc[0] == pytest.approx(res["watermark_z"][0])


def test_endpoint_reports_watermark_z_and_ours(tiny_model, signed_reviews, monkeypatch):
    from reviewgen.score.scorer import Scorer
    from reviewgen.serve.api import ReviewScore
    from reviewgen.serve.config import ServeConfig
    from reviewgen.serve.scoring import replica_filter, score_reviews

    _no_keys(monkeypatch)
    monkeypatch.setenv(wmk.KEY_ENV, KEY_A)
    scorer = Scorer(tiny_model)
    _, _, texts = signed_reviews
    res = score_reviews(scorer, replica_filter(ServeConfig(), scorer), [{"text": t} for t in texts])
    assert [r["flags"]["ours"] for r in res] == [True, False, False]
    assert res[0]["signals"]["watermark_z"] == pytest.approx(ALL_GREEN_Z)
    assert all("watermark_weak" not in r["reasons"] for r in res)  # the endpoint reports, never filters by it
    assert ReviewScore.model_validate(res[0]).flags.ours is True
    scorer.watermark = None
    res = score_reviews(scorer, replica_filter(ServeConfig(), scorer), [{"text": texts[0]}])
    assert res[0]["flags"]["ours"] is None and res[0]["signals"]["watermark_z"] is None


def test_score_command_writes_the_columns(tiny_model, signed_reviews, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from reviewgen.cli import app

    _no_keys(monkeypatch)
    _, _, texts = signed_reviews
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY_B}\n{KEY_A}\n")
    args = ["score", "--model", str(tiny_model), "--input", str(tmp_path / "in.csv"), "--output"]
    res = CliRunner().invoke(app, [*args, str(tmp_path / "a.csv"), "--watermark-key-file", str(keys)])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "a.csv")["ours"].tolist() == [True, False, False]
    res = CliRunner().invoke(app, [*args, str(tmp_path / "b.csv")])
    assert res.exit_code == 0 and pd.read_csv(tmp_path / "b.csv")["ours"].isna().all()
    assert "--watermark-key-file" in CliRunner().invoke(app, ["score", "--help"]).output


def test_generate_command_refuses_without_a_key(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import reviewgen.generate.pipeline as pipeline
    from reviewgen.cli import app

    _no_keys(monkeypatch)
    calls = []
    monkeypatch.setattr(pipeline, "run_generation", lambda model, cats, out, cfg, **kw: calls.append(kw))
    base = ["generate", "--model", "m", "--catalog", "a.parquet", "--out", "o"]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 2 and "no watermark key" in res.output and not calls
    assert CliRunner().invoke(app, [*base, "--no-watermark"]).exit_code == 0 and calls[-1]["watermark"] is None
    keys = tmp_path / "keys"
    keys.write_text(KEY_A + "\n")
    res = CliRunner().invoke(app, [*base, "--watermark-key-file", str(keys)])
    assert res.exit_code == 0 and calls[-1]["watermark"].key_id == WatermarkKey(KEY_A).key_id
    assert KEY_A not in res.output and WatermarkKey(KEY_A).key_id in res.output
    monkeypatch.setenv(wmk.KEY_ENV, KEY_B)
    assert CliRunner().invoke(app, base).exit_code == 0 and calls[-1]["watermark"].key_id == WatermarkKey(KEY_B).key_id
    assert "--no-watermark" in CliRunner().invoke(app, ["generate", "--help"]).output


def test_run_identity_records_the_key_id_or_off():
    from reviewgen.generate.config import GenerateConfig
    from reviewgen.generate.run import identity_settings, run_identity

    cfg = GenerateConfig()
    off = identity_settings(cfg, {}, [0.2] * 5, None)
    on = identity_settings(cfg, {}, [0.2] * 5, None, Watermark(WatermarkKey(KEY_A)).lineage())
    rotated = identity_settings(cfg, {}, [0.2] * 5, None, Watermark(WatermarkKey(KEY_B)).lineage())
    assert off["watermark"] == "off" and on["watermark"]["key_id"] == WatermarkKey(KEY_A).key_id
    assert KEY_A not in json.dumps(on)
    ids = {run_identity("2024-01-01", "v", s, []) for s in (off, on, rotated)}
    assert len(ids) == 3


def test_nightly_actor_signs_and_accepts_only_detectable_reviews(tiny_model, tmp_path):
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.generate.actor import GeneratorActor, ShardJob
    from reviewgen.generate.config import GenerateConfig
    from reviewgen.generate.run import STATS_KEY
    from reviewgen.score.filter import FilterConfig

    cfg = GenerateConfig(filter=FilterConfig(reject_broken_text=False, check_language=False, min_tokens=1))
    # a weak mark and no held <eos>, so that some of the tiny model's reviews fall short of the threshold
    wm = Watermark(WatermarkKey(KEY_A), WatermarkConfig(delta=2.0, hold_eos_z=None))
    actor = GeneratorActor(
        ShardJob(
            config=cfg,
            run_id="t",
            model_version=load_checkpoint(tiny_model).version,
            model_dir=str(tiny_model),
            partition=str(tmp_path),
            rating_distribution=(0.2,) * 5,
            watermark=wm,
        )
    )
    products = [
        {"product_id": f"p{i:02d}", "title": f"Speaker {i}", "category": "Audio", "language": "en"} for i in range(6)
    ]
    stats = actor.write_shard(0, products)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "reviews" / "part-00000.parquet")
    counts = json.loads(table.schema.metadata[STATS_KEY])
    reviews = table.to_pandas()
    assert stats["generated"] == 18 and counts["accepted"] == len(reviews) > 0
    assert (reviews["watermark_z"] >= wm.config.threshold_z).all()
    assert all(wm.detect_texts(actor.tok, reviews["text"]).ours)
    assert set(reviews["watermark_key_id"]) == {wm.key_id}
    rejects = pq.read_table(tmp_path / "rejects" / "filter-part-00000.parquet").to_pandas()
    # both verdicts occur, and the manifest counts the rule's rejects
    assert counts["rejects_by_reason"]["watermark_weak"] == (rejects["reason"] == "watermark_weak").sum() > 0
    assert len(reviews) + len(rejects) == 18
    assert KEY_A not in repr(actor.job)


# -- export: the logits processor in transformers ---------------------------------------------------------


def test_exported_model_with_the_processor_is_detected(tiny_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.core.hf_export import export_hf
    from reviewgen.score.scorer import Scorer

    out = export_hf(tiny_model, tmp_path / "hf")
    assert "WatermarkLogitsProcessor" in (out / "README.md").read_text()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ck = load_checkpoint(tiny_model)
    tok = ck.tokenizer
    wm = Watermark(WatermarkKey(KEY_A))
    conds = [Condition(f"Speaker {i}", "Audio", 1 + i % 5) for i in range(8)]
    ids = tok.encode_prefixes(conds)
    # greedy: transformers with the processor writes the tokens of reviewgen's watermarked sampler
    params = SamplingParams(tok.max_review_len, temperature=0.0, precision="fp32")
    ours = sample(ck.generator, ids, params, eos_id=-1, pad_id=tok.pad_id, watermark=wm)
    with torch.no_grad():
        greedy = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=tok.max_review_len,
            min_new_tokens=tok.max_review_len,
            eos_token_id=None,
            pad_token_id=tok.pad_id,
            logits_processor=[WatermarkLogitsProcessor(wm)],
        )[:, ids.shape[1] :]
    assert torch.equal(ours, greedy)
    # sampled, restricted to whole-word tokens so that the text reads back as the same tokens (the tiny model
    # otherwise writes partial UTF-8), with <eos> made likely: `reviewgen score`'s detection finds every
    # decoded review when the processor holds <eos>, and misses the ones that stop too soon when it does not
    words = {i: tok.tok.decode([i]) for i in _clean_tokens(tok)}
    first, rest = (torch.full((hf.config.vocab_size,), -math.inf) for _ in range(2))
    first[[i for i, w in words.items() if not w.startswith(" ")]] = 0.0  # a review's first word, then
    rest[[i for i, w in words.items() if w.startswith(" ")]] = 0.0  # whole words after a space
    rest[tok.eos_id] = 4.0

    def allowed(prefix: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores + (first if prefix.shape[1] == ids.shape[1] else rest)

    scorer = Scorer(tiny_model)
    scorer.watermark = wm

    def signed(processor: WatermarkLogitsProcessor) -> list[str]:
        torch.manual_seed(0)
        with torch.no_grad():
            gen = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                max_new_tokens=tok.max_review_len,
                pad_token_id=tok.pad_id,
                logits_processor=[allowed, processor],
            )
        return tok.decode_reviews(gen[:, ids.shape[1] :])

    texts = signed(WatermarkLogitsProcessor(wm, eos_id=tok.eos_id, prompt_len=ids.shape[1]))
    res = scorer.score_texts(conds, texts)
    assert all(res["ours"]), (res["watermark_z"], texts)
    assert not all(scorer.score_texts(conds, signed(WatermarkLogitsProcessor(wm)))["ours"])
    scorer.watermark = Watermark(WatermarkKey(KEY_B))
    assert not any(scorer.score_texts(conds, texts)["ours"])
