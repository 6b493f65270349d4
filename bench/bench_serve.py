"""Ray Serve scoring measured against Serve's own ceiling, and under failure.

In one run, on one local Ray, with one client (Python threads, one keep-alive httpx connection each, a
fixed duration per level):

- **no-op**: the same ingress deployment (FastAPI app, auth/limits/validation middleware, routes) with its
  model call replaced by a constant answer: the most this machine's Serve can do per request.
- **no-op, two hops**: the real ingress calling a model deployment that answers a constant: what the
  handle hop (the price of retrying on replica loss) costs on top.
- **ours**: `reviewgen.serve.app.build_app` (ingress -> model deployment through a handle, adaptive batch
  dispatch), one model replica; and the same with max_batch_size 1 (the unbatched path).
- **in-process**: `score_reviews` (what a replica computes: Scorer + output filter) on 32-review batches.

Levels: single-review requests at concurrency 1, 8 and 32 on the no-op and ours; 32-review requests at
concurrency 8 on ours; single-review requests at concurrency 1 on the unbatched path.

Goals: ours >= 80% of the no-op's request rate at each concurrency; ours' p50 at concurrency 1
within 3 ms of the unbatched path's; 32-review requests reach >= 70% of the in-process reviews/s.

Failure events, two model replicas, concurrency 8, single reviews, 30 s (10 s with --quick):
`ray.kill` of one model replica a third of the way in; a rollout to another model version (same weights,
another calibration bias) a third of the way in. Goals: success 100% (>= 99.9% at the least) and p99
during the event window (from the event until 10 s after it ends) <= 3x the steady p99 (before it).

Run: python -m bench.bench_serve [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ray import serve

from bench.bench_generate import bench_model, model_description, prepared_data
from reviewgen.core.model_dir import content_version
from reviewgen.data.corpus import load_split
from reviewgen.score.scorer import Scorer
from reviewgen.serve.app import build_app
from reviewgen.serve.config import ServeConfig
from reviewgen.serve.ingress import IngressDeployment
from reviewgen.serve.replica import MODEL_DEPLOYMENT
from reviewgen.serve.scoring import replica_filter, score_reviews

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)
RATE_SHARE_GOAL = 0.80
P50_GAP_GOAL_MS = 3.0
BULK_SHARE_GOAL = 0.70
BULK_REVIEWS = 32
BULK_CONCURRENCY = 8
EVENT_CONCURRENCY = 8
SUCCESS_GOAL, SUCCESS_FLOOR = 1.0, 0.999
P99_EVENT_FACTOR = 3.0
EVENT_TAIL_S = 10.0
NOOP_RESULT = {
    "p_human": 0.5,
    "rating_pred": 5,
    "flags": {"copy_span": 0, "copied": False, "pii": None, "has_pii": None},
    "reasons": [],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_reviews(n: int = 256) -> list[dict[str, Any]]:
    """Real reviews from the prepared sample's validation split, as /v1/score review objects."""
    df = load_split(prepared_data(), "val")
    df = df[(df["language"] == "en") & (df["text"].str.len().between(20, 1000))].head(n)
    return [
        {
            "text": str(r.text),
            "product_title": str(r.product_title)[:200],
            "category": str(r.category)[:200],
            "rating": None if r.rating != r.rating or r.rating is None else int(r.rating),
            "language": "en",
        }
        for r in df.itertuples()
    ]


def pct(xs: list[float], q: float) -> float:
    """q-th percentile (nearest rank) of xs."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s))) - 1))] if s else float("nan")


def in_process(model_dir: Path, reviews: list[dict[str, Any]], quick: bool, threads: int) -> dict[str, Any]:
    """What one replica computes, in this process: score_reviews on 32-review batches, and one review, on
    the replica's torch thread count (a 1-CPU replica runs 1 thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {**_in_process(model_dir, reviews, quick), "torch_threads": threads}
    finally:
        torch.set_num_threads(before)


def _in_process(model_dir: Path, reviews: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    sc = Scorer(model_dir, device="cpu")
    flt = replica_filter(ServeConfig(), sc)
    batch = reviews[:BULK_REVIEWS]
    score_reviews(sc, flt, batch)  # warm-up
    reps = 10 if quick else 40
    t = time.perf_counter()
    for _ in range(reps):
        score_reviews(sc, flt, batch)
    rate = reps * len(batch) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(reps):
        sc.score(batch)
    scorer_rate = reps * len(batch) / (time.perf_counter() - t)
    lat = []
    for i in range(reps * 4):
        t = time.perf_counter()
        score_reviews(sc, flt, [reviews[i % len(reviews)]])
        lat.append(time.perf_counter() - t)
    return {
        "batch32_reviews_per_s": round(rate, 1),
        "scorer_only_batch32_reviews_per_s": round(scorer_rate, 1),
        "single_review_p50_ms": round(1000 * pct(lat, 50), 2),
    }


class Client:
    """`concurrency` threads, each with one keep-alive connection, posting until the deadline; records
    (start, latency, status) per request. Never retries."""

    def __init__(self, url: str, reviews: list[dict[str, Any]], concurrency: int, per_request: int = 1):
        self.url, self.reviews, self.concurrency, self.per_request = url, reviews, concurrency, per_request
        self.records: list[tuple[float, float, int]] = []
        self._lock = threading.Lock()

    def _body(self, i: int) -> dict[str, Any]:
        n = len(self.reviews)
        return {"reviews": [self.reviews[(i * self.per_request + j) % n] for j in range(self.per_request)]}

    def _thread(self, k: int, deadline: float) -> None:
        import httpx

        with httpx.Client(timeout=60.0) as c:
            c.post(self.url, json=self._body(k))  # warm the connection
            i = k
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    status = c.post(self.url, json=self._body(i)).status_code
                except httpx.HTTPError:
                    status = -1
                with self._lock:
                    self.records.append((t, time.perf_counter() - t, status))
                i += self.concurrency

    def run(self, seconds: float, during: Callable[[], None] | None = None) -> float:
        """Drive the load for `seconds` (calling `during` from this thread meanwhile); returns t0."""
        t0 = time.perf_counter()
        threads = [threading.Thread(target=self._thread, args=(k, t0 + seconds)) for k in range(self.concurrency)]
        for t in threads:
            t.start()
        if during is not None:
            during()
        for t in threads:
            t.join()
        return t0


def level(
    url: str, reviews: list[dict[str, Any]], concurrency: int, seconds: float, per_request: int = 1
) -> dict[str, Any]:
    """Request rate, reviews/s and p50/p99 latency of one load level."""
    cl = Client(url, reviews, concurrency, per_request)
    t0 = cl.run(seconds)
    ok = [lat for t, lat, s in cl.records if s == 200 and t >= t0]
    wall = max((t + lat for t, lat, _ in cl.records), default=t0) - t0
    errors = len(cl.records) - len(ok)
    return {
        "concurrency": concurrency,
        "reviews_per_request": per_request,
        "requests_ok": len(ok),
        "errors": errors,
        "seconds": round(wall, 2),
        "req_per_s": round(len(ok) / wall, 1),
        "reviews_per_s": round(len(ok) * per_request / wall, 1),
        "p50_ms": round(1000 * pct(ok, 50), 2),
        "p99_ms": round(1000 * pct(ok, 99), 2),
    }


class _NoopIngress(IngressDeployment.func_or_class):
    """The ingress with its model call replaced by a constant answer (no model deployment behind it)."""

    async def readiness(self) -> str | None:
        return None

    async def _call(self, method: str, *args: Any) -> Any:
        if method == "score":
            return {"model_version": "noop", "results": [NOOP_RESULT] * len(args[0])}
        return {"model_version": "noop", "replica": "noop"}


@serve.deployment(name=MODEL_DEPLOYMENT)
class NoopModel:
    """A model deployment answering a constant: the real ingress in front of it measures the handle hop."""

    def score(self, reviews: list[dict[str, Any]]) -> dict[str, Any]:
        return {"model_version": "noop", "results": [NOOP_RESULT] * len(reviews)}

    def model_info(self) -> dict[str, Any]:
        return {"model_version": "noop"}

    def stats(self) -> dict[str, Any]:
        return {"replica": "noop"}


def _deploy(app, name: str, base: str) -> str:
    serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
    return f"{base}/{name}/v1/score"


def _model_variant(src: Path, dst: Path) -> Path:
    """A copy of the model with another calibration bias: another content version, same cost."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("mle", "state"))
    calib = json.loads((dst / "calibration.json").read_text())
    calib["bias"] = float(calib.get("bias", 0.0)) + 0.25
    (dst / "calibration.json").write_text(json.dumps(calib))
    meta = json.loads((dst / "meta.json").read_text())
    meta["version"] = content_version(dst)
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def event_run(url: str, reviews: list[dict[str, Any]], seconds: float, event: Callable[[], None]) -> dict[str, Any]:
    """Concurrency-8 load for `seconds`; `event` runs a third of the way in. Steady = before the event;
    the event window runs from its start to EVENT_TAIL_S after it returns."""
    marks: dict[str, float] = {}

    def during() -> None:
        time.sleep(seconds / 3)
        marks["start"] = time.perf_counter()
        event()
        marks["end"] = time.perf_counter()

    cl = Client(url, reviews, EVENT_CONCURRENCY)
    cl.run(seconds, during)
    start, end = marks["start"], marks["end"] + EVENT_TAIL_S
    ok = [s == 200 for _, _, s in cl.records]
    steady = [lat for t, lat, s in cl.records if s == 200 and t < start]
    window = [lat for t, lat, s in cl.records if s == 200 and start <= t < end]
    rate = sum(ok) / len(ok) if ok else 0.0
    p99_steady, p99_event = pct(steady, 99), pct(window, 99)
    return {
        "requests": len(ok),
        "failed": len(ok) - sum(ok),
        "success_rate": round(rate, 5),
        "event_s": round(marks["end"] - start, 2),
        "p99_steady_ms": round(1000 * p99_steady, 1),
        "p99_event_ms": round(1000 * p99_event, 1),
        "p99_event_over_steady": round(p99_event / p99_steady, 2),
        "success_goal": _verdict(rate >= SUCCESS_GOAL)
        + ("" if rate >= SUCCESS_GOAL else f" (floor 99.9%: {_verdict(rate >= SUCCESS_FLOOR)})"),
        "p99_goal": _verdict(p99_event <= P99_EVENT_FACTOR * p99_steady),
    }


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def _kill_one_replica(base_app: str) -> Callable[[], None]:
    def kill() -> None:
        import httpx
        import ray

        name = httpx.get(f"{base_app}/v1/stats", timeout=30).json()["replica"]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    return kill


def main(quick: bool = False, model: str | None = None) -> dict[str, Any]:
    """Every level on the no-op and ours, the in-process figure, the failure events, and the verdicts, for
    the model directory `model` (default: the bench's tiny model)."""
    import ray
    import torch

    model_dir = model or bench_model()
    reviews = sample_reviews()
    seconds, event_s = (3.0, 10.0) if quick else (10.0, 30.0)
    threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else None
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    load_before = os.getloadavg()
    inproc = in_process(model_dir, reviews, quick, threads or 1)
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    # 8 logical CPUs: two replicas plus a rollout's two replacements (max_surge_percent 100) fit at once.
    # The no-op ingress is defined here, so replicas need this checkout on their path.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local",
        num_cpus=8,
        log_to_driver=False,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
        one = ServeConfig(min_replicas=1, max_replicas=1, num_cpus=1.0, env_vars=env)
        noop_cfg = ServeConfig(env_vars=env)
        urls = {
            "noop": _deploy(
                serve.deployment(name="Ingress")(_NoopIngress)
                .options(max_ongoing_requests=256, ray_actor_options=noop_cfg.ingress_actor_options())
                .bind(None, noop_cfg.to_dict()),
                "noop",
                base,
            ),
            "noop_two_hop": _deploy(
                IngressDeployment.options(
                    max_ongoing_requests=256, ray_actor_options=noop_cfg.ingress_actor_options()
                ).bind(
                    NoopModel.options(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1.0}).bind(),
                    noop_cfg.to_dict(),
                ),
                "noop_two_hop",
                base,
            ),
            "ours": _deploy(build_app(model_dir, one), "ours", base),
            "unbatched": _deploy(
                build_app(
                    model_dir, ServeConfig(min_replicas=1, max_replicas=1, num_cpus=1.0, max_batch_size=1, env_vars=env)
                ),
                "unbatched",
                base,
            ),
        }
        levels = {
            name: [level(urls[name], reviews, c, seconds) for c in CONCURRENCY]
            for name in ("noop", "noop_two_hop", "ours")
        }
        unbatched_c1 = level(urls["unbatched"], reviews, 1, seconds)
        bulk = level(urls["ours"], reviews, BULK_CONCURRENCY, seconds, per_request=BULK_REVIEWS)
        import httpx

        stats = httpx.get(urls["ours"].replace("/v1/score", "/v1/stats"), timeout=30).json()
        for name in urls:
            serve.delete(name)

        two = ServeConfig(min_replicas=2, max_replicas=2, num_cpus=1.0, env_vars=env)
        ha_url = _deploy(build_app(model_dir, two), "ha", base)
        kill = event_run(ha_url, reviews, event_s, _kill_one_replica(f"{base}/ha"))
        variant = _model_variant(model_dir, tmp / "b")
        httpx.get(f"{base}/ha/readyz", timeout=60)
        rollout = event_run(
            ha_url,
            reviews,
            event_s,
            lambda: serve.run(build_app(variant, two), name="ha", route_prefix="/ha", blocking=False),
        )
        serve.delete("ha")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    shares = []
    for noop, ours in zip(levels["noop"], levels["ours"]):
        share = ours["req_per_s"] / noop["req_per_s"] if noop["req_per_s"] else 0.0
        shares.append(
            {
                "concurrency": noop["concurrency"],
                "noop_req_per_s": noop["req_per_s"],
                "ours_req_per_s": ours["req_per_s"],
                "share": round(share, 2),
                "goal": _verdict(share >= RATE_SHARE_GOAL),
            }
        )
    gap = levels["ours"][0]["p50_ms"] - unbatched_c1["p50_ms"]
    bulk_share = bulk["reviews_per_s"] / inproc["batch32_reviews_per_s"]
    return {
        "model": model_description(model_dir),
        "bench_threads": torch.get_num_threads(),
        "replica_threads": threads or "Ray default for a 1-CPU replica",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "in_process": inproc,
        "levels": levels,
        "unbatched_c1": unbatched_c1,
        "bulk": bulk,
        "batching": {k: stats.get(k) for k in ("batches", "max_batch_size_observed", "batch_size_counts")},
        "goals": {
            "rate_share": {
                "goal": f"ours >= {RATE_SHARE_GOAL:.0%} of the no-op's req/s at each concurrency",
                "levels": shares,
                "verdict": _verdict(all(s["goal"] == "MET" for s in shares)),
            },
            "p50_c1": {
                "goal": f"p50 at concurrency 1 within {P50_GAP_GOAL_MS} ms of the unbatched path",
                "ours_ms": levels["ours"][0]["p50_ms"],
                "unbatched_ms": unbatched_c1["p50_ms"],
                "gap_ms": round(gap, 2),
                "verdict": _verdict(gap <= P50_GAP_GOAL_MS),
            },
            "bulk_share": {
                "goal": f"{BULK_REVIEWS}-review requests: Serve reviews/s >= {BULK_SHARE_GOAL:.0%} of in-process",
                "serve_reviews_per_s": bulk["reviews_per_s"],
                "in_process_reviews_per_s": inproc["batch32_reviews_per_s"],
                "share": round(bulk_share, 2),
                "verdict": _verdict(bulk_share >= BULK_SHARE_GOAL),
            },
        },
        "events": {
            "seconds": event_s,
            "concurrency": EVENT_CONCURRENCY,
            "replicas": 2,
            "replica_kill": kill,
            "rollout": rollout,
        },
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 s per level and 10 s events instead of 10 s and 30 s")
    ap.add_argument(
        "--model", help="model directory to serve (default: the bench's tiny model), e.g. the `make demo` model"
    )
    a = ap.parse_args()
    print(json.dumps(main(a.quick, a.model), indent=2, default=str))
