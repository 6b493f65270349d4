"""The matched-diversity comparison on hand-built Self-BLEU-4 curves (exact interpolated values), the
GAN-vs-MLE verdict read from it, the polarity labels and the `--compare` option's parsing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import typer

from reviewgen.cli.evaluate import parse_compare
from reviewgen.evaluate.inputs import check_compare_names
from reviewgen.evaluate.matching import match_at_diversity
from reviewgen.evaluate.quality import ConditionClassifiers, polarity_label


def _model(points: dict[float, tuple[float, ...]]) -> dict:
    """{T: (self_bleu4, mauve[, distinct2])} as an aggregated sweep entry per temperature."""

    def cell(v):
        return {"mean": v, "sd": 0.0, "values": [] if v is None else [v]}

    out = {}
    for t, (sb, mauve, *rest) in points.items():
        out[f"{t:g}"] = {"self_bleu4": cell(sb), "mauve": cell(mauve), "distinct2": cell(rest[0] if rest else 0.5)}
    return out


def test_monotone_curves_meet_at_the_human_self_bleu() -> None:
    sweep = {
        "gan": _model({0.6: (0.50, 0.40), 1.0: (0.30, 0.60), 1.4: (0.20, 0.50)}),
        "mle": _model({0.6: (0.45, 0.30), 1.0: (0.35, 0.50), 1.4: (0.25, 0.70)}),
    }
    md = match_at_diversity(sweep, 0.32)
    assert md.common and md.target_is_human and md.target_self_bleu4 == 0.32
    g, m = md.points["gan"], md.points["mle"]
    # GAN: 0.50 -> 0.30 between T 0.6 and 1.0 crosses 0.32 at 0.6 + 0.4 * 0.18 / 0.20 = 0.96 (weight 0.9)
    assert g.temperature == pytest.approx(0.96) and g.segment == (0.6, 1.0) and g.reached
    assert g.metrics["mauve"] == pytest.approx(0.1 * 0.40 + 0.9 * 0.60) and g.nearest_sampled == 1.0
    # MLE: 0.35 -> 0.25 between T 1.0 and 1.4 crosses 0.32 at 1.0 + 0.4 * 0.03 / 0.10 = 1.12 (weight 0.3)
    assert m.temperature == pytest.approx(1.12) and m.segment == (1.0, 1.4)
    assert m.metrics["mauve"] == pytest.approx(0.7 * 0.50 + 0.3 * 0.70) and m.nearest_sampled == 1.0
    assert g.metrics["self_bleu4"] == m.metrics["self_bleu4"] == 0.32
    assert md.to_dict()["points"]["gan"]["segment"] == (0.6, 1.0)


def test_target_is_the_closest_value_both_reach() -> None:
    sweep = {
        "gan": _model({0.8: (0.50, 0.4), 1.2: (0.35, 0.6)}),
        "mle": _model({0.8: (0.45, 0.3), 1.2: (0.25, 0.5)}),
        "other": _model({0.8: (0.60, 0.2), 1.2: (0.55, 0.1)}),
    }  # never as diverse: not reached
    md = match_at_diversity(sweep, 0.30)
    assert md.common and not md.target_is_human and md.target_self_bleu4 == 0.35
    assert md.points["gan"].temperature == pytest.approx(1.2)
    assert md.points["gan"].metrics["mauve"] == pytest.approx(0.6)
    assert md.points["mle"].temperature == pytest.approx(0.8 + 0.4 * 0.10 / 0.20)
    assert md.points["mle"].metrics["mauve"] == pytest.approx(0.4)
    o = md.points["other"]
    assert not o.reached and o.temperature == 1.2 and o.self_bleu4 == 0.55 and o.metrics["mauve"] == 0.1


def test_non_monotone_curve_uses_the_crossing_nearest_the_closest_sample() -> None:
    # crosses 0.30 three times: T 0.6-0.8, 0.8-1.0 and 1.0-1.2; T=1.0 (0.33) is the sample closest to
    # human, so the crossing at 1.0 + 0.2 * 0.03 / 0.13 is used, not 0.925 (0.8-1.0) or 0.733 (0.6-0.8)
    sweep = {
        "gan": _model({0.6: (0.40, 0.1), 0.8: (0.25, 0.2), 1.0: (0.33, 0.3), 1.2: (0.20, 0.4)}),
        "mle": _model({0.6: (0.40, 0.1), 1.2: (0.20, 0.2)}),
    }
    g = match_at_diversity(sweep, 0.30).points["gan"]
    w = 0.03 / 0.13
    assert g.segment == (1.0, 1.2) and g.temperature == pytest.approx(1.0 + 0.2 * w)
    assert g.metrics["mauve"] == pytest.approx((1 - w) * 0.3 + w * 0.4)


def test_disjoint_ranges_have_no_common_point() -> None:
    sweep = {"gan": _model({0.8: (0.50, 0.4), 1.2: (0.40, 0.6)}), "mle": _model({0.8: (0.30, 0.3), 1.2: (0.20, 0.5)})}
    md = match_at_diversity(sweep, 0.35)
    assert not md.common and not md.target_is_human
    assert md.points["gan"].self_bleu4 == 0.40 and md.points["gan"].temperature == pytest.approx(1.2)
    assert md.points["mle"].self_bleu4 == 0.30 and md.points["mle"].temperature == pytest.approx(0.8)


def test_a_missing_metric_at_one_end_is_null_only_when_it_is_weighted() -> None:
    sweep = {"gan": _model({0.8: (0.40, None), 1.2: (0.20, 0.6)}), "mle": _model({0.8: (0.40, 0.3), 1.2: (0.20, 0.5)})}
    assert match_at_diversity(sweep, 0.30).points["gan"].metrics["mauve"] is None
    assert match_at_diversity(sweep, 0.20).points["gan"].metrics["mauve"] == pytest.approx(0.6)


def test_polarity_labels_and_classifier() -> None:
    assert [polarity_label(r, None) for r in (1, 2, 3, 4, 5)] == ["negative", "negative", None, "positive", "positive"]
    assert polarity_label(None, "negative") == "negative" and polarity_label(float("nan"), "neutral") is None
    assert polarity_label(5, "negative") == "positive"  # the star rating wins
    good, bad = ["great love it perfect", "excellent works great"], ["awful broke terrible", "bad poor refund"]
    zh_good, zh_bad = ["很好 非常满意", "很好 推荐"], ["很差 失望", "太差 退货"]
    train = pd.DataFrame(
        {
            "text": (good + bad) * 6 + (zh_good + zh_bad) * 6,
            "rating": ([5, 4, 1, 2] * 6) + [None] * 24,
            "sentiment": ["x"] * 24 + ["positive", "positive", "negative", "negative"] * 6,
            "category": ["a", "b"] * 24,
            "language": ["en"] * 24 + ["zh"] * 24,
        }
    )
    clf = ConditionClassifiers(train)
    assert set(clf.polarity) == {"en", "zh"}
    texts = ["great love it", "terrible broke", "很好 满意", "neutral-ish words"]
    s = clf.score(
        texts, [5, 1, None, 3], ["a", "b", "a", "b"], [None, None, "positive", None], ["en", "en", "zh", "en"]
    )
    assert s["polarity_n"] == 3 and s["polarity_agreement"] == 1.0 and s["polarity_balanced"] == 1.0
    flipped = clf.polarity_score(texts[:2], [1, 5], [None, None], ["en", "en"])
    assert flipped == {"polarity_agreement": 0.0, "polarity_balanced": 0.0, "polarity_n": 2}
    assert "polarity_agreement" not in clf.score(texts, [5, 1, None, 3], ["a"] * 4)  # no languages given


def test_compare_option_parsing() -> None:
    assert parse_compare(["realness=runs/a", "cond = runs/b"]) == {"realness": Path("runs/a"), "cond": Path("runs/b")}
    for bad in (["runs/a"], ["=runs/a"], ["a=x", "a=y"]):
        with pytest.raises(typer.BadParameter):
            parse_compare(bad)
    for name in ("gan", "MLE", "human", "bad name"):
        with pytest.raises(ValueError, match="compare model name"):
            check_compare_names({name: "."})
    with pytest.raises(FileNotFoundError, match="no model directory"):
        check_compare_names({"realness": "/nonexistent/model"})
    assert check_compare_names({"real-ness_2": "."}) == {"real-ness_2": Path(".")}
