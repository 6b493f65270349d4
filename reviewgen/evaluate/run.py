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

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.config import ConfigError
from reviewgen.core.device import pick_device
from reviewgen.core.encoding import conditions, encode_frame, fixed_batches
from reviewgen.core.errors import MissingInputError
from reviewgen.core.losses import Tokens, val_nll
from reviewgen.core.models import count_params
from reviewgen.core.sampling import generate_texts
from reviewgen.data.corpus import load_split
from reviewgen.evaluate.filtering import evaluation_filter, filter_metrics, filter_verdicts
from reviewgen.evaluate.fluency import fluency_markdown, fluency_section
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
from reviewgen.evaluate.report import read_history, write_report
from reviewgen.evaluate.scorer_eval import extra_scorer_rows, refit_calibration, scorer_section
from reviewgen.evaluate.targets import check_targets
from reviewgen.evaluate.world import fakes_section
from reviewgen.infra.storage import write_local_atomic
from reviewgen.score.scorer import Scorer

DEFAULT_TEMPERATURES = (0.6, 0.8, 1.0, 1.2, 1.3)


@dataclass(frozen=True)
class EvalConfig:
    """The settings of one evaluation (`reviewgen evaluate` flags)."""

    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES  # sampling temperatures of the sweep
    n_products: int = 150  # about how many unseen test products to evaluate
    samples_per_product: int = 2  # real reviews (conditions) per product
    # test reviews the scorer section reads at least (the evaluated ones, then others drawn at random): its
    # ECE needs more rows than the quality sweep, as ECE is biased upwards on few rows (`ece_floor`)
    scorer_reviews: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)  # generation seeds; metrics are mean ± sd over them
    top_p: float = 1.0
    copy_span: int = 8  # copied training tokens that make a copy (raised to the model's n-gram size)
    recalibrate: bool = True  # refit the scorer calibration first (stored in the model)
    embeddings: bool = True  # FED, MAUVE and title relevance (null when off or not installed)
    n_baseline_train: int = 600  # real train reviews of the TF-IDF real-vs-generated baseline
    classifier_rows: int = 6000  # train rows of the TF-IDF condition classifiers
    nll_rows: int | None = None  # test reviews for NLL (None: all)
    fast: bool = False  # smoke-test settings, see `resolved`
    device: str | None = None
    fakes: str | None = None  # labelled reviews of another generator (`reviewgen.evaluate.world`); None: none

    def __post_init__(self) -> None:
        if not self.temperatures or not self.seeds:
            raise ConfigError("evaluate: need at least one temperature and one seed")
        if self.n_products < 1 or self.samples_per_product < 1:
            raise ConfigError("evaluate: n_products and samples_per_product must be >= 1")
        if self.scorer_reviews < 0:
            raise ConfigError("evaluate: scorer_reviews must be >= 0")

    def resolved(self) -> EvalConfig:
        """The settings actually used: with `fast`, one seed, the lowest and highest temperature, <= 16
        products, <= 48 scorer reviews and a small calibration/baseline/classifier/NLL set."""
        c = dataclasses.replace(self, temperatures=tuple(float(t) for t in self.temperatures),
                                seeds=tuple(int(s) for s in self.seeds))
        if not c.fast:
            return c
        return dataclasses.replace(c, seeds=c.seeds[:1], n_products=min(c.n_products, 16),
                                   scorer_reviews=min(c.scorer_reviews, 48),
                                   temperatures=tuple(sorted({min(c.temperatures), max(c.temperatures)})),
                                   n_baseline_train=min(c.n_baseline_train, 48),
                                   classifier_rows=min(c.classifier_rows, 1500), nll_rows=min(c.nll_rows or 256, 256))


def run_evaluation(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, config: EvalConfig | None = None,
                   *, baseline_dir: str | Path | None = None, ood_model_dir: str | Path | None = None,
                   compare: Mapping[str, str | Path] | None = None, log: Log = print) -> dict[str, Any]:
    """Evaluate model_dir (GAN) against baseline_dir (default model_dir/mle) on unseen test products and
    write OUT_DIR/{metrics.json, report.md, *.png}. `ood_model_dir`: a model directory of a different
    generator that the scorer is never fitted on, for the scorer's out-of-family check (None: no check).
    `compare`: more named model directories (an ablation), swept and compared at matched diversity beside
    GAN and MLE on the same rows (quality, conditions, copying and NLL; not the scorer or fluency sections).
    Returns the metrics dict (as in metrics.json)."""
    compare = check_compare_names(compare or {})
    c = (config or EvalConfig()).resolved()
    temperatures, seeds, top_p, copy_span, fast = list(c.temperatures), list(c.seeds), c.top_p, c.copy_span, c.fast
    t0 = time.time()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    baseline_dir = Path(baseline_dir) if baseline_dir else model_dir / "mle"
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(c.device)
    calib = None
    if c.recalibrate:
        calib = refit_calibration(model_dir, data_dir, checkpoints=[model_dir, baseline_dir], device=str(dev),
                                  max_rows=64 if fast else None, log=log)
    ck = {"gan": load_checkpoint(model_dir, dev), "mle": load_checkpoint(baseline_dir, dev),
          **{name: load_checkpoint(path, dev) for name, path in compare.items()}}
    tok = ck["gan"].tokenizer
    calib = calib or ck["gan"].calibration
    scorer = Scorer.from_checkpoint(ck["gan"], str(dev))
    ood = load_checkpoint(ood_model_dir, dev) if ood_model_dir is not None else None
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    ev, ref = split_eval_rows(test, c.n_products, c.samples_per_product)
    pools, pool_note = reference_pools(ev, ref)
    conds, langs = conditions(ev), ev["language"].tolist()
    keys = [f"{pid}:{i}" for i, pid in enumerate(ev["product_id"])]
    human = ev["text"].astype(str).tolist()
    log(f"evaluating on {len(ev)} test reviews of {ev['product_id'].nunique()} unseen products "
        f"({dict(Counter(langs))}); {len(temperatures)} temperatures x {len(seeds)} seeds; {pool_note}")

    # test NLL (teacher forced, all test reviews; independent of temperature)
    nll = {}
    nll_df = test if c.nll_rows is None or len(test) <= c.nll_rows else test.sample(n=c.nll_rows, random_state=0)
    for name, m in ck.items():
        data = encode_frame(nll_df, m.tokenizer, m.categories)
        bs = m.config.train.batch_size
        tk = Tokens(pad_id=m.tokenizer.pad_id, eos_id=m.tokenizer.eos_id, prefix_len=m.tokenizer.prefix_len)
        nll[name] = val_nll(m.generator, fixed_batches(data, bs, math.ceil(len(nll_df) / bs), dev), tk)
    log(f"test NLL on {len(nll_df)} reviews: " + ", ".join(f"{n} {v:.4f}" for n, v in nll.items()) + " nats/token")

    clf = ConditionClassifiers(train, max_rows=c.classifier_rows)
    ratings, cats = ev["rating"].tolist(), ev["category"].astype(str).tolist()
    sentiments = ev["sentiment"].tolist()
    review_filter = evaluation_filter(tok, ck["gan"].ngram_path, copy_span)

    emb = Embedder(c.embeddings, log)
    h_emb = emb(human)
    title_emb = emb(ev["product_title"].astype(str).tolist())
    ref_sample = ref.sample(n=min(len(ref), len(ev)), random_state=0)["text"].astype(str).tolist()
    r_emb = emb(ref_sample)

    def full_metrics(texts: list[str]) -> dict[str, Any]:
        m = quality_metrics(texts, langs, pools)
        e = emb(texts)
        m.update(embedding_metrics(e, h_emb, title_emb))
        cls = clf.score(texts, ratings, cats, sentiments, langs)
        m.update({k: v for k, v in cls.items() if k != "rating_pred"})
        m.update(filter_metrics(filter_verdicts(review_filter, texts, langs), texts))
        return m

    human_m = quality_metrics(human, langs, pools)
    human_m.update(embedding_metrics(h_emb, r_emb, title_emb))
    human_m.update({k: v for k, v in clf.score(human, ratings, cats, sentiments, langs).items() if k != "rating_pred"})
    human_m["copy_rate"] = filter_metrics(filter_verdicts(review_filter, human, langs), human)["copy_rate"]

    def sample(name: str, temp: float, seed: int) -> list[str]:
        return generate_texts(ck[name].generator, ck[name].tokenizer, conds, keys, seed=seed, temperature=temp,
                              top_p=top_p, device=dev)

    sweep, samples = sweep_models(list(ck), sample, temperatures, seeds, full_metrics, log)
    matched = match_at_diversity(sweep, human_m["self_bleu4"], anchors=MODELS)
    extra = extra_scorer_rows(test, ev, c.scorer_reviews)
    x_conds, x_keys = conditions(extra), [f"{pid}:scorer:{i}" for i, pid in enumerate(extra["product_id"])]
    if len(extra):
        log(f"the scorer reads {len(extra)} more test reviews ({dict(Counter(extra['language']))}), "
            f"{len(ev) + len(extra)} in all")
    sc_samples = {(name, temp): texts + (generate_texts(ck[name].generator, tok, x_conds, x_keys, seed=seeds[0],
                                                        temperature=temp, top_p=top_p, device=dev)
                                         if len(extra) else [])
                  for (name, temp), texts in samples.items() if name in MODELS}
    scorer_m, scorer_extra = scorer_section(ck, scorer, conds + x_conds, human + extra["text"].astype(str).tolist(),
                                            keys + x_keys, sc_samples, temperatures, train, c.n_baseline_train,
                                            seeds[0], dev, log, ood=ood)
    if c.fakes is not None:
        scorer_m["fakes"] = fakes_section(scorer, c.fakes, seed=seeds[0], log=log)
    result: dict[str, Any] = {
        "meta": run_meta(model_dir, baseline_dir, data_dir, ck, train, test, ev, ref, temperatures, seeds, top_p,
                         copy_span, fast, emb, pool_note, str(dev)),
        "calibration": calib,
        "nll": nll,
        "human": human_m,
        "sweep": sweep,
        "matched": matched.to_dict(),
        "scorer": scorer_m,
        "classifiers": {"note": "TF-IDF char 1-3-gram + logistic regression trained on real train reviews"},
    }
    result["meta"]["nll_reviews"] = len(nll_df)
    result["meta"]["compared"] = {name: {"model_dir": str(path), "version": ck[name].version}
                                  for name, path in compare.items()}
    result["meta"]["out_of_family"] = None if ood is None else {
        "model_dir": str(ood_model_dir), "version": ood.version, "generator_params": count_params(ood.generator),
        "generator_config": ood.config.to_dict()["generator"], "seed": ood.config.train.seed,
        "trained_on": ood.meta.get("trained_on", ood.meta.get("data_hash"))}
    # fluency: bits/char, real-word rate, TSTR (at the nightly job's default temperature)
    result["fluency"] = fluency_section({n: ck[n] for n in MODELS}, samples, ev, test, train,
                                        load_split(data_dir, "val"), clf,
                                        tstr_temperature=1.0, classifier_rows=c.classifier_rows, device=dev)
    result["targets"] = check_targets(result)
    result["meta"]["wall_time_s"] = time.time() - t0
    write_report(result, out_dir, model_dir=model_dir, ev=ev, samples=samples, clf=clf, review_filter=review_filter,
                 scorer_extra=scorer_extra)
    report = out_dir / "report.md"
    write_local_atomic(report, report.read_text() + "\n" + fluency_markdown(result["fluency"]))
    write_json_atomic(out_dir / "metrics.json", result)
    log(f"report written to {out_dir} in {time.time() - t0:.0f}s")
    return result


def check_compare_names(compare: Mapping[str, str | Path]) -> dict[str, Path]:
    """The `compare` models as {name: directory}; a name must be a plain word other than the built-in
    gan, mle, human and ood, and the directory must exist (checked before the long evaluation starts)."""
    out = {}
    for name, path in compare.items():
        if not name.replace("_", "").replace("-", "").isalnum() or name.lower() in (*MODELS, "human", "ood"):
            raise ConfigError(f"evaluate: compare model name {name!r} must be a plain word other than "
                              "gan, mle, human and ood")
        if not Path(path).is_dir():
            raise MissingInputError(f"evaluate: compare model {name!r}: no model directory at {path}")
        out[name] = Path(path)
    return out


def sweep_models(names: list[str], sample: Callable[[str, float, int], list[str]], temperatures: list[float],
                 seeds: list[int], score: Callable[[list[str]], dict[str, Any]],
                 log: Log) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, float], list[str]]]:
    """Per model and temperature, `score` of `sample(name, temperature, seed)` aggregated over seeds
    ({model: {"T": {metric: {"mean", "sd", "values"}}}}), and the first seed's texts per (model, T)."""
    sweep: dict[str, dict[str, Any]] = {n: {} for n in names}
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
                log(f"  {name} T={temp:g} seed={seed}: BLEU-4 {runs[-1].get('bleu4', float('nan')):.4f} "
                    f"Self-BLEU-4 {runs[-1]['self_bleu4']:.4f} ({time.time() - t1:.1f}s)")
            sweep[name][f"{temp:g}"] = aggregate(runs)
    return sweep, samples


def run_meta(model_dir, baseline_dir, data_dir, ck, train, test, ev, ref, temperatures, seeds, top_p, copy_span,
             fast, emb, pool_note, device) -> dict[str, Any]:
    """Compute budget and settings: model sizes, training time, data sizes, evaluation protocol."""
    history = read_history(Path(model_dir) / "metrics.jsonl")
    cfg = ck["gan"].config
    mauve_ok = importlib.util.find_spec("mauve") is not None
    return {
        "model_dir": str(model_dir), "baseline_dir": str(baseline_dir), "data_dir": str(data_dir),
        "model_version": ck["gan"].version, "baseline_version": ck["mle"].version, "device": device,
        "generator_params": count_params(ck["gan"].generator),
        "discriminator_params": count_params(ck["gan"].discriminator),
        "generator_config": {k: v for k, v in cfg.to_dict()["generator"].items()},
        "discriminator_config": {k: v for k, v in cfg.to_dict()["discriminator"].items()},
        "tokenizer": {"vocab_size": ck["gan"].tokenizer.vocab_size, "prefix_len": ck["gan"].tokenizer.prefix_len,
                      "max_review_len": ck["gan"].tokenizer.max_review_len},
        "train_steps": {p: cfg.to_dict()["train"].get(k) for p, k in
                        (("mle", "mle_steps"), ("disc", "disc_warmup_steps"), ("adv", "adv_steps"))},
        "batch_size": cfg.train.batch_size,
        "train_wall_time_s": max((float(r.get("time", 0)) for r in history), default=None),
        "data": {"train_reviews": len(train), "train_products": int(train["product_id"].nunique()),
                 "test_reviews": len(test), "test_products": int(test["product_id"].nunique()),
                 "evaluated_reviews": len(ev), "evaluated_products": int(ev["product_id"].nunique()),
                 "reference_reviews": len(ref), "evaluated_by_language": dict(Counter(ev["language"]))},
        "temperatures": list(temperatures), "seeds": list(seeds), "top_p": top_p, "copy_span": copy_span,
        "fast": fast, "embeddings_available": bool(emb.available), "mauve_available": mauve_ok,
        "reference_pools": pool_note,
    }
