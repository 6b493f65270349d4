"""`reviewgen evaluate`: the GAN vs its own MLE checkpoint on unseen (test-split) products, the calibrated
scorer against baselines, the production output filter on generated text, and a report directory
(metrics.json, report.md, PNGs). The protocol is described in `reviewgen.evaluate.quality`."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch

from reviewgen.core.checkpoint import Checkpoint, load_checkpoint
from reviewgen.core.config import ConfigError
from reviewgen.core.device import pick_device
from reviewgen.core.encoding import conditions, encode_frame, fixed_batches
from reviewgen.core.errors import MissingInputError
from reviewgen.core.losses import Tokens, val_nll
from reviewgen.core.model_dir import Calibration, ngram_order
from reviewgen.core.models import count_params
from reviewgen.core.sampling import generate_texts
from reviewgen.core.tokenizer import Condition
from reviewgen.data.corpus import load_split
from reviewgen.evaluate.config import EvalConfig
from reviewgen.evaluate.filtering import filter_metrics, filter_verdicts
from reviewgen.evaluate.fluency import fluency_result
from reviewgen.evaluate.jsonio import write_json_atomic
from reviewgen.evaluate.matching import match_at_diversity
from reviewgen.evaluate.quality import (
    MODELS,
    ConditionClassifiers,
    Embedder,
    Log,
    aggregate,
    embedding_metrics,
    quality_metrics,
    reference_pools,
    split_eval_rows,
)
from reviewgen.evaluate.report import ReportInputs, read_history, write_plots, write_report
from reviewgen.evaluate.results import EvalResult, OutOfFamily, QualityPoint, RunMeta, ScorerResult, Sweep
from reviewgen.evaluate.scorer_eval import ScorerRows, extra_scorer_rows, refit_calibration, scorer_section
from reviewgen.evaluate.targets import check_targets
from reviewgen.evaluate.world import fakes_section
from reviewgen.score.filter import ReviewFilter
from reviewgen.score.scorer import Scorer


@dataclass(frozen=True)
class EvalPaths:
    """Where one evaluation reads and writes: the GAN, its baseline, the data, the report directory, the
    compared models by name and the out-of-family generator (None: no check)."""

    model_dir: Path
    baseline_dir: Path
    data_dir: str | Path
    out_dir: Path
    compare: dict[str, Path]
    ood_model_dir: str | Path | None


@dataclass(frozen=True)
class EvalModels:
    """The loaded checkpoints by name (gan, mle, then the compared ones), the calibration in force, the
    scorer, and the out-of-family checkpoint (None: no check)."""

    ck: dict[str, Checkpoint]
    calib: Calibration | None
    scorer: Scorer
    ood: Checkpoint | None


@dataclass(frozen=True)
class EvalRows:
    """The splits and the evaluated test rows with what each model is asked for: reference pools,
    conditions, languages, per-row sampling keys and the human texts of the same rows."""

    train: pd.DataFrame
    test: pd.DataFrame
    ev: pd.DataFrame
    ref: pd.DataFrame
    pools: list
    pool_note: str
    conds: list[Condition]
    langs: list[str]
    keys: list[str]
    human: list[str]


def run_evaluation(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    config: EvalConfig | None = None,
    *,
    baseline_dir: str | Path | None = None,
    ood_model_dir: str | Path | None = None,
    compare: Mapping[str, str | Path] | None = None,
    log: Log = print,
) -> EvalResult:
    """Evaluate model_dir (GAN) against baseline_dir (default model_dir/mle) on unseen test products and
    write OUT_DIR/{metrics.json, report.md, *.png}. `ood_model_dir`: a model directory of a different
    generator that the scorer is never fitted on, for the scorer's out-of-family check (None: no check).
    `compare`: more named model directories (an ablation), swept and compared at matched diversity beside
    GAN and MLE on the same rows (quality, conditions, copying and NLL; not the scorer or fluency sections).
    Returns the `EvalResult` (metrics.json is its `to_dict`)."""
    compare = check_compare_names(compare or {})
    c = (config or EvalConfig()).resolved()
    c.filter_config().resolved(ngram_order(model_dir))  # a max_copy_span below the index's n fails before any work
    t0 = time.time()
    paths = EvalPaths(
        Path(model_dir),
        Path(baseline_dir) if baseline_dir else Path(model_dir) / "mle",
        data_dir,
        Path(out_dir),
        compare,
        ood_model_dir,
    )
    paths.out_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(c.device)
    models = _load_models(paths, c, dev, log)
    rows = _eval_rows(data_dir, c, log)
    nll, nll_reviews = _test_nll(models.ck, rows.test, c.nll_rows, dev, log)
    metrics = _TextMetrics(rows, c, models.ck["gan"], log)
    human_m = metrics.human()
    sweep, samples = _sweep(models.ck, rows, c, dev, metrics, log)
    matched = match_at_diversity(sweep.to_dict(), human_m["self_bleu4"], anchors=MODELS)
    scorer, scorer_extra = _scorer_results(models, rows, samples, c, dev, log)
    # fluency: bits/char, real-word rate, TSTR (at the nightly job's default temperature)
    fluency = fluency_result(
        {n: models.ck[n] for n in MODELS},
        samples,
        rows.ev,
        rows.test,
        rows.train,
        load_split(data_dir, "val"),
        real_clf=metrics.clf,
        tstr_temperature=1.0,
        classifier_rows=c.classifier_rows,
        device=dev,
    )
    meta = run_meta(
        paths,
        models,
        rows,
        c,
        embeddings_available=bool(metrics.emb.available),
        device=str(dev),
        nll_reviews=nll_reviews,
        max_copy_span=metrics.review_filter.max_copy_span,
    )
    result = EvalResult(
        meta=meta,
        calibration=models.calib,
        nll=nll,
        human=human_m,
        sweep=sweep,
        matched=matched,
        scorer=scorer,
        fluency=fluency,
    )
    result = dataclasses.replace(
        result, targets=check_targets(result), meta=dataclasses.replace(meta, wall_time_s=time.time() - t0)
    )
    inputs = ReportInputs(
        model_dir=paths.model_dir,
        ev=rows.ev,
        samples=samples,
        clf=metrics.clf,
        review_filter=metrics.review_filter,
        scorer_extra=scorer_extra,
    )
    result = dataclasses.replace(result, plots=tuple(write_plots(result, paths.out_dir, inputs)))
    write_report(result, paths.out_dir, inputs)
    write_json_atomic(paths.out_dir / "metrics.json", result.to_dict())
    log(f"report written to {paths.out_dir} in {time.time() - t0:.0f}s")
    return result


def _load_models(paths: EvalPaths, c: EvalConfig, dev: torch.device, log: Log) -> EvalModels:
    """Refit the scorer calibration first (when `c.recalibrate`), so the scorer loaded after it reads the
    refit; then every checkpoint the evaluation samples from."""
    calib = None
    if c.recalibrate:
        calib = refit_calibration(
            paths.model_dir,
            paths.data_dir,
            checkpoints=[paths.model_dir, paths.baseline_dir],
            device=str(dev),
            max_rows=64 if c.fast else None,
            log=log,
        )
    ck = {
        "gan": load_checkpoint(paths.model_dir, dev),
        "mle": load_checkpoint(paths.baseline_dir, dev),
        **{name: load_checkpoint(path, dev) for name, path in paths.compare.items()},
    }
    scorer = Scorer.from_checkpoint(ck["gan"], str(dev))
    ood = load_checkpoint(paths.ood_model_dir, dev) if paths.ood_model_dir is not None else None
    return EvalModels(ck, calib or ck["gan"].calibration, scorer, ood)


def _eval_rows(data_dir: str | Path, c: EvalConfig, log: Log) -> EvalRows:
    """The evaluated rows of unseen test products and their reference pools (`split_eval_rows`)."""
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    ev, ref = split_eval_rows(test, c.n_products, c.samples_per_product)
    pools, pool_note = reference_pools(ev, ref)
    conds, langs = conditions(ev), ev["language"].tolist()
    keys = [f"{pid}:{i}" for i, pid in enumerate(ev["product_id"])]
    log(
        f"evaluating on {len(ev)} test reviews of {ev['product_id'].nunique()} unseen products "
        f"({dict(Counter(langs))}); {len(c.temperatures)} temperatures x {len(c.seeds)} seeds; {pool_note}"
    )
    return EvalRows(train, test, ev, ref, pools, pool_note, conds, langs, keys, ev["text"].astype(str).tolist())


def _test_nll(
    ck: dict[str, Checkpoint], test: pd.DataFrame, nll_rows: int | None, dev: torch.device, log: Log
) -> tuple[dict[str, float], int]:
    """Each model's teacher-forced test NLL (nats/token; independent of temperature) on all test reviews, or
    on `nll_rows` of them drawn at random; and how many reviews it read."""
    nll = {}
    nll_df = test if nll_rows is None or len(test) <= nll_rows else test.sample(n=nll_rows, random_state=0)
    for name, m in ck.items():
        data = encode_frame(nll_df, m.tokenizer, m.categories)
        bs = m.config.train.batch_size
        tk = Tokens(pad_id=m.tokenizer.pad_id, eos_id=m.tokenizer.eos_id, prefix_len=m.tokenizer.prefix_len)
        nll[name] = val_nll(m.generator, fixed_batches(data, bs, math.ceil(len(nll_df) / bs), dev), tk)
    log(f"test NLL on {len(nll_df)} reviews: " + ", ".join(f"{n} {v:.4f}" for n, v in nll.items()) + " nats/token")
    return nll, len(nll_df)


class _TextMetrics:
    """The per-text metrics of the sweep on the evaluated rows: quality, embeddings, condition match and the
    production filter. Built once, as the condition classifiers and the human embeddings are shared."""

    def __init__(self, rows: EvalRows, c: EvalConfig, gan: Checkpoint, log: Log):
        self.rows = rows
        self.clf = ConditionClassifiers(rows.train, max_rows=c.classifier_rows)
        self.review_filter = ReviewFilter.from_model(gan.path, gan.tokenizer, c.filter_config())
        self.emb = Embedder(c.embeddings, log)
        self.h_emb = self.emb(rows.human)
        self.title_emb = self.emb(rows.ev["product_title"].astype(str).tolist())
        ref_sample = rows.ref.sample(n=min(len(rows.ref), len(rows.ev)), random_state=0)["text"].astype(str).tolist()
        self.r_emb = self.emb(ref_sample)

    def _conditions(self, texts: list[str]) -> dict[str, Any]:
        ev = self.rows.ev
        cls = self.clf.score(
            texts, ev["rating"].tolist(), ev["category"].astype(str).tolist(), ev["sentiment"].tolist(), self.rows.langs
        )
        return {k: v for k, v in cls.items() if k != "rating_pred"}

    def __call__(self, texts: list[str]) -> dict[str, Any]:
        """Every metric of generated `texts` (one per evaluated row)."""
        m = quality_metrics(texts, self.rows.langs, self.rows.pools)
        m.update(embedding_metrics(self.emb(texts), self.h_emb, self.title_emb))
        m.update(self._conditions(texts))
        m.update(filter_metrics(filter_verdicts(self.review_filter, texts, self.rows.langs), texts))
        return m

    def human(self) -> dict[str, Any]:
        """The same metrics of the real reviews (embeddings against the reference products' reviews)."""
        human, langs = self.rows.human, self.rows.langs
        m = quality_metrics(human, langs, self.rows.pools)
        m.update(embedding_metrics(self.h_emb, self.r_emb, self.title_emb))
        m.update(self._conditions(human))
        m["copy_rate"] = filter_metrics(filter_verdicts(self.review_filter, human, langs), human)["copy_rate"]
        return m


def _sweep(
    ck: dict[str, Checkpoint],
    rows: EvalRows,
    c: EvalConfig,
    dev: torch.device,
    score: Callable[[list[str]], dict[str, Any]],
    log: Log,
) -> tuple[Sweep, dict[tuple[str, float], list[str]]]:
    """`sweep_models` over every loaded model, each sampling the evaluated rows with its own tokenizer."""

    def sample(name: str, temp: float, seed: int) -> list[str]:
        return generate_texts(
            ck[name].generator,
            ck[name].tokenizer,
            rows.conds,
            rows.keys,
            seed=seed,
            temperature=temp,
            top_p=c.top_p,
            device=dev,
        )

    return sweep_models(list(ck), sample, list(c.temperatures), list(c.seeds), score, log)


def _scorer_results(
    models: EvalModels,
    rows: EvalRows,
    samples: dict[tuple[str, float], list[str]],
    c: EvalConfig,
    dev: torch.device,
    log: Log,
) -> tuple[ScorerResult, dict[str, Any]]:
    """`scorer_section` on the evaluated rows plus the extra test reviews the scorer reads (sampled at the
    first seed), and the `--fakes` file when given; and the raw arrays for the scorer's plots."""
    ck, tok, seed = models.ck, models.ck["gan"].tokenizer, c.seeds[0]
    extra = extra_scorer_rows(rows.test, rows.ev, c.scorer_reviews)
    x_conds, x_keys = conditions(extra), [f"{pid}:scorer:{i}" for i, pid in enumerate(extra["product_id"])]
    if len(extra):
        log(
            f"the scorer reads {len(extra)} more test reviews ({dict(Counter(extra['language']))}), "
            f"{len(rows.ev) + len(extra)} in all"
        )
    sc_samples = {
        (name, temp): texts
        + (
            generate_texts(
                ck[name].generator, tok, x_conds, x_keys, seed=seed, temperature=temp, top_p=c.top_p, device=dev
            )
            if len(extra)
            else []
        )
        for (name, temp), texts in samples.items()
        if name in MODELS
    }
    scorer_rows = ScorerRows(rows.conds + x_conds, rows.human + extra["text"].astype(str).tolist(), rows.keys + x_keys)
    scorer_m, scorer_extra = scorer_section(
        ck,
        models.scorer,
        scorer_rows,
        sc_samples,
        temperatures=list(c.temperatures),
        train=rows.train,
        n_base=c.n_baseline_train,
        seed=seed,
        dev=dev,
        log=log,
        ood=models.ood,
    )
    fakes = fakes_section(models.scorer, c.fakes, seed=seed, log=log) if c.fakes is not None else None
    return ScorerResult(scorer_m, fakes), scorer_extra


def check_compare_names(compare: Mapping[str, str | Path]) -> dict[str, Path]:
    """The `compare` models as {name: directory}; a name must be a plain word other than the built-in
    gan, mle, human and ood, and the directory must exist (checked before the long evaluation starts)."""
    out = {}
    for name, path in compare.items():
        if not name.replace("_", "").replace("-", "").isalnum() or name.lower() in (*MODELS, "human", "ood"):
            raise ConfigError(
                f"evaluate: compare model name {name!r} must be a plain word other than gan, mle, human and ood"
            )
        if not Path(path).is_dir():
            raise MissingInputError(f"evaluate: compare model {name!r}: no model directory at {path}")
        out[name] = Path(path)
    return out


def sweep_models(
    names: list[str],
    sample: Callable[[str, float, int], list[str]],
    temperatures: list[float],
    seeds: list[int],
    score: Callable[[list[str]], dict[str, Any]],
    log: Log,
) -> tuple[Sweep, dict[tuple[str, float], list[str]]]:
    """Per model and temperature, `score` of `sample(name, temperature, seed)` aggregated over seeds (a
    `QualityPoint` each), and the first seed's texts per (model, T)."""
    sweep: dict[str, dict[str, QualityPoint]] = {n: {} for n in names}
    samples: dict[tuple[str, float], list[str]] = {}
    for name in names:
        for temp in temperatures:
            runs = []
            for seed in seeds:
                t1 = time.time()
                texts = sample(name, temp, seed)
                if seed == seeds[0]:
                    samples[(name, temp)] = texts
                runs.append(score(texts))
                log(
                    f"  {name} T={temp:g} seed={seed}: BLEU-4 {runs[-1].get('bleu4', float('nan')):.4f} "
                    f"Self-BLEU-4 {runs[-1]['self_bleu4']:.4f} ({time.time() - t1:.1f}s)"
                )
            sweep[name][f"{temp:g}"] = QualityPoint(name, f"{temp:g}", aggregate(runs))
    return Sweep(sweep), samples


def run_meta(
    paths: EvalPaths,
    models: EvalModels,
    rows: EvalRows,
    c: EvalConfig,
    *,
    embeddings_available: bool,
    device: str,
    nll_reviews: int,
    max_copy_span: int | None,
) -> RunMeta:
    """Compute budget and settings: model sizes, training time, data sizes, evaluation protocol (with the
    copy threshold the filter applied, `max_copy_span`), and the compared and out-of-family models (the wall
    time is filled in at the end)."""
    history = read_history(paths.model_dir / "metrics.jsonl")
    gan, mle = models.ck["gan"], models.ck["mle"]
    cfg, tok = gan.config.to_dict(), gan.tokenizer
    return RunMeta(
        model_dir=str(paths.model_dir),
        baseline_dir=str(paths.baseline_dir),
        data_dir=str(paths.data_dir),
        model_version=gan.version,
        baseline_version=mle.version,
        device=device,
        generator_params=count_params(gan.generator),
        discriminator_params=count_params(gan.discriminator),
        generator_config=dict(cfg["generator"]),
        discriminator_config=dict(cfg["discriminator"]),
        tokenizer={"vocab_size": tok.vocab_size, "prefix_len": tok.prefix_len, "max_review_len": tok.max_review_len},
        train_steps={
            p: cfg["train"].get(k)
            for p, k in (("mle", "mle_steps"), ("disc", "disc_warmup_steps"), ("adv", "adv_steps"))
        },
        batch_size=gan.config.train.batch_size,
        train_wall_time_s=max((float(r.get("time", 0)) for r in history), default=None),
        data=_data_sizes(rows),
        temperatures=list(c.temperatures),
        seeds=list(c.seeds),
        top_p=c.top_p,
        max_copy_span=max_copy_span,
        fast=c.fast,
        embeddings_available=embeddings_available,
        mauve_available=importlib.util.find_spec("mauve") is not None,
        reference_pools=rows.pool_note,
        nll_reviews=nll_reviews,
        compared={
            name: {"model_dir": str(path), "version": models.ck[name].version} for name, path in paths.compare.items()
        },
        out_of_family=_out_of_family_meta(paths.ood_model_dir, models.ood),
    )


def _data_sizes(rows: EvalRows) -> dict[str, Any]:
    """Reviews and products of the train and test splits and of the evaluated rows, and the reference rows."""
    train, test, ev = rows.train, rows.test, rows.ev
    return {
        "train_reviews": len(train),
        "train_products": int(train["product_id"].nunique()),
        "test_reviews": len(test),
        "test_products": int(test["product_id"].nunique()),
        "evaluated_reviews": len(ev),
        "evaluated_products": int(ev["product_id"].nunique()),
        "reference_reviews": len(rows.ref),
        "evaluated_by_language": dict(Counter(ev["language"])),
    }


def _out_of_family_meta(model_dir: str | Path | None, ood: Checkpoint | None) -> OutOfFamily | None:
    """The out-of-family generator's directory, version, size, config, seed and training data (None: none)."""
    if ood is None:
        return None
    return OutOfFamily(
        model_dir=str(model_dir),
        version=ood.version,
        generator_params=count_params(ood.generator),
        generator_config=ood.config.to_dict()["generator"],
        seed=ood.config.train.seed,
        trained_on=ood.meta.data_hash,
    )
