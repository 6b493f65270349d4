"""Reading and writing user tables (parquet, CSV, JSONL) with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reviewgen.core.errors import InputError, MissingInputError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def table_format(path: str | Path) -> str:
    """parquet, csv or jsonl, from the file extension."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unsupported file type; use one of {sorted(FORMATS)}")
    return fmt


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a parquet, CSV or JSONL file; raise InputError (MissingInputError when it is absent) naming the file."""
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"input file not found: {p}")
    fmt = table_format(p)
    try:
        if fmt == "parquet":
            return pd.read_parquet(p)
        if fmt == "csv":
            return pd.read_csv(p)
        return pd.read_json(p, lines=True)
    except Exception as e:  # pyarrow/pandas raise many types for corrupt input
        raise InputError(f"{p}: cannot read as {fmt} ({type(e).__name__}: {e})") from e


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table in the format of the file extension (parent directories created)."""
    p = Path(path)
    fmt = table_format(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(p, index=False)
    elif fmt == "csv":
        df.to_csv(p, index=False)
    else:
        df.to_json(p, orient="records", lines=True, force_ascii=False)
    return p
