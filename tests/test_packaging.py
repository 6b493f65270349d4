"""What a non-editable install (the Dockerfile's `pip install .`) ships: the catalog presets included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_presets_are_found_from_an_installed_wheel(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "reviewgen", src / "reviewgen", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("reviewgen-*.whl"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import reviewgen.generate.mapping as c; print(c.__file__); print(','.join(c.presets()));"
        "print(sorted(c.resolve_mapping('flipkart')))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(site)), out  # the installed copy, not the checkout
    assert out[1] == "bigbasket,flipkart"
    assert "product_id" in out[2] and "title" in out[2]
