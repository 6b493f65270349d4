"""The scorer loses no request: a model replica killed under load, a model rollout under load, a model that
fails to load, and SIGINT to `reviewgen serve` (drains, exits 0, leaves no Ray process behind).

Clients here never retry: every request must come back 200 on its own. Loops are bounded by request
counts and deadlines; everything stays on loopback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from reviewgen.core.model_dir import read_calibration, write_calibration
from reviewgen.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)
# Short drain loops keep rollouts quick; one small replica per deployment (the session Ray has 4 CPUs).
CFG = ServeConfig(
    min_replicas=1, max_replicas=1, num_cpus=0.5, graceful_shutdown_wait_loop_s=0.2, graceful_shutdown_timeout_s=10
)


def _wait_ready(url: str, timeout: float = 90) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never became ready")


def _model_variant(src: Path, dst: Path) -> Path:
    """A copy of `src` with another calibration bias, so its content-hash version differs."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("mle", "state"))
    calib = read_calibration(dst)
    write_calibration(dst, dataclasses.replace(calib, bias=calib.bias + 0.25))
    return dst


class _Load:
    """Client threads that post single reviews on keep-alive connections, never retrying, and record
    (start time, status, model_version or error) for every request."""

    def __init__(self, url: str, threads: int = 4, reviews: int = 1):
        self.url, self.stop, self.reviews = url, threading.Event(), reviews
        self.results: list[tuple[float, int, str]] = []
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(threads)]

    def _run(self, k: int) -> None:
        with httpx.Client(timeout=60) as c:
            i = 0
            while not self.stop.is_set():
                t = time.time()
                try:
                    r = c.post(
                        f"{self.url}/v1/score",
                        json={"reviews": [{"text": f"review {k} {i} {j} works well"} for j in range(self.reviews)]},
                    )
                    self.results.append(
                        (t, r.status_code, r.json().get("model_version") if r.status_code == 200 else r.text)
                    )
                except httpx.HTTPError as e:
                    self.results.append((t, -1, repr(e)))
                i += 1

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def wait_for(self, n: int, timeout: float = 120) -> None:
        end = time.time() + timeout
        while len(self.results) < n and time.time() < end:
            time.sleep(0.1)

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]


@pytest.fixture(scope="module")
def ha_app(serve_base, tiny_model, tmp_path_factory):
    """App "ha" serving model A (one model replica); model B is a variant with another version."""
    from ray import serve

    from reviewgen.serve.app import build_app

    model_a = tiny_model
    model_b = _model_variant(tiny_model, tmp_path_factory.mktemp("model") / "b")
    serve.run(build_app(model_a, CFG), name="ha", route_prefix="/ha", blocking=False)
    url = f"{serve_base}/ha"
    _wait_ready(url)
    yield url, model_a, model_b
    serve.delete("ha")


def test_replica_killed_under_load_loses_no_request(ha_app):
    import ray

    url, _, _ = ha_app
    before = httpx.get(f"{url}/v1/stats", timeout=10).json()
    victim = before["replica"]
    # Multi-review requests from 6 clients keep the replica busy, so requests are in flight at the kill.
    with _Load(url, threads=6, reviews=16) as load:
        load.wait_for(50)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = len(load.results)
        load.wait_for(killed_at + 250)
    assert len(load.results) >= 300
    assert load.failures() == [], load.failures()[:5]
    after = httpx.get(f"{url}/v1/stats", timeout=10).json()
    assert after["replica"] != victim, "the killed replica still answers"
    # Whether a request was inside the replica at the kill is up to timing (then the ingress retried it,
    # see score_retries; the retry itself is tested without Ray in test_serve.py); requests that arrive
    # meanwhile wait in the handle's router for the replacement.


def test_model_rollout_under_load_loses_no_request(ha_app):
    from ray import serve

    from reviewgen.serve.app import build_app

    url, model_a, model_b = ha_app
    va = httpx.get(f"{url}/v1/model", timeout=10).json()["model_version"]
    vb = json.loads((model_b / "meta.json").read_text())["version"]
    assert va != vb
    with _Load(url) as load:
        load.wait_for(40)
        serve.run(build_app(model_b, CFG), name="ha", route_prefix="/ha", blocking=False)
        end = time.time() + 60  # the rollout ends when the old replica is gone and the new one answers
        while time.time() < end and not (
            httpx.get(f"{url}/readyz", timeout=10).status_code == 200
            and httpx.get(f"{url}/v1/model", timeout=10).json()["model_version"] == vb
        ):
            time.sleep(0.2)
        rolled_at = time.time()
        seen = len(load.results)
        load.wait_for(seen + 40)
    assert load.failures() == [], load.failures()[:5]
    versions = [v for _, _, v in load.results]
    assert set(versions) == {va, vb}
    assert all(v == vb for t, _, v in load.results if t > rolled_at), "an old replica answered after the rollout"
    assert httpx.get(f"{url}/v1/model", timeout=10).json()["model_version"] == vb


def test_readyz_turns_503_while_draining(ha_app):
    from ray import serve

    url, _, _ = ha_app
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    serve.get_deployment_handle("Ingress", "ha").drain.remote().result(timeout_s=30)
    r = httpx.get(f"{url}/readyz", timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    assert "draining" in r.json()["error"]["message"] and r.headers["retry-after"]
    # draining only stops new traffic from being sent here; what arrives is still served
    assert httpx.post(f"{url}/v1/score", json={"reviews": [{"text": "still served"}]}, timeout=30).status_code == 200


def test_readyz_is_503_when_the_model_fails_to_load(serve_base, tiny_model, tmp_path):
    from ray import serve

    from reviewgen.serve.app import build_app

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken, ignore=shutil.ignore_patterns("mle", "state"))
    (broken / "discriminator.safetensors").write_bytes(b"not a safetensors file")
    try:
        with pytest.raises(Exception):
            serve.run(build_app(broken, CFG), name="broken", route_prefix="/broken", blocking=False)
        r = httpx.get(f"{serve_base}/broken/readyz", timeout=30)
        assert r.status_code == 503, r.text
        msg = r.json()["error"]["message"]
        # the failed replica may still be stopping when the probe arrives (seen on a loaded machine)
        assert r.json()["error"]["code"] == "not_ready", msg
        assert "no model replica running" in msg or "stopping" in msg, msg
        assert httpx.get(f"{serve_base}/broken/healthz", timeout=10).status_code == 200
    finally:
        serve.delete("broken")


def _processes_mentioning(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{pid}: {cmd[:120]}")
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_drains_and_stops_serve_and_its_local_ray(tiny_model, free_port, sig):
    """`reviewgen serve` with its own local Ray (RAY_ADDRESS unset, its own Ray temp dir): Ctrl-C (SIGINT
    to its process group, as a terminal sends it) or SIGTERM exits 0 within the drain timeout, and no
    process of its Ray is left."""
    port = free_port
    ray_tmp = tempfile.mkdtemp(prefix="rgsig", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), RAY_TMPDIR=ray_tmp)
    cmd = [
        sys.executable,
        "-c",
        "from reviewgen.cli import app; app()",
        "serve",
        "--model",
        str(tiny_model),
        "--port",
        str(port),
        "--set",
        "num_cpus=0.5",
        "--set",
        "graceful_shutdown_timeout_s=10",
    ]
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", timeout=150)
        assert _processes_mentioning(ray_tmp), "no Ray process of its own was found"
        with _Load(f"http://127.0.0.1:{port}", threads=2) as load:
            load.wait_for(10)
            t0 = time.time()
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            out, _ = proc.communicate(timeout=60)
            took = time.time() - t0
        assert proc.returncode == 0, out[-3000:]
        assert took < 10 + 20, f"took {took:.1f}s"
        assert "draining" in out and "stopped in" in out, out[-2000:]
        # the drain lets requests in flight at the signal finish (later ones may be refused)
        before = [r for r in load.results if r[0] < t0]
        assert before and all(r[1] == 200 for r in before), [r for r in before if r[1] != 200][:5]
        end = time.time() + 15
        while _processes_mentioning(ray_tmp) and time.time() < end:
            time.sleep(0.5)
        assert _processes_mentioning(ray_tmp) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
