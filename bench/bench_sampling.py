"""Sampling throughput at two sizes, each against Hugging Face GPT-2 `generate()` of the same shape (random
weights, same batch, prefix and new tokens, its own KV cache), in one process with the same threads.

Ours and HF alternate, repeat by repeat, and each keeps its best time: on a shared machine the load moves,
so figures taken side by side in the same run are what the ratios rest on. Each runs in fp32 and, where the
sampler's default precision is bf16 (`reviewgen.core.device.inference_dtype`: CUDA, or a CPU with native
bf16), under the same bf16 autocast too, so every ratio compares equal precisions. The goals are read on
the default precision against HF at that precision; ours at the default against HF's own default (fp32) is
reported beside them. The matmul peak of each precision is measured in the same process (a large torch.mm),
and the sampler's achieved FLOP/s is computed from the model's parameter count and the tokens it forwards.
The torch.compile'd decode step (SamplingParams.compile_decode) is measured in fp32 and at the default.
Run: python -m bench.bench_sampling
"""

from __future__ import annotations

import json
import os
import resource
import time

import torch

from reviewgen.core.device import cpu_has_native_bf16

CASES = {
    "4x256_v4000_b32_plain": dict(n_layer=4, n_head=4, d_model=256, vocab_size=4000, batch=32, top_p=1.0),
    "6x384_v16000_b64_top_p0.95": dict(n_layer=6, n_head=6, d_model=384, vocab_size=16000, batch=64, top_p=0.95),
}
PREFIX, NEW = 24, 64
REPEATS = {False: 3, True: 1}  # best of N, by quick
GOAL_SPEEDUP = 2.0
GOAL_PEAK_FRACTION = 0.5  # at the larger size
LARGER = "6x384_v16000_b64_top_p0.95"


def matmul_flops(n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """This CPU's matmul FLOP/s in `dtype`, best of `reps` large torch.mm calls (the roofline we compare
    against)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _flops_per_run(n_matmul_params: int, c: dict) -> float:
    """Forward FLOPs of one sampling run: 2 x matmul parameters per forwarded token, plus attention scores
    and values over the keys each token sees."""
    B, L, d = c["batch"], c["n_layer"], c["d_model"]
    tokens = B * (PREFIX + NEW - 1)  # the prefill, then one token per step (the last pick needs no forward)
    attn_keys = B * (PREFIX * (PREFIX + 1) / 2 + sum(PREFIX + t + 1 for t in range(NEW - 1)))
    return 2 * n_matmul_params * tokens + 4 * L * d * attn_keys


def _ours(c: dict, prefixes: torch.Tensor, compile_decode: bool = False, precision: str = "auto"):
    from reviewgen.core.config import GeneratorConfig
    from reviewgen.core.models import Generator, count_params
    from reviewgen.core.sampling import SamplingParams, counter_uniforms, sample

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
    params = SamplingParams(NEW, 1.0, 0, c["top_p"], compile_decode=compile_decode, precision=precision)
    u = counter_uniforms(range(c["batch"]), NEW)
    # positions are a lookup, not a matmul; the tied embedding counts once, as the LM head
    n_matmul = count_params(m) - m.pos_emb.weight.numel()

    def go():  # eos_id=-1: never stops early, the same work as HF's min_new_tokens
        return sample(m, prefixes, params, eos_id=-1, pad_id=0, uniforms=u)

    return go, n_matmul


def _hf(c: dict, prefixes: torch.Tensor, bf16: bool = False):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(
        GPT2Config(
            n_layer=c["n_layer"],
            n_head=c["n_head"],
            n_embd=c["d_model"],
            vocab_size=c["vocab_size"],
            n_positions=PREFIX + NEW,
            bos_token_id=None,
            eos_token_id=None,
        )
    ).eval()
    mask = torch.ones_like(prefixes)

    def go():  # no_grad, as generate() itself runs: autocast keeps its weight casts only outside inference_mode
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return m.generate(
                prefixes,
                attention_mask=mask,
                do_sample=True,
                max_new_tokens=NEW,
                min_new_tokens=NEW,
                top_k=0,
                top_p=c["top_p"],
                eos_token_id=None,
                pad_token_id=0,
            )

    return go


def run_case(name: str, c: dict, repeats: int) -> dict:
    """Best-of-`repeats` seconds for ours and HF, alternating, with speedups and fractions of matmul peak."""
    torch.manual_seed(0)
    prefixes = torch.randint(10, c["vocab_size"], (c["batch"], PREFIX))
    bf16 = cpu_has_native_bf16()
    ours, n_matmul = _ours(c, prefixes)
    fns = {
        "ours": ours,
        "ours_fp32": _ours(c, prefixes, precision="fp32")[0],
        "ours_fp32_compiled_decode": _ours(c, prefixes, compile_decode=True, precision="fp32")[0],
        "hf": _hf(c, prefixes),
    }
    if bf16:
        fns["ours_compiled_decode"] = _ours(c, prefixes, compile_decode=True)[0]
        fns["hf_bf16"] = _hf(c, prefixes, bf16=True)
    best, first_call = {}, {}
    reference = fns["ours_fp32"]()
    for k, f in fns.items():
        t = time.perf_counter()
        f()  # warm-up (for the compiled decode step: the compile)
        first_call[k] = time.perf_counter() - t
    same_tokens = bool(torch.equal(reference, fns["ours_fp32_compiled_decode"]()))
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best.get(k, float("inf")), time.perf_counter() - t)
    peaks = {"fp32": matmul_flops()}
    if bf16:
        peaks["bf16"] = matmul_flops(dtype=torch.bfloat16)
    default = "bf16" if bf16 else "fp32"
    flops = _flops_per_run(n_matmul, c)

    def precision_of(method: str) -> str:
        return "fp32" if method.endswith(("fp32", "fp32_compiled_decode")) or method == "hf" else default

    methods = {
        k: {
            "precision": precision_of(k),
            "seconds": s,
            "reviews_per_s": c["batch"] / s,
            "tokens_per_s": c["batch"] * NEW / s,
            "achieved_gflops": flops / s / 1e9,
            "fraction_of_matmul_peak": flops / s / peaks[precision_of(k)],
        }
        for k, s in best.items()
    }
    hf_same = best["hf_bf16"] if bf16 else best["hf"]
    speedup = hf_same / best["ours"]
    out = {
        "case": c,
        "matmul_params": n_matmul,
        "default_precision": default,
        "matmul_peak_gflops": {k: v / 1e9 for k, v in peaks.items()},
        "methods": methods,
        "speedup_vs_hf": speedup,
        "speedup_fp32_vs_hf_fp32": best["hf"] / best["ours_fp32"],
        "speedup_default_vs_hf_default": best["hf"] / best["ours"],
        "compiled_decode": {
            "speedup_vs_eager": round(best["ours_fp32"] / best["ours_fp32_compiled_decode"], 3),
            "first_call_s": round(first_call["ours_fp32_compiled_decode"], 1),
            "same_tokens_as_eager": same_tokens,
            **(
                {"speedup_vs_eager_at_default": round(best["ours"] / best["ours_compiled_decode"], 3)}
                if "ours_compiled_decode" in best
                else {}
            ),
        },
        "goals": {
            "speedup_vs_hf": {
                "goal": f">= {GOAL_SPEEDUP}x (both {default})",
                "value": round(speedup, 2),
                "verdict": "MET" if speedup >= GOAL_SPEEDUP else "NOT MET",
            }
        },
    }
    if name == LARGER:
        frac = methods["ours"]["fraction_of_matmul_peak"]
        out["goals"]["fraction_of_matmul_peak"] = {
            "goal": f">= {GOAL_PEAK_FRACTION} ({default} peak)",
            "value": round(frac, 3),
            "verdict": "MET" if frac >= GOAL_PEAK_FRACTION else "NOT MET",
        }
    return out


def main(quick: bool = False) -> dict:
    """Run both cases; the figures with their goals, thread counts and the load average around the run."""
    load0 = os.getloadavg()
    cases = {name: run_case(name, c, REPEATS[quick]) for name, c in CASES.items()}
    return {
        "prefix": PREFIX,
        "new_tokens": NEW,
        "repeats": REPEATS[quick],
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cases": cases,
        "note": "ours and HF alternate in one process with the same threads; on a shared machine the "
        "absolute rates move with the load, the ratios taken side by side are the figures to read",
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
