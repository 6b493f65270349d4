"""Shared fixtures: one prepared sample split, one tiny trained model, one local Ray per session, and Serve's
HTTP proxy on a free local port for each Serve test module."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"

# Token auth is for clusters; a test-local Ray runs without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# A watermark key in the developer's shell would sign and detect in every test: tests set their own.
for _name in ("REVIEWGEN_WATERMARK_KEY", "REVIEWGEN_WATERMARK_KEY_FILE", "REVIEWGEN_WATERMARK_OLD_KEYS"):
    os.environ.pop(_name, None)
# One intra-op thread for the whole suite: the tiny models gain nothing from OpenMP threads, and with Ray's
# processes on the same 2 cores the spinning threads cost far more than they save (a tiny train_local's
# scorer calibration: ~5x slower with 2 threads on a busy machine). The env var reaches the subprocesses
# (jobs, the demo, cluster scripts); Ray Train workers and generation actors still set their own counts.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread():
    """torch may already be imported (with its default thread count) before this conftest runs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """The carried sample, prepared into train/val/test splits."""
    from reviewgen.data.corpus import prepare, review_sources, sample_data_dir

    out = tmp_path_factory.mktemp("prepared")
    prepare(review_sources(sample_data_dir()), out, seed=0, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def tiny_config():
    from reviewgen.core.config import RunConfig

    return lambda: RunConfig.from_yaml(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_model(prepared_data, tiny_config, tmp_path_factory) -> Path:
    """A tiny model trained through all three phases (final model dir; mle/ and state/ inside)."""
    from reviewgen.train.local import train_local

    out = tmp_path_factory.mktemp("tiny_model")
    train_local(prepared_data, out, tiny_config(), log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole session. 4 logical CPUs on 2 cores: with only 2, actor
    pools and 2-worker trainers deadlock waiting for a CPU for their read tasks."""
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=512 * 1024 * 1024,
        ignore_reinit_error=True,
    )
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return _free_port()


@pytest.fixture(scope="module")
def serve_base(ray_local):
    """Serve on the session Ray, its proxy on 127.0.0.1 at a free port, shut down after the module."""
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine their spinning costs seconds."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
