"""Catalog contract: column mappings (presets on the carried samples) and per-row validation (no Ray)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reviewgen.data.corpus import sample_data_dir
from reviewgen.generate import catalog as cat
from reviewgen.generate import mapping as cm


def _one(row: dict, mapping=None, **kw) -> dict:
    return cat.validate_records([row], cm.resolve_mapping(mapping), source_file="f.parquet", **kw)[0]


def test_good_row_is_ok_and_cleaned():
    r = _one(
        {
            "product_id": 17,
            "title": "Nice\x00 lamp\x07\n  &amp; shade",
            "price": "Rs 1,299.50",
            "category": "Home",
            "brand": None,
        }
    )
    assert r["status"] == "ok" and r["reason"] is None
    assert r["product_id"] == "17"
    assert r["title"] == "Nice lamp & shade"
    assert r["price"] == pytest.approx(1299.5)
    assert r["language"] == "en" and r["attr_hash"] and r["raw"] is None


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"product_id": None, "title": "x"}, "missing_id"),
        ({"product_id": float("nan"), "title": "x"}, "missing_id"),
        ({"product_id": "  ", "title": "x"}, "missing_id"),
        ({"product_id": "a", "title": None}, "missing_title"),
        ({"product_id": "a", "title": "\x00\x01"}, "missing_title"),
        ({"product_id": "a", "title": "x" * 100_000}, "title_too_long"),
        ({"product_id": "a", "title": b"caf\xe9 latin-1"}, "invalid_utf8:title"),
        ({"product_id": "a", "title": 12345}, "invalid_type:title"),
        ({"product_id": ["a"], "title": "x"}, "invalid_type:product_id"),
        ({"product_id": "a", "title": "x", "price": "cheap"}, "invalid_price"),
        ({"product_id": "a", "title": "x", "price": -3.0}, "invalid_price"),
        ({"product_id": "a"}, "missing_column:title"),
    ],
)
def test_bad_rows_rejected_with_reason(row, reason):
    r = _one(row)
    assert r["status"] == "rejected"
    assert r["reason"] == reason
    assert r["raw"] and len(r["raw"]) < 5000  # raw row kept for the rejects table, long values cut


def test_valid_utf8_bytes_title_is_decoded():
    assert _one({"product_id": "a", "title": "café".encode()})["title"] == "café"


def test_language_and_rating_columns():
    ok = _one(
        {"product_id": "a", "title": "x", "lang": "ZH", "stars": 4.0}, language_column="lang", rating_column="stars"
    )
    assert (ok["status"], ok["language"], ok["target_rating"]) == ("ok", "zh", 4)
    row = {"product_id": "a", "title": "x", "lang": "fr"}
    assert _one(row, language_column="lang")["reason"] == "unsupported_language"
    assert _one({"product_id": "a", "title": "x", "stars": 9}, rating_column="stars")["reason"] == "invalid_rating"
    assert _one({"product_id": "a", "title": "x", "stars": None}, rating_column="stars")["target_rating"] is None


def test_duplicates_keep_first_occurrence():
    recs = cat.validate_records(
        [
            {"product_id": "a", "title": "first"},
            {"product_id": "b", "title": None},
            {"product_id": "a", "title": "second"},
            {"product_id": "b", "title": "b ok"},
        ],
        cm.resolve_mapping(None),
        source_file="f",
    )
    df = cat.mark_duplicates(pd.DataFrame(recs))
    # a rejected first row does not block a later valid one: duplicates are judged among valid rows
    assert df["reason"].fillna("").tolist() == ["", "missing_title", "duplicate_id", ""]
    assert df.loc[0, "title"] == "first"


def test_attr_hash_tracks_attributes():
    a = _one({"product_id": "a", "title": "x", "price": 1.0})["attr_hash"]
    assert a == _one({"product_id": "a", "title": "x", "price": 1.0})["attr_hash"]
    assert a != _one({"product_id": "a", "title": "x", "price": 2.0})["attr_hash"]
    assert a != _one({"product_id": "a", "title": "y", "price": 1.0})["attr_hash"]


def test_mapping_errors_name_the_problem(tmp_path):
    with pytest.raises(cm.CatalogError, match="unknown fields"):
        cm.resolve_mapping({"columns": {"product_id": "a", "title": "b", "colour": "c"}})
    with pytest.raises(cm.CatalogError, match="required field 'title'"):
        cm.resolve_mapping({"columns": {"product_id": "a"}})
    with pytest.raises(cm.CatalogError, match="unknown transform"):
        cm.resolve_mapping({"product_id": "a", "title": {"column": "t", "transform": "nope"}})
    with pytest.raises(cm.CatalogError, match="preset"):
        cm.resolve_mapping("no_such_preset")
    f = tmp_path / "m.yaml"
    f.write_text("columns:\n  product_id: sku\n  title: name\n")
    assert cm.resolve_mapping(str(f))["title"] == [{"column": "name", "transform": None}]


def test_category_tree_first():
    assert cm.category_tree_first('["Home Furnishing >> Curtains & Accessories >> Curtains"]') == "Home Furnishing"
    assert cm.category_tree_first('["Watches >> Wrist Watches"') == "Watches"  # truncated JSON
    assert cm.category_tree_first(None) is None


def test_presets_map_the_carried_samples():
    assert {"bigbasket", "flipkart"} <= set(cm.presets())
    bb = pd.read_parquet(sample_data_dir() / "catalog_bigbasket_products.parquet").head(20)
    recs = cat.validate_records(bb.to_dict("records"), cm.resolve_mapping("bigbasket"), source_file="bb")
    assert [r["product_id"] for r in recs] == [str(int(i)) for i in bb["index"]]
    assert [r["title"] for r in recs] == [cat.clean_text(t) for t in bb["product"]]
    assert all(r["status"] == "ok" for r in recs)
    assert recs[0]["price"] == pytest.approx(float(bb["sale_price"].iloc[0]))

    fk = pd.read_parquet(sample_data_dir() / "catalog_flipkart_sample_1050.parquet").head(20)
    recs = cat.validate_records(fk.to_dict("records"), cm.resolve_mapping("flipkart"), source_file="fk")
    assert [r["product_id"] for r in recs] == fk["uniq_id"].tolist()
    assert all(r["status"] == "ok" for r in recs)
    first_levels = [t.split(">>")[0].strip(' ["') for t in fk["product_category_tree"]]
    assert [r["category"] for r in recs] == first_levels
    assert recs[0]["description"]


def test_flipkart_falls_back_to_pid():
    r = _one({"uniq_id": None, "pid": "PID1", "product_name": "x"}, "flipkart")
    assert (r["status"], r["product_id"]) == ("ok", "PID1")


def test_generate_cli_takes_several_catalogs_per_flag_and_repeated_flags(monkeypatch):
    from typer.testing import CliRunner

    import reviewgen.generate.pipeline as pipeline
    from reviewgen.cli import app

    calls = []
    monkeypatch.setattr(pipeline, "run_generation", lambda model, cats, out, cfg, **kw: calls.append((cats, cfg, kw)))
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            "m",
            "--catalog",
            "a.parquet",
            "b/",
            "--catalog",
            "s3://x/c",
            "--out",
            "o",
            "--seed",
            "4",
            "--keep-broken-text",
            "--preset",
            "bigbasket",
            "--no-watermark",
        ],
    )
    assert res.exit_code == 0, res.output
    cats, cfg, kw = calls[0]
    assert cats == ["a.parquet", "b/", "s3://x/c"]
    assert cfg.sampling.seed == 4 and cfg.filter.reject_broken_text is False and cfg.catalog.mapping == "bigbasket"
    assert cfg.sampling.reviews_per_product == 3 and kw["force"] is False
    res = CliRunner().invoke(app, ["generate", "--model", "m", "--catalog", "a", "--out", "o", "--no-such-flag"])
    assert res.exit_code == 2 and len(calls) == 1


def _piece(path, mapping=None, **kw):
    md = pq.ParquetFile(path).metadata
    return (
        pa.concat_tables(cat.read_piece(str(path), 0, 0, 0, None, mapping or cm.resolve_mapping(None), **kw))
        if md.num_row_groups
        else None
    )


def test_read_piece_rejects_a_corrupt_file_but_a_validation_bug_raises(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(
        pa.table(
            {"product_id": [f"p{i}" for i in range(2000)], "title": [f"lamp number {i} " * 5 for i in range(2000)]}
        ),
        good,
        compression="snappy",
    )
    t = _piece(good)
    assert t.num_rows == 2000 and t["source_row"].to_pylist() == list(range(2000))
    assert set(t["status"].to_pylist()) == {"ok"}
    # the footer survives, the data pages do not: the rest of the row group becomes one unreadable row
    raw = bytearray(good.read_bytes())
    raw[200:6000] = b"\xff" * 5800
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(raw))
    t = _piece(bad)
    assert t["reason"].to_pylist()[-1] == "unreadable_file" and t["source_file"].to_pylist()[-1] == str(bad)
    # a bug (here: a mapping missing a field) is not a read error: it raises
    broken = {k: v for k, v in cm.resolve_mapping(None).items() if k != "price"}
    with pytest.raises(KeyError):
        _piece(good, broken)


def test_run_identity_and_start_state_without_ray(tmp_path):
    import json

    import pyarrow.fs as pafs

    from reviewgen.generate import run
    from reviewgen.generate.config import GenerateConfig
    from reviewgen.infra.storage import write_atomic

    fs, part = pafs.LocalFileSystem(), str(tmp_path / "run_date=2024-01-01")
    inputs = [{"path": "a.parquet", "checksum": "sha256:1"}]
    settings = run.identity_settings(GenerateConfig(), cm.resolve_mapping(None), [0.2] * 5, None)
    rid = run.run_identity("2024-01-01", "v1", settings, inputs)
    assert rid == run.run_identity("2024-01-01", "v1", dict(settings), list(inputs))
    assert rid != run.run_identity("2024-01-01", "v1", dict(settings, seed=1), inputs)
    assert run.start_state(fs, part, rid, force=False) == ("resume", None)  # nothing there yet
    write_atomic(fs, run.join(part, "run.json"), json.dumps({"run_id": "other"}).encode())
    assert run.start_state(fs, part, rid, force=False)[0] == "fresh" and not (tmp_path / "run_date=2024-01-01").exists()
    write_atomic(fs, run.join(part, "manifest.json"), json.dumps({"run_id": rid, "summary": {}}).encode())
    write_atomic(fs, run.join(part, "_SUCCESS"), b"")
    assert run.start_state(fs, part, rid, force=False)[0] == "noop"
    with pytest.raises(run.GenerationError, match="--force"):
        run.start_state(fs, part, "another", force=False)
    # a shard's counts live in its reviews file's footer
    schema = pa.schema([("x", pa.int64())]).with_metadata({run.STATS_KEY: json.dumps({"accepted": 2}).encode()})
    write_atomic(fs, run.shard_file(part, "reviews", 7), pa.table({"x": [1, 2]}, schema=schema))
    assert run.shard_stats(fs, part) == {7: {"accepted": 2}}
    assert {run.shard_of(f"p{i}", 4) for i in range(50)} == {0, 1, 2, 3}
    assert run.review_id(rid, "p1", 0) == run.review_id(rid, "p1", 0) != run.review_id(rid, "p1", 1)
