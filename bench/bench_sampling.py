"""Sampling throughput: our KV-cache sampler vs our sampler without the cache vs Hugging Face GPT-2
`generate()` of the same size (random weights, same batch and lengths, its own KV cache).

Each method runs in its own process so peak RSS is per method. Run: python -m bench.bench_sampling
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time

import torch

SIZE = dict(n_layer=4, n_head=4, d_model=256, vocab_size=4000)
BATCH, PREFIX, NEW = 32, 32, 64
REPEATS = 3


def matmul_flops(n: int = 1024, reps: int = 20) -> float:
    """This CPU's measured fp32 matmul FLOP/s (the roofline we compare against)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def model_flops_per_token(ctx: float) -> float:
    """Forward FLOPs per generated token: 2 x (block weights + LM head) + attention over `ctx` keys."""
    d, L, V = SIZE["d_model"], SIZE["n_layer"], SIZE["vocab_size"]
    return 2 * (12 * d * d * L + d * V) + 4 * L * ctx * d


def _run(method: str, q) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(torch.get_num_threads())
    prefixes = torch.randint(10, SIZE["vocab_size"], (BATCH, PREFIX))
    if method == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        m = GPT2LMHeadModel(GPT2Config(n_layer=SIZE["n_layer"], n_head=SIZE["n_head"], n_embd=SIZE["d_model"],
                                       vocab_size=SIZE["vocab_size"], n_positions=PREFIX + NEW)).eval()

        def go():
            with torch.no_grad():
                return m.generate(prefixes, attention_mask=torch.ones_like(prefixes), do_sample=True,
                                  max_new_tokens=NEW, min_new_tokens=NEW, top_k=0, top_p=1.0,
                                  eos_token_id=None, pad_token_id=0)
    else:
        from reviewgen.core.config import GeneratorConfig
        from reviewgen.core.models import Generator
        from reviewgen.core.sampling import SamplingParams, sample

        m = Generator(GeneratorConfig(vocab_size=SIZE["vocab_size"], block_size=PREFIX + NEW, n_layer=SIZE["n_layer"],
                                      n_head=SIZE["n_head"], d_model=SIZE["d_model"], dropout=0.0)).eval()
        params = SamplingParams(NEW, 1.0)

        def go():  # eos_id=-1: never stops early, the same work as HF's min_new_tokens
            return sample(m, prefixes, params, eos_id=-1, pad_id=0, use_cache=(method == "ours"))
    go()  # warm-up
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        go()
        times.append(time.perf_counter() - t)
    best = min(times)
    toks = BATCH * NEW
    q.put({"method": method, "seconds": best, "reviews_per_s": BATCH / best, "tokens_per_s": toks / best,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "achieved_gflops": model_flops_per_token(PREFIX + NEW / 2) * toks / best / 1e9})


def main() -> dict:
    ctx = mp.get_context("spawn")
    results = {}
    for method in ("ours", "ours_nocache", "hf"):
        q = ctx.Queue()
        p = ctx.Process(target=_run, args=(method, q))
        p.start()
        p.join()
        results[method] = q.get() if not q.empty() else {"error": f"exit code {p.exitcode}"}
    peak = matmul_flops()
    out = {"size": SIZE, "batch": BATCH, "prefix": PREFIX, "new_tokens": NEW, "threads": torch.get_num_threads(),
           "matmul_gflops": peak / 1e9, "methods": results}
    if "reviews_per_s" in results.get("hf", {}):
        out["speedup_vs_hf"] = results["ours"]["reviews_per_s"] / results["hf"]["reviews_per_s"]
        out["speedup_vs_nocache"] = results["ours"]["reviews_per_s"] / results["ours_nocache"]["reviews_per_s"]
    for r in results.values():
        if "achieved_gflops" in r:
            r["fraction_of_matmul_peak"] = r["achieved_gflops"] * 1e9 / peak
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
