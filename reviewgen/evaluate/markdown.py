"""Markdown tables of the evaluation report: one cell per metric entry (mean ± sd over seeds when there are
several), null for a missing or non-finite value."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _cell(entry: Any) -> str:
    if entry is None:
        return "null"
    if isinstance(entry, dict):
        if entry.get("mean") is None:
            return "null"
        if len(entry.get("values", [])) > 1:
            return f"{entry['mean']:.4f} ± {entry['sd']:.4f}"
        return f"{entry['mean']:.4f}"
    if isinstance(entry, float):
        return f"{entry:.4f}" if np.isfinite(entry) else "null"
    return str(entry)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)
