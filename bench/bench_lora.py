"""Memory and speed of LoRA against full fine-tuning in the GAN loop (CPU, random weights).

1. Memory at the Qwen2-0.5B shape (24 layers, width 896, GQA 14/2, vocab 151936, MLP 4864, tied head): one
   adversarial step (G's policy-gradient step and D's step) of the real `GANTrainer`, in a fresh process per
   mode. Measured: bytes of parameters (distinct storages over G, D and the reference: a shared base counts
   once), of gradients (every trainable tensor gets one of its size), of optimizer state (AdamW's tensors
   after the step), and the peak RSS during the step (polled) and of the process.
2. The same bytes for the 0.5B, 1.5B and 7B Qwen2.5 shapes by formula (`state_bytes`), checked against (1);
   plus an activation estimate for a GPU worker at the LoRA configs' batch size (bf16 autocast), to show
   what fits a GPU.
3. Peak host RSS of setting a LoRA trainer up from a base in memory: built on the meta device with the base's
   tensors moved in, against drawing G and D at random and copying the base in.
4. Step time of full vs LoRA on configs/demo.yaml's shape.

Run: python -m bench.bench_lora [--quick] [--out bench/results/lora]; `make bench` runs it through
bench.run_all, and a full (not quick) run also writes bench/results/lora/results.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LORA_RANK = 16
# Qwen2.5 shapes: layers, width, heads, kv heads, vocab, MLP width, tied head
SHAPES = {
    "0.5B": (24, 896, 14, 2, 151936, 4864, True),
    "1.5B": (28, 1536, 12, 2, 151936, 8960, True),
    "7B": (28, 3584, 28, 4, 152064, 18944, False),
}
N_CATEGORIES = 64
GIB = 1024**3


# -- the formula ---------------------------------------------------------------------------------------


def block_params(d: int, h: int, kv: int, inter: int) -> tuple[int, int]:
    """(matmul weights, other tensors) of one Qwen2 block: q|k|v with biases, o, gate|up, down, 2 norms."""
    hd = d // h
    matmul = d * (h + 2 * kv) * hd + h * hd * d + 3 * d * inter
    return matmul, (h + 2 * kv) * hd + 2 * d


def adapter_params(d: int, h: int, kv: int, inter: int, r: int) -> int:
    """One block's LoRA tensors on q|k|v, o, gate|up and down: r * (in + out) each."""
    hd = d // h
    return r * ((d + (h + 2 * kv) * hd) + (h * hd + d) + (d + 2 * inter) + (inter + d))


def state_bytes(shape: tuple, rank: int, bf16_base: bool = False, judge: bool = True) -> dict[str, int]:
    """Per-worker bytes of parameters, gradients and AdamW state of the GAN loop: full fine-tuning (rank 0:
    G, D and the reference each a full fp32 copy; G and D trained) or LoRA (one shared base; G's and D's
    adapters and D's heads trained). `judge`: the adversarial phase's frozen snapshot of D (the condition
    rewards' judge), a full copy of D, or with LoRA a copy of D's adapters and heads."""
    L, d, h, kv, V, inter, tied = shape
    matmul, other = block_params(d, h, kv, inter)
    emb = V * d
    heads = (d + 1) + (2 * d + 1) + (2 * d * 5 + 5) + (2 * d * N_CATEGORIES + N_CATEGORIES)
    g = L * (matmul + other) + emb + d + (0 if tied else emb)
    if rank == 0:
        d_params = g - (0 if tied else emb) + heads
        params, trained = 4 * (2 * g + d_params * (1 + judge)), g + d_params
    else:
        d_own = L * adapter_params(d, h, kv, inter, rank) + heads
        trained = L * adapter_params(d, h, kv, inter, rank) + d_own
        base = (2 if bf16_base else 4) * L * matmul + 4 * (g - L * matmul)
        params = base + 4 * (trained + d_own * judge)
    return {
        "params": params,
        "grads": 4 * trained,
        "optimizer": 8 * trained,
        "trainable": trained,
        "total": params + 12 * trained,
    }


def activation_bytes(shape: tuple, rows: int, seq: int, review: int, checkpointing: bool) -> int:
    """Rough peak activations of one G step under bf16 autocast (D's step is smaller: no vocabulary):
    per layer and token about 34 * d bytes kept for the backward (Korthikanti et al. 2022, with an
    attention kernel that keeps no [T, T] scores), or 2 * d (the block input) with gradient checkpointing
    plus one block's worth; and the vocabulary: bf16 logits plus fp32 log-probabilities, about 10 bytes
    per review position and vocabulary entry."""
    L, d, h, kv, V, inter, tied = shape
    tokens = rows * seq
    per_layer = (2 * d) if checkpointing else (34 * d)
    blocks = L * per_layer * tokens + (34 * d * tokens if checkpointing else 0)
    return blocks + 10 * rows * review * V


# -- measurement ---------------------------------------------------------------------------------------


def _rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakRSS:
    """Polls this process's RSS in a thread while the block runs."""

    def __enter__(self):
        self.peak, self._stop = _rss_kb(), False
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop:
            self.peak = max(self.peak, _rss_kb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


def _run_config(shape: tuple, rank: int, prefix: int, review: int, batch: int, group: int):
    from reviewgen.core.config import RunConfig

    L, d, h, kv, V, inter, tied = shape
    arch = {
        "arch": "llama",
        "n_layer": L,
        "d_model": d,
        "n_head": h,
        "n_kv_head": kv,
        "intermediate_size": inter,
        "qkv_bias": True,
        "tie_embeddings": tied,
        "dropout": 0.0,
        "lora.rank": rank,
    }
    over = {f"{s}.{k}": v for s in ("generator", "discriminator") for k, v in arch.items()}
    over.update(
        {
            "tokenizer.prefix_len": prefix,
            "tokenizer.max_review_len": review,
            "train.batch_size": batch,
            "train.group_size": group,
            "train.mle_steps": 0,
            "train.disc_warmup_steps": 0,
            "train.adv_steps": 10,
            "train.replay_size": 64,
            "discriminator.n_categories": N_CATEGORIES,
        }
    )
    # without the condition rewards' D snapshot: the figures are those of G, D and the reference
    known = {f.name for f in dataclasses.fields(RunConfig().train)}
    over.update({f"train.{k}": 0.0 for k in ("rating_reward_weight", "category_reward_weight") if k in known})
    return RunConfig().override(over).finalize(vocab_size=V, n_categories=N_CATEGORIES)


def _batch(cfg, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    t = cfg.tokenizer
    n = cfg.train.batch_size
    ids = torch.randint(3, cfg.generator.vocab_size, (n, t.prefix_len + t.max_review_len), generator=g)
    return {
        "ids": ids,
        "rating": torch.randint(0, 5, (n,), generator=g),
        "category": torch.randint(0, cfg.discriminator.n_categories, (n,), generator=g),
    }


def _trainer(cfg, base=None):
    import torch

    from reviewgen.train.trainer import GANTrainer

    tok = types.SimpleNamespace(pad_id=0, eos_id=1)  # the step needs only these ids
    torch.manual_seed(0)
    return GANTrainer(cfg, tok, [f"c{i}" for i in range(cfg.discriminator.n_categories)], base=base)


def measure_memory(shape_name: str, rank: int) -> dict[str, Any]:
    """One adversarial step at `shape_name` (in this process: run it in a fresh one)."""
    import torch

    rss0 = _rss_kb()
    cfg = _run_config(SHAPES[shape_name], rank, prefix=16, review=16, batch=4, group=2)
    tr = _trainer(cfg)
    rss_models = _rss_kb()
    with PeakRSS() as peak:
        t = time.perf_counter()
        tr.train_step(_batch(cfg, 0))
        step_s = time.perf_counter() - t
    storages = {}
    for m in (tr.G, tr.D, tr.ref) + ((tr.cond,) if getattr(tr, "cond", None) is not None else ()):
        for p in m.parameters():
            storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    trainable = [p for m in (tr.G, tr.D) for p in m.parameters() if p.requires_grad]
    opt = sum(
        v.numel() * v.element_size()
        for o in (tr.opt_g, tr.opt_d)
        for s in o.state.values()
        for v in s.values()
        if torch.is_tensor(v) and v.dim() > 0
    )
    params = sum(storages.values())
    grads = sum(p.numel() * p.element_size() for p in trainable)
    return {
        "shape": shape_name,
        "rank": rank,
        "judge": getattr(tr, "cond", None) is not None,
        "params": params,
        "grads": grads,
        "optimizer": opt,
        "total": params + grads + opt,
        "trainable": sum(p.numel() for p in trainable),
        "rss_before_models_mb": rss0 / 1024,
        "rss_after_models_mb": rss_models / 1024,
        "step_peak_rss_mb": peak.peak / 1024,
        "process_peak_rss_mb": _rss_kb("VmHWM") / 1024,
        "step_s": step_s,
    }


def measure_build(shape_name: str, lean: bool) -> dict[str, Any]:
    """Peak RSS of setting a LoRA (bf16 base) trainer up from a base at `shape_name` whose weights are already
    in memory in bf16, as read from safetensors: `lean` builds on the meta device and moves the base's tensors
    in (`GANTrainer(base=...)`); otherwise G and D are drawn at random first and the base copied into G (the
    earlier path). In this process: run it in a fresh one."""
    import torch

    from reviewgen.core.models import Generator

    cfg = _run_config(SHAPES[shape_name], LORA_RANK, prefix=16, review=16, batch=4, group=2)
    cfg = cfg.override({"generator.lora.base_dtype": "bfloat16", "discriminator.lora.base_dtype": "bfloat16"})
    with torch.device("meta"):
        names = {
            k: (v.shape, v.dtype)
            for k, v in Generator(cfg.generator).state_dict().items()
            if "lora_" not in k and not (k == "lm_head.weight" and cfg.generator.tie_embeddings)
        }
    state = {k: torch.zeros(shape, dtype=torch.bfloat16) for k, (shape, _) in names.items()}
    rss0 = _rss_kb()
    with PeakRSS() as peak:
        if lean:
            base = types.SimpleNamespace(state=state, path=Path("base"), meta=lambda: {"path": "base"})
            tr = _trainer(cfg, base=base)
        else:
            tr = _trainer(cfg)
            tr.G.load_state_dict(state, strict=False)
        del state
    base_bytes = sum(p.numel() * p.element_size() for p in tr.G.parameters() if not p.requires_grad)
    return {
        "shape": shape_name,
        "lean": lean,
        "rss_base_in_memory_mb": rss0 / 1024,
        "peak_rss_mb": peak.peak / 1024,
        "after_mb": _rss_kb() / 1024,
        "base_bytes": base_bytes,
    }


def measure_demo_speed(rank: int, steps: int) -> dict[str, Any]:
    """Mean adversarial step time on configs/demo.yaml's shape (after one warm-up step)."""
    from reviewgen.core.config import RunConfig

    cfg = RunConfig.from_yaml(ROOT / "configs" / "demo.yaml")
    g = cfg.generator
    over = {"train.mle_steps": 0, "train.disc_warmup_steps": 0, "train.adv_steps": steps + 2}
    if rank:
        over.update({"generator.lora.rank": rank, "discriminator.lora.rank": rank})
        over.update({f"discriminator.{k}": getattr(g, k) for k in ("n_layer", "d_model", "n_head", "arch")})
    cfg = cfg.override(over).finalize()
    tr = _trainer(cfg)
    tr.train_step(_batch(cfg, 0))
    t = time.perf_counter()
    for i in range(steps):
        tr.train_step(_batch(cfg, i + 1))
    return {
        "rank": rank,
        "steps": steps,
        "step_s": (time.perf_counter() - t) / steps,
        "trainable": sum(p.numel() for m in (tr.G, tr.D) for p in m.parameters() if p.requires_grad),
    }


def _in_child(fn: str, *args) -> dict[str, Any]:
    code = f"import json, bench.bench_lora as b; print('RESULT', json.dumps(b.{fn}(*{args!r})))"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not lines:
        raise RuntimeError(f"{fn}{args} failed (exit {p.returncode}): {(p.stdout + p.stderr)[-2000:]}")
    return json.loads(lines[-1][7:])


def main(quick: bool = False) -> dict[str, Any]:
    measured = {m: _in_child("measure_memory", "0.5B", r) for m, r in (("full", 0), ("lora", LORA_RANK))}
    formula = {
        name: {
            "full": state_bytes(s, 0),
            "lora": state_bytes(s, LORA_RANK),
            "lora_bf16": state_bytes(s, LORA_RANK, bf16_base=True),
        }
        for name, s in SHAPES.items()
    }
    check = {
        m: {
            k: measured[m][k] / state_bytes(SHAPES["0.5B"], r, judge=measured[m]["judge"])[k]
            for k in ("params", "grads", "optimizer")
        }
        for m, r in (("full", 0), ("lora", LORA_RANK))
    }
    # a GPU worker at the LoRA configs' batch (8 rows, group 4: 16 rows in G's step, 48 + 128 tokens)
    acts = {
        name: {
            "plain": activation_bytes(s, 16, 176, 128, False),
            "checkpointed": activation_bytes(s, 16, 176, 128, True),
        }
        for name, s in SHAPES.items()
    }
    build = {
        m: _in_child("measure_build", "0.5B", lean) for m, lean in (("random_then_load", False), ("meta_assign", True))
    }
    steps = 2 if quick else 5
    speed = {m: _in_child("measure_demo_speed", r, steps) for m, r in (("full", 0), ("lora", LORA_RANK))}
    f, lo = measured["full"], measured["lora"]
    goals = {
        "trainable_ratio": lo["trainable"] / f["trainable"],
        "state_ratio": lo["total"] / f["total"],
        "7B_lora_bf16_checkpointed_gb": (formula["7B"]["lora_bf16"]["total"] + acts["7B"]["checkpointed"]) / GIB,
    }
    res = {
        "lora_rank": LORA_RANK,
        "measured_0.5B": measured,
        "formula": formula,
        "formula_check_0.5B": check,
        "activations_gpu_batch8": acts,
        "build_from_base_0.5B": build,
        "demo_speed": speed,
        "goals": goals,
    }
    if not quick:
        write(res, ROOT / "bench" / "results" / "lora")
    return res


def write(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "results.md").write_text(render_md(res))


def render_md(res: dict[str, Any]) -> str:
    gb = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    m, f = res["measured_0.5B"], res["formula"]
    out = [
        f"# LoRA (rank {res['lora_rank']}) vs full fine-tuning, GAN loop, CPU, random weights",
        "",
        "## Measured: one adversarial step at the Qwen2-0.5B shape (G step + D step; batch 4, group 2, 16+16 tokens)",
        "",
        "| mode | trainable params | params GiB | grads GiB | AdamW GiB | params+grads+opt GiB "
        "| step peak RSS GiB | process peak RSS GiB | step s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in ("full", "lora"):
        x = m[k]
        out.append(
            f"| {k} | {x['trainable'] / 1e6:.2f}M | {gb(x['params'])} | {gb(x['grads'])} | "
            f"{gb(x['optimizer'])} | {gb(x['total'])} | {x['step_peak_rss_mb'] / 1024:.2f} | "
            f"{x['process_peak_rss_mb'] / 1024:.2f} | {x['step_s']:.1f} |"
        )
    g = res["goals"]
    out += [
        "",
        f"LoRA / full: trainable parameters {100 * g['trainable_ratio']:.2f}% (goal <= 2%), "
        f"params+grads+optimizer bytes {100 * g['state_ratio']:.1f}% (goal <= 35%).",
        "",
        "Formula / measured at 0.5B: "
        + "; ".join(
            f"{k}: " + ", ".join(f"{n} {v:.4f}" for n, v in c.items()) for k, c in res["formula_check_0.5B"].items()
        ),
        "",
        "## Projected per worker (bench.bench_lora.state_bytes; GiB)",
        "",
        "| shape | full: params+grads+opt | LoRA fp32 base | LoRA bf16 base | LoRA trainable "
        "| G-step activations, batch 8 x group 4 (plain / checkpointed) | LoRA bf16 + checkpointed total |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SHAPES:
        a = res["activations_gpu_batch8"][name]
        tot = f[name]["lora_bf16"]["total"] + a["checkpointed"]
        out.append(
            f"| {name} | {gb(f[name]['full']['total'])} | {gb(f[name]['lora']['total'])} | "
            f"{gb(f[name]['lora_bf16']['total'])} | {f[name]['lora']['trainable'] / 1e6:.1f}M | "
            f"{gb(a['plain'])} / {gb(a['checkpointed'])} | {gb(tot)} |"
        )
    out += [
        "",
        "## Setting a LoRA (bf16 base) trainer up from a base already read into memory (0.5B shape)",
        "",
        "Host RSS on top of the base's own bf16 tensors, in GiB and as a multiple of the frozen base's bytes. "
        "meta_assign adds only what the model keeps in fp32 (the embedding here, cast from bf16), the "
        "adapters and D's heads; random_then_load first draws a whole G and D at random.",
        "",
        "| path | peak RSS GiB | peak over the read base GiB | over base, x base bytes |",
        "|---|---|---|---|",
    ]
    for k, x in res["build_from_base_0.5B"].items():
        over = (x["peak_rss_mb"] - x["rss_base_in_memory_mb"]) * 1024**2
        out.append(f"| {k} | {x['peak_rss_mb'] / 1024:.2f} | {over / GIB:.2f} | {over / x['base_bytes']:.2f} |")
    s = res["demo_speed"]
    out += [
        "",
        f"## Step time on configs/demo.yaml's shape (adversarial step, mean of {s['full']['steps']} after one warm-up)",
        "",
        "| mode | trainable params | step s |",
        "|---|---|---|",
    ]
    out += [f"| {k} | {s[k]['trainable'] / 1e6:.2f}M | {s[k]['step_s']:.2f} |" for k in ("full", "lora")]
    out += ["", "G and D have the same shape there, so both modes run the same models."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="also write OUT/results.json and OUT/results.md (e.g. bench/results/lora)")
    a = ap.parse_args()
    res = main(a.quick)
    if a.out:
        write(res, Path(a.out))
    print(render_md(res))
