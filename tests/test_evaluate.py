"""`run_evaluation` on the tiny model writes a complete report; the evaluation protocol's pieces (row
split, matched-diversity selection, target checks, calibration refit) behave as documented."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.config import ConfigError
from reviewgen.core.encoding import conditions
from reviewgen.core.model_dir import content_version
from reviewgen.core.sampling import generate_texts
from reviewgen.data.corpus import load_split
from reviewgen.evaluate.config import EvalConfig, load_eval_config
from reviewgen.evaluate.fluency import Fluency
from reviewgen.evaluate.matching import match_at_diversity
from reviewgen.evaluate.quality import split_eval_rows
from reviewgen.evaluate.results import EvalResult, QualityPoint, RunMeta, ScorerResult, Sweep, as_json
from reviewgen.evaluate.run import run_evaluation
from reviewgen.evaluate.targets import check_targets
from reviewgen.evaluate.tracking import log_evaluation
from reviewgen.evaluate.world import FakesLanguage, FakesSection, LengthBin
from reviewgen.infra.tracking import Tracker
from reviewgen.score.fakes import sample_fakes
from reviewgen.train.twin import train_ood_model

PNGS = (
    "training_curves.png",
    "quality_diversity.png",
    "scorer_roc.png",
    "scorer_reliability.png",
    "scorer_histograms.png",
    "length_distribution.png",
    "rating_distribution.png",
)
SECTIONS = (
    "## Compute budget",
    "## Targets",
    "## Matched diversity",
    "## Quality and diversity",
    "## Test NLL",
    "## Condition match",
    "## Scorer",
    "## Copying and PII",
    "## Example generations for unseen products",
    "## Plots",
)


@pytest.fixture(scope="module")
def evaluated(tiny_model, prepared_data, tmp_path_factory):
    # refit_calibration writes into the model dir: work on a copy so the shared fixture stays untouched
    model = tmp_path_factory.mktemp("eval_model") / "model"
    shutil.copytree(tiny_model, model)
    out = tmp_path_factory.mktemp("eval_report")
    # the out-of-family generator, as `reviewgen evaluate` trains it when no --ood-model is given
    ood = train_ood_model(prepared_data, out / "ood_model", tiny_model, fast=True)
    fakes = _fakes_file(tiny_model, prepared_data, out / "fakes.parquet")
    result = run_evaluation(
        model,
        prepared_data,
        out,
        EvalConfig(fast=True, temperatures=(0.7, 1.2), n_products=8, fakes=str(fakes)),
        ood_model_dir=ood,
        compare={"realness": tiny_model / "mle"},
        log=lambda *_: None,
    )
    return model, out, result


def _fakes_file(model: Path, data: Path, path: Path) -> Path:
    """Another generator's labelled reviews: the out-of-family stand-in is the MLE checkpoint at top-k 5."""
    test = load_split(data, "test")
    test = test[test["language"] == "en"].head(200)
    mle = load_checkpoint(model / "mle")
    machine = generate_texts(
        mle.generator, mle.tokenizer, conditions(test), [f"f{i}" for i in range(len(test))], temperature=1.0, top_k=5
    )
    pd.DataFrame(
        {
            "text": test["text"].astype(str).tolist() + machine,
            "is_generated": [0] * len(test) + [1] * len(test),
            "language": test["language"].tolist() * 2,
            "hotel_name": [f"h{i % 10}" for i in range(len(test))] * 2,
        }
    ).to_parquet(path)
    return path


def test_the_fakes_file_is_judged_per_language_and_length_bin(evaluated) -> None:
    _, out, r = evaluated
    f = r.scorer.fakes
    assert f.rows == 400 and list(f.languages) == ["en"]
    for lang, m in f.languages.items():
        assert m.n_human + m.n_machine + m.unscored == 400 and 0.0 <= m.auroc <= 1.0
        assert len(m.length_bins) >= 2 and sum(b.n for b in m.length_bins) == m.n_human + m.n_machine
        assert m.worst_bin_auroc == min(b.auroc for b in m.length_bins if b.auroc is not None)
        assert 0.0 <= m.confident_human <= 1.0 and 0.0 <= m.tpr_1pct_fpr <= m.tpr_5pct_fpr <= 1.0
    assert "fakes file fakes.parquet" in r.targets["scorer_detection"].detail
    # metrics.json holds the same section, each language with its worst length bin
    saved = json.loads((out / "metrics.json").read_text())["scorer"]["fakes"]
    assert saved["languages"]["en"]["worst_bin_auroc"] == f.languages["en"].worst_bin_auroc
    # the calibrate path: fitted on half of the file's groups, reported on the other half's reviews
    cal = f.calibrate
    assert cal.get("evaluation") == "held-out hotel_name half", cal
    en = next(x for x in cal["languages"] if x["language"] == "en")
    assert en["adapted"] and en["rows"] < 400 and 0.0 <= en["auroc"] <= 1.0
    assert "Another generator's reviews" in (out / "report.md").read_text()
    for s in r.scorer.settings.values():  # every source reports its catch rate at 1% / 5% FPR
        assert 0.0 <= s["calibrated"]["tpr_1pct_fpr"] <= s["calibrated"]["tpr_5pct_fpr"] <= 1.0


def test_report_files_are_complete(evaluated) -> None:
    _, out, result = evaluated
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved) == [
        "meta",
        "calibration",
        "nll",
        "human",
        "sweep",
        "matched",
        "scorer",
        "classifiers",
        "fluency",
        "targets",
        "plots",
    ]
    assert saved == json.loads(json.dumps(result.to_dict()))  # metrics.json is the result's one JSON form
    assert list(saved["meta"])[-3:] == ["compared", "out_of_family", "wall_time_s"]
    # the copy threshold the filter applied, under its one name (the default is the index's n here)
    assert saved["meta"]["max_copy_span"] == result.meta.max_copy_span == 8 and "copy_span" not in saved["meta"]
    assert set(saved["fluency"]) == {"human", "tstr_temperature", "validation_reviews", "gan", "mle"}
    assert saved["plots"] == list(result.plots) and len(result.plots) == len(PNGS)
    assert list(saved["sweep"]) == ["gan", "mle", "realness"] and set(saved["sweep"]["gan"]) == {"0.7", "1.2"}
    # the compared model is swept on the same rows and sits in the matched-diversity table
    assert set(saved["matched"]["points"]) == {"gan", "mle", "realness"} and "realness" in saved["nll"]
    assert saved["meta"]["compared"]["realness"]["model_dir"].endswith("mle")
    assert all(s["model"] in ("gan", "mle", "ood") for s in saved["scorer"]["settings"].values())
    report = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    # the fluency section is part of the one rendering, after the protocol notes
    assert report.index("## Protocol notes") < report.index("## Fluency and usefulness")
    for name in PNGS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
        assert f"({name})" in report


def test_metric_values_are_sane(evaluated) -> None:
    _, _, r = evaluated
    h = r.human
    assert 0.0 <= h["self_bleu4"] <= 1.0 and 0.0 < h["distinct1"] <= 1.0
    for name in ("gan", "mle"):
        m = r.sweep.points[name]["0.7"]
        assert 0.0 <= m.mean("bleu4") <= 1.0 and 0.0 <= m.mean("copy_rate") <= 1.0
        assert m.mean("accepted_copy_rate") == 0.0  # the filter rejects every copy it finds
        assert m.mean("fed") is None or m.mean("fed") >= 0.0  # None when embeddings are unavailable
        assert r.nll[name] > 0.0
    settings = r.scorer.settings
    unseen = [s for s in settings.values() if not s["in_calibration"] and s["top_p"] < 1.0]
    assert len(unseen) == 1 and unseen[0]["temperature"] == 0.9
    assert settings["gan@T=0.7"]["in_calibration"] and not settings["gan@T=1.2"]["in_calibration"]
    assert settings["gan@T=1,top_k=40"]["in_calibration"]
    for s in settings.values():
        for kind in ("calibrated", "discriminator", "uncalibrated", "tfidf_lr"):
            assert 0.0 <= s[kind]["auroc"] <= 1.0 and 0.0 <= s[kind]["ece"] <= 1.0
        assert set(s["signals"]) >= {"d_logit", "mean_log_rank", "binoculars"}
    # the out-of-family generator: its own source, never in the scorer's fit, judged by its own target
    ood = [k for k, s in settings.items() if s["source"] == "out_of_family"]
    assert ood == ["ood@T=1,top_k=40"] and not settings[ood[0]]["in_calibration"]
    assert r.meta.out_of_family.seed == 17 and r.scorer.section["mode"].startswith("detector: ")
    assert "out-of-family generator (top-k 40): AUROC 0." in r.targets["scorer_detection"].detail
    assert {t.status for t in r.targets.values()} <= {"MET", "NOT MET", "N/A"}
    assert r.meta.data["evaluated_by_language"].keys() == {"en", "zh"}
    # the scorer reads more test reviews than the quality sweep (--scorer-reviews, 48 in --fast)
    n_eval = sum(r.meta.data["evaluated_by_language"].values())
    assert n_eval < 48 and r.scorer.section["n_human"] == 48


def test_extra_scorer_rows_are_other_unseen_test_reviews(prepared_data) -> None:
    from reviewgen.evaluate.scorer_eval import extra_scorer_rows

    test = load_split(prepared_data, "test")
    ev, _ = split_eval_rows(test, n_products=8, samples_per_product=2)
    extra = extra_scorer_rows(test, ev, 40)
    assert len(extra) == 40 - len(ev) and extra.equals(extra_scorer_rows(test, ev, 40))
    assert not set(extra["text"]) & set(ev["text"]) and set(extra["text"]) <= set(test["text"])
    assert extra_scorer_rows(test, ev, len(ev)).empty
    assert len(extra_scorer_rows(test, ev, 10**6)) == len(test) - len(ev)  # at most every test review


def test_calibration_refit_updates_model_version(evaluated) -> None:
    model, _, r = evaluated
    calib = json.loads((model / "calibration.json").read_text())
    meta = json.loads((model / "meta.json").read_text())
    assert calib["source"].startswith("refit_calibration") and calib == as_json(r.calibration)
    assert len(calib["checkpoints"]) == 2 and calib["temperatures"] == [0.7, 0.85, 1.0, 1.15, 1.3]
    assert "T=1,top_k=40" in calib["settings"] and "T=1,top_p=0.9" in calib["settings"]
    assert calib["detector"]["format"] == "reviewgen-detector/2" and (model / "reference.safetensors").is_file()
    assert meta["version"] == content_version(model)


def test_report_has_roc_curves_per_source(evaluated) -> None:
    _, out, _ = evaluated
    report = (out / "report.md").read_text()
    assert "| human vs ood@T=1,top_k=40 (not in calibration) | out_of_family | p_human |" in report
    assert "AUROC of each signal alone" in report


def test_split_eval_rows_keeps_products_disjoint(prepared_data) -> None:
    test = load_split(prepared_data, "test")
    ev, ref = split_eval_rows(test, n_products=20, samples_per_product=2)
    assert not set(ev["product_id"]) & set(ref["product_id"])
    assert abs(len(ev) - 40) <= 2 and set(ev["language"]) == set(test["language"])
    for lang, rows in test.groupby("language"):  # languages share rows by their share of test reviews
        assert abs((ev["language"] == lang).sum() - 40 * len(rows) / len(test)) <= 1.5
        assert ev.loc[ev["language"] == lang, "product_id"].nunique() <= rows["product_id"].nunique() // 2
    # rows spread round-robin: a product with fewer rows than the busiest product of its language has
    # had all its test reviews taken
    ev, _ = split_eval_rows(test, n_products=150, samples_per_product=2)
    available = test.groupby("product_id").size()
    for _, rows in ev.groupby("language"):
        taken = rows.groupby("product_id").size()
        short = taken[taken < taken.max() - 1]  # the last round may give some products one row more
        assert (short == available[short.index]).all()


def _fake_result(
    gan_sb4: dict[str, float],
    human_sb4: float = 0.30,
    gan: dict[str, float] | None = None,
    tfidf_accuracy: float = 0.90,
    ood_auroc: float | None = 0.90,
    fakes: FakesSection | None = None,
) -> EvalResult:
    """An `EvalResult` with what the targets read: a GAN sweep (its metrics overridden by `gan`), an MLE
    sweep, human metrics, NLL, the copy span and a scorer section (no out-of-family setting when
    `ood_auroc` is None)."""

    def model(name, sb, mauve, cat, pol, title, over=None):
        def point(t, s):
            m = {
                "self_bleu4": s,
                "bleu4": 0.1,
                "fed": 0.5,
                "mauve": mauve,
                "category_acc": cat,
                "polarity_agreement": pol,
                "title_relevance": title,
                "distinct2": 0.5,
                "rating_acc": 0.7,
                "copy_rate": 0.02,
                "accepted_copy_rate": 0.0,
                **(over or {}),
            }
            return QualityPoint(name, t, {k: {"mean": v, "sd": 0.0, "values": [v]} for k, v in m.items()})

        return {t: point(t, s) for t, s in sb.items()}

    sweep = Sweep(
        {
            "gan": model("gan", gan_sb4, 0.8, 0.50, 0.80, 0.30, gan),
            "mle": model("mle", {"0.8": 0.35, "1.2": 0.29}, 0.6, 0.40, 0.70, 0.30),
        }
    )
    human = {"self_bleu4": human_sb4, "distinct2": 0.5, "rating_acc": 0.71}
    settings = {
        "gan@T=1": {
            "model": "gan",
            "top_p": 1.0,
            "top_k": 0,
            "source": "own",
            "calibrated": {"auroc": 0.995, "ece": 0.02, "accuracy": 0.97},
            "tfidf_lr": {"accuracy": tfidf_accuracy},
        }
    }
    if ood_auroc is not None:
        settings["ood@T=1,top_k=40"] = {
            "model": "ood",
            "top_p": 1.0,
            "top_k": 40,
            "source": "out_of_family",
            "calibrated": {"auroc": ood_auroc, "ece": 0.08, "accuracy": 0.80},
            "tfidf_lr": {"accuracy": 0.70},
        }
    meta = RunMeta(**{**{f.name: None for f in dataclasses.fields(RunMeta)}, "max_copy_span": 8})
    return EvalResult(
        meta=meta,
        calibration=None,
        nll={"gan": 3.0, "mle": 2.95},
        human=human,
        sweep=sweep,
        matched=match_at_diversity(sweep.to_dict(), human_sb4),
        scorer=ScorerResult({"settings": settings}, fakes),
        fluency=Fluency(human={}, tstr_temperature=1.0, validation_reviews=0, models={}),
    )


def _fakes(**bad: float) -> FakesSection:
    """A fakes file's section with an English and a Chinese language that meet the fakes check, but for `bad`
    (auroc, worst_bin_auroc or confident_human) in Chinese."""

    def lang(name, auroc=0.9, worst_bin_auroc=0.75, confident_human=0.01):
        bins = (LengthBin([0, 10], 10, 5, worst_bin_auroc), LengthBin([10, 90], 10, 5, 0.99))
        return FakesLanguage(
            name, 10, 10, 0, auroc, 0.05, 0.5, 0.7, None, None, None, None, confident_human, None, None, bins
        )

    return FakesSection("x/f.parquet", 40, {"en": lang("en"), "zh": lang("zh", **bad)}, None)


def test_targets_follow_matched_diversity() -> None:
    r = _fake_result({"0.8": 0.40, "1.2": 0.28})
    assert r.matched.target_is_human and r.matched.points["gan"].reached
    t = check_targets(r)
    assert all(v.status == "MET" for v in t.values()), t
    assert "Reported, not judged: BLEU-4" in t["gan_dominates_mle"].detail  # NLL and BLEU no longer judged
    assert [k for k, v in t.items() if v.checks is not None] == ["gan_dominates_mle"]
    # GAN too repetitive at every temperature: no common point, so dominance cannot be claimed
    t2 = check_targets(_fake_result({"0.8": 0.45, "1.2": 0.36}))
    d2 = t2["gan_dominates_mle"]
    assert d2.status == "NOT MET" and "no common Self-BLEU-4" in d2.detail
    assert t2["no_collapse"].status == "NOT MET"
    # each goal of the GAN over the MLE baseline decides the verdict on its own
    for key, value in (
        ("mauve", 0.61),
        ("category_acc", 0.44),
        ("polarity_agreement", 0.74),
        ("title_relevance", 0.29),
        ("accepted_copy_rate", 0.02),
        ("distinct2", 0.44),
    ):
        t5 = check_targets(_fake_result({"0.8": 0.40, "1.2": 0.28}, gan={key: value}))["gan_dominates_mle"]
        assert t5.status == "NOT MET" and list(t5.checks.values()).count("NOT MET") == 1, (key, t5)
    # a weaker scorer than TF-IDF fails the scorer target
    assert check_targets(_fake_result({"0.8": 0.40, "1.2": 0.28}, tfidf_accuracy=0.96))["scorer"].status == "NOT MET"
    # the detector target needs the out-of-family check, and at least 0.85 there
    r4 = _fake_result({"0.8": 0.40, "1.2": 0.28}, ood_auroc=0.80)
    assert check_targets(r4)["scorer_detection"].status == "NOT MET"
    t4 = check_targets(_fake_result({"0.8": 0.40, "1.2": 0.28}, ood_auroc=None))["scorer_detection"]
    assert t4.status == "NOT MET" and "no out-of-family model" in t4.detail
    # the verdict is the worst source: another generator's reviews, every language and length bin
    assert check_targets(_fake_result({"0.8": 0.40, "1.2": 0.28}, fakes=_fakes()))["scorer_detection"].status == "MET"
    for key, bad in (("auroc", 0.79), ("worst_bin_auroc", 0.69), ("confident_human", 0.06)):
        r6 = _fake_result({"0.8": 0.40, "1.2": 0.28}, fakes=_fakes(**{key: bad}))
        assert check_targets(r6)["scorer_detection"].status == "NOT MET", key


def test_sample_fakes_spreads_over_generators_and_temperatures(tiny_model, prepared_data) -> None:
    """The one fake sampler (calibration at training end, evaluation's refit, the TF-IDF baseline): n
    samples over every (generator, temperature) pair, conditions in turn, the same texts on a rerun."""
    ck, mle = load_checkpoint(tiny_model), load_checkpoint(tiny_model / "mle")
    conds = conditions(load_split(prepared_data, "val").head(5))
    gens = [ck.generator, mle.generator]
    texts, fake_conds = sample_fakes(gens, ck.tokenizer, conds, (0.7, 1.2), seed=3, key_prefix="t", n=8)
    assert len(texts) == len(fake_conds) == 8 and all(isinstance(t, str) for t in texts)
    assert fake_conds == [conds[i % 5] for i in range(8)]
    assert sample_fakes(gens, ck.tokenizer, conds, (0.7, 1.2), seed=3, key_prefix="t", n=8)[0] == texts
    assert len(sample_fakes(gens, ck.tokenizer, conds, (1.0,), seed=3, key_prefix="t")[0]) == len(conds)
    with pytest.raises(ValueError, match="sample_fakes"):
        sample_fakes([], ck.tokenizer, conds, (1.0,), seed=0, key_prefix="t")


def test_evaluation_is_logged_to_the_tracking_store(evaluated, tmp_path) -> None:
    model, out, result = evaluated
    uri = f"file:{tmp_path / 'mlruns'}"
    tracker = Tracker.start(uri, "reviewgen-evaluate", "eval")
    log_evaluation(tracker, result, EvalConfig(fast=True), out)
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.data.params["eval.fast"] == "True" and run.info.status == "FINISHED"
    assert len(run.data.metrics) > 20 and all(isinstance(v, float) for v in run.data.metrics.values())
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id, "report")}
    assert {"report/report.md", "report/metrics.json", "report/scorer_roc.png"} <= artifacts
    assert run.data.tags["model_version"] == result.meta.model_version
    assert run.data.params["model"] == str(model)


# -- settings: EvalConfig YAML, --set, flags -----------------------------------------------------------------

EVAL_YAML = "n_products: 3\nsamples_per_product: 4\ntop_p: 0.9\nmax_copy_span: 10\ntemperatures: [0.5, 1.5]\n"


def test_eval_config_reads_yaml_then_set_then_flags(tmp_path) -> None:
    """The order every command reads its settings; a flag that was not given (None) keeps the value before."""
    p = tmp_path / "eval.yaml"
    p.write_text(EVAL_YAML)
    cfg = load_eval_config(
        p,
        {"n_products": 7, "max_copy_span": None},
        sets=["n_products=5", "top_p=0.8", "seeds=[4, 5]", "check_pii=false"],
    )
    assert (cfg.n_products, cfg.samples_per_product, cfg.top_p, cfg.max_copy_span) == (7, 4, 0.8, 10)
    assert cfg.temperatures == (0.5, 1.5) and cfg.seeds == (4, 5) and cfg.check_pii is False
    assert cfg.filter_config().max_copy_span == 10 and not cfg.filter_config().check_pii
    assert load_eval_config(None, {"max_copy_span": 12}).max_copy_span == 12
    assert load_eval_config() == EvalConfig()
    assert load_eval_config(None, sets=["temperatures=0.7,1.1"]).temperatures == (0.7, 1.1)


@pytest.mark.parametrize(
    "bad,where",
    [
        ("n_produkts: 3\n", "n_produkts"),
        ("copy_span: 8\n", "copy_span"),
        ("max_copy_span: 0\n", "max_copy_span"),
        ("seeds: [1.5]\n", "seeds"),
    ],
)
def test_eval_config_errors_name_the_key(tmp_path, bad: str, where: str) -> None:
    p = tmp_path / "eval.yaml"
    p.write_text(bad)
    with pytest.raises(ConfigError, match=where):
        load_eval_config(p)
    with pytest.raises(ConfigError, match="n_produkts"):
        load_eval_config(None, sets=["n_produkts=3"])


def test_evaluate_command_maps_its_flags_onto_the_config(tmp_path, monkeypatch) -> None:
    """`reviewgen evaluate --config --set` and the per-field flags reach `run_evaluation` in that order;
    --copy-span sets max_copy_span."""
    from typer.testing import CliRunner

    import reviewgen.evaluate.run as run_mod
    from reviewgen.cli import app

    seen = []
    monkeypatch.setattr(run_mod, "run_evaluation", lambda model, data, out, cfg, **_: seen.append(cfg))
    monkeypatch.setenv("RG_LOG_DIR", str(tmp_path / "logs"))
    p = tmp_path / "eval.yaml"
    p.write_text(EVAL_YAML)
    base = [
        "evaluate",
        "--model",
        str(tmp_path),
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--ood-model",
        str(tmp_path),
        "--no-fakes-check",
        "--config",
        str(p),
        "--set",
        "n_products=5",
        "--set",
        "top_p=0.8",
    ]
    for extra in ([], ["--products", "7", "--copy-span", "12", "--no-recalibrate", "--seeds", "3"]):
        r = CliRunner().invoke(app, base + extra)
        assert r.exit_code == 0, r.output
    first, flags = seen
    assert (first.n_products, first.samples_per_product, first.top_p, first.max_copy_span) == (5, 4, 0.8, 10)
    assert first.recalibrate and first.seeds == (0, 1, 2) and first.fakes is None
    assert (flags.n_products, flags.max_copy_span, flags.recalibrate, flags.seeds) == (7, 12, False, (3,))
    p.write_text("n_produkts: 3\n")
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 2 and "n_produkts" in r.output


def test_max_copy_span_below_the_index_n_fails_before_the_evaluation(tiny_model, prepared_data, tmp_path) -> None:
    """Evaluate resolves its copy threshold as every stage does: below the model's n-gram size is an error
    naming both, raised before any model is loaded or calibrated."""
    with pytest.raises(ConfigError, match="max_copy_span 4 is below the model's n-gram size 8"):
        run_evaluation(tiny_model, prepared_data, tmp_path / "out", EvalConfig(max_copy_span=4))
    assert not (tmp_path / "out").exists()
