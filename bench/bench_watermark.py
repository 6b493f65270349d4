"""The keyed watermark (reviewgen.core.watermark): sampling speed with and without it at the two sizes of
bench_sampling (same random models, batch, prefix and new tokens, default precision), detection throughput on
token sequences with the z-scores of unrelated random sequences as a check of the null, and, when the `make
demo` model (runs/demo/model) and the shared corpora (../shared/data) are there, the (gamma, delta) grid that
chose the defaults, per language:

- false positives on every real review of ../shared/data at each gamma (delta plays no part in detection);
- the demo model's reviews of test-split conditions, sampled as the nightly job samples (GenerateConfig's
  temperature and top-p, per-row seeds), unwatermarked and at each (gamma, delta), same seeds throughout:
  detection at the threshold overall and by review length (tokens); after 10% and 25% of the words
  (in Chinese each CJK character, latin word and punctuation mark is a word) are replaced by random words
  of real reviews, the whitespace kept; after truncation to 20 tokens;
- fluency, against the unwatermarked samples of the same seeds: NLL under the model's frozen MLE reference
  (nats per token, bits per character), the real-word rate (English), MAUVE against the test split's human
  reviews (MiniLM embeddings); the unwatermarked sampler under other seeds gives the noise floor, and the
  default setting under those seeds the spread of its costs (paired with the same seed's plain reviews);
- the nightly acceptance: the share of reviews the nightly job's scorer and filter accept (the actor's
  judgement: scorer p_human, then the one ReviewFilter with the watermark_weak rule when watermarked), and
  the drop against the unwatermarked run.

Plain and watermarked sampling alternate, repeat by repeat, and each keeps its best time: on a shared machine
the ratio taken side by side is the figure to read. The goal: watermarked sampling at >= 95% of plain.
Run: python -m bench.bench_watermark [--quick] [--no-mauve] [--out bench/results/watermark]
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.bench_sampling import CASES, NEW, PREFIX
from reviewgen.core.watermark import Watermark, WatermarkConfig, WatermarkKey
from reviewgen.evaluate.text_metrics import text_units

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL, DEMO_DATA, SHARED = ROOT / "runs/demo/model", ROOT / "runs/demo/data", ROOT.parent / "shared/data"
REPEATS = {False: 3, True: 1}
GOAL_SPEED = 0.95
KEY = WatermarkKey("bench-only-key-not-a-secret-0000")


def _sampler(c: dict, prefixes: torch.Tensor, watermark: Watermark | None):
    from reviewgen.core.config import GeneratorConfig
    from reviewgen.core.models import Generator
    from reviewgen.core.sampling import SamplingParams, counter_uniforms, sample

    torch.manual_seed(0)
    m = Generator(
        GeneratorConfig(
            vocab_size=c["vocab_size"],
            block_size=PREFIX + NEW,
            n_layer=c["n_layer"],
            n_head=c["n_head"],
            d_model=c["d_model"],
            dropout=0.0,
        )
    ).eval()
    params = SamplingParams(NEW, 1.0, 0, c["top_p"])
    u = counter_uniforms(range(c["batch"]), NEW)
    return lambda: sample(m, prefixes, params, eos_id=-1, pad_id=0, uniforms=u, watermark=watermark)


def sampling_case(c: dict, repeats: int) -> dict:
    """Best-of-`repeats` seconds of plain and watermarked sampling, alternating; the speed ratio."""
    prefixes = torch.randint(10, c["vocab_size"], (c["batch"], PREFIX), generator=torch.Generator().manual_seed(0))
    wm = Watermark(KEY)
    fns = {"plain": _sampler(c, prefixes, None), "watermarked": _sampler(c, prefixes, wm)}
    out = {k: f() for k, f in fns.items()}  # warm-up
    ids = out["watermarked"]
    det = wm.z_scores(ids, first_prev=None)
    best: dict[str, float] = {}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best.get(k, float("inf")), time.perf_counter() - t)
    ratio = best["plain"] / best["watermarked"]
    return {
        "case": c,
        "seconds": best,
        "speed_ratio": round(ratio, 3),
        "mean_z_random_model": round(float(np.nanmean(det.z)), 2),
        "goal": {
            "goal": f">= {GOAL_SPEED} of plain",
            "value": round(ratio, 3),
            "verdict": "MET" if ratio >= GOAL_SPEED else "NOT MET",
        },
    }


def detection(n: int, length: int = 60, vocab: int = 16000) -> dict:
    """Detection throughput on `n` random sequences (no tokenizer), and their z-scores under the null."""
    wm = Watermark(KEY)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, vocab, length).tolist() for _ in range(n)]
    t = time.perf_counter()
    det = wm.z_scores(seqs, first_prev=3)
    s = time.perf_counter() - t
    z = det.z
    return {
        "sequences": n,
        "tokens_each": length,
        "seconds": round(s, 3),
        "sequences_per_s": round(n / s),
        "null_z_mean": round(float(z.mean()), 3),
        "null_z_std": round(float(z.std()), 3),
        "null_share_ours": float(np.mean(det.ours)),
    }


GAMMAS, DELTAS = (0.1, 0.25, 0.5), (2.0, 3.0, 4.0)
BINS = (("<10", 0, 10), ("10-19", 10, 20), ("20-29", 20, 30), ("30-39", 30, 40), (">=40", 40, 1 << 30))
REVIEWS = {False: 300, True: 40}  # per language and setting
CUT = 20  # truncation, tokens


SEEDS = (0, 1, 2)  # the unwatermarked sampler and the candidate settings: the spread over sampling seeds
CANDIDATES = ((0.1, 3.0), (0.1, 4.0), (0.25, 3.0), (0.25, 4.0))  # (gamma, delta) rerun under every seed


def grid_settings() -> dict[str, tuple[WatermarkConfig | None, int]]:
    """name -> (watermark settings or None for the unwatermarked sampler, sampling seed): the unwatermarked
    sampler under every seed of SEEDS, every (gamma, delta) with <eos> held (the default) under seed 0, the
    CANDIDATES under the other seeds, and the default (gamma, delta) without the hold."""
    d = WatermarkConfig()
    out: dict[str, tuple[WatermarkConfig | None, int]] = {
        "plain" if s == 0 else f"plain_seed{s}": (None, s) for s in SEEDS
    }
    out.update({f"g{g:g}_d{x:g}": (WatermarkConfig(gamma=g, delta=x), 0) for g in GAMMAS for x in DELTAS})
    for g, x in CANDIDATES:
        out.update({f"g{g:g}_d{x:g}_seed{s}": (WatermarkConfig(gamma=g, delta=x), s) for s in SEEDS[1:]})
    out[f"g{d.gamma:g}_d{d.delta:g}_nohold"] = (replace(d, hold_eos_z=None), 0)
    return out


def false_positives(tok, data_dir: Path, gammas=GAMMAS) -> dict:
    """Per gamma and language: every review of the shared corpora (cleaned as `reviewgen prepare` does),
    detected under the key (tokenised once; detection does not depend on delta)."""
    from reviewgen.data.corpus import review_sources
    from reviewgen.data.sources import load_corpus

    out: dict[str, dict] = {f"{g:g}": {} for g in gammas}
    frames = [load_corpus(p).frame[["text", "language"]] for p in review_sources(data_dir)]
    for lang, df in pd.concat(frames).groupby("language"):
        texts = df["text"].astype(str).tolist()
        ids = [x for s in range(0, len(texts), 20000) for x in tok.review_token_lists(texts[s : s + 20000])]
        for g in gammas:
            wm = Watermark(KEY, WatermarkConfig(gamma=g))
            dets = [wm.z_scores(ids[s : s + 20000], first_prev=tok.sep_id) for s in range(0, len(ids), 20000)]
            z = np.concatenate([d.z for d in dets])
            ours = sum(sum(d.ours) for d in dets)
            out[f"{g:g}"][lang] = {
                "reviews": len(texts),
                "ours": int(ours),
                "share": ours / len(texts),
                "z_mean": round(float(np.nanmean(z)), 3),
                "z_std": round(float(np.nanstd(z)), 3),
                "z_max": round(float(np.nanmax(z)), 2),
            }
    return out


def _replace_words(text: str, frac: float, pool: list[str], lang: str, rng) -> str:
    """`text` with `frac` of its words (`text_units`: in Chinese each CJK character, latin word, number and
    punctuation mark) replaced by random words of `pool`; the whitespace between them stays as it was."""
    units = text_units(text, lang)
    words = [i for i, u in enumerate(units) if not u.isspace()]
    for i in rng.choice(words, size=round(frac * len(words)), replace=False) if words else []:
        units[i] = pool[rng.integers(len(pool))]
    return "".join(units)


def _by_length(ours, n_tok: np.ndarray) -> dict:
    """Detection rate overall and per length bin (tokens of the review as written): {"all", bin: {n, rate}}."""
    ours = np.asarray(ours, dtype=bool)
    out: dict = {"all": float(ours.mean()) if len(ours) else None}
    for name, lo, hi in BINS:
        m = (n_tok >= lo) & (n_tok < hi)
        out[name] = {"n": int(m.sum()), "rate": float(ours[m].mean()) if m.any() else None}
    return out


@torch.no_grad()
def _reference_nll(ref, tok, rows: pd.DataFrame, texts: list[str]) -> dict:
    """The texts' review tokens (<eos> included) under the frozen MLE reference, teacher forced under each
    row's conditions: mean nats per token and bits per character (reviewgen.evaluate.fluency)."""
    from reviewgen.core.encoding import conditions
    from reviewgen.core.losses import review_logits, token_logprobs
    from reviewgen.core.tokenizer import review_mask
    from reviewgen.evaluate.fluency import bits_per_char

    ids, P, total, count = tok.encode_examples(conditions(rows), texts), tok.prefix_len, 0.0, 0
    for s in range(0, len(ids), 64):
        b = ids[s : s + 64]
        mask = review_mask(b[:, P:], tok.eos_id, tok.pad_id)
        total += float((-token_logprobs(review_logits(ref, b, P), b[:, P:]) * mask).sum())
        count += int(mask.sum())
    bpc = bits_per_char(ref, tok, rows.assign(text=texts), 64)
    return {"nats_per_token": total / max(count, 1), "bits_per_char": next(iter(bpc.values()))["bits_per_char"]}


def _judge(scorer, filt, conds, texts: list[str], wm: Watermark | None) -> dict:
    """The nightly actor's judgement (GeneratorActor.judge): the scorer's p_human and watermark, then the one
    ReviewFilter; shares accepted, rejected per first reason (as the manifest counts them), and carrying
    watermark_weak at all / as the only reason."""
    scorer.watermark = wm
    scored = scorer.score_texts(conds, texts)
    scores = [None if np.isnan(x) else float(x) for x in scored["p_human"]]
    verdicts = filt.check(
        texts,
        languages=[c.language for c in conds],
        scores=scores,
        watermark_ours=scored["ours"] if wm is not None else None,
    )
    reasons = [v.reasons_with(u) for v, u in zip(verdicts, scored["reason"])]
    n, first = len(texts), {}
    for r in reasons:
        if r:
            first[r[0]] = first.get(r[0], 0) + 1
    return {
        "accepted": sum(not r for r in reasons) / n,
        "rejected_by_first_reason": {k: v / n for k, v in sorted(first.items())},
        "watermark_weak": sum("watermark_weak" in r for r in reasons) / n,
        "watermark_weak_only": sum(r == ["watermark_weak"] for r in reasons) / n,
    }


def grid(n_per_language: int, with_mauve: bool = True, log=print) -> dict:
    """Per language and setting (`grid_settings`): detection by length, robustness, fluency, nightly acceptance."""
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.core.encoding import conditions
    from reviewgen.core.sampling import generate_texts
    from reviewgen.data.corpus import load_split
    from reviewgen.evaluate import text_metrics as TM
    from reviewgen.evaluate.fluency import real_word_rate, vocabulary
    from reviewgen.generate.config import GenerateConfig
    from reviewgen.score.filter import ReviewFilter
    from reviewgen.score.scorer import Scorer, reference_network

    ck, cfg = load_checkpoint(DEMO_MODEL), GenerateConfig()
    tok, ref, s = ck.tokenizer, reference_network(ck), cfg.sampling
    test, vocab = load_split(DEMO_DATA, "test"), vocabulary(load_split(DEMO_DATA, "train")["text"].astype(str))
    scorer = Scorer.from_checkpoint(ck, "cpu")
    filters = {
        False: ReviewFilter.from_model(ck.path, tok, cfg.filter),
        True: ReviewFilter.from_model(ck.path, tok, replace(cfg.filter, require_watermark=True)),
    }
    out: dict = {
        "model": str(DEMO_MODEL),
        "reviews_per_language": n_per_language,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "mle_reference": ref is not None,
        "mauve": with_mauve,
        "languages": {},
    }
    for lang, df in test.groupby("language"):
        rows = df.sample(min(n_per_language, len(df)), random_state=0)
        conds, keys = conditions(rows), [f"{p}:{i}" for i, p in enumerate(rows["product_id"])]
        pool = [w for t in df["text"].astype(str) for w in text_units(t, lang) if not w.isspace()]
        human = TM.embed_texts(df["text"].astype(str).tolist()) if with_mauve else None
        res: dict = {}
        for name, (wc, seed) in grid_settings().items():
            t0 = time.perf_counter()
            wm = Watermark(KEY, wc) if wc is not None else None
            texts = generate_texts(
                ck.generator,
                tok,
                conds,
                keys,
                seed=seed,
                temperature=s.temperature,
                top_p=s.top_p,
                batch_size=s.batch_size,
                watermark=wm,
            )
            lists = tok.review_token_lists(texts)
            n_tok = np.array([len(x) for x in lists])
            r: dict = {
                "seed": seed,
                "mean_tokens": float(n_tok.mean()),
                "nll_reference": _reference_nll(ref, tok, rows, texts) if ref is not None else None,
                "real_word_rate": real_word_rate(texts, vocab)["real_word_rate"] if lang == "en" else None,
            }
            if human is not None:
                r["mauve"] = TM.mauve_score(human, TM.embed_texts(texts))
            if wm is None:
                # unwatermarked reviews under the key at each gamma: false positives on generated text
                r["detected_under_gamma"] = {
                    f"{g:g}": float(np.mean(Watermark(KEY, WatermarkConfig(gamma=g)).detect_texts(tok, texts).ours))
                    for g in GAMMAS
                }
            else:
                rng = np.random.default_rng(0)
                long = n_tok >= CUT
                cut = [tok.tok.decode(x[:CUT]) for x, keep in zip(lists, long) if keep]
                r["detected"] = _by_length(wm.detect_texts(tok, texts).ours, n_tok)
                for f in (0.10, 0.25):
                    changed = [_replace_words(t, f, pool, lang, rng) for t in texts]
                    r[f"replaced_{int(f * 100)}pct"] = _by_length(wm.detect_texts(tok, changed).ours, n_tok)
                r[f"truncated_{CUT}_tokens"] = {
                    "n": len(cut),
                    "rate": float(np.mean(wm.detect_texts(tok, cut).ours)) if cut else None,
                }
            r["nightly"] = _judge(scorer, filters[wm is not None], conds, texts, wm)
            r["seconds"] = round(time.perf_counter() - t0, 1)
            res[name] = r
            log(f"[watermark grid] {lang} {name}: {r['seconds']} s")
        for name, r in res.items():  # watermarked: against the unwatermarked reviews of the same seed
            base = res["plain" if name.startswith("plain") or r["seed"] == 0 else f"plain_seed{r['seed']}"]
            r["vs_plain"] = {
                "nats_per_token": _diff(r, base, "nll_reference", "nats_per_token"),
                "bits_per_char": _diff(r, base, "nll_reference", "bits_per_char"),
                "real_word_rate": _diff(r, base, "real_word_rate"),
                "mauve": _diff(r, base, "mauve"),
                "accepted": r["nightly"]["accepted"] - base["nightly"]["accepted"],
            }
        out["languages"][lang] = res
    return out


def _diff(r: dict, base: dict, key: str, sub: str | None = None):
    a, b = r.get(key), base.get(key)
    if sub is not None:
        a, b = (a or {}).get(sub), (b or {}).get(sub)
    return None if a is None or b is None else a - b


def main(quick: bool = False, with_mauve: bool | None = None) -> dict:
    """Both sampling sizes, the detection figures and (with the demo model and the shared corpora) the
    (gamma, delta) grid, with the thread count and the load around the run. MAUVE: on unless quick."""
    load0 = os.getloadavg()
    cases = {name: sampling_case(c, REPEATS[quick]) for name, c in CASES.items()}
    out = {
        "prefix": PREFIX,
        "new_tokens": NEW,
        "repeats": REPEATS[quick],
        "torch_threads": torch.get_num_threads(),
        "config": vars(Watermark(KEY).config),
        "sampling": cases,
        "detection": detection(2000 if quick else 20000),
    }
    if (DEMO_MODEL / "meta.json").is_file() and SHARED.is_dir():
        from reviewgen.core.checkpoint import load_checkpoint

        t = time.perf_counter()
        fp = false_positives(load_checkpoint(DEMO_MODEL).tokenizer, SHARED)
        out["real"] = {
            "model": str(DEMO_MODEL),
            "false_positives": fp,
            "false_positives_s": round(time.perf_counter() - t, 1),
            "grid": grid(REVIEWS[quick], (not quick) if with_mauve is None else with_mauve),
        }
    return dict(out, loadavg_before=load0, loadavg_after=os.getloadavg())


def _p(x, nd: int = 0, signed: bool = False) -> str:
    """A share as a percentage, or a difference of shares in points when `signed` ('-': none)."""
    if x is None:
        return "-"
    return f"{100 * x:+.{nd}f}" if signed else f"{100 * x:.{nd}f}%"


def _n(x, nd: int = 3, signed: bool = False) -> str:
    return "-" if x is None else f"{x:{'+' if signed else ''}.{nd}f}"


def grid_markdown(g: dict, fp: dict) -> list[str]:
    """The grid's tables: per language, detection by length and robustness; fluency and nightly acceptance."""
    lines = [
        f"Demo model {g['model']}: {g['reviews_per_language']} reviews per language and setting, test-split "
        f"conditions, temperature {g['temperature']}, top-p {g['top_p']} (GenerateConfig's), the same per-row "
        "seeds in every setting (plain_seedN: the unwatermarked sampler under another seed, the noise floor; "
        "a setting's _seedN: the same against plain_seedN). <eos> is held until the mark would be detected "
        "(hold_eos_z) except in _nohold. "
        "Detection: share flagged ours at the threshold; replaced: 10% / 25% of the words (in Chinese each "
        "character, latin word and punctuation mark) replaced by random words of real reviews, the whitespace "
        "kept, by the review's length as written; truncated: "
        f"the reviews of {CUT}+ tokens cut to {CUT} tokens.",
        "",
        "False positives on every real review of ../shared/data: "
        + "; ".join(
            f"gamma {gm}: "
            + ", ".join(
                f"{lang} {v['ours']} of {v['reviews']:,} (z {v['z_mean']} +- {v['z_std']}, max {v['z_max']})"
                for lang, v in by.items()
            )
            for gm, by in fp.items()
        )
        + ".",
    ]
    bins = [b for b, _, _ in BINS]
    for lang, res in g["languages"].items():
        wm = {k: v for k, v in res.items() if "detected" in v}
        first = next(iter(wm), None)
        n_bins = wm[first]["detected"] if first else {}
        lines += [
            "",
            f"**{lang}: detection** (reviews per length bin, in tokens, at {first}: "
            + ", ".join(f"{b} {n_bins[b]['n']}" for b in bins)
            + "; each setting has its own lengths)",
            "",
            "| setting | detected | " + " | ".join(bins) + " | replaced 10% | replaced 25% | 25%, >=40 tokens "
            f"| truncated to {CUT} |",
            "|---" * (6 + len(bins)) + "|",
        ]
        for name, r in wm.items():
            d = r["detected"]
            lines.append(
                f"| {name} | {_p(d['all'])} | "
                + " | ".join(_p(d[b]["rate"]) for b in bins)
                + f" | {_p(r['replaced_10pct']['all'])} | {_p(r['replaced_25pct']['all'])} | "
                f"{_p(r['replaced_25pct']['>=40']['rate'])} | {_p(r[f'truncated_{CUT}_tokens']['rate'])} |"
            )
        lines += [
            "",
            f"**{lang}: fluency and nightly acceptance** (deltas against plain; accepted: the nightly "
            "scorer + filter, with the watermark_weak rule when watermarked)",
            "",
            "| setting | tokens | NLL nats/token (delta) | bits/char (delta) | real-word rate (delta) "
            "| MAUVE (delta) | accepted (delta, points) | watermark_weak | watermark_weak only | other rejects |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in res.items():
            v, nl, ng = r["vs_plain"], r["nll_reference"] or {}, r["nightly"]
            other = 1 - ng["accepted"] - ng["watermark_weak_only"]
            lines.append(
                f"| {name} | {r['mean_tokens']:.1f} | "
                f"{_n(nl.get('nats_per_token'))} ({_n(v['nats_per_token'], 3, True)}) | "
                f"{_n(nl.get('bits_per_char'))} ({_n(v['bits_per_char'], 3, True)}) | "
                f"{_n(r['real_word_rate'])} ({_n(v['real_word_rate'], 3, True)}) | "
                f"{_n(r.get('mauve'))} ({_n(v['mauve'], 3, True)}) | {_p(ng['accepted'])} "
                f"({_p(v['accepted'], 1, True)}) | {_p(ng['watermark_weak'])} | "
                f"{_p(ng['watermark_weak_only'])} | {_p(other)} |"
            )
        lines += [""] + spread_lines(res)
        plain = {k: v["detected_under_gamma"] for k, v in res.items() if "detected_under_gamma" in v}
        lines += [
            "",
            "Unwatermarked reviews flagged ours: "
            + "; ".join(f"{k}: " + ", ".join(f"gamma {gm} {_p(x)}" for gm, x in d.items()) for k, d in plain.items())
            + ".",
        ]
    return lines


def spread_lines(res: dict) -> list[str]:
    """Mean +- standard deviation over SEEDS of each candidate's paired deltas against plain, beside the
    unwatermarked sampler's own seed-to-seed deltas (the noise floor)."""
    groups = {
        f"g{g:g}_d{x:g} vs plain, same seed": [f"g{g:g}_d{x:g}"] + [f"g{g:g}_d{x:g}_seed{s}" for s in SEEDS[1:]]
        for g, x in CANDIDATES
    }
    groups["plain_seedN vs plain (noise)"] = [f"plain_seed{s}" for s in SEEDS[1:]]
    lines = [
        f"Over seeds {', '.join(map(str, SEEDS))} (mean +- sd of the deltas; detected: share flagged ours, and "
        "after 25% of the words are replaced among the reviews of 40+ tokens):",
        "",
        "| comparison | MAUVE delta | real-word rate delta | NLL delta (nats/token) | accepted delta (points) "
        "| detected | 25% replaced, 40+ tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, names in groups.items():
        rows = [res[n] for n in names if n in res]
        cells = []
        for key, scale in (("mauve", 1), ("real_word_rate", 1), ("nats_per_token", 1), ("accepted", 100)):
            v = [r["vs_plain"][key] * scale for r in rows if r["vs_plain"][key] is not None]
            cells.append(_mean_sd(v))
        for get in (lambda r: r["detected"]["all"], lambda r: r["replaced_25pct"][">=40"]["rate"]):
            v = [100 * get(r) for r in rows if "detected" in r and get(r) is not None]
            cells.append(_mean_sd(v, 1) + ("%" if v else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _mean_sd(v: list[float], nd: int = 3) -> str:
    return f"{np.mean(v):+.{nd}f} +- {np.std(v, ddof=1) if len(v) > 1 else 0:.{nd}f}" if v else "-"


def markdown(x: dict) -> list[str]:
    """Result lines for bench/results.md."""
    c = x["config"]
    lines = [
        f"gamma {c['gamma']}, delta {c['delta']}, threshold z {c['threshold_z']}; prefix {x['prefix']}, "
        f"{x['new_tokens']} new tokens, best of {x['repeats']}, torch threads {x['torch_threads']}.",
        "",
        "| case | plain s | watermarked s | speed ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for name, r in x["sampling"].items():
        s = r["seconds"]
        lines.append(
            f"| {name} | {s['plain']:.3f} | {s['watermarked']:.3f} | {r['speed_ratio']} | "
            f"{r['goal']['verdict']} ({r['goal']['goal']}) |"
        )
    d = x["detection"]
    lines += [
        "",
        f"Detection: {d['sequences_per_s']} sequences/s of {d['tokens_each']} tokens (no tokenizer); "
        f"random sequences score z {d['null_z_mean']} +- {d['null_z_std']}, "
        f"{d['null_share_ours']:.2e} of them flagged ours.",
    ]
    if "real" in x:
        lines += [""] + grid_markdown(x["real"]["grid"], x["real"]["false_positives"])
    return lines


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the bench works")
    ap.add_argument("--no-mauve", action="store_true", help="skip MAUVE (MiniLM embeddings of every sample)")
    ap.add_argument("--out", help="also write OUT/results.json and OUT/results.md (e.g. bench/results/watermark)")
    a = ap.parse_args()
    t0, load0 = time.perf_counter(), os.getloadavg()
    res = main(a.quick, False if a.no_mauve else None)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        cmd = "python -m bench.bench_watermark " + " ".join(sys.argv[1:])
        meta = {
            "command": cmd,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": round(time.perf_counter() - t0, 1),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        }
        (out / "results.json").write_text(json.dumps(dict(meta, result=res), indent=2, default=str))
        (out / "results.md").write_text(
            "\n".join(
                [
                    "# Watermark bench",
                    "",
                    f"`{cmd}` at {meta['date']}, {meta['wall_s']} s, torch threads {res['torch_threads']}, "
                    f"load average {res['loadavg_before'][0]:.2f} -> {res['loadavg_after'][0]:.2f}.",
                    "",
                ]
                + markdown(res)
            )
            + "\n"
        )
        print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    else:
        print(json.dumps(res, indent=2, default=str))
