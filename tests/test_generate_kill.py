"""A real interruption of the generation job: SIGKILL the whole `python jobs/generate.py` process group
(driver plus its embedded Ray) mid-run, then rerun the same command. The resumed partition must hold
exactly the reviews of an uninterrupted run: none missing, none duplicated, same texts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from reviewgen.data.corpus import sample_data_dir
from reviewgen.generate.config import load_generate_config
from reviewgen.generate.pipeline import run_generation

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[1]
DATE = "2024-06-02"
SEED = 7
PER_SHARD = 2
# The tiny model emits partial UTF-8 in most reviews; keep them so the comparison covers real rows.
JOB_FLAGS = [
    "--preset",
    "bigbasket",
    "--run-date",
    DATE,
    "--seed",
    str(SEED),
    "--reviews-per-product",
    "2",
    "--products-per-shard",
    str(PER_SHARD),
    "--keep-broken-text",
    "--min-score",
    "0",
    "--num-actors",
    "1",
    "--no-watermark",
]


def _catalog(dir_: Path, n: int) -> Path:
    path = dir_ / f"bigbasket_{n}.parquet"
    pd.read_parquet(sample_data_dir() / "catalog_bigbasket_products.parquet").head(n).to_parquet(path)
    return path


def _job_env(ray_tmp: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # the job must start its own embedded Ray, not join the test session's
    # RAY_TMPDIR puts the job's Ray session under a dir of ours, so its processes are identifiable later
    env.update(
        RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_DATA_DISABLE_PROGRESS_BARS="1"
    )
    return env


def _job_cmd(model: Path, catalog: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "jobs" / "generate.py"),
        "--model",
        str(model),
        "--catalog",
        str(catalog),
        "--out",
        str(out),
        *JOB_FLAGS,
    ]


def _procs_of(ray_tmp: str) -> list[int]:
    """Live processes started for the job's Ray: RAY_TMPDIR in their environment or the dir in argv."""
    needle, env_needle, pids = ray_tmp.encode(), f"RAY_TMPDIR={ray_tmp}".encode(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            env = (d / "environ").read_bytes()
            state = next((ln for ln in (d / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:  # gone meanwhile, or not ours
            continue
        if "Z" in state.split()[1:2]:  # a zombie is dead; only its parent's wait() is pending
            continue
        if needle in cmd or env_needle in env.split(b"\0"):
            pids.append(int(d.name))
    return pids


def _reap(ray_tmp: str, timeout: float = 30.0) -> list[int]:
    """Wait for the killed job's processes to vanish; SIGKILL stragglers by pid. Returns those stragglers."""
    deadline, stragglers = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        left = _procs_of(ray_tmp)
        if not left:
            return stragglers
        if time.monotonic() > deadline - timeout / 2:  # grace period over: kill what escaped the group
            for pid in left:
                stragglers.append(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
    raise AssertionError(f"processes of the killed job still alive: {_procs_of(ray_tmp)}")


def _kill_mid_run(cmd: list[str], env: dict[str, str], part: Path, log: Path, ray_tmp: str) -> bool:
    """Start the job in its own session; SIGKILL its group once a shard is written but before _SUCCESS.
    False when the job finished before it could be caught."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 400
        try:
            while time.monotonic() < deadline:
                if (part / "_SUCCESS").exists() or proc.poll() is not None:
                    proc.wait(timeout=60)
                    return False
                if any((part / "reviews").glob("part-*.parquet")):
                    # the detector used after the kill must see the live Ray (driver, gcs, raylet, actor...)
                    assert len(_procs_of(ray_tmp)) >= 3, _procs_of(ray_tmp)
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                    return True
                time.sleep(0.05)
            raise AssertionError(f"job wrote no shard within 400 s; log:\n{log.read_text()[-3000:]}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)


def test_sigkilled_job_resumes_to_exactly_the_uninterrupted_reviews(ray_local, tiny_model, tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rgkill-")  # short: Ray's unix socket paths live under it
    try:
        env = _job_env(ray_tmp)
        caught = False
        for attempt, n in enumerate((60, 200)):  # a second, longer run if the first finished too fast
            catalog, out_b = _catalog(tmp_path, n), tmp_path / f"out_b{attempt}"
            part_b = out_b / f"run_date={DATE}"
            caught = _kill_mid_run(
                _job_cmd(tiny_model, catalog, out_b), env, part_b, tmp_path / f"kill{attempt}.log", ray_tmp
            )
            if caught:
                break
        assert caught, "the job finished before a mid-run state could be observed, twice"
        killed_at = time.monotonic()
        stragglers = _reap(ray_tmp)
        print(
            f"killed job's processes gone after {time.monotonic() - killed_at:.1f}s; "
            f"killed outside the group: {stragglers}"
        )
        assert not _procs_of(ray_tmp)

        # the kill left a real partial state: some shards finished, not all, no completion marker
        products = pd.read_parquet(part_b / "products")
        n_shards = products["shard"].nunique()  # non-empty shards (ids are hashed, so some may be empty)
        finished = sorted(p.name for p in (part_b / "reviews").glob("part-*.parquet"))
        assert not (part_b / "_SUCCESS").exists() and not (part_b / "manifest.json").exists()
        assert 1 <= len(finished) < n_shards, (len(finished), n_shards)

        # reference: the same catalog file and settings, uninterrupted, in-process on the session's Ray
        out_a = tmp_path / "out_a"
        cfg = load_generate_config(
            None,
            {
                "sampling.reviews_per_product": 2,
                "sampling.seed": SEED,
                "catalog.mapping": "bigbasket",
                "filter.min_score": 0.0,
                "sharding.products_per_shard": PER_SHARD,
                "filter.reject_broken_text": False,
            },
        )
        ref = run_generation(tiny_model, [str(catalog)], out_a, cfg, run_date=DATE, log=lambda *_: None)

        resume_log = tmp_path / "resume.log"
        with open(resume_log, "wb") as fh:
            rc = subprocess.run(
                _job_cmd(tiny_model, catalog, out_b),
                env=env,
                cwd=ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                timeout=400,
            ).returncode
        assert rc == 0, resume_log.read_text()[-3000:]
        assert (part_b / "_SUCCESS").exists()
        summary = json.loads((part_b / "manifest.json").read_text())["summary"]
        c = summary["counts"]
        assert summary["run_id"] == ref.run_id
        assert c["shards"] >= n_shards and c["shards_resumed"] == len(finished) > 0
        done = {int(name[5:10]) for name in finished}
        assert c["reviews_generated_this_invocation"] == 2 * int((~products["shard"].isin(done)).sum())
        assert c["reviews_generated"] == ref.counts.reviews_generated == 2 * ref.counts.products_valid

        got = pd.read_parquet(part_b / "reviews").sort_values("review_id").reset_index(drop=True)
        want = pd.read_parquet(out_a / f"run_date={DATE}" / "reviews").sort_values("review_id").reset_index(drop=True)
        assert len(want) > 0
        assert sorted(got["review_id"]) == sorted(want["review_id"])  # multiset: no gaps, no duplicates
        assert got["review_id"].is_unique
        assert not list(part_b.rglob(".tmp-*"))  # a mid-write kill leaves no temp file in the finished output
        pd.testing.assert_frame_equal(got.drop(columns="generated_at"), want.drop(columns="generated_at"))
        print(
            f"caught with {len(finished)}/{n_shards} shards written ({n} products); resume generated "
            f"{c['reviews_generated_this_invocation']} of {c['reviews_generated']} reviews"
        )
    finally:
        for pid in _procs_of(ray_tmp):  # never leave the job's Ray behind, even when an assert failed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
