"""Static checks of cluster/: launcher YAML, KubeRay manifests, Serve config, runtime envs,
Dockerfile and scripts. Fast, no cluster, no network."""

from __future__ import annotations

import copy
import datetime as dt
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
SCRIPTS = CLUSTER / "scripts"
IMAGE = "ghcr.io/your-org/reviewgen:0.1.0"

pytestmark = pytest.mark.timeout(60)


def load_all(path: Path) -> list[dict[str, Any]]:
    """All YAML documents of a file (skipping empty ones)."""
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_one(path: Path) -> dict[str, Any]:
    """The single YAML document of a file."""
    docs = load_all(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    return docs[0]


def fallback_docs() -> dict[str, dict[str, Any]]:
    """Documents of the fallback CronJob manifest, keyed by kind."""
    return {d["kind"]: d for d in load_all(KUBERAY / "cronjob-nightly-fallback.yaml")}


def fallback_rayjob(name: str = "nightly-20260305", run_date: str = "2026-03-05") -> dict[str, Any]:
    """The RayJob template of the fallback CronJob with its placeholders filled in."""
    text = fallback_docs()["ConfigMap"]["data"]["rayjob-nightly.yaml"]
    return yaml.safe_load(text.replace("__NAME__", name).replace("__RUN_DATE__", run_date))


def ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(label, RayClusterSpec) for every Ray cluster the manifests would create."""
    train = load_one(KUBERAY / "rayjob-train.yaml")
    cron = load_one(KUBERAY / "raycronjob-nightly.yaml")
    service = load_one(KUBERAY / "rayservice-scorer.yaml")
    return [
        ("rayjob-train", train["spec"]["rayClusterSpec"]),
        ("raycronjob-nightly", cron["spec"]["jobTemplate"]["rayClusterSpec"]),
        ("rayservice-scorer", service["spec"]["rayClusterConfig"]),
        ("cronjob-fallback-template", fallback_rayjob()["spec"]["rayClusterSpec"]),
    ]


def pod_specs(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, pod spec) for the head and each worker group of a RayClusterSpec."""
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping nested anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


# --- launcher ------------------------------------------------------------------------------


def test_launcher_config_validates_with_ray_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load_one(CLUSTER / "launcher" / "aws-gpu.yaml")
    # `ray up` fills defaults before validating; validate_config alone rejects any raw config
    # (it requires the filled-in `cluster_synced_files`).
    validate_config(prepare_config(copy.deepcopy(raw)))

    # The schema really bites: an unknown node-type field must be rejected.
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["worker.gpu"]["instance_type"] = "g5.xlarge"
    with pytest.raises(Exception, match="instance_type"):
        validate_config(prepare_config(broken))


def test_launcher_config_security_and_gpu_workers() -> None:
    cfg = load_one(CLUSTER / "launcher" / "aws-gpu.yaml")
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert "RAY_AUTH_MODE=token" in head_cmds
    assert "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert cfg["provider"]["type"] == "aws"
    gpu = cfg["available_node_types"]["worker.gpu"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["node_config"]["InstanceType"] == "g5.xlarge"
    assert gpu["resources"]["GPU"] == 1
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert "GPU" not in head["resources"]
    # No inbound rule open to the world.
    for perm in cfg["provider"]["security_group"]["IpPermissions"]:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in perm["IpRanges"]), perm
    assert cfg["docker"]["image"] == IMAGE


# --- KubeRay -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "kinds"),
    [
        ("rayjob-train.yaml", ["RayJob"]),
        ("raycronjob-nightly.yaml", ["RayCronJob"]),
        ("rayservice-scorer.yaml", ["RayService"]),
        ("cronjob-nightly-fallback.yaml", ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"]),
        ("pvc-shared.yaml", ["PersistentVolumeClaim"]),
        ("serviceaccount.yaml", ["ServiceAccount"]),
        ("networkpolicy.yaml", ["NetworkPolicy"]),
    ],
)
def test_manifest_kinds_and_api_versions(filename: str, kinds: list[str]) -> None:
    docs = load_all(KUBERAY / filename)
    assert [d["kind"] for d in docs] == kinds
    expected_api = {
        "RayJob": "ray.io/v1",
        "RayCronJob": "ray.io/v1",
        "RayService": "ray.io/v1",
        "CronJob": "batch/v1",
        "Role": "rbac.authorization.k8s.io/v1",
        "RoleBinding": "rbac.authorization.k8s.io/v1",
        "NetworkPolicy": "networking.k8s.io/v1",
    }
    for d in docs:
        assert d["apiVersion"] == expected_api.get(d["kind"], "v1"), f"{filename}: {d['kind']}"
        assert d["metadata"]["name"]


def test_every_manifest_file_is_covered() -> None:
    names = {p.name for p in KUBERAY.glob("*.yaml")}
    assert names == {
        "rayjob-train.yaml",
        "raycronjob-nightly.yaml",
        "rayservice-scorer.yaml",
        "cronjob-nightly-fallback.yaml",
        "pvc-shared.yaml",
        "serviceaccount.yaml",
        "networkpolicy.yaml",
    }


@pytest.mark.parametrize(("label", "spec"), [pytest.param(*ls, id=ls[0]) for ls in ray_cluster_specs()])
def test_ray_clusters_token_auth_private_dashboard_and_resources(label: str, spec: dict[str, Any]) -> None:
    import ray

    assert spec["authOptions"]["mode"] == "token", label
    assert spec["rayVersion"] == ray.__version__, f"{label}: rayVersion must match the image's Ray"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", label
    assert not head.get("enableIngress", False), label
    assert head["rayStartParams"].get("num-cpus") == "0", f"{label}: keep work off the head"
    assert spec.get("workerGroupSpecs"), label
    for group, pod in pod_specs(spec):
        for c in pod["containers"]:
            where = f"{label}/{group}/{c['name']}"
            assert c["image"] == IMAGE, where
            limits = c["resources"]["limits"]
            assert "cpu" in limits and "memory" in limits, where
            gpus = limits.get("nvidia.com/gpu")
            if "gpu" in group:
                assert gpus is not None and int(gpus) >= 1, f"{where}: GPU group without GPU limit"
                assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus, where
                assert any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", [])), where
            else:
                assert gpus is None, f"{where}: GPU on a non-GPU group"
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/mnt/shared" in mounts, f"{label}/{group}: shared volume not mounted"


def test_no_service_is_exposed_outside_the_cluster() -> None:
    for path in KUBERAY.glob("*.yaml"):
        for doc in load_all(path):
            for node in walk(doc):
                assert node.get("serviceType") not in ("LoadBalancer", "NodePort"), path.name
                if node.get("kind") == "Service":
                    assert node.get("spec", {}).get("type", "ClusterIP") == "ClusterIP", path.name
            assert doc["kind"] != "Secret", f"{path.name}: secrets must not live in the repo"


def test_rayjob_train_lifecycle_and_checkpoint_storage() -> None:
    job = load_one(KUBERAY / "rayjob-train.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0
    assert job["activeDeadlineSeconds"] > 0
    assert job["backoffLimit"] >= 0
    entry = job["entrypoint"]
    assert entry.startswith("python /home/ray/app/jobs/train.py")
    storage = re.search(r"--storage-path (\S+)", entry)
    assert storage and re.match(r"(s3|gs)://|/mnt/shared/", storage.group(1)), entry
    assert "--use-gpu" in entry and "--name " in entry
    assert yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]


def test_raycronjob_schema() -> None:
    cron = load_one(KUBERAY / "raycronjob-nightly.yaml")["spec"]
    assert len(cron["schedule"].split()) == 5
    template = cron["jobTemplate"]
    # KubeRay v1.6: jobTemplate is the RayJob spec itself, not {metadata, spec}.
    assert "spec" not in template and "entrypoint" in template
    assert "jobs/generate.py" in template["entrypoint"]
    assert "--run-date $(date -u +%F)" in template["entrypoint"]
    assert "jobId" not in template, "a static jobId would collide on the second night"
    assert template["shutdownAfterJobFinishes"] is True


@pytest.mark.parametrize("label", ["raycronjob-nightly", "cronjob-fallback-template"])
def test_nightly_head_reads_the_watermark_key_from_a_secret(label: str) -> None:
    # the nightly job refuses to run without a key: the head (where the driver runs) gets the key file from
    # a mounted Secret through REVIEWGEN_WATERMARK_KEY_FILE; the workers neither mount it nor name it
    spec = dict(ray_cluster_specs())[label]
    head = spec["headGroupSpec"]["template"]["spec"]
    secrets = {v["name"] for v in head["volumes"] if v.get("secret", {}).get("secretName")}
    (c,) = head["containers"]
    path = {e["name"]: e.get("value") for e in c.get("env", [])}.get("REVIEWGEN_WATERMARK_KEY_FILE")
    assert path, f"{label}: the head has no REVIEWGEN_WATERMARK_KEY_FILE"
    assert any(
        m["name"] in secrets and m.get("readOnly") and path.startswith(m["mountPath"].rstrip("/") + "/")
        for m in c["volumeMounts"]
    ), f"{label}: {path} is not on a read-only Secret mount"
    for group, pod in pod_specs(spec):
        if group != "head":
            assert not any("secret" in v for v in pod.get("volumes", [])), f"{label}/{group}"
    job = (
        load_one(KUBERAY / "raycronjob-nightly.yaml")["spec"]["jobTemplate"]
        if label == "raycronjob-nightly"
        else fallback_rayjob()["spec"]
    )
    # not in the runtime env: the workers' scorers would try to read a file they do not have
    assert "WATERMARK" not in job["runtimeEnvYAML"] and "--no-watermark" not in job["entrypoint"]


# --- Serve ---------------------------------------------------------------------------------


def test_serve_config_is_a_valid_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    cfg = load_one(CLUSTER / "serve_config.yaml")
    schema = ServeDeploySchema.model_validate(cfg)
    assert cfg["http_options"]["host"] == "127.0.0.1"
    (app,) = schema.applications
    assert app.import_path == "reviewgen.serve:app_builder"
    assert app.route_prefix == "/"
    deployments = {d["name"]: d for d in cfg["applications"][0]["deployments"]}
    assert set(deployments) == {"Ingress", "Scorer"}
    auto = deployments["Scorer"]["autoscaling_config"]
    assert 1 <= auto["min_replicas"] <= auto["max_replicas"]
    assert {"target_ongoing_requests", "upscale_delay_s", "downscale_delay_s"} <= set(auto)


def test_rayservice_embeds_the_serve_config_applications() -> None:
    from ray.serve.schema import ServeDeploySchema

    service = load_one(KUBERAY / "rayservice-scorer.yaml")["spec"]
    embedded = yaml.safe_load(service["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    assert embedded["applications"] == load_one(CLUSTER / "serve_config.yaml")["applications"]
    assert service["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    groups = {g["groupName"] for g in service["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups == {"cpu", "gpu"}


# --- fallback CronJob ----------------------------------------------------------------------


def test_fallback_cronjob_policy_and_rbac() -> None:
    docs = fallback_docs()
    cron = docs["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["timeZone"] == "Etc/UTC"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    (rule,) = docs["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert sorted(rule["verbs"]) == ["create", "get"]
    assert docs["RoleBinding"]["roleRef"]["name"] == docs["Role"]["metadata"]["name"]

    job = fallback_rayjob()
    assert job["kind"] == "RayJob" and job["metadata"]["name"] == "nightly-20260305"
    assert job["spec"]["jobId"] == "nightly-20260305"
    assert "--run-date 2026-03-05" in job["spec"]["entrypoint"]


def _run_fallback_script(tmp_path: Path, kubectl_body: str, run_date: str | None) -> subprocess.CompletedProcess[str]:
    """Run the CronJob's submit.sh with a stub kubectl that logs its calls to tmp_path."""
    data = fallback_docs()["ConfigMap"]["data"]
    (tmp_path / "rayjob-nightly.yaml").write_text(data["rayjob-nightly.yaml"], encoding="utf-8")
    (tmp_path / "submit.sh").write_text(data["submit.sh"], encoding="utf-8")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "kubectl"
    stub.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/calls"\n{kubectl_body}\n', encoding="utf-8")
    stub.chmod(0o755)
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "TEMPLATE": str(tmp_path / "rayjob-nightly.yaml"),
        "TMPDIR": str(tmp_path),
    }
    if run_date is not None:
        env["RUN_DATE"] = run_date
    return subprocess.run(["/bin/sh", str(tmp_path / "submit.sh")], env=env, capture_output=True, text=True, timeout=30)


def test_fallback_script_creates_the_dated_rayjob(tmp_path: Path) -> None:
    # The stub keeps a copy of what kubectl would create.
    body = 'if [ "$1" = create ]; then cp "$3" "' + str(tmp_path) + '/created.yaml"; fi; exit 0'
    res = _run_fallback_script(tmp_path, body, "2026-03-05")
    assert res.returncode == 0, res.stderr
    created = yaml.safe_load((tmp_path / "created.yaml").read_text(encoding="utf-8"))
    assert created["metadata"]["name"] == "nightly-20260305"
    assert created["spec"]["jobId"] == "nightly-20260305"
    assert "--run-date 2026-03-05" in created["spec"]["entrypoint"]
    assert "__" not in (tmp_path / "created.yaml").read_text(encoding="utf-8")
    assert (tmp_path / "calls").read_text().splitlines()[0].startswith("create -f ")


def test_fallback_script_defaults_to_todays_utc_date(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    res = _run_fallback_script(tmp_path, "exit 0", None)
    after = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    assert res.returncode == 0, res.stderr
    assert re.search(r"created RayJob nightly-(\d{8})", res.stdout).group(1) in {before, after}


def test_fallback_script_is_idempotent_when_the_date_already_ran(tmp_path: Path) -> None:
    # create fails (AlreadyExists), get finds it: success, and nothing else is attempted.
    res = _run_fallback_script(tmp_path, 'if [ "$1" = create ]; then exit 1; fi; exit 0', "2026-03-05")
    assert res.returncode == 0, res.stderr
    assert "already exists" in res.stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("create -f ") and calls[1] == "get rayjob nightly-20260305"
    assert len(calls) == 2


def test_fallback_script_fails_when_create_really_fails(tmp_path: Path) -> None:
    res = _run_fallback_script(tmp_path, "exit 1", "2026-03-05")
    assert res.returncode == 1
    assert "could not create RayJob nightly-20260305" in res.stderr


def test_fallback_script_rejects_a_malformed_date(tmp_path: Path) -> None:
    res = _run_fallback_script(tmp_path, "exit 0", "2026-3-5")
    assert res.returncode == 2
    assert not (tmp_path / "calls").exists()


# --- runtime env ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["runtime_env.yaml", "runtime_env.gpu.yaml"])
def test_runtime_env_parses_and_excludes_heavy_and_private_paths(name: str) -> None:
    from ray._private.runtime_env.packaging import _get_excludes
    from ray.runtime_env import RuntimeEnv

    cfg = load_one(CLUSTER / name)
    RuntimeEnv(**cfg)  # Ray's own field validation
    assert cfg["working_dir"] == "."
    assert all(isinstance(v, str) for v in cfg["env_vars"].values()), "env_vars must be strings"
    excluded = _get_excludes(ROOT, cfg["excludes"])
    for path in [".venv/lib/python3.11/site.py", ".git/HEAD", "runs/x/ckpt.pt", "reviewgen/__pycache__/a.pyc"]:
        assert excluded(ROOT / path), f"{name}: {path} would be uploaded"
    for path in ["reviewgen/models.py", "jobs/train.py", "cluster/serve_config.yaml", "pyproject.toml"]:
        assert not excluded(ROOT / path), f"{name}: {path} would be missing on the cluster"


def test_default_runtime_env_installs_nothing() -> None:
    cfg = load_one(CLUSTER / "runtime_env.yaml")
    assert not {"pip", "uv", "conda"} & set(cfg), "the cluster image already has the package"


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_base_user_and_no_secrets() -> None:
    import ray

    text = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray.__version__}-py311-gpu" in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"pip install --no-cache-dir \.", text)
    assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|SECRET|PASSWORD|KEY)", text, flags=re.M | re.I)
    lines = (CLUSTER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*", "the allow-list must start by excluding everything"
    assert not any(r.startswith(("!.venv", "!.git", "!data", "!runs")) for r in rules)


# --- scripts -------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_script_parses(script: str) -> None:
    res = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("script", ["cluster_up.sh", "cluster_down.sh", "submit.sh", "deploy_scorer.sh"])
def test_entry_scripts_are_executable(script: str) -> None:
    assert (SCRIPTS / script).stat().st_mode & stat.S_IXUSR


def _submit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RG_STATE_DIR"] = str(tmp_path / "state")
    return subprocess.run(
        ["bash", str(SCRIPTS / "submit.sh"), *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_submit_rejects_an_impossible_nightly_date(tmp_path: Path) -> None:
    res = _submit(tmp_path, "nightly", "2026-02-30")
    assert res.returncode != 0 and "real YYYY-MM-DD date" in res.stderr


def test_submit_without_a_cluster_says_how_to_start_one(tmp_path: Path) -> None:
    res = _submit(tmp_path, "nightly", "2026-03-05")
    assert res.returncode != 0
    assert "cluster_up.sh" in res.stderr and str(tmp_path / "state") in res.stderr


def test_cluster_down_is_a_no_op_when_nothing_runs(tmp_path: Path) -> None:
    env = {**os.environ, "RG_STATE_DIR": str(tmp_path / "never-started")}
    res = subprocess.run(
        ["bash", str(SCRIPTS / "cluster_down.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0 and "nothing to stop" in res.stdout
