"""End to end on a real local two-node Ray cluster: the operator's scripts, in order.

cluster_up.sh (head + 1 worker, token auth) -> submit.sh train (Ray Train, 2 workers) -> submit.sh nightly
(Ray Data generation against the trained model; a second submission for the same date is a no-op) ->
deploy_scorer.sh (Ray Serve) -> POST /v1/score over HTTP. The cluster is torn down by cluster_down.sh even
when a test fails, and the teardown checks that no process of this cluster survives.

Isolation: a private state dir and free, non-default ports, so it never meets a developer's cluster or the
session's embedded `ray_local` Ray. Cluster settings reach the scripts through the subprocess env only;
this process's environment (RAY_ADDRESS, RAY_AUTH_MODE, ...) is never changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "cluster" / "scripts"
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
CATALOG = ROOT / "data" / "sample" / "catalog_flipkart_sample_1050.parquet"
RUN_DATE = "2026-03-05"
SUBMISSION_ID = "nightly-20260305"
SCORER_TOKEN = "e2e-scorer-token"
# Env vars of this process that would point the scripts at another cluster or turn auth off.
_STRIPPED_ENV = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RG_RERUN_FAILED",
    "RG_NO_WAIT",
    "RG_RUNTIME_ENV",
    "SERVE_CONFIG",
    "REVIEWGEN_API_TOKEN_FILE",
)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_port_block(n: int, start: int = 24000, stop: int = 32000, step: int = 40) -> int:
    """First base port such that base..base+n-1 are all free (cluster_up.sh uses a contiguous block)."""
    for base in range(start + (os.getpid() % 50) * step, stop, step):
        if all(_port_free(base + i) for i in range(n)):
            return base
    raise RuntimeError(f"no block of {n} free ports in {start}..{stop}")


def _cluster_pids(state_dir: str) -> list[int]:
    """Live processes of this cluster: marked by cluster_up.sh (RG_RAY_CLUSTER_MARKER) or naming its state dir."""
    marker = f"RG_RAY_CLUSTER_MARKER={state_dir}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (
                marker in (d / "environ").read_bytes().split(b"\0")
                or f"{state_dir}/".encode() in (d / "cmdline").read_bytes()
            ):
                stat = (d / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # a zombie is already dead
                    pids.append(int(d.name))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return pids


def _run(args: list[str], env: dict[str, str], timeout: float, extra: dict[str, str] | None = None):
    """Run a script with the cluster env; returns (CompletedProcess, seconds). Output is echoed for -s runs."""
    t0 = time.monotonic()
    p = subprocess.run(args, env={**env, **(extra or {})}, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    dt = time.monotonic() - t0
    print(f"\n$ {' '.join(map(str, args))}  [rc={p.returncode}, {dt:.1f}s]\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return p, dt


class Cluster:
    """Handles for the running test cluster."""

    def __init__(self, env: dict[str, str], state_dir: str, dashboard: str, serve_port: int):
        self.env, self.state_dir, self.dashboard, self.serve_port = env, state_dir, dashboard, serve_port
        self.timings: dict[str, float] = {}

    @property
    def token(self) -> str:
        return Path(self.state_dir, "auth_token").read_text().strip()

    def jobs_api(self, path: str, *, auth: bool = True) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        return httpx.get(f"{self.dashboard}{path}", headers=headers, timeout=30)

    def submit(self, *args: str, timeout: float = 420):
        return _run([str(SCRIPTS / "submit.sh"), *map(str, args)], self.env, timeout)


@pytest.fixture(scope="module")
def cluster():
    """A fresh head + worker cluster on private ports; always stopped, and checked to be gone."""
    assert (ROOT / ".venv" / "bin" / "ray").is_file(), "the scripts run Ray from the repo venv (.venv/bin/ray)"
    # Short path on purpose: Ray's Unix sockets live under the node temp dir (107-byte limit).
    state_dir = tempfile.mkdtemp(prefix="rg-e2e-", dir="/tmp")
    base = _free_port_block(24)
    env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
    env.update(
        {
            "RG_STATE_DIR": state_dir,
            "RG_HEAD_PORT": str(base),
            "RG_DASHBOARD_PORT": str(base + 1),
            "RG_CLIENT_PORT": str(base + 2),
            "RG_SERVE_PORT": str(base + 3),
            "RG_PORT_BASE": str(base + 4),
            "RG_STOP_GRACE_S": "5",
            # Inherited by the Serve replicas: the scorer then demands this bearer token.
            "REVIEWGEN_API_TOKEN": SCORER_TOKEN,
        }
    )
    c = Cluster(env, state_dir, f"http://127.0.0.1:{base + 1}", base + 3)
    try:
        p, c.timings["cluster_up"] = _run([str(SCRIPTS / "cluster_up.sh")], env, timeout=240)
        assert p.returncode == 0, f"cluster_up.sh failed:\n{p.stdout}\n{p.stderr}"
        yield c
    finally:
        p, c.timings["cluster_down"] = _run([str(SCRIPTS / "cluster_down.sh")], env, timeout=120)
        survivors = _cluster_pids(state_dir)
        for pid in survivors:  # never leave a stray cluster behind, even if the script missed some
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        shutil.rmtree(state_dir, ignore_errors=True)
        print(f"\ncluster e2e timings (s): {json.dumps({k: round(v, 1) for k, v in c.timings.items()})}")
        assert p.returncode == 0, f"cluster_down.sh failed:\n{p.stdout}\n{p.stderr}"
        assert not survivors, f"processes of the test cluster survived cluster_down.sh: {survivors}"


@pytest.fixture(scope="module")
def trained_model(cluster, prepared_data, tmp_path_factory) -> Path:
    """The model dir written by `submit.sh train` (2 Ray Train workers, tiny config)."""
    work = tmp_path_factory.mktemp("e2e_train")
    out = work / "model"
    p, cluster.timings["train_job"] = cluster.submit(
        "train",
        "--data",
        prepared_data.resolve(),
        "--out",
        out,
        "--config",
        TINY_CONFIG,
        "--num-workers",
        2,
        "--storage-path",
        work / "ray-results",
        "--name",
        "e2e-train",
    )
    assert p.returncode == 0, f"train job failed:\n{p.stdout[-5000:]}\n{p.stderr[-5000:]}"
    assert "finished with status SUCCEEDED" in p.stdout
    return out


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """20 catalog rows: enough for several output shards, small enough for seconds of generation."""
    path = tmp_path_factory.mktemp("e2e_catalog") / "catalog.parquet"
    pd.read_parquet(CATALOG).head(20).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def nightly(cluster, trained_model, catalog, tmp_path_factory) -> Path:
    """The output root of the first `submit.sh nightly RUN_DATE`."""
    out = tmp_path_factory.mktemp("e2e_generated")
    p, cluster.timings["nightly_job"] = cluster.submit(*_nightly_args(trained_model, catalog, out))
    assert p.returncode == 0, f"nightly job failed:\n{p.stdout[-5000:]}\n{p.stderr[-5000:]}"
    assert "finished with status SUCCEEDED" in p.stdout
    return out


def _nightly_args(model: Path, catalog: Path, out: Path) -> list:
    # The tiny model writes near-garbage: keep cut characters and accept any score so reviews get through;
    # unwatermarked, since its short reviews would mostly be too short to carry the watermark.
    return [
        "nightly",
        RUN_DATE,
        "--model",
        model,
        "--catalog",
        catalog,
        "--out",
        out,
        "--reviews-per-product",
        2,
        "--preset",
        "flipkart",
        "--keep-broken-text",
        "--min-score",
        0,
        "--min-tokens",
        1,
        "--products-per-shard",
        5,
        "--num-actors",
        2,
        "--no-watermark",
    ]


def _tree_fingerprint(root: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (mtime_ns, sha256) for every file under root."""
    return {
        str(f.relative_to(root)): (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }


# -- tests, in the operator's order ---------------------------------------------------------------------


def test_cluster_has_two_nodes_and_jobs_api_requires_token(cluster):
    r = cluster.jobs_api("/api/jobs/", auth=False)
    assert r.status_code in (401, 403), f"Jobs API answered {r.status_code} without a token: {r.text[:300]}"
    r = cluster.jobs_api("/api/jobs/", auth=True)
    assert r.status_code == 200, r.text[:300]
    nodes = cluster.jobs_api("/api/v0/nodes?limit=100").json()["data"]["result"]["result"]
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    assert len(alive) == 2, f"expected head + worker, got {[(n['node_id'][:8], n['state']) for n in nodes]}"
    assert sorted(n["is_head_node"] for n in alive) == [False, True]


def test_train_job_writes_a_model_from_two_workers(trained_model):
    meta = json.loads((trained_model / "meta.json").read_text())
    assert meta.get("version"), f"{trained_model}/meta.json has no model version: {meta}"
    for name in ("config.json", "generator.safetensors", "discriminator.safetensors", "tokenizer.json"):
        assert (trained_model / name).is_file(), f"train job output lacks {name}"
    rows = [json.loads(line) for line in (trained_model / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sizes = {r["world_size"] for r in rows if "world_size" in r}
    assert sizes == {2}, f"metrics.jsonl world sizes {sizes}: the job did not train on 2 workers"


def test_nightly_job_writes_a_complete_partition(nightly, trained_model):
    part = nightly / f"run_date={RUN_DATE}"
    assert (part / "_SUCCESS").is_file(), f"no _SUCCESS in {part}: {sorted(p.name for p in part.glob('*'))}"
    files = sorted((part / "reviews").glob("part-*.parquet"))
    assert len(files) == 4, f"expected 4 shards (20 products / 5 per shard) under {part}/reviews: {files}"
    reviews = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    counts = json.loads((part / "manifest.json").read_text())["summary"]["counts"]
    assert counts["products_in"] == 20
    assert counts["reviews_generated"] == 2 * counts["products_valid"] > 0
    assert len(reviews) == counts["reviews_accepted"] > 0
    assert reviews["text"].str.len().gt(0).all()
    assert reviews["product_id"].nunique() <= 20 and set(reviews["review_index"]) <= {0, 1}
    assert (reviews["model_version"] == json.loads((trained_model / "meta.json").read_text())["version"]).all()


def test_second_nightly_for_same_date_is_a_noop(cluster, nightly, trained_model, catalog):
    part = nightly / f"run_date={RUN_DATE}"
    before = _tree_fingerprint(part)
    p, cluster.timings["nightly_resubmit"] = cluster.submit(*_nightly_args(trained_model, catalog, nightly))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "already exists" in p.stdout
    assert f"submitting {SUBMISSION_ID}" not in p.stdout
    assert _tree_fingerprint(part) == before, "the second submission changed the partition"
    jobs = cluster.jobs_api("/api/jobs/").json()
    same = [j for j in jobs if j.get("submission_id") == SUBMISSION_ID]
    assert len(same) == 1 and same[0]["status"] == "SUCCEEDED", same


def test_scorer_deployed_on_cluster_answers_over_http(cluster, trained_model):
    from reviewgen.score.scorer import Scorer

    p, cluster.timings["deploy_scorer"] = _run(
        [str(SCRIPTS / "deploy_scorer.sh")], cluster.env, timeout=180, extra={"MODEL_DIR": str(trained_model)}
    )
    assert p.returncode == 0, p.stdout + p.stderr
    url = f"http://127.0.0.1:{cluster.serve_port}/v1/score"
    reviews = [
        {"text": "Great phone, the battery lasts two days.", "product_title": "Phone X", "rating": 5},
        {"text": "Stopped working after a week. Very poor quality.", "category": "Electronics"},
        {"text": "ok"},
    ]
    t0, r, last = time.monotonic(), None, "no answer"
    while time.monotonic() - t0 < 240:  # `serve deploy` returns before the replica is up
        try:
            r = httpx.post(
                url, json={"reviews": reviews}, timeout=30, headers={"Authorization": f"Bearer {SCORER_TOKEN}"}
            )
            if r.status_code == 200:
                break
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(2)
    cluster.timings["scorer_ready"] = time.monotonic() - t0
    assert r is not None and r.status_code == 200, f"scorer at {url} not ready after 240 s: {last}"
    body = r.json()
    local = Scorer(trained_model)
    assert body["model_version"] == local.version
    got = [x["p_human"] for x in body["results"]]
    assert len(got) == 3 and all(0.0 <= v <= 1.0 for v in got)
    assert got == pytest.approx(local.score(reviews)["p_human"].tolist(), rel=1e-4, abs=1e-5)
    # The app's own bearer auth holds on the cluster too (the Serve port has none of its own).
    assert httpx.post(url, json={"reviews": reviews}, timeout=30).status_code == 401
