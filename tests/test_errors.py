"""The command line's one error path: the project's named errors print as one line; any other exception is a
bug, printed as one line naming the log file that keeps its traceback."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import reviewgen.data.corpus as corpus
from reviewgen.cli import app
from reviewgen.cli.common import is_user_error
from reviewgen.core.config import ConfigError
from reviewgen.core.errors import MissingInputError, ReviewgenError
from reviewgen.data.sources import DataError
from reviewgen.infra.tracking import TrackingError

PKG = Path(__file__).resolve().parents[1] / "reviewgen"


@pytest.fixture
def quiet_cli(tmp_path, monkeypatch):
    """A CliRunner in quiet mode, its run logs under tmp_path/logs."""
    monkeypatch.setenv("RG_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("RG_VERBOSE", raising=False)
    return lambda *args: CliRunner().invoke(app, list(args))


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("train.mle_steps: expected an integer"),
        DataError("reviews.parquet: missing column(s) ['text']"),
        MissingInputError("input file not found: reviews.csv"),
        TrackingError("install the tracking extra"),
    ],
)
def test_a_named_error_prints_one_line_without_a_traceback(quiet_cli, monkeypatch, tmp_path, error):
    def prepare(*args, **kwargs):
        raise error

    monkeypatch.setattr(corpus, "prepare", prepare)
    r = quiet_cli("prepare", "--out", str(tmp_path / "out"), "--input", str(tmp_path))
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and lines[0].startswith(f"error: {error}"), r.output
    assert "Traceback" not in r.output and type(error).__name__ not in r.output


def test_a_real_missing_input_is_a_named_error(quiet_cli, tmp_path):
    missing = tmp_path / "no-such.parquet"
    r = quiet_cli("prepare", "--out", str(tmp_path / "out"), "--input", str(missing))
    assert r.exit_code == 2, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in r.output


def _internal_helper():
    raise ValueError("an internal invariant broke")


def test_an_internal_value_error_prints_one_line_naming_the_log_with_its_traceback(quiet_cli, monkeypatch, tmp_path):
    monkeypatch.setattr(corpus, "prepare", lambda *a, **k: _internal_helper())
    r = quiet_cli("prepare", "--out", str(tmp_path / "out"), "--input", str(tmp_path))
    assert r.exit_code == 1, r.output
    lines = _lines(r.output)
    assert len(lines) == 1 and "Traceback" not in r.output
    assert lines[0].startswith("error: ValueError: an internal invariant broke")
    found = re.search(r"\(full log: (.+\.log)\)", lines[0])
    assert found, lines[0]
    log = Path(found.group(1))
    assert log.parent == (tmp_path / "logs").resolve()
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "_internal_helper" in text
    assert "ValueError: an internal invariant broke" in text


def test_verbose_lets_an_internal_error_propagate(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus, "prepare", lambda *a, **k: _internal_helper())
    r = CliRunner().invoke(app, ["--verbose", "prepare", "--out", str(tmp_path / "out"), "--input", str(tmp_path)])
    assert r.exit_code == 1 and isinstance(r.exception, ValueError)


def test_usage_errors_stay_clicks():
    r = CliRunner().invoke(app, ["prepare", "--no-such-flag"])
    assert r.exit_code == 2 and "No such option" in r.output


def _named_errors() -> list[tuple[str, str]]:
    """(module, class) of every class named *Error defined in the package."""
    out = []
    for f in sorted(PKG.rglob("*.py")):
        module = ".".join(f.relative_to(PKG.parent).with_suffix("").parts)
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                out.append((module, node.name))
    return out


def test_every_named_error_is_a_user_error():
    found = _named_errors()
    assert len(found) >= 15
    not_user = []
    for module, name in found:
        cls = getattr(importlib.import_module(module), name)
        if not is_user_error(cls.__new__(cls)):
            not_user.append(f"{module}.{name}")
    assert not not_user, f"named errors the CLI would treat as bugs: {not_user}"
    assert not is_user_error(ValueError("x")) and not is_user_error(FileNotFoundError("x"))
    assert issubclass(ConfigError, ReviewgenError) and issubclass(ConfigError, ValueError)
