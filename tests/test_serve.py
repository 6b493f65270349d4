"""Ray Serve scorer: HTTP scores == in-process Scorer, batching, validation (schema-driven fuzzing),
auth, autoscaling, and the generated `serve deploy` YAML. Failure and rollout behaviour (replica killed
under load, model update under load, SIGINT) is in tests/test_serve_resilience.py.

One Serve instance for the module (started on a free port, shut down at the end); apps are deployed
under separate route prefixes. Replicas use num_cpus=0.5 (the session Ray has 4 logical CPUs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reviewgen.serve.api import make_api
from reviewgen.serve.config import ServeConfig, ServeConfigError, load_api_token
from reviewgen.serve.scoring import replica_filter, score_reviews

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-tests"
LIMITS = dict(max_reviews_per_request=8, max_text_chars=400, max_field_chars=64, max_body_bytes=20_000)
pytestmark = pytest.mark.timeout(240)


# -- no Ray ------------------------------------------------------------------------------------------
def test_generated_serve_yaml_is_current_and_valid():
    """cluster/serve_config.yaml == build_serve_config() and Serve's deploy schema accepts it."""
    from ray.serve.schema import ServeDeploySchema

    from reviewgen.serve.app import build_serve_config

    on_disk = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    assert on_disk == build_serve_config(), "regenerate with: python scripts/build_serve_config.py"
    schema = ServeDeploySchema.model_validate(on_disk)
    app = schema.applications[0]
    assert app.import_path == "reviewgen.serve:app_builder"
    assert schema.http_options.host == "127.0.0.1"
    # Non-default serving fields travel as builder args; scaling stays in the deployment block.
    custom = build_serve_config("/m", ServeConfig(max_batch_size=8, max_replicas=2))
    assert custom["applications"][0]["args"] == {"model_dir": "/m", "max_batch_size": 8}
    deployments = {d["name"]: d for d in custom["applications"][0]["deployments"]}
    assert set(deployments) == {"Ingress", "Scorer"}
    assert deployments["Scorer"]["autoscaling_config"]["max_replicas"] == 2
    # both drain their queue before they stop (scale-down, rollout, shutdown)
    assert all(d["graceful_shutdown_timeout_s"] > 0 for d in deployments.values())


def test_serve_config_validation(tmp_path):
    with pytest.raises(ServeConfigError, match="max_batch_sise"):
        ServeConfig.from_dict({"max_batch_sise": 3})
    with pytest.raises(ServeConfigError, match="min_replicas"):
        ServeConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ServeConfigError, match="max_ongoing_requests"):
        ServeConfig(max_batch_size=64, max_ongoing_requests=8)
    with pytest.raises(ServeConfigError, match="max_copy_span"):
        ServeConfig(max_copy_span=0)
    with pytest.raises(ServeConfigError, match="max_surge_percent"):
        ServeConfig(max_surge_percent=150)
    with pytest.raises(ServeConfigError, match="graceful_shutdown_timeout_s"):
        ServeConfig(graceful_shutdown_timeout_s=0)
    p = tmp_path / "s.yaml"
    p.write_text("serve: {max_text_chars: 10, min_replicas: 2, max_replicas: 2}\n")
    assert ServeConfig.from_yaml(p).max_text_chars == 10
    p.write_text("max_text_chars: 12\ntarget_ongoing_requests: 3\n")  # fields at top level work too
    cfg = ServeConfig.from_yaml(p)
    assert cfg.max_text_chars == 12 and cfg.target_ongoing_requests == 3.0
    p.write_text("serve: {max_text_chars: 10, max_text_charz: 3}\n")
    with pytest.raises(ServeConfigError, match="max_text_charz"):
        ServeConfig.from_yaml(p)
    p.write_text("max_batch_size: lots\n")
    with pytest.raises(ServeConfigError, match="max_batch_size"):
        ServeConfig.from_yaml(p)
    assert "runtime_env" not in ServeConfig().ray_actor_options()


def test_serve_config_is_frozen_and_overridden_by_set_flags():
    cfg = ServeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_batch_size = 8  # type: ignore[misc]
    new = cfg.with_overrides({"max_batch_size": 8, "check_copy": "false", "max_copy_span": 10, "check_pii": "no"})
    assert (new.max_batch_size, new.check_copy, new.max_copy_span, new.check_pii) == (8, False, 10, False)
    assert cfg.max_batch_size == 32  # the original is untouched
    with pytest.raises(ServeConfigError, match="max_batch_sise"):
        cfg.with_overrides({"max_batch_sise": 8})
    with pytest.raises(ServeConfigError, match="max_ongoing_requests"):
        cfg.with_overrides({"max_batch_size": 128})


@pytest.mark.parametrize("old", ["copy_check", "copy_min_span", "pii_check"])
def test_old_filter_keys_are_unknown_keys(old, tmp_path):
    """The filter's settings carry their `FilterConfig` names; an old name is an unknown key, named."""
    with pytest.raises(ServeConfigError, match=old):
        ServeConfig.from_dict({old: 10 if old == "copy_min_span" else False})
    with pytest.raises(ServeConfigError, match=old):
        ServeConfig().with_overrides({old: "false"})
    p = tmp_path / "s.yaml"
    p.write_text(f"serve: {{{old}: 10}}\n")
    with pytest.raises(ServeConfigError, match=old):
        ServeConfig.from_yaml(p)


def test_replica_filter_uses_from_model_and_its_policy(tiny_model, monkeypatch):
    """The replica's filter comes from `ReviewFilter.from_model` over the scorer's model directory: an unset
    max_copy_span is the model's n-gram size, one below it an error naming both."""
    from types import SimpleNamespace

    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.core.config import ConfigError
    from reviewgen.score.filter import ReviewFilter

    ck = load_checkpoint(tiny_model)
    scorer = SimpleNamespace(ckpt=ck, tok=ck.tokenizer)
    built = []
    real = ReviewFilter.from_model.__func__
    monkeypatch.setattr(ReviewFilter, "from_model", classmethod(lambda cls, *a: built.append(a) or real(cls, *a)))
    f = replica_filter(ServeConfig(), scorer)
    assert built[0][:2] == (ck.path, ck.tokenizer) and f.max_copy_span == f.ngrams.n == 8
    assert replica_filter(ServeConfig(max_copy_span=10, check_pii=False), scorer).config.check_pii is False
    assert replica_filter(ServeConfig(check_copy=False), scorer).ngrams is None
    with pytest.raises(ConfigError, match="max_copy_span 4 is below the model's n-gram size 8"):
        replica_filter(ServeConfig(max_copy_span=4), scorer)
    assert len(built) == 4


@pytest.mark.parametrize("entry", [["-c", "from reviewgen.cli import app; app()"], [str(ROOT / "jobs" / "serve.py")]])
def test_job_script_takes_every_flag_of_reviewgen_serve(entry):
    """`jobs/serve.py` is the `reviewgen serve` command: same flags, and --set errors name the key."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, *entry] + (["serve"] if entry[0] == "-c" else [])
    help_text = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, check=True).stdout
    for flag in ("--model", "--host", "--port", "--config", "--set", "--detach"):
        assert flag in help_text, (entry, flag)
    r = subprocess.run(
        cmd + ["--model", str(ROOT), "--set", "max_batch_sise=3"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2 and "max_batch_sise" in r.stderr, r.stderr


def test_token_sources(tmp_path):
    f = tmp_path / "tok"
    f.write_text("abc\n")
    assert load_api_token({}) is None
    assert load_api_token({"REVIEWGEN_API_TOKEN": " xyz "}) == "xyz"
    assert load_api_token({"REVIEWGEN_API_TOKEN_FILE": str(f)}) == "abc"
    with pytest.raises(ServeConfigError, match="missing"):
        load_api_token({"REVIEWGEN_API_TOKEN_FILE": str(tmp_path / "missing")})


def test_app_builder_args(tiny_model):
    """`serve run/deploy` args: model_dir required, other keys must be ServeConfig fields."""
    from ray.serve import Application

    from reviewgen.serve.app import app_builder

    assert isinstance(app_builder({"model_dir": str(tiny_model), "max_batch_size": 8}), Application)
    with pytest.raises(ServeConfigError, match="model_dir"):
        app_builder({})
    with pytest.raises(ServeConfigError, match="batch_max"):
        app_builder({"model_dir": str(tiny_model), "batch_max": 8})
    with pytest.raises(ServeConfigError, match="not a model directory"):
        app_builder({"model_dir": str(tiny_model / "nope")})


class _StubBackend:
    """A backend that is not ready and whose scoring either never finishes in time or is unavailable."""

    def __init__(self, fail: Exception | None = None):
        self.seen: list[tuple[str, int]] = []
        self.calls = 0
        self.fail = fail

    async def readiness(self):
        return "no model replica running: loading or failed to load"

    async def model_info(self):
        return {"model_version": "v"}

    async def stats(self):
        return {}

    async def score(self, reviews):
        import asyncio

        self.calls += 1
        if self.fail is not None:
            raise self.fail
        await asyncio.sleep(5)

    def record_request(self, route, status, seconds):
        self.seen.append((route, status))


def test_api_timeout_and_readiness_without_ray():
    """Handler timeout -> 504 JSON; not ready -> /readyz 503 with the reason; both counted by status."""
    from starlette.testclient import TestClient

    backend = _StubBackend()
    client = TestClient(make_api(backend, ServeConfig(request_timeout_s=0.2), token=None))
    r = client.post("/v1/score", json={"reviews": [{"text": "fine"}]})
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    assert "failed to load" in r.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200
    assert ("/v1/score", 504) in backend.seen and ("/readyz", 503) in backend.seen


def test_unavailable_backend_is_503_with_retry_after_and_bad_requests_never_reach_it():
    from starlette.testclient import TestClient

    from reviewgen.serve.api import BackendUnavailable

    backend = _StubBackend(fail=BackendUnavailable("the model replica was lost 2 times", 2))
    client = TestClient(make_api(backend, ServeConfig(), token=None))
    r = client.post("/v1/score", json={"reviews": [{"text": "fine"}]})
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    lost = "the model replica was lost 2 times"
    assert r.json() == {"error": {"status": 503, "code": "unavailable", "message": lost}}
    assert backend.calls == 1
    for bad in ({"reviews": [{"text": ""}]}, {"reviews": []}, {"nope": 1}):
        assert client.post("/v1/score", json=bad).status_code == 422
    assert backend.calls == 1, "a client mistake reached the scorer"


def test_batch_dispatch_is_immediate_while_the_model_is_idle():
    """The adaptive batch wait: with no model call in flight a batch reports itself full (Serve's batch
    queue dispatches it at once); while one runs, the real count lets requests gather."""
    from reviewgen.serve.replica import DispatchGate, Queued, _batch_size

    gate = DispatchGate(max_batch_size=16)
    queued = [Queued([{"text": "a"}], gate)]
    assert _batch_size(queued) == 16
    assert _batch_size(queued * 17) == 17  # one past full: Serve defers the extra request
    gate.in_flight = 1
    assert _batch_size(queued) == 1 and _batch_size(queued * 5) == 5
    gate.in_flight = 0
    assert _batch_size(queued * 3) == 16


class _FakeMethod:
    """A handle method whose calls fail with the queued errors, then succeed."""

    def __init__(self, errors):
        self.errors, self.calls = list(errors), 0

    def remote(self, *args):
        self.calls += 1
        error = self.errors.pop(0) if self.errors else None

        async def answer():
            if error is not None:
                raise error
            return {"model_version": "v", "results": []}

        return answer()


@pytest.mark.parametrize(
    "errors,calls,outcome",
    [
        (["died"], 2, "ok"),  # the replica died under the call: retried once, on another replica
        (["unavailable"], 2, "ok"),
        (["died", "died"], 2, "503"),  # lost twice: 503 with Retry-After, no third try
        (["bug"], 1, "bug"),  # the scoring code raised: not a replica loss, never retried
        (["backpressure"], 1, "503"),  # the deployment's queue is full: 503 at once
    ],
)
def test_ingress_retries_only_replica_loss_and_only_once(errors, calls, outcome):
    import asyncio

    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import BackPressureError

    from reviewgen.serve.api import BackendUnavailable
    from reviewgen.serve.ingress import IngressDeployment

    make = {
        "died": lambda: ActorDiedError(),
        "unavailable": lambda: ActorUnavailableError("gone", None),
        "bug": lambda: ValueError("model bug"),
        "backpressure": lambda: BackPressureError(10, 10),
    }
    method = _FakeMethod([make[e]() for e in errors])
    ingress = object.__new__(IngressDeployment.func_or_class)  # the retry needs no replica state but these
    ingress.model = type("Handle", (), {"score": method})()
    ingress._lock, ingress._retries = threading.Lock(), 0
    ingress.m_retries = type("Counter", (), {"inc": lambda self, *a, **k: None})()
    if outcome == "ok":
        assert asyncio.run(ingress.score([])) == {"model_version": "v", "results": []}
    elif outcome == "503":
        with pytest.raises(BackendUnavailable) as e:
            asyncio.run(ingress.score([]))
        assert e.value.retry_after_s > 0
    else:
        with pytest.raises(ValueError):
            asyncio.run(ingress.score([]))
    assert method.calls == calls


# -- Ray Serve ---------------------------------------------------------------------------------------
def _deploy(name: str, model_dir: Path, cfg: ServeConfig) -> None:
    from ray import serve

    from reviewgen.serve.app import build_app

    serve.run(build_app(model_dir, cfg), name=name, route_prefix=f"/{name}", blocking=False)


def _wait_ready(url: str, headers=None, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if httpx.get(f"{url}/readyz", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never became ready")


@pytest.fixture(scope="module")
def open_url(serve_base, tiny_model):
    """A one-replica app without auth and with small limits."""
    cfg = ServeConfig(
        min_replicas=1, max_replicas=1, num_cpus=0.5, max_batch_size=16, batch_wait_timeout_s=0.05, **LIMITS
    )
    _deploy("open", tiny_model, cfg)
    url = f"{serve_base}/open"
    _wait_ready(url)
    return url


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def sample_reviews(prepared_data) -> list[dict]:
    df = pd.read_parquet(prepared_data / "train.parquet").head(6)
    rows = [
        {"text": t, "product_title": p[:64], "category": c[:64], "rating": int(r) if pd.notna(r) else None}
        for t, p, c, r in zip(df["text"], df["product_title"], df["category"], df["rating"])
    ]
    return rows + [
        {"text": "zq xv plorth wimble gadget snarf kerplunk blorp fizzgig quux"},
        {"text": "Great phone, mail me at jo.doe@example.com", "rating": 5},
    ]


def test_http_scores_equal_in_process_scorer(open_url, client, tiny_model, sample_reviews):
    from reviewgen.core.memorization import NGramIndex
    from reviewgen.score.scorer import Scorer

    r = client.post(f"{open_url}/v1/score", json={"reviews": sample_reviews})
    assert r.status_code == 200, r.text
    body = r.json()
    local = Scorer(tiny_model)
    ref = local.score(sample_reviews)
    assert body["model_version"] == local.version
    got = [x["p_human"] for x in body["results"]]
    assert got == pytest.approx(ref["p_human"].tolist(), rel=1e-5, abs=1e-6)
    assert [x["rating_pred"] for x in body["results"]] == ref["rating_pred"].tolist()
    index = NGramIndex.load(tiny_model / "ngrams.npy")
    spans = [index.longest_copy(ids) for ids in local.tok.review_token_lists([x["text"] for x in sample_reviews])]
    assert [x["flags"]["copy_span"] for x in body["results"]] == spans
    assert any(x["flags"]["copied"] for x in body["results"][:6]), "training reviews should be flagged as copies"
    assert body["results"][-2]["flags"]["copied"] is False
    assert body["results"][-1]["flags"]["pii"]["email"] == 1 and body["results"][-1]["flags"]["has_pii"]
    assert "pii" in body["results"][-1]["reasons"] and body["results"][-2]["reasons"] == []
    # flags and reasons are the output filter's verdict, as the replica's scoring function gives it
    local_results = score_reviews(local, replica_filter(ServeConfig(), local), sample_reviews)
    assert [(x["flags"], x["reasons"]) for x in body["results"]] == [(x["flags"], x["reasons"]) for x in local_results]
    info = client.get(f"{open_url}/v1/model").json()
    assert info["model_version"] == local.version and info["auth"] is False
    assert info["config"]["max_text_chars"] == LIMITS["max_text_chars"]


def test_concurrent_requests_are_batched(open_url, client, sample_reviews):
    before = client.get(f"{open_url}/v1/stats").json()
    with ThreadPoolExecutor(24) as pool:
        codes = list(
            pool.map(
                lambda i: client.post(f"{open_url}/v1/score", json={"reviews": [sample_reviews[i % 6]]}).status_code,
                range(96),
            )
        )
    assert codes == [200] * 96
    after = client.get(f"{open_url}/v1/stats").json()
    assert after["reviews_scored"] - before["reviews_scored"] == 96
    assert after["batches"] - before["batches"] < 96, "every request ran alone: no batching"
    assert after["max_batch_size_observed"] > 1
    assert after["requests"].get("/v1/score 200", 0) >= 96


def _review_schema(openapi: dict) -> tuple[dict, dict]:
    """(ScoreRequest schema, Review schema) resolved from /openapi.json."""
    comps = openapi["components"]["schemas"]
    op = openapi["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    req = comps[op["$ref"].split("/")[-1]]
    review = comps[req["properties"]["reviews"]["items"]["$ref"].split("/")[-1]]
    return req, review


def _bad_values(prop: dict) -> st.SearchStrategy:
    """Values that violate one property's JSON schema (types, lengths, bounds, enums)."""
    variants = prop.get("anyOf", [prop])
    types = {v.get("type") for v in variants}
    wrong = [
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.booleans(),
    ]
    if "string" not in types:
        wrong.append(st.text(max_size=5))
    if "integer" not in types:
        wrong.append(st.integers())
    if "null" not in types:
        wrong.append(st.none())
    if "integer" in types:
        wrong.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)))
    for v in variants:
        if "maxLength" in v:
            wrong.append(st.text(alphabet="ab ", min_size=v["maxLength"] + 1, max_size=v["maxLength"] + 20))
        if v.get("minLength", 0) >= 1:
            wrong.append(st.sampled_from(["", "   ", "\n\t"]))
        if "maximum" in v:
            wrong.append(st.integers(min_value=v["maximum"] + 1))
        if "minimum" in v:
            wrong.append(st.integers(max_value=v["minimum"] - 1))
        if "enum" in v:
            wrong.append(st.text(max_size=4).filter(lambda s, e=v["enum"]: s not in e))
    return st.one_of(wrong)


@pytest.fixture(scope="module")
def openapi(open_url, client) -> dict:
    r = client.get(f"{open_url}/openapi.json")
    assert r.status_code == 200
    assert client.get(f"{open_url}/docs").status_code == 200
    return r.json()


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_schema_generated_bad_requests_get_4xx(open_url, client, openapi, data):
    req_schema, review_schema = _review_schema(openapi)
    review = {"text": "a perfectly fine review", "rating": 4}
    kind = data.draw(st.sampled_from(["field", "missing", "extra", "reviews", "body"]))
    if kind == "field":
        name = data.draw(st.sampled_from(sorted(review_schema["properties"])))
        review[name] = data.draw(_bad_values(review_schema["properties"][name]))
        body, field = {"reviews": [review]}, f"reviews[0].{name}"
    elif kind == "missing":
        body, field = {"reviews": [{"rating": 3}]}, "reviews[0].text"
    elif kind == "extra":
        review[data.draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in review_schema["properties"]))] = 1
        body, field = {"reviews": [review]}, "reviews[0]"
    elif kind == "reviews":
        n = data.draw(st.sampled_from([0, req_schema["properties"]["reviews"]["maxItems"] + 1]))
        body, field = {"reviews": [review] * n}, "reviews"
    else:
        body = data.draw(
            st.one_of(
                st.lists(st.integers(), max_size=3),
                st.integers(),
                st.text(max_size=5),
                st.just({}),
                st.just({"reviews": "x"}),
            )
        )
        field = "reviews" if body == {} or isinstance(body, dict) else "body"
    r = client.post(f"{open_url}/v1/score", content=json.dumps(body), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    err = r.json()["error"]
    assert err["status"] == r.status_code and err["code"] in {"validation_error", "invalid_json"}
    assert any(f["field"].startswith(field) for f in err["fields"]), (field, err)


def test_hand_written_bad_requests_get_4xx_and_server_stays_healthy(open_url, client):
    url = f"{open_url}/v1/score"
    cases = {
        "bad json": (dict(content=b'{"reviews": [', headers={"content-type": "application/json"}), 422, "body"),
        "not utf8": (dict(content=b"\xff\xfe{", headers={"content-type": "application/json"}), 400, "body"),
        "empty text": (dict(json={"reviews": [{"text": ""}]}), 422, "reviews[0].text"),
        "blank text": (dict(json={"reviews": [{"text": "   "}]}), 422, "reviews[0].text"),
        "lone surrogate": (
            dict(content=b'{"reviews": [{"text": "ok \\ud800"}]}', headers={"content-type": "application/json"}),
            422,
            "reviews[0].text",
        ),
        "text wrong type": (dict(json={"reviews": [{"text": 12}]}), 422, "reviews[0].text"),
        "rating wrong type": (dict(json={"reviews": [{"text": "ok", "rating": "five"}]}), 422, "reviews[0].rating"),
        "rating out of range": (dict(json={"reviews": [{"text": "ok", "rating": 9}]}), 422, "reviews[0].rating"),
        "too many reviews": (dict(json={"reviews": [{"text": "ok"}] * 9}), 422, "reviews"),
        "text too long": (dict(json={"reviews": [{"text": "x" * 401}]}), 422, "reviews[0].text"),
        "oversized body": (dict(json={"reviews": [{"text": "ok", "junk": "y" * 30_000}]}), 413, "body"),
        "oversized chunked": (
            dict(
                content=iter([b'{"reviews": [{"text": "', b"y" * 25_000, b'"}]}']),
                headers={"content-type": "application/json"},
            ),
            413,
            "body",
        ),
        "plain text body": (dict(content=b"hello", headers={"content-type": "text/plain"}), 422, None),
    }
    for name, (kwargs, status, field) in cases.items():
        r = client.post(url, **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert err["status"] == status, name
        if field:
            assert any(f["field"] == field for f in err["fields"]), (name, err)
    assert client.get(f"{open_url}/v1/nope").status_code == 404
    assert client.get(url).status_code == 405
    assert client.get(f"{open_url}/healthz").json() == {"status": "ok"}
    assert client.post(url, json={"reviews": [{"text": "still fine"}]}).status_code == 200
    stats = client.get(f"{open_url}/v1/stats").json()["requests"]
    assert not [k for k in stats if k.split()[-1].startswith("5")], stats


def test_auth_on(serve_base, tiny_model, client):
    from ray import serve

    cfg = ServeConfig(min_replicas=1, max_replicas=1, num_cpus=0.5, env_vars={"REVIEWGEN_API_TOKEN": TOKEN})
    _deploy("auth", tiny_model, cfg)
    url = f"{serve_base}/auth"
    try:
        _wait_ready(url)  # /readyz and /healthz are open
        assert client.get(f"{url}/healthz").status_code == 200
        body = {"reviews": [{"text": "works well"}]}
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            r = client.post(f"{url}/v1/score", json=body, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "unauthorized"
        for path in ("/v1/model", "/v1/stats", "/docs", "/openapi.json"):
            assert client.get(f"{url}{path}").status_code == 401, path
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post(f"{url}/v1/score", json=body, headers=good).status_code == 200
        info = client.get(f"{url}/v1/model", headers=good).json()
        assert info["auth"] is True and TOKEN not in json.dumps(info)
    finally:
        serve.delete("auth")


def test_auth_off_needs_no_header(open_url, client):
    assert client.get(f"{open_url}/v1/model").json()["auth"] is False
    assert client.post(f"{open_url}/v1/score", json={"reviews": [{"text": "ok"}]}).status_code == 200


def _running(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or "Scorer" not in status.deployments:
        return 0
    return status.deployments["Scorer"].replica_states.get("RUNNING", 0)


def test_autoscaling_up_under_load_and_back_down(serve_base, tiny_model):
    from ray import serve

    cfg = ServeConfig(
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        upscale_delay_s=1,
        downscale_delay_s=3,
        metrics_interval_s=0.5,
        look_back_period_s=2,
        num_cpus=0.5,
        max_batch_size=4,
        max_ongoing_requests=8,
    )
    _deploy("auto", tiny_model, cfg)
    url = f"{serve_base}/auto"
    try:
        _wait_ready(url)
        assert _running("auto") == 1
        stop = threading.Event()

        def load():
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    c.post(f"{url}/v1/score", json={"reviews": [{"text": "scale me up please"}] * 8})

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        peak, end = 1, time.time() + 60
        try:
            while time.time() < end and peak < 2:
                peak = max(peak, _running("auto"))
                time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert peak == 2, "sustained load never added a replica"
        end = time.time() + 60
        while time.time() < end and _running("auto") > 1:
            time.sleep(0.5)
        assert _running("auto") == 1, "replicas did not come back down after the load stopped"
    finally:
        serve.delete("auto")
