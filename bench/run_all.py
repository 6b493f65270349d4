"""Run every benchmark, each in its own subprocess, and write OUT/results.json and OUT/results.md.

A subprocess per bench keeps peak RSS per bench and lets one failure leave the others standing. Every
figure is recorded with the machine's load average (before and after) and the torch thread count: on a
shared 2-core machine, torch with 2 threads slows down many-fold under CPU oversubscription, so a figure
taken under load is not comparable with one taken on an idle machine.

Run: python -m bench.run_all --out bench/results [--quick] [--only NAME ...] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHES = ("sampling", "train", "train_rate", "generate", "serve", "score", "watermark", "lora")
TIMEOUT_S = {
    "sampling": 1200,
    "train": 1800,
    "train_rate": 1800,
    "generate": 3600,
    "serve": 1800,
    "score": 1800,
    "watermark": 1800,
    "lora": 3600,
}


def _child(name: str, quick: bool, threads: int | None, result_path: str) -> None:
    """Subprocess body: set threads, run bench.bench_<name>.main, write its dict plus context to result_path."""
    import importlib
    import resource

    import torch

    if threads:
        torch.set_num_threads(threads)
    mod = importlib.import_module(f"bench.bench_{name}")
    load0, started = os.getloadavg(), _now()
    t = time.perf_counter()
    res = mod.main(quick)
    out = {
        "bench": name,
        "ok": True,
        "date": started,
        "wall_s": round(time.perf_counter() - t, 1),
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "result": res,
    }
    Path(result_path).write_text(json.dumps(out, indent=2, default=str))


def run_one(name: str, quick: bool, threads: int | None, log=print) -> dict[str, Any]:
    """Run one bench in a fresh Python process; its result dict, or an error record with the output tail."""
    env = dict(os.environ)
    if threads:
        # children of the bench (spawned processes, Ray workers) start with this many threads too
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster on loopback
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        res_path = Path(tmp) / "result.json"
        code = f"from bench.run_all import _child; _child({name!r}, {quick!r}, {threads!r}, {str(res_path)!r})"
        log(f"[{name}] start (load average {os.getloadavg()[0]:.1f})")
        t = time.perf_counter()
        try:
            p = subprocess.run(
                [sys.executable, "-c", code],
                cwd=Path(__file__).resolve().parents[1],
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S[name],
            )
            rc, tail = p.returncode, (p.stdout + p.stderr)[-4000:]
        except subprocess.TimeoutExpired as e:
            rc, tail = "timeout", str(e.stdout or "")[-2000:] + str(e.stderr or "")[-2000:]
        wall = time.perf_counter() - t
        if res_path.is_file():
            out = json.loads(res_path.read_text())
        else:
            out = {
                "bench": name,
                "ok": False,
                "date": _now(),
                "exit": rc,
                "wall_s": round(wall, 1),
                "output_tail": tail,
                "loadavg_after": os.getloadavg(),
            }
    log(f"[{name}] {'ok' if out['ok'] else 'FAILED (exit ' + str(out.get('exit')) + ')'} in {wall:.0f}s")
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_info() -> dict[str, Any]:
    """CPU count, load average, library versions, date: the context every figure needs."""
    import torch

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    cpu_model = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "date": _now(),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray_version,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "torch_default_threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _f(x: Any, nd: int = 1) -> str:
    return f"{x:,.{nd}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def _ctx(r: dict[str, Any]) -> str:
    la = r.get("loadavg_before", ["?"])[0], r.get("loadavg_after", ["?"])[0]
    return (
        f"_{'quick' if r.get('quick') else 'full'} run at {r.get('date', '(date not recorded)')}, "
        f"{r.get('wall_s')} s, torch threads "
        f"{r.get('torch_threads')}, load average {_f(la[0], 2)} -> {_f(la[1], 2)}, "
        f"peak RSS {r.get('peak_rss_mb')} MB_"
    )


def render_md(doc: dict[str, Any]) -> str:
    """Readable tables of every bench's figures (results.json has everything)."""
    m = doc["machine"]
    lines = [
        "# reviewgen benchmarks",
        "",
        f"{m['date']} on {m['host']}: {m['cpu_count']} CPUs ({m['cpu_model']}), torch {m['torch']}, "
        f"ray {m['ray']}, CUDA {'yes: ' + str(m['gpu']) if m['cuda'] else 'no'}. Load average at start "
        f"{', '.join(_f(x, 2) for x in m['loadavg'])}.",
        "",
    ]
    if doc["quick"]:
        lines += ["**Quick mode: small sizes, for checking the benches work; not the reference figures.**", ""]
    lines += issue14_goals(doc["benches"])
    for name, r in doc["benches"].items():
        lines.append(f"## {name}")
        lines.append("")
        if not r.get("ok"):
            lines += [f"FAILED (exit {r.get('exit')}):", "", "```", r.get("output_tail", "")[-1500:], "```", ""]
            continue
        lines += [_ctx(r), ""]
        try:
            lines += RENDER[name](r["result"]) + [""]
        except (KeyError, TypeError):  # a record kept from a run of an older version of this bench
            lines += ["(a record in an older format of this bench: see results.json, or rerun it)", ""]
    return "\n".join(lines)


def _md_sampling(x: dict[str, Any]) -> list[str]:
    out = [
        f"Prefix {x['prefix']}, {x['new_tokens']} new tokens, best of {x['repeats']}; torch threads "
        f"{x['torch_threads']} (interop {x['interop_threads']}) on {x['cpu_count']} CPUs; load average "
        f"{_f(x['loadavg_before'][0], 2)} -> {_f(x['loadavg_after'][0], 2)}. {x['note']}.",
        "",
        "| case | method | precision | reviews/s | tokens/s | achieved GFLOP/s | fraction of its matmul peak |",
        "|---|---|---|---|---|---|---|",
    ]
    goals = []
    for name, c in x["cases"].items():
        for k, v in c["methods"].items():
            out.append(
                f"| {name} | {k} | {v.get('precision', 'fp32')} | {_f(v['reviews_per_s'])} | "
                f"{_f(v['tokens_per_s'], 0)} | {_f(v['achieved_gflops'])} | "
                f"{_f(v['fraction_of_matmul_peak'], 3)} |"
            )
        if "speedup_fp32_vs_hf_fp32" in c:
            goals.append(
                f"- {name}: ours / HF both in fp32 {c['speedup_fp32_vs_hf_fp32']:.2f}x; ours at its default "
                f"precision ({c['default_precision']}) / HF's default (fp32) "
                f"{c['speedup_default_vs_hf_default']:.2f}x."
            )
        if "compiled_decode" in c:
            d = c["compiled_decode"]
            goals.append(
                f"- {name}: torch.compile'd decode step (SamplingParams.compile_decode, off by default) "
                f"{d['speedup_vs_eager']}x eager in fp32"
                + (
                    f", {d['speedup_vs_eager_at_default']}x at the default precision"
                    if "speedup_vs_eager_at_default" in d
                    else ""
                )
                + f"; first call (compile) {d['first_call_s']} s; same tokens as eager (fp32): "
                f"{d['same_tokens_as_eager']}."
            )
        peak = c["matmul_peak_gflops"]
        peak = ", ".join(f"{k} {_f(v)}" for k, v in peak.items()) if isinstance(peak, dict) else _f(peak)
        for g, v in c["goals"].items():
            goals.append(
                f"- {name}: {g} {v['value']} (goal {v['goal']}, matmul peak {peak} GFLOP/s): **{v['verdict']}**."
            )
    return out + [""] + goals


def _md_train(x: dict[str, Any]) -> list[str]:
    m, c = x["model"], x["cpu"]
    out = [
        f"Model {m['config']}: generator {m['n_layer']} layers x {m['d_model']} wide, "
        f"{m['generator_params'] / 1e6:.2f}M params; batch {m['batch_per_worker']} per worker x "
        f"{m['seq_len']} positions; MLE phase, {x['timed_steps']} timed steps after {x['warmup_steps']} warm-up; "
        f"thread budget {x['thread_budget']} split over the workers.",
        "",
        "| workers | threads/worker | tokens/s per worker | total tokens/s | step s | worker peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for k in ("1_worker", "2_workers"):
        r = c[k]
        out.append(
            f"| {r['workers']} | {r['threads_per_worker']} | "
            f"{', '.join(_f(t, 0) for t in r['tokens_per_s_per_worker'])} | "
            f"{_f(r['tokens_per_s_total'], 0)} | {_f(r['step_time_s'], 3)} | "
            f"{', '.join(_f(t, 0) for t in r['worker_peak_rss_mb'])} |"
        )
    out += [
        "",
        f"Scaling efficiency (2-worker total / (2 x 1-worker)): **{c['scaling_efficiency']:.2f}**.",
        "",
        f"GPU: {x['gpu'].get('status')}",
    ]
    if x["gpu"].get("status") == "measured":
        g = x["gpu"]
        out[-1] += f" on {g['device']}: {_f(g['tokens_per_s'], 0)} tokens/s, MFU {g['mfu']}."
    return out


def _md_train_rate(x: dict[str, Any]) -> list[str]:
    rows = [
        ("in-process timed steps (train_step loop, no Ray)", x["in_process_timed_steps"], "-"),
        ("Ray Train 1 worker, timed steps (the bench's 1-worker figure)", x["ray_train_1_worker_timed_steps"], "-"),
        ("`reviewgen train` in process (train_local), MLE phase", x["train_local_run"], "step log"),
        (
            "`reviewgen train --num-workers 1` (Ray Train, Ray Data ingest, as the demo), MLE phase",
            x["ray_train_1_worker_run"],
            "step log",
        ),
    ]
    out = [
        f"Model {x['config']}, MLE phase of {x['mle_steps']} steps for the runs (its eval, log and checkpoint "
        f"cadences), {x['timed_steps']} timed steps after {x['warmup_steps']} warm-up for the timed figures; "
        f"torch threads {x['threads']} everywhere.",
        "",
        "| what | loss tokens/s | share of wall in train_step | threads | load average before -> after |",
        "|---|---|---|---|---|",
    ]
    for name, r, _ in rows:
        rate = r.get("loss_tokens_per_s", r.get("loss_tokens_per_s_total"))
        share = r.get("step_compute_share", "-")
        thr = r.get("threads", r.get("threads_per_worker"))
        takes = f" (best of {', '.join(_f(t, 0) for t in r['takes'])})" if "takes" in r else ""
        out.append(
            f"| {name} | {_f(rate, 0)}{takes} | {share} | {thr} | {_f(r['loadavg_before'][0], 2)} -> "
            f"{_f(r['loadavg_after'][0], 2)} |"
        )
    out += [
        "",
        "Ratios: " + ", ".join(f"{k} {v}" for k, v in x["ratios"].items()) + ".",
        "The share of wall in train_step is what the loop leaves to the steps (the rest: evaluations, "
        "logging, checkpoints, ingest waits); it moves little with the load, while the whole runs' rates, "
        "taken minutes apart from the best timed takes, move with it.",
    ]
    out += [f"- {g['name']}: {g['value']} (goal {g['goal']}): **{g['verdict']}**." for g in x["goals"]]
    return out


def _md_generate(x: dict[str, Any]) -> list[str]:
    i = x["in_process"]
    out = [
        f"Catalogs of {' and '.join(f'{n:,}' for n in x['sizes'])} rows, {x['valid_products']:,} valid products "
        f"(the rest: rows without a title and duplicate ids), {x['reviews_per_product']} review per product, "
        "tiny model; each run in a fresh driver process on an embedded Ray.",
        "",
        "| catalog rows | driver peak RSS (MB) | wall (s) | reviews | end-to-end reviews/s | generate-stage "
        "reviews/s | every row accounted |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in x["runs"].items():
        out.append(
            f"| {int(n):,} | {_f(r['driver_peak_rss_mb'])} | {_f(r['wall_s'])} | {r['reviews_generated']:,} | "
            f"{_f(r['reviews_per_s_end_to_end'])} | {_f(r['reviews_per_s_generate_stage'])} | "
            f"{r['every_row_accounted']} |"
        )
    g = x["goals"]
    out += [
        "",
        f"In-process generate + score + filter + write: {_f(i['reviews_per_s'])} reviews/s on 1 thread, "
        f"{_f(i['reviews_per_s_same_cores'])} for the pipeline's {i['pipeline_actors']} actors' cores.",
        f"Driver RSS ratio (largest / smallest catalog): {x['driver_rss_ratio']} "
        f"(goal <= {g['driver_rss_ratio_max']}: {'met' if x['driver_rss_goal_met'] else 'NOT met'}).",
        f"Overhead end to end: {x['overhead_end_to_end']}; generate stage only: {x['overhead_generate_stage']} "
        f"(goal <= {g['overhead_max']:.0%} on the smallest catalog: "
        f"{'met' if x['overhead_goal_met'] else 'NOT met'}).",
        x["note"],
        "",
    ]
    return out


def _md_score(x: dict[str, Any]) -> list[str]:
    m = x["model"]
    return [
        f"In-process scoring of {x['reviews']} real reviews in batches of {x['batch']}, model {m['n_layer']} "
        f"layers x {m['d_model']} ({m['generator_params'] / 1e6:.2f}M params per network), "
        f"{x['torch_threads']} torch threads; scorer mode: {x['mode']}.",
        "",
        "| scorer | reviews/s |",
        "|---|---|",
        f"| before: D alone (Platt) | {_f(x['before_reviews_per_s'])} |",
        f"| after: D + G + reference, detector | {_f(x['after_reviews_per_s'])} |",
        f"| for comparison: D alone through the after path's batching and precision "
        f"(bf16: {x.get('inference_bf16')}) | {_f(x.get('d_alone_now_reviews_per_s'))} |",
        "",
        f"After / before: **{x['fraction']:.2f}** (goal >= {x['goal_fraction']:.2f}: "
        f"{'met' if x['goal_met'] else 'NOT met'}).",
    ]


def _md_serve(x: dict[str, Any]) -> list[str]:
    i, g = x["in_process"], x["goals"]
    out = [
        f"One model replica (1 CPU, replica threads {x['replica_threads']}) behind the ingress; the no-op is the "
        f"same ingress answering a constant. Client: threads with keep-alive connections, loopback. Load "
        f"average {x['load_average_before']} before, {x['load_average_after']} after.",
        "",
        f"In-process (score_reviews = Scorer + output filter, what a replica computes): "
        f"{_f(i['batch32_reviews_per_s'])} reviews/s on batches of 32 (Scorer alone "
        f"{_f(i['scorer_only_batch32_reviews_per_s'])}); single review {i['single_review_p50_ms']} ms; "
        f"torch threads {i['torch_threads']}.",
        "",
        "| concurrency | no-op req/s | no-op two hops req/s | ours req/s | share of no-op | goal >= 80% | "
        "no-op p50 ms | two hops p50 ms | ours p50 ms | ours p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, n, h, o in zip(
        g["rate_share"]["levels"], x["levels"]["noop"], x["levels"]["noop_two_hop"], x["levels"]["ours"]
    ):
        out.append(
            f"| {s['concurrency']} | {_f(n['req_per_s'])} | {_f(h['req_per_s'])} | {_f(o['req_per_s'])} | "
            f"{s['share']:.0%} | {s['goal']} | {_f(n['p50_ms'])} | {_f(h['p50_ms'])} | {_f(o['p50_ms'])} | "
            f"{_f(o['p99_ms'])} |"
        )
    p, b = g["p50_c1"], g["bulk_share"]
    out += [
        "",
        f"- p50 at concurrency 1: ours {p['ours_ms']} ms, unbatched {p['unbatched_ms']} ms, gap "
        f"{p['gap_ms']} ms (goal <= 3 ms): **{p['verdict']}**.",
        f"- {x['bulk']['reviews_per_request']}-review requests at concurrency {x['bulk']['concurrency']}: "
        f"{_f(b['serve_reviews_per_s'])} reviews/s through Serve, {b['share']:.0%} of in-process (goal >= 70%): "
        f"**{b['verdict']}**.",
        f"- Batching (ours, all levels): {x['batching']}.",
        "",
        f"Failure events: {x['events']['replicas']} model replicas, concurrency {x['events']['concurrency']}, "
        f"{x['events']['seconds']} s each, event a third of the way in.",
        "",
        "| event | requests | failed | success | goal 100% | p99 steady ms | p99 event ms | ratio | goal <= 3x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("replica_kill", "rollout"):
        e = x["events"][name]
        out.append(
            f"| {name} | {e['requests']} | {e['failed']} | {e['success_rate']:.3%} | {e['success_goal']} | "
            f"{e['p99_steady_ms']} | {e['p99_event_ms']} | {e['p99_event_over_steady']} | {e['p99_goal']} |"
        )
    return out


def issue14_goals(benches: dict[str, Any]) -> list[str]:
    """Issue 14's (speed) goals, each beside its figure, MET or NOT MET, read from the benches' results."""
    rows = []
    s = benches.get("sampling", {})
    for name, c in (s.get("result", {}).get("cases", {}) if s.get("ok") else {}).items():
        for g, v in c["goals"].items():
            rows.append((f"sampler {name}: {g}", v["value"], v["goal"], v["verdict"], s))
    t = benches.get("train_rate", {})
    for g in t.get("result", {}).get("goals", []) if t.get("ok") else []:
        rows.append((g["name"], g["value"], g["goal"], g["verdict"], t))
    if not rows:
        return []
    out = [
        "## Issue 14 (speed) goals",
        "",
        "| goal | figure | target | verdict | measured (load average, threads) |",
        "|---|---|---|---|---|",
    ]
    for name, value, goal, verdict, r in rows:
        la = r.get("loadavg_before", ["?"])[0]
        out.append(
            f"| {name} | {value} | {goal} | **{verdict}** | {r.get('date', '?')} ({_f(la, 2)}, "
            f"{r.get('torch_threads')} threads) |"
        )
    return out + [""]


def _md_watermark(x: dict[str, Any]) -> list[str]:
    from bench.bench_watermark import markdown

    return markdown(x)


def _md_lora(x: dict[str, Any]) -> list[str]:
    from bench.bench_lora import render_md as lora_md

    return lora_md(x).splitlines()[2:]  # without its own title


RENDER = {
    "sampling": _md_sampling,
    "train": _md_train,
    "train_rate": _md_train_rate,
    "generate": _md_generate,
    "serve": _md_serve,
    "score": _md_score,
    "watermark": _md_watermark,
    "lora": _md_lora,
}


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the selected benches, write results.json and results.md; exit 1 if any failed."""
    ap = argparse.ArgumentParser(description="reviewgen benchmarks (figures to OUT/results.{json,md})")
    ap.add_argument("--out", default="bench/results", help="output directory")
    ap.add_argument(
        "--only",
        action="append",
        choices=BENCHES,
        help="run only this bench (repeatable); the other benches' records already in OUT/results.json are kept",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the benches work, minutes in all")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in each bench process (default: torch's default)",
    )
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info(), "quick": a.quick, "threads_option": a.threads, "benches": {}}
    old = out / "results.json"
    if a.only and old.is_file():
        # a partial run keeps the other benches' earlier records (each carries its own date and load)
        prev = json.loads(old.read_text())
        if prev.get("quick") == a.quick:
            doc["benches"] = {k: v for k, v in prev.get("benches", {}).items() if k not in a.only}
    for name in a.only or BENCHES:
        doc["benches"][name] = run_one(name, a.quick, a.threads)
        # written after every bench, so a long run that is stopped keeps what it measured
        (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))
        (out / "results.md").write_text(render_md(doc))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0 if all(doc["benches"][n].get("ok") for n in a.only or BENCHES) else 1


if __name__ == "__main__":
    sys.exit(main())
