"""The one atomic writer: text, bytes and tables land whole, replace the old file, and a failed write leaves
neither a temp file nor a changed target."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from reviewgen.evaluate.jsonio import write_json_atomic
from reviewgen.infra.storage import TMP_PREFIX, read_text, staged_dir, write_atomic, write_local_atomic, write_text


def test_writes_text_bytes_and_tables_creating_parents(tmp_path):
    fs = pafs.LocalFileSystem()
    write_atomic(fs, str(tmp_path / "a" / "b.txt"), "héllo")
    write_atomic(fs, str(tmp_path / "a" / "c.bin"), b"\x00\x01")
    write_atomic(fs, str(tmp_path / "d" / "t.parquet"), pa.table({"x": [1, 2]}))
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "a" / "c.bin").read_bytes() == b"\x00\x01"
    assert pq.read_table(tmp_path / "d" / "t.parquet").column("x").to_pylist() == [1, 2]
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


def test_replaces_the_old_file_and_write_text_goes_through_it(tmp_path):
    fs, path = pafs.LocalFileSystem(), str(tmp_path / "log.jsonl")
    write_text(fs, path, "one\n")
    write_text(fs, path, "one\ntwo\n")
    assert read_text(fs, path) == "one\ntwo\n"
    write_local_atomic(tmp_path / "rel.txt", "x")
    assert (tmp_path / "rel.txt").read_text() == "x"
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "m.json", "rel.txt"]


def test_a_failed_write_leaves_the_target_and_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_local_atomic(target, 12345)  # not text, bytes or a table: fails after the temp file is open
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_staged_directory_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    dst = tmp_path / "model"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    with staged_dir(dst) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TMP_PREFIX) and not (dst / "new.txt").exists()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in dst.iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError), staged_dir(dst) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in dst.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
