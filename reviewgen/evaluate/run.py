"""`reviewgen evaluate`: the GAN vs its own MLE checkpoint on unseen (test-split) products, the calibrated
scorer against baselines, the production output filter on generated text, and a report directory
(metrics.json, report.md, PNGs). The protocol is described in `reviewgen.evaluate.quality`; what the
evaluation reads is loaded by `reviewgen.evaluate.inputs`, its run metadata built by `reviewgen.evaluate.meta`."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch

from reviewgen.core.checkpoint import Checkpoint
from reviewgen.core.device import pick_device
from reviewgen.core.encoding import conditions, encode_frame, fixed_batches
from reviewgen.core.losses import Tokens, val_nll
from reviewgen.core.model_dir import ngram_order
from reviewgen.core.sampling import generate_texts
from reviewgen.data.corpus import load_split
from reviewgen.evaluate.config import EvalConfig
from reviewgen.evaluate.filtering import filter_metrics, filter_verdicts
from reviewgen.evaluate.fluency import Fluency, fluency_result
from reviewgen.evaluate.inputs import (
    EvalModels,
    EvalPaths,
    EvalRows,
    check_compare_names,
    load_eval_rows,
    load_models,
)
from reviewgen.evaluate.jsonio import write_json_atomic
from reviewgen.evaluate.matching import match_at_diversity
from reviewgen.evaluate.meta import run_meta
from reviewgen.evaluate.quality import (
    MODELS,
    ConditionClassifiers,
    Embedder,
    Log,
    aggregate,
    embedding_metrics,
    quality_metrics,
)
from reviewgen.evaluate.report import ReportInputs, write_report
from reviewgen.evaluate.report_plots import write_plots
from reviewgen.evaluate.results import EvalResult, QualityPoint, ScorerResult, Sweep
from reviewgen.evaluate.scorer_eval import ScorerRows, extra_scorer_rows, scorer_section
from reviewgen.evaluate.targets import check_targets
from reviewgen.evaluate.world import fakes_section
from reviewgen.score.filter import ReviewFilter


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
    models = load_models(paths, c, dev, log)
    rows = load_eval_rows(data_dir, c, log)
    result, inputs = _measure(paths, models, rows, c, dev, log)
    result = dataclasses.replace(
        result, targets=check_targets(result), meta=dataclasses.replace(result.meta, wall_time_s=time.time() - t0)
    )
    result = _write_outputs(result, paths.out_dir, inputs)
    log(f"report written to {paths.out_dir} in {time.time() - t0:.0f}s")
    return result


def _measure(
    paths: EvalPaths, models: EvalModels, rows: EvalRows, c: EvalConfig, dev: torch.device, log: Log
) -> tuple[EvalResult, ReportInputs]:
    """Every measurement of the evaluation, in order: test NLL, the temperature sweep and its matched-diversity
    comparison, the scorer, fluency and the run metadata; the result (targets and wall time not yet set) and
    what the report shows beside it."""
    nll, nll_reviews = _test_nll(models.ck, rows.test, c.nll_rows, dev, log)
    metrics = _TextMetrics(rows, c, models.ck["gan"], log)
    human_m = metrics.human()
    sweep, samples = _sweep(models.ck, rows, c, dev, metrics, log)
    matched = match_at_diversity(sweep.to_dict(), human_m["self_bleu4"], anchors=MODELS)
    scorer, scorer_extra = _scorer_results(models, rows, samples, c, dev, log)
    fluency = _fluency(models, rows, samples, metrics.clf, load_split(paths.data_dir, "val"), c=c, dev=dev)
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
    inputs = ReportInputs(
        model_dir=paths.model_dir,
        ev=rows.ev,
        samples=samples,
        clf=metrics.clf,
        review_filter=metrics.review_filter,
        scorer_extra=scorer_extra,
    )
    return result, inputs


def _write_outputs(result: EvalResult, out_dir: Path, inputs: ReportInputs) -> EvalResult:
    """Write the plots first (the report lists their names), then report.md, then metrics.json, which is
    the finished result naming its plots; returns that result."""
    result = dataclasses.replace(result, plots=tuple(write_plots(result, out_dir, inputs)))
    write_report(result, out_dir, inputs)
    write_json_atomic(out_dir / "metrics.json", result.to_dict())
    return result


def _fluency(
    models: EvalModels,
    rows: EvalRows,
    samples: dict[tuple[str, float], list[str]],
    real_clf: ConditionClassifiers,
    val: pd.DataFrame,
    *,
    c: EvalConfig,
    dev: torch.device,
) -> Fluency:
    """GAN's and MLE's fluency: bits/char, real-word rate, and TSTR (at the nightly job's default
    temperature), with the condition classifiers trained on real reviews as the TSTR reference."""
    return fluency_result(
        {n: models.ck[n] for n in MODELS},
        samples,
        rows.ev,
        rows.test,
        rows.train,
        val,
        real_clf=real_clf,
        tstr_temperature=1.0,
        classifier_rows=c.classifier_rows,
        device=dev,
    )


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
        tk = Tokens.of(m.tokenizer)
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
