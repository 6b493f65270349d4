"""Every deployable entrypoint in cluster/ and the Makefile parses with the real command-line parsers, names
presets that exist, and a nightly manifest's catalog validates against its preset (a wrong flag or a missing
preset would otherwise only show on the cluster, at 02:00)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq
import pytest
import typer
import yaml

from reviewgen.cli import app
from reviewgen.generate import catalog as cat
from reviewgen.generate.mapping import resolve_mapping

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
# shell and template substitutions made at submission time
SUBSTITUTIONS = {"$(date -u +%F)": "2026-01-01", "__RUN_DATE__": "2026-01-01", "__NAME__": "nightly-20260101"}
JOB_SCRIPT = re.compile(r"(?:^|/)jobs/(train|generate|serve)\.py$")


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, str) and "entrypoint:" in node:
        node = yaml.safe_load(node)  # a manifest embedded as text (the fallback CronJob's ConfigMap)
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _command(line: str) -> tuple[str, list[str]] | None:
    """(reviewgen command, its arguments) of a `python jobs/X.py ...` or `reviewgen X ...` command line."""
    for k, v in SUBSTITUTIONS.items():
        line = line.replace(k, v)
    words = shlex.split(line)
    for i, w in enumerate(words):
        m = JOB_SCRIPT.search(w)
        if m:
            return m.group(1), words[i + 1 :]
        if Path(w).name == "reviewgen" and i + 1 < len(words):
            return words[i + 1], words[i + 2 :]
    return None


def manifest_entrypoints() -> list[tuple[str, str, list[str]]]:
    out = []
    for f in sorted((ROOT / "cluster").rglob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            for node in _walk(doc):
                for key in ("entrypoint", "command", "args"):
                    value = node.get(key)
                    lines = value if isinstance(value, list) else [value]
                    for line in lines:
                        cmd = _command(line) if isinstance(line, str) else None
                        if cmd:
                            out.append((f"{f.relative_to(ROOT)}:{key}", *cmd))
    return out


def makefile_entrypoints() -> list[tuple[str, str, list[str]]]:
    """The cluster targets' commands, as `make -n` prints them (nothing runs)."""
    targets = ["submit-train", "submit-nightly"]
    text = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "-W", ".venv/.installed", *targets, "DATE=2026-01-01"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = []
    for line in text.splitlines():
        m = re.search(r"cluster/scripts/submit\.sh (train|generate|nightly) (.*)$", line)
        if not m:
            continue
        args = shlex.split(m.group(2))
        if m.group(1) == "nightly":  # submit.sh nightly DATE ARGS -> jobs/generate.py --run-date DATE ARGS
            out.append((f"Makefile:{m.group(1)}", "generate", ["--run-date", args[0], *args[1:]]))
        else:
            out.append((f"Makefile:{m.group(1)}", m.group(1), args))
    return out


ENTRYPOINTS = manifest_entrypoints() + makefile_entrypoints()


def test_every_deployable_entrypoint_was_found():
    where = {w.split(":")[0] for w, _, _ in ENTRYPOINTS}
    assert {
        "cluster/kuberay/rayjob-train.yaml",
        "cluster/kuberay/raycronjob-nightly.yaml",
        "cluster/kuberay/cronjob-nightly-fallback.yaml",
        "Makefile",
    } <= where
    assert {c for _, c, _ in ENTRYPOINTS} >= {"train", "generate"}


@pytest.mark.parametrize("where,command,args", ENTRYPOINTS, ids=[f"{w}:{c}" for w, c, _ in ENTRYPOINTS])
def test_entrypoint_parses_with_the_real_parser(where, command, args):
    group = typer.main.get_command(app)
    ctx = group.make_context("reviewgen", [command, *args], resilient_parsing=False)
    sub = group.get_command(ctx, command)
    assert sub is not None, f"{where}: no `reviewgen {command}` command"
    # parses and type-checks every option, rejects unknown ones; does not run the command
    sub.make_context(command, list(args), parent=ctx)
    if "--preset" in args:
        resolve_mapping(args[args.index("--preset") + 1])


def _nightly_catalogs() -> list[tuple[str, Path, str | None]]:
    out = []
    for where, command, args in ENTRYPOINTS:
        if command != "generate" or "--catalog" not in args:
            continue
        preset = args[args.index("--preset") + 1] if "--preset" in args else None
        path = Path(args[args.index("--catalog") + 1])
        local = SAMPLE / path.name if not path.exists() else path
        out.append((where, local, preset))
    return out


@pytest.mark.parametrize("where,catalog,preset", _nightly_catalogs(), ids=lambda v: str(v).split("/")[-1])
def test_nightly_catalog_validates_against_its_preset(where, catalog, preset):
    assert catalog.is_file(), f"{where}: no local copy of its catalog {catalog.name} to check"
    rows = pq.read_table(catalog).slice(0, 200).to_pylist()
    recs = cat.validate_records(rows, resolve_mapping(preset), source_file=str(catalog))
    ok = sum(r["status"] == "ok" for r in recs)
    reasons = sorted({r.get("reason") for r in recs if r["status"] != "ok"})
    assert ok >= 0.9 * len(recs), f"{where}: only {ok}/{len(recs)} rows valid under preset {preset!r}: {reasons}"
