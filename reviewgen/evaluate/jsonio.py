"""JSON files of the evaluation: its output (metrics.json, a refitted calibration.json), numpy-aware and
atomic, and the training history (metrics.jsonl) it reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from reviewgen.infra.storage import write_local_atomic


def json_default(o: Any) -> Any:
    """`json.dumps` fallback for numpy scalars and arrays and paths."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically (`reviewgen.infra.storage.write_atomic`), so readers
    never see half a file."""
    write_local_atomic(path, json.dumps(obj, indent=2, default=json_default))


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl training history ([] when absent); names the line that is not JSON."""
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i + 1} is not JSON ({e})") from e
    return rows
