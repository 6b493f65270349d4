"""Storage roots as pyarrow filesystems: local and NFS paths, or URIs (s3://, gs://, hdfs://), and the one
way the package writes a file that a reader must never see half-written (`write_atomic`)."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"  # the name of a file `write_atomic` has not finished; a killed writer may leave one


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
    """Write a UTF-8 file atomically, creating its parent directories."""
    write_atomic(fs, path, text)


def write_atomic(fs: pafs.FileSystem, path: str, data: str | bytes | pa.Table) -> None:
    """Write text (UTF-8), bytes or a table (as parquet) to a temp name beside `path`, then rename it there.

    Readers see the old file or the whole new one, never a part: the rename is atomic on local disks and
    NFS, and object stores publish an object only once it is complete. The parent directories are created;
    a failed write removes its temp file."""
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
    try:
        if isinstance(data, pa.Table):
            pq.write_table(data, tmp, filesystem=fs)
        else:
            with fs.open_output_stream(tmp) as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        fs.move(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def write_local_atomic(path: str | Path, data: str | bytes | pa.Table) -> None:
    """`write_atomic` for a local (or NFS) path."""
    write_atomic(pafs.LocalFileSystem(), str(Path(path).resolve()), data)


@contextlib.contextmanager
def staged_dir(dst: str | Path) -> Iterator[Path]:
    """A new local directory, built under a temp name beside `dst`, that replaces `dst` in one rename when the
    block ends without error (and is removed when it raises): readers see the old directory or the whole new
    one, never a part."""
    dst = Path(dst)
    tmp = dst.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{dst.name}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
