"""The keyed watermark (reviewgen.core.watermark): sampling speed with and without it at the two sizes of
bench_sampling (same random models, batch, prefix and new tokens, default precision), detection throughput on
token sequences with the z-scores of unrelated random sequences as a check of the null, and, when the `make
demo` model (runs/demo/model) and the shared corpora (../shared/data) are there, at the default settings:
false positives on every real review, and detection of the demo model's watermarked reviews per language,
by length, after 10% and 25% of the words are replaced by random words of real reviews, and after truncation
to 20 tokens.

Plain and watermarked sampling alternate, repeat by repeat, and each keeps its best time: on a shared machine
the ratio taken side by side is the figure to read. The goal: watermarked sampling at >= 95% of plain.
This bench measures the defaults only; it does not search a (gamma, delta) grid.
Run: python -m bench.bench_watermark
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.bench_sampling import CASES, NEW, PREFIX
from reviewgen.core.watermark import Watermark, WatermarkKey

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
    m = Generator(GeneratorConfig(vocab_size=c["vocab_size"], block_size=PREFIX + NEW, n_layer=c["n_layer"],
                                  n_head=c["n_head"], d_model=c["d_model"], dropout=0.0)).eval()
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
    return {"case": c, "seconds": best, "speed_ratio": round(ratio, 3),
            "mean_z_random_model": round(float(np.nanmean(det.z)), 2),
            "goal": {"goal": f">= {GOAL_SPEED} of plain", "value": round(ratio, 3),
                     "verdict": "MET" if ratio >= GOAL_SPEED else "NOT MET"}}


def detection(n: int, length: int = 60, vocab: int = 16000) -> dict:
    """Detection throughput on `n` random sequences (no tokenizer), and their z-scores under the null."""
    wm = Watermark(KEY)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, vocab, length).tolist() for _ in range(n)]
    t = time.perf_counter()
    det = wm.z_scores(seqs, first_prev=3)
    s = time.perf_counter() - t
    z = det.z
    return {"sequences": n, "tokens_each": length, "seconds": round(s, 3), "sequences_per_s": round(n / s),
            "null_z_mean": round(float(z.mean()), 3), "null_z_std": round(float(z.std()), 3),
            "null_share_ours": float(np.mean(det.ours))}


def false_positives(wm: Watermark, tok, data_dir: Path) -> dict:
    """Every review of the shared corpora (cleaned as `reviewgen prepare` does), detected under the key."""
    from reviewgen.data.corpus import review_sources
    from reviewgen.data.sources import load_corpus

    out = {}
    frames = [load_corpus(p).frame[["text", "language"]] for p in review_sources(data_dir)]
    for lang, df in pd.concat(frames).groupby("language"):
        texts = df["text"].astype(str).tolist()
        dets = [wm.detect_texts(tok, texts[s:s + 20000]) for s in range(0, len(texts), 20000)]
        z = np.concatenate([d.z for d in dets])
        ours = sum(sum(d.ours) for d in dets)
        out[lang] = {"reviews": len(texts), "ours": int(ours), "share": ours / len(texts),
                     "z_mean": round(float(np.nanmean(z)), 3), "z_std": round(float(np.nanstd(z)), 3),
                     "z_max": round(float(np.nanmax(z)), 2)}
    return out


def _replace_words(text: str, frac: float, pool: list[str], lang: str, rng) -> str:
    """`text` with `frac` of its words (characters for Chinese) replaced by random words of `pool`."""
    units = list(text.replace(" ", "")) if lang == "zh" else text.split()
    for i in rng.choice(len(units), size=round(frac * len(units)), replace=False) if units else []:
        units[i] = pool[rng.integers(len(pool))]
    return ("" if lang == "zh" else " ").join(units)


def demo_detection(wm: Watermark, n_per_language: int) -> dict:
    """The demo model's watermarked reviews (nightly defaults: temperature 1.0, top-p 0.95) per language."""
    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.core.encoding import conditions
    from reviewgen.core.sampling import generate_texts
    from reviewgen.data.corpus import load_split

    ck = load_checkpoint(DEMO_MODEL)
    tok, test = ck.tokenizer, load_split(DEMO_DATA, "test")
    rng, out = np.random.default_rng(0), {}
    for lang, df in test.groupby("language"):
        rows = df.sample(min(n_per_language, len(df)), random_state=0)
        keys = [f"{p}:{i}" for i, p in enumerate(rows["product_id"])]
        texts = generate_texts(ck.generator, tok, conditions(rows), keys, seed=0, temperature=1.0, top_p=0.95,
                               watermark=wm)
        plain = generate_texts(ck.generator, tok, conditions(rows), keys, seed=0, temperature=1.0, top_p=0.95)
        pool = [w for t in df["text"].astype(str) for w in (list(t) if lang == "zh" else t.split())]
        n_tok = np.array([len(x) for x in tok.review_token_lists(texts)])
        cut = [tok.tok.decode(x[:20]) for x in tok.review_token_lists(texts)]
        variants = {"as_written": texts, "unwatermarked": plain, "truncated_20_tokens": cut,
                    **{f"replaced_{int(f * 100)}pct": [_replace_words(t, f, pool, lang, rng) for t in texts]
                       for f in (0.10, 0.25)}}
        res = {k: float(np.mean(wm.detect_texts(tok, v).ours)) for k, v in variants.items()}
        ours = np.array(wm.detect_texts(tok, texts).ours)
        bins = {"<20": n_tok < 20, "20-34": (n_tok >= 20) & (n_tok < 35), ">=35": n_tok >= 35}
        out[lang] = {"reviews": len(texts), "detected": res,
                     "detected_by_tokens": {k: {"n": int(m.sum()), "rate": float(ours[m].mean()) if m.any() else None}
                                            for k, m in bins.items()}}
    return out


def main(quick: bool = False) -> dict:
    """Both sampling sizes and the detection figures, with the thread count and the load around the run."""
    load0 = os.getloadavg()
    cases = {name: sampling_case(c, REPEATS[quick]) for name, c in CASES.items()}
    out = {"prefix": PREFIX, "new_tokens": NEW, "repeats": REPEATS[quick], "torch_threads": torch.get_num_threads(),
           "config": vars(Watermark(KEY).config), "sampling": cases, "detection": detection(2000 if quick else 20000)}
    if (DEMO_MODEL / "meta.json").is_file() and SHARED.is_dir():
        from reviewgen.core.checkpoint import load_checkpoint

        wm = Watermark(KEY)
        out["real"] = {"model": str(DEMO_MODEL), "false_positives": false_positives(
            wm, load_checkpoint(DEMO_MODEL).tokenizer, SHARED), "demo_detection": demo_detection(wm, 50 if quick else 400)}
    return dict(out, loadavg_before=load0, loadavg_after=os.getloadavg())


def markdown(x: dict) -> list[str]:
    """Result lines for bench/results.md."""
    c = x["config"]
    lines = [f"gamma {c['gamma']}, delta {c['delta']}, threshold z {c['threshold_z']}; prefix {x['prefix']}, "
             f"{x['new_tokens']} new tokens, best of {x['repeats']}, torch threads {x['torch_threads']}.", "",
             "| case | plain s | watermarked s | speed ratio | goal |", "|---|---|---|---|---|"]
    for name, r in x["sampling"].items():
        s = r["seconds"]
        lines.append(f"| {name} | {s['plain']:.3f} | {s['watermarked']:.3f} | {r['speed_ratio']} | "
                     f"{r['goal']['verdict']} ({r['goal']['goal']}) |")
    d = x["detection"]
    lines += ["", f"Detection: {d['sequences_per_s']} sequences/s of {d['tokens_each']} tokens (no tokenizer); "
              f"random sequences score z {d['null_z_mean']} +- {d['null_z_std']}, "
              f"{d['null_share_ours']:.2e} of them flagged ours."]
    if "real" in x:
        fp, det = x["real"]["false_positives"], x["real"]["demo_detection"]
        lines += ["", f"Real reviews ({x['real']['model']} tokenizer): " + "; ".join(
            f"{k}: {v['ours']} of {v['reviews']} flagged ours (z {v['z_mean']} +- {v['z_std']}, max {v['z_max']})"
            for k, v in fp.items()), "", "| language | reviews | " + " | ".join(next(iter(det.values()))["detected"])
            + " |", "|---" * (2 + len(next(iter(det.values()))["detected"])) + "|"]
        for lang, r in det.items():
            lines.append(f"| {lang} | {r['reviews']} | " + " | ".join(f"{v:.3f}" for v in r["detected"].values()) + " |")
        lines += ["", "Detected by review length (tokens): " + "; ".join(
            f"{lang}: " + ", ".join(f"{b} {v['rate'] if v['rate'] is None else round(v['rate'], 3)} (n={v['n']})"
                                    for b, v in r["detected_by_tokens"].items()) for lang, r in det.items())]
    return lines


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=str))
