"""Fluency in units that do not depend on the tokenizer, and the usefulness of synthetic reviews.

* Bits per character: the generator's summed token NLL over a review (its <eos> included), in bits, over
  the number of characters those review tokens spell. Models with different vocabularies compare on it;
  nats per token do not.
* Real-word rate: the share of lowercase alphabetic words (`[a-z]+` after lowercasing) in generated
  English text that occur in the training split's text (human test reviews score close to 1).
* TSTR (train on synthetic, test on real): the TF-IDF + logistic-regression condition classifiers of
  `reviewgen.evaluate.quality` trained on generated reviews of unseen products, labelled with the rating and
  category they were generated for, and tested on the real reviews of those products; beside the same
  classifiers trained on real training reviews (the ceiling a cold-start model would get from real data).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import torch

from reviewgen.core.encoding import conditions
from reviewgen.core.losses import review_logits, token_logprobs
from reviewgen.core.models import unwrap
from reviewgen.core.tokenizer import ReviewTokenizer, review_mask
from reviewgen.evaluate.quality import ConditionClassifiers

WORD = re.compile(r"[a-z]+")
LN2 = math.log(2.0)


# -- real-word rate -----------------------------------------------------------------------------------


def words(texts: Iterable[str]) -> list[str]:
    """The lowercase alphabetic words of `texts` (`[a-z]+` after lowercasing), in order."""
    return [w for t in texts for w in WORD.findall(str(t).lower())]


def vocabulary(texts: Iterable[str]) -> frozenset[str]:
    """The set of words (see `words`) of a corpus, e.g. the training split's review text."""
    return frozenset(words(texts))


def real_word_rate(texts: Sequence[str], vocab: frozenset[str]) -> dict[str, Any]:
    """{"real_word_rate": share of the words of `texts` found in `vocab` (None without words), "words": n}."""
    ws = words(texts)
    if not ws:
        return {"real_word_rate": None, "words": 0}
    return {"real_word_rate": sum(w in vocab for w in ws) / len(ws), "words": len(ws)}


# -- bits per character --------------------------------------------------------------------------------


@torch.no_grad()
def bits_per_char(
    G, tok: ReviewTokenizer, df: pd.DataFrame, batch_size: int = 32, device: str | torch.device = "cpu"
) -> dict[str, dict[str, Any]]:
    """Per language: {"bits_per_char", "chars", "reviews"} of generator G on the reviews of `df` under
    their own conditions (teacher forced).

    The numerator is the NLL of every review token up to and including <eos>; the denominator the
    characters of the review tokens (a review longer than max_review_len counts only the part the model
    saw, as decoded from its tokens)."""
    G = unwrap(G)
    was = G.training
    G.eval()
    ids = tok.encode_examples(conditions(df), df["text"].astype(str).tolist())
    P = tok.prefix_len
    bits, chars = torch.zeros(len(df), dtype=torch.float64), torch.zeros(len(df), dtype=torch.float64)
    for s in range(0, len(df), batch_size):
        b = ids[s : s + batch_size].to(device)
        targets = b[:, P:]
        mask = review_mask(targets, tok.eos_id, tok.pad_id)
        nll = -token_logprobs(review_logits(G, b, P), targets)
        bits[s : s + len(b)] = ((nll * mask).sum(1) / LN2).double().cpu()
    G.train(was)
    for i, row in enumerate(ids[:, P:].tolist()):
        kept = [t for t in row if t not in (tok.eos_id, tok.pad_id)]
        chars[i] = len(tok.tok.decode(kept, skip_special_tokens=True))
    out: dict[str, dict[str, Any]] = {}
    langs = df["language"].astype(str).to_numpy() if "language" in df else ["en"] * len(df)
    for lang in sorted(set(langs)):
        sel = torch.as_tensor([x == lang for x in langs])
        n_chars = float(chars[sel].sum())
        out[lang] = {
            "bits_per_char": float(bits[sel].sum()) / n_chars if n_chars else None,
            "chars": int(n_chars),
            "reviews": int(sel.sum()),
        }
    return out


# -- TSTR ------------------------------------------------------------------------------------------------


def tstr(
    generated: pd.DataFrame, real_test: pd.DataFrame, real: ConditionClassifiers, max_rows: int = 6000
) -> dict[str, Any]:
    """Condition classifiers trained on synthetic reviews vs `real` (the same classifiers trained on real
    training reviews), both tested on real reviews: {"synthetic": {...}, "real": {...}, "test_reviews": n},
    each with rating_acc / rating_mae (rows with a star rating) and category_acc (categories seen in that
    training set).

    `generated` has text, rating and category columns (the conditions it was generated for);
    `real_test` the real reviews of the same products."""
    texts = real_test["text"].astype(str).tolist()
    ratings, cats = real_test["rating"].tolist(), real_test["category"].astype(str).tolist()
    out: dict[str, Any] = {"test_reviews": len(real_test), "synthetic_reviews": len(generated)}
    for name, clf in (("synthetic", ConditionClassifiers(generated, max_rows=max_rows)), ("real", real)):
        out[name] = {k: v for k, v in clf.score(texts, ratings, cats).items() if k != "rating_pred"}
    return out


# -- the evaluate section ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFluency:
    """One model's fluency: validation bits per character per language (`bits_per_char`), the real-word
    rate of its generated English per sampled temperature key (`real_word_rate`), and TSTR (`tstr`; None
    when the model has no sample at the TSTR temperature)."""

    val_bits_per_char: Mapping[str, Mapping[str, Any]]
    real_word_rate: Mapping[str, Mapping[str, Any]]
    tstr: Mapping[str, Any] | None


@dataclass(frozen=True)
class Fluency:
    """The fluency section: the human test reviews' real-word rate, the sampled temperature TSTR ran at, the
    validation reviews read, and each model's `ModelFluency` (in the order the models were given)."""

    human: Mapping[str, Any]
    tstr_temperature: float
    validation_reviews: int
    models: Mapping[str, ModelFluency]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (metrics.json's "fluency"): the models sit beside the shared keys, by name."""
        return {
            "human": dict(self.human),
            "tstr_temperature": self.tstr_temperature,
            "validation_reviews": self.validation_reviews,
            **{name: asdict(m) for name, m in self.models.items()},
        }


def fluency_result(
    checkpoints: dict[str, Any],
    samples: dict[tuple[str, float], list[str]],
    ev: pd.DataFrame,
    test: pd.DataFrame,
    train: pd.DataFrame,
    val: pd.DataFrame,
    *,
    real_clf: ConditionClassifiers,
    tstr_temperature: float,
    classifier_rows: int = 6000,
    device: str | torch.device = "cpu",
) -> Fluency:
    """Per model, validation bits per character per language, the real-word rate of its generated English at
    each sampled temperature (human test reviews beside it), and TSTR at the sampled temperature nearest
    `tstr_temperature`.

    `samples[(model, temperature)]` are generated texts for the rows of `ev` (evaluated test rows);
    `real_clf` the condition classifiers trained on real training reviews."""
    vocab = vocabulary(train["text"].astype(str))
    en = [i for i, lang in enumerate(ev["language"]) if lang == "en"]
    temps = sorted({t for _, t in samples})
    t_tstr = min(temps, key=lambda t: abs(t - tstr_temperature))
    real_test = test[test["product_id"].isin(set(ev["product_id"]))]
    models = {}
    for name, ck in checkpoints.items():
        bpc = bits_per_char(ck.generator, ck.tokenizer, val, ck.config.train.batch_size, device)
        rwr = {
            f"{t:g}": real_word_rate([samples[(name, t)][i] for i in en], vocab) for t in temps if (name, t) in samples
        }
        gen = ev.assign(text=samples[(name, t_tstr)]) if (name, t_tstr) in samples else None
        models[name] = ModelFluency(
            bpc, rwr, tstr(gen, real_test, real_clf, classifier_rows) if gen is not None else None
        )
    return Fluency(
        human=real_word_rate(ev["text"].astype(str).iloc[en].tolist(), vocab),
        tstr_temperature=t_tstr,
        validation_reviews=len(val),
        models=models,
    )


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def fluency_markdown(f: Fluency) -> str:
    """The report.md section for a `Fluency`."""
    models = f.models
    langs = sorted({lang for m in models.values() for lang in m.val_bits_per_char})
    temps = sorted({t for m in models.values() for t in m.real_word_rate}, key=float)
    lines = [
        "## Fluency and usefulness (tokenizer-independent)",
        "",
        f"Validation bits per character ({f.validation_reviews} validation reviews; lower is better):",
        "",
        "| model | " + " | ".join(langs) + " |",
        "|---|" + "---|" * len(langs),
    ]
    for name, m in models.items():
        bpc = m.val_bits_per_char
        lines.append(f"| {name} | " + " | ".join(_fmt(bpc.get(lang, {}).get("bits_per_char")) for lang in langs) + " |")
    lines += [
        "",
        "Real-word rate of generated English (share of `[a-z]+` words found in the training text; "
        f"human test reviews: {_fmt(f.human.get('real_word_rate'))} over {f.human.get('words')} words):",
        "",
        "| model | " + " | ".join(f"T={t}" for t in temps) + " |",
        "|---|" + "---|" * len(temps),
    ]
    for name, m in models.items():
        r = m.real_word_rate
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(t, {}).get("real_word_rate")) for t in temps) + " |")
    lines += [
        "",
        f"TSTR at T={f.tstr_temperature:g}: TF-IDF+LR classifiers trained on generated reviews of "
        "the evaluated test products (labelled with the conditions they were generated for) vs trained on "
        "real training reviews, both tested on the real reviews of those products:",
        "",
        "| model | trained on | rating acc | rating MAE | category acc |",
        "|---|---|---|---|---|",
    ]
    for name, m in models.items():
        t = m.tstr or {}
        for src in ("synthetic", "real"):
            s = t.get(src) or {}
            lines.append(
                f"| {name} | {src} | {_fmt(s.get('rating_acc'))} | {_fmt(s.get('rating_mae'))} | "
                f"{_fmt(s.get('category_acc'))} |"
            )
    return "\n".join(lines) + "\n"
