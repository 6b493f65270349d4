"""The package's shape: stages import only downwards, core imports no Ray, nothing imports the trainer
to generate or score, commands import only the stages they run, and there are no import cycles
(function-local imports included)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "reviewgen"
# A module may import its own layer and the layers listed here, nothing else of the package.
ALLOWED = {
    "core": {"core"},
    "infra": {"infra"},
    "data": {"data", "core"},
    "score": {"score", "core"},
    "train": {"train", "score", "data", "core", "infra"},
    "generate": {"generate", "score", "data", "core", "infra"},
    "serve": {"serve", "score", "core", "infra"},
    "evaluate": {"evaluate", "score", "data", "core", "infra"},
}
# Modules every layer may import (infra included): they import nothing of the package themselves. The
# atomic write is one helper for every writer, core's model-directory records included.
EVERYWHERE = {"reviewgen.core.errors", "reviewgen.infra.storage"}
# The command modules (cli/) sit on top: each parses its options and calls the stages its command runs, so
# beside the shared base (core, infra, cli.common) it imports only those stages' layers.
COMMAND_STAGES = {
    "reviewgen.cli": {"cli"},  # registers the commands
    "reviewgen.cli.common": set(),
    "reviewgen.cli.calibrate": {"data", "score"},
    "reviewgen.cli.data": {"data"},
    "reviewgen.cli.demo": {"demo"},
    "reviewgen.cli.evaluate": {"evaluate", "train"},
    "reviewgen.cli.generate": {"generate"},
    "reviewgen.cli.model": {"data", "score"},
    "reviewgen.cli.serve": {"serve"},
    "reviewgen.cli.train": {"train"},
}
COMMAND_BASE = {"core", "infra"}
# The trainer, its loop and its drivers: only `reviewgen train` runs them; another command that needs a model
# trained calls a train-stage entry made for it (the evaluation's out-of-family generator: train.twin).
TRAINING_INTERNALS = (
    "reviewgen.train.trainer",
    "reviewgen.train.local",
    "reviewgen.train.loop",
    "reviewgen.train.distributed",
    "reviewgen.train.ray_worker",
    "reviewgen.train.batches",
    "reviewgen.train.export",
)


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        out[".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(name.split(".")[: -node.level] + [node.module])
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_stages_import_only_downwards():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in ALLOWED:
            continue  # the CLI, demo and package root sit on top
        for t in _imports(name, path, set(mods)):
            layer = t.split(".")[1] if t.count(".") else None
            if layer is not None and layer not in ALLOWED[parts[1]] and t not in EVERYWHERE:
                bad.append(f"{name} -> {t}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_commands_import_only_the_stages_they_run():
    mods = _modules()
    commands = sorted(m for m in mods if m == "reviewgen.cli" or m.startswith("reviewgen.cli."))
    assert set(commands) == set(COMMAND_STAGES), "a new command module: list its stages in COMMAND_STAGES"
    bad = []
    for name in commands:
        allowed = COMMAND_STAGES[name] | COMMAND_BASE
        for t in _imports(name, mods[name], set(mods)):
            layer = t.split(".")[1] if t.count(".") else None
            if t == "reviewgen.cli.common" or t in EVERYWHERE or layer in allowed:
                continue
            bad.append(f"{name} -> {t}")
    assert not bad, "a command imports a stage it does not run:\n" + "\n".join(sorted(bad))


def test_only_the_train_command_runs_the_trainer():
    mods = _modules()
    commands = sorted(m for m in mods if m.startswith("reviewgen.cli.") and m != "reviewgen.cli.train")
    bad = [
        f"{name} -> {t}"
        for name in commands
        for t in sorted(_imports(name, mods[name], set(mods)))
        if t.startswith(TRAINING_INTERNALS)
    ]
    assert not bad, "a command runs the trainer's internals itself:\n" + "\n".join(bad)


def test_modules_every_layer_imports_import_nothing_of_the_package():
    mods = _modules()
    for name in EVERYWHERE:
        assert _imports(name, mods[name], set(mods)) == set(), name


def test_no_import_cycles():
    mods = _modules()
    # importing an ancestor package from inside it is not a cycle (Python runs the __init__ first)
    edges = {m: {t for t in _imports(m, p, set(mods)) if not m.startswith(t + ".")} for m, p in mods.items()}
    done: set[str] = set()

    def find(m: str, path: list[str]) -> list[str] | None:
        for t in sorted(edges[m]):
            if t in path:
                return path[path.index(t) :] + [t]
            if t not in done:
                found = find(t, path + [t])
                if found:
                    return found
        done.add(m)
        return None

    for m in sorted(mods):
        cycle = find(m, [m])
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("layer", ["reviewgen.score", "reviewgen.generate", "reviewgen.serve", "reviewgen.core"])
def test_scoring_and_generation_do_not_import_the_trainer(layer):
    names = sorted(m for m in _modules() if m == layer or m.startswith(layer + "."))
    code = (
        "import importlib, json, sys\n"
        f"for m in {names!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('reviewgen.train') or m == 'ray.train'"
        " or (m == 'ray' and " + repr(layer == "reviewgen.core") + "))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
