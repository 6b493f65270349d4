"""The one output filter on hand-built reviews whose verdicts are known, on a trained model's copies, and the
same verdicts from each of its users (the Serve replica, `reviewgen evaluate`) on a shared set of tricky reviews;
the copy threshold's one policy (`FilterConfig.resolved`) and the one builder every stage uses (`from_model`)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.config import ConfigError
from reviewgen.core.memorization import NGramIndex
from reviewgen.core.tokenizer import Condition, ReviewTokenizer
from reviewgen.data.corpus import load_split
from reviewgen.evaluate.config import EvalConfig
from reviewgen.evaluate.filtering import filter_verdicts
from reviewgen.generate.actor import GeneratorActor, ShardJob
from reviewgen.generate.config import GenerateConfig
from reviewgen.score.filter import FilterConfig, ReviewFilter
from reviewgen.score.scorer import Scorer
from reviewgen.serve.config import ServeConfig
from reviewgen.serve.scoring import replica_filter, score_reviews

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "the battery lasts all day and the screen is bright and sharp in sunlight",
    "great tablet for kids, sturdy case and easy parental controls",
] * 20


@pytest.fixture(scope="module")
def tok():
    return ReviewTokenizer.train(TRAIN + ["这个酒店很好，服务周到"] * 5, 400, 16, 48, min_frequency=1)


def test_each_rule_and_its_order(tok):
    index = NGramIndex.build(tok.review_token_lists(TRAIN[:2]), n=4)
    f = ReviewFilter(FilterConfig(min_score=0.5, max_copy_span=6, max_chars=200), tok, index)
    cases = {
        "": ("empty",),
        "ok \ufffd broken": ("broken_text",),
        "hi": ("too_short",),
        "x" * 201: ("too_long",),
        "mail me at bob@example.com for a deal": ("pii",),
        "great value, write to <email> now": ("pii",),
        "这个酒店很好，服务周到，下次还来": ("language_mismatch",),
        TRAIN[0]: ("memorized",),
        "a fine little speaker for the price": ("low_score",),
    }
    texts = list(cases)
    verdicts = f.check(texts, languages=["en"] * len(texts), scores=[0.2 if "speaker" in t else 0.9 for t in texts])
    assert {t: v.reasons for t, v in zip(texts, verdicts)} == cases
    copied = verdicts[texts.index(TRAIN[0])]
    assert copied.copy_span == len(tok.review_token_lists([TRAIN[0]])[0]) and copied.copied
    assert copied.flags() == {
        "copy_span": copied.copy_span,
        "copied": True,
        "pii": dict.fromkeys(("email", "phone", "url", "handle"), 0),
        "has_pii": False,
    }
    assert f.check([None])[0].reason == "empty"


def test_unchecked_rules_report_none(tok):
    f = ReviewFilter(FilterConfig(check_pii=False, check_copy=False), tok, None)
    v = f.check(["call 555-123-4567 for this great lamp"])[0]
    assert v.accepted and v.copy_span is None and v.copied is None and v.pii is None and v.has_pii is None
    with pytest.raises(ValueError, match="below the model's n-gram size"):
        ReviewFilter(FilterConfig(max_copy_span=2), tok, NGramIndex.build([[1, 2, 3, 4]], n=4))


def test_max_copy_span_policy_is_resolved_in_one_place(tok):
    """None means the index's n; a span below n is an error naming the setting and n; a larger span, no index
    or the copy check off leave the rules as they are."""
    assert FilterConfig(max_copy_span=None).resolved(8).max_copy_span == 8
    assert FilterConfig(max_copy_span=12).resolved(8).max_copy_span == 12
    assert FilterConfig(max_copy_span=None).resolved(None).max_copy_span is None
    assert FilterConfig(max_copy_span=3, check_copy=False).resolved(8).max_copy_span == 3
    with pytest.raises(ConfigError, match="max_copy_span 5 is below the model's n-gram size 8"):
        FilterConfig(max_copy_span=5).resolved(8)
    index = NGramIndex.build(tok.review_token_lists(TRAIN[:2]), n=4)
    f = ReviewFilter(FilterConfig(max_copy_span=None), tok, index)
    assert f.max_copy_span == f.config.max_copy_span == 4
    v = f.check([TRAIN[0]])[0]
    assert v.copied and v.max_copy_span == 4
    assert ReviewFilter(FilterConfig(max_copy_span=None, check_copy=False), tok, index).max_copy_span is None


def test_from_model_reads_the_index_of_the_model_directory(model_parts, tmp_path):
    """`from_model` applies the policy against the directory's index (before reading it); a directory
    without ngrams.npy, or the copy check off, gives no copy check."""
    ck, _ = model_parts
    f = ReviewFilter.from_model(ck.path, ck.tokenizer, FilterConfig(max_copy_span=None))
    assert f.ngrams is not None and f.max_copy_span == f.ngrams.n == 8
    with pytest.raises(ConfigError, match="max_copy_span 4 is below the model's n-gram size 8"):
        ReviewFilter.from_model(ck.path, ck.tokenizer, FilterConfig(max_copy_span=4))
    assert ReviewFilter.from_model(tmp_path, ck.tokenizer, FilterConfig(max_copy_span=4)).ngrams is None
    off = ReviewFilter.from_model(ck.path, ck.tokenizer, FilterConfig(max_copy_span=4, check_copy=False))
    assert off.ngrams is None and off.check([NOVEL])[0].copied is None


def test_every_stage_builds_its_filter_with_from_model():
    """Serve, evaluate and the nightly job build their filter with `ReviewFilter.from_model`, and only the
    filter module reads an n-gram index or constructs a `ReviewFilter` directly."""
    calls: dict[str, set[str]] = {}
    for f in (ROOT / "reviewgen").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                name = (
                    f"{fn.value.id}.{fn.attr}"
                    if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name)
                    else fn.id
                    if isinstance(fn, ast.Name)
                    else None
                )
                calls.setdefault(name, set()).add(f.relative_to(ROOT).as_posix())
    assert calls["ReviewFilter.from_model"] == {
        "reviewgen/serve/scoring.py",
        "reviewgen/evaluate/run.py",
        "reviewgen/generate/actor.py",
    }
    assert calls["NGramIndex.load"] == {"reviewgen/score/filter.py"}
    assert calls.get("ReviewFilter", set()) <= {"reviewgen/score/filter.py"}


# -- the filter on a trained model: planted copies, PII, and one verdict everywhere -------------------------

NOVEL = "zqx vortek plimbus ardent quarlow fenix dromble quaint wuzzle orb"
TRAINING_COPY = "<<a training review, verbatim>>"  # replaced by a real training review of the model
# (name, text, language): reviews whose verdicts the filter's users must agree on. A text holding
# TRAINING_COPY gets a training review of the model in its place (`materialize`).
TRICKY_REVIEWS = [
    ("empty", "", "en"),
    ("whitespace", "  \n\t  ", "en"),
    ("replacement_char", "the lamp is bright \ufffd\ufffd and cheap", "en"),
    ("pii_email", "Great phone, mail me at john.doe@example.com for details", "en"),
    ("pii_phone_en", "Call the seller at 555-123-4567 if it breaks", "en"),
    ("pii_phone_zh", "质量很好，有问题请联系13812345678谢谢", "zh"),
    ("pii_email_zh", "客服邮箱是service@shop.cn，回复很快", "zh"),
    ("pii_placeholder", "great value, write to <email> now", "en"),
    ("pii_placeholder_phone", "ring <phone> for a refund, they were kind", "en"),
    ("copied", TRAINING_COPY, "en"),
    ("copied_inside_novel", f"{NOVEL} {TRAINING_COPY} {NOVEL}", "en"),
    ("wrong_language_zh_as_en", "这个酒店很好，服务周到，下次还来", "en"),
    ("wrong_language_en_as_zh", "the battery lasts all day and charges fast", "zh"),
    ("very_long", "this desk lamp is bright, sturdy and cheap. " * 120, "en"),
    ("too_short", "ok", "en"),
    ("novel", NOVEL, "en"),
    ("no_language_given", "the zipper on this quxmarine bag snapped but support sent a spare", None),
]


def materialize(training_review: str) -> list[tuple[str, str, str | None]]:
    """TRICKY_REVIEWS with TRAINING_COPY replaced by `training_review`."""
    return [(name, text.replace(TRAINING_COPY, training_review), lang) for name, text, lang in TRICKY_REVIEWS]


@pytest.fixture(scope="module")
def model_parts(tiny_model, prepared_data):
    ck = load_checkpoint(tiny_model)
    train = load_split(prepared_data, "train")
    ids = ck.tokenizer.review_token_lists(train["text"].astype(str).tolist())
    # an English training review long enough to hold a copy of the index's span
    i = next(k for k, t in enumerate(ids) if 20 <= len(t) < 60 and train["language"].iloc[k] == "en")
    return ck, str(train["text"].iloc[i])


def test_flags_planted_copy_and_passes_novel_text(model_parts) -> None:
    ck, review = model_parts
    f = ReviewFilter.from_model(ck.path, ck.tokenizer, FilterConfig(max_copy_span=8))
    planted, novel = f.check([f"{NOVEL} {review} {NOVEL}", NOVEL], languages=["en", "en"])
    assert planted.reasons == ("memorized",) and planted.copy_span >= 8 and planted.copied
    assert novel.accepted and novel.copy_span < 8 and novel.copied is False


def test_judge_reads_the_scorers_result_and_puts_its_reason_first(tok):
    f = ReviewFilter(FilterConfig(min_score=0.5, check_copy=False, require_watermark=True), tok)
    text = "a fine little speaker for the price"
    scored = {"p_human": np.array([0.9, 0.2, np.nan]), "reason": [None, None, "no_words"], "ours": [True, True, False]}
    judged = f.judge(scored, [text] * 3, ["en"] * 3)
    assert [j.p_human for j in judged] == [0.9, 0.2, None]
    assert [j.reasons for j in judged] == [(), ("low_score",), ("no_words", "watermark_weak")]
    assert [j.verdict.reasons for j in judged] == [(), ("low_score",), ("watermark_weak",)]


@pytest.mark.parametrize(
    "text,kind",
    [
        ("Great phone, mail me at john.doe@example.com for details", "email"),
        ("Call the seller at 555-123-4567 if it breaks", "phone"),
        ("质量很好，有问题请联系13812345678谢谢", "phone"),
        ("客服邮箱是service@shop.cn，回复很快", "email"),
    ],
)
def test_pii_in_english_and_chinese(tok, text: str, kind: str) -> None:
    v = ReviewFilter(FilterConfig(check_copy=False), tok).check([text])[0]
    assert "pii" in v.reasons and v.pii[kind] == 1 and v.has_pii


def test_replica_evaluate_and_nightly_give_the_same_verdicts(tiny_model, model_parts, tmp_path) -> None:
    """The Serve replica's scoring function, `reviewgen evaluate`'s filter and the nightly job's actor agree
    on every tricky review, under their default settings."""
    ck, review = model_parts
    cases = materialize(review)
    names, texts, langs = zip(*cases)
    scorer = Scorer(tiny_model)
    served = score_reviews(
        scorer, replica_filter(ServeConfig(), scorer), [{"text": t, "language": lang} for t, lang in zip(texts, langs)]
    )
    evaluated = filter_verdicts(
        ReviewFilter.from_model(ck.path, ck.tokenizer, EvalConfig().filter_config()), texts, langs
    )
    unscorable = scorer.score([{"text": t, "language": lang} for t, lang in zip(texts, langs)])["reason"]
    for name, s, v, why in zip(names, served, evaluated, unscorable):
        # the endpoint's flags are the filter's, plus the scorer's own (machine_*pct, ours)
        assert s["reasons"] == v.reasons_with(why) and {k: s["flags"][k] for k in v.flags()} == v.flags(), name
        assert (s["p_human"] is None) if why else (0.0 <= s["p_human"] <= 1.0 and 1 <= s["rating_pred"] <= 5), name
    # the nightly actor rejects a generated review with the first of the same reasons
    actor = GeneratorActor(
        ShardJob(
            config=GenerateConfig(),
            run_id="t",
            model_version=ck.version,
            model_dir=str(tiny_model),
            partition=str(tmp_path),
            rating_distribution=(0.2,) * 5,
        )
    )
    conds = [
        Condition(title="", category="", rating=None, sentiment="neutral", language=lang or "en") for lang in langs
    ]
    _, nightly = actor.judge(conds, list(texts))
    for name, s, v, why in zip(names, served, evaluated, nightly):
        assert why == (s["reasons"][0] if s["reasons"] else None), name
    by_name = {name: s["reasons"] for name, s in zip(names, served)}
    # the cases do exercise the rules they are named after
    assert by_name["empty"] == by_name["whitespace"] == ["empty"]
    assert "broken_text" in by_name["replacement_char"]
    assert all("pii" in by_name[n] for n in by_name if n.startswith("pii_"))
    assert "memorized" in by_name["copied"] and "memorized" in by_name["copied_inside_novel"]
    assert "language_mismatch" in by_name["wrong_language_zh_as_en"]
    assert "language_mismatch" in by_name["wrong_language_en_as_zh"]
    assert by_name["too_short"] == ["too_short"] and by_name["novel"] == []
    assert by_name["no_language_given"] == []
