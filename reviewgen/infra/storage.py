"""Storage roots as pyarrow filesystems: local and NFS paths, or URIs (s3://, gs://, hdfs://)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it); local paths come back absolute."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file or directory exists."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(fs: pafs.FileSystem, path: str) -> str | None:
    """A UTF-8 file's contents, or None when it does not exist."""
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    """Write a UTF-8 file, creating its parent directories."""
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))
