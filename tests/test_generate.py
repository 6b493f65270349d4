"""Ray Data generation pipeline: accounting of bad rows, no-op rerun/--force, resume after an interrupted
run, determinism, the shared catalog presets, and --since (real local Ray, tiny model)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from reviewgen.cli import app
from reviewgen.data.corpus import sample_data_dir
from reviewgen.generate.config import GenerateConfig, load_generate_config
from reviewgen.generate.pipeline import run_generation
from reviewgen.generate.results import RunCounts, RunSummary, RunTimings
from reviewgen.generate.run import GenerationError, review_id, summary_table

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
DATE = "2024-05-01"
QUIET = dict(log=lambda *_: None)


def cfg(rpp: int = 2, seed: int = 0, pps: int | None = None, actors: int | None = None, **dotted) -> GenerateConfig:
    """A job config; the tiny test model emits partial UTF-8 bytes in almost every review, so tests that
    need accepted reviews keep them (broken text allowed); the --since test runs the default guard."""
    return load_generate_config(
        None,
        {
            "sampling.reviews_per_product": rpp,
            "sampling.seed": seed,
            "sharding.products_per_shard": pps,
            "sharding.num_actors": actors,
            "filter.reject_broken_text": False,
            **dotted,
        },
    )


def _products(n: int, start: int = 0) -> pd.DataFrame:
    cats = ["Electronics", "Clothing", "Kitchen"]
    return pd.DataFrame(
        {
            "product_id": [f"p{i:03d}" for i in range(start, start + n)],
            "title": [f"Wireless speaker model {i}" for i in range(start, start + n)],
            "category": [cats[i % 3] for i in range(start, start + n)],
            "price": [10.0 + i for i in range(start, start + n)],
        }
    )


def _reviews(part: Path) -> pd.DataFrame:
    return pd.read_parquet(part / "reviews").sort_values("review_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("messy")
    good = pd.DataFrame(
        {
            "product_id": ["g1", "g2", None, "g4", "g1", "g6", "g7", "g8"],
            "title": [
                "Steel water bottle",
                "Cotton kurta",
                "No id here",
                None,
                "Duplicate of g1",
                "x" * 100_000,
                "Desk lamp\x00 with\x07 dimmer\x1b",
                "Rice cooker",
            ],
            "category": ["Kitchen"] * 8,
            "brand": ["B"] * 8,
            "price": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        }
    )
    good.to_parquet(d / "a_good.parquet")
    # title as a binary column: one invalid UTF-8 (latin-1 bytes), one valid; price as strings
    pq.write_table(
        pa.table(
            {
                "product_id": ["b1", "b2", "b3"],
                "title": pa.array([b"caf\xe9 cr\xe8me", "Tea kettle".encode(), b"Masala chai"], pa.binary()),
                "price": ["12.50", "cheap", "Rs 99"],
            }
        ),
        d / "b_types.parquet",
    )
    pd.DataFrame({"product_id": ["n1", "n2"], "title": [123, 456]}).to_parquet(d / "c_numeric_title.parquet")
    (d / "d_broken.parquet").write_bytes(b"PAR1 this is not a parquet file at all")
    files = [str(d / f) for f in ("a_good.parquet", "b_types.parquet", "c_numeric_title.parquet", "d_broken.parquet")]
    return {"dir": d, "files": files, "rows": 8 + 3 + 2 + 1}


@pytest.fixture(scope="module")
def messy_run(ray_local, tiny_model, messy, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("out_messy")
    summary = run_generation(tiny_model, messy["files"], out, cfg(seed=1), run_date=DATE, **QUIET)
    return {"out": out, "summary": summary, "part": out / f"run_date={DATE}"}


def test_every_input_row_accounted_for(messy, messy_run):
    c = messy_run["summary"].counts
    assert c.products_in == messy["rows"]
    assert c.products_valid + c.products_rejected == c.products_in
    assert c.catalog_rejects_by_reason == {
        "missing_id": 1,
        "missing_title": 1,
        "duplicate_id": 1,
        "title_too_long": 1,
        "invalid_utf8:title": 1,
        "invalid_price": 1,
        "invalid_type:title": 2,
        "unreadable_file": 1,
    }
    assert c.products_valid == 5  # g1, g2, g7 (control chars cleaned), g8, b3 ("Rs 99" parsed)
    rej = pd.read_parquet(messy_run["part"] / "rejects", filters=[("stage", "in", ["read", "catalog"])])
    assert len(rej) == c.products_rejected and rej["source_row"].notna().all()
    broken = rej[rej["reason"] == "unreadable_file"]
    assert broken["source_file"].str.endswith("d_broken.parquet").all() and broken["stage"].eq("read").all()
    dup = rej[rej["reason"] == "duplicate_id"]
    assert dup["product_id"].tolist() == ["g1"] and "Duplicate of g1" in dup["raw"].iloc[0]
    assert rej[rej["stage"] == "catalog"]["raw"].notna().all()


def test_good_rows_generate_reviews_with_contract(messy_run):
    part = messy_run["part"]
    prods = pd.read_parquet(part / "products")
    assert sorted(prods["product_id"]) == ["b3", "g1", "g2", "g7", "g8"]
    gen = pd.read_parquet(part / "reviews")
    filt = pd.read_parquet(part / "rejects", filters=[("stage", "=", "filter")])
    assert len(gen) + len(filt) == 5 * 2  # every generated review is accepted or rejected with a reason
    assert messy_run["summary"].counts.reviews_generated == 10
    assert len(gen) > 0 and filt["reason"].notna().all()
    for col in (
        "product_id",
        "review_id",
        "rating",
        "text",
        "score",
        "model_version",
        "run_id",
        "seed",
        "generated_at",
        "language",
    ):
        assert gen[col].notna().all(), col
    assert gen["review_id"].is_unique
    assert gen["rating"].between(1, 5).all() and gen["score"].between(0, 1).all()
    run_id = messy_run["summary"].run_id
    ids = zip(gen["review_id"], gen["product_id"], gen["review_index"])
    assert all(r == review_id(run_id, p, i) for r, p, i in ids)
    title = gen.loc[gen["product_id"] == "g7", "title"]
    assert title.empty or title.iloc[0] == "Desk lamp with dimmer"
    man = json.loads((part / "manifest.json").read_text())
    assert (part / "_SUCCESS").exists() and man["run_id"] == run_id
    assert {f["path"].rsplit("/", 1)[-1] for f in man["inputs"]} >= {"a_good.parquet", "d_broken.parquet"}
    assert all(f["checksum"].startswith("sha256:") for f in man["inputs"])
    assert man["summary"]["timings_s"]["generate_stage"] > 0
    assert man["summary"] == messy_run["summary"].to_dict()  # the returned summary is what manifest.json holds


def test_second_run_is_noop_and_force_rewrites(tiny_model, messy, messy_run):
    part = messy_run["part"]
    before = _reviews(part)
    stamp = (part / "_SUCCESS").stat().st_mtime_ns
    again = run_generation(tiny_model, messy["files"], messy_run["out"], cfg(seed=1), run_date=DATE, **QUIET)
    # the no-op summarises the finished run: its summary read back from manifest.json, noop set
    assert again == dataclasses.replace(messy_run["summary"], noop=True)
    assert (part / "_SUCCESS").stat().st_mtime_ns == stamp
    (part / "reviews" / "stray.parquet").write_bytes(b"junk left by someone")
    forced = run_generation(
        tiny_model, messy["files"], messy_run["out"], cfg(seed=1), run_date=DATE, force=True, **QUIET
    )
    assert forced.noop is False and forced.counts.shards_resumed == 0
    assert not (part / "reviews" / "stray.parquet").exists()  # the partition was replaced, not appended to
    after = _reviews(part)
    pd.testing.assert_frame_equal(before.drop(columns="generated_at"), after.drop(columns="generated_at"))
    with pytest.raises(Exception, match="--force"):  # same date, different settings: refuse to mix
        run_generation(tiny_model, messy["files"], messy_run["out"], cfg(rpp=3, seed=1), run_date=DATE, **QUIET)


@pytest.fixture(scope="module")
def clean_catalog(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clean")
    _products(30).to_parquet(d / "catalog.parquet")
    return d / "catalog.parquet"


@pytest.fixture(scope="module")
def reference_run(ray_local, tiny_model, clean_catalog, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref")
    s = run_generation(tiny_model, [str(clean_catalog)], out, cfg(seed=7, pps=4, actors=2), run_date=DATE, **QUIET)
    return {"summary": s, "part": out / f"run_date={DATE}"}


def test_same_seed_same_reviews(tiny_model, clean_catalog, reference_run, tmp_path):
    s = run_generation(tiny_model, [str(clean_catalog)], tmp_path, cfg(seed=7, pps=4, actors=1), run_date=DATE, **QUIET)
    a, b = _reviews(reference_run["part"]), _reviews(tmp_path / f"run_date={DATE}")
    assert s.run_id == reference_run["summary"].run_id
    # generated_at is wall-clock time; every other column must match exactly (1 vs 2 actors, other batching)
    pd.testing.assert_frame_equal(a.drop(columns="generated_at"), b.drop(columns="generated_at"))
    assert reference_run["summary"].counts.shards == 8


def _same_as_reference(part: Path, reference_run: dict) -> None:
    got, ref = _reviews(part), _reviews(reference_run["part"])
    assert got["review_id"].is_unique
    assert set(got["review_id"]) == set(ref["review_id"])
    pd.testing.assert_frame_equal(got.drop(columns="generated_at"), ref.drop(columns="generated_at"))


def test_partial_partition_resumes_without_gaps_or_duplicates(tiny_model, clean_catalog, reference_run, tmp_path):
    """The state a driver kill leaves (some shards finished, no manifest, no _SUCCESS, a temp file
    mid-write): the rerun regenerates only the missing shards. (tests/test_generate_kill.py kills a real
    job process.)"""
    part = tmp_path / f"run_date={DATE}"
    run_generation(tiny_model, [str(clean_catalog)], tmp_path, cfg(seed=7, pps=4, actors=1), run_date=DATE, **QUIET)
    for f in ("_SUCCESS", "manifest.json"):
        (part / f).unlink()
    shards = sorted((part / "reviews").glob("part-*.parquet"))
    for f in shards[3:]:
        f.unlink()
    (part / "reviews" / ".tmp-dead-part-00007.parquet").write_bytes(b"half a file")
    s = run_generation(tiny_model, [str(clean_catalog)], tmp_path, cfg(seed=7, pps=4), run_date=DATE, **QUIET)
    assert s.counts.shards_resumed == 3
    prods = pd.read_parquet(part / "products")
    done_shards = {int(f.name[5:10]) for f in shards[:3]}
    assert s.counts.reviews_generated_this_invocation == 2 * int((~prods["shard"].isin(done_shards)).sum())
    assert s.counts.reviews_generated == reference_run["summary"].counts.reviews_generated == 60
    assert not list(part.rglob(".tmp-*")) and not (part / "_work").exists()
    _same_as_reference(part, reference_run)


def _descendants_named(marker: bytes) -> list[int]:
    """Live processes under this test process (its Ray's raylet and workers) whose command line has `marker`."""
    me, found = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if marker not in (d / "cmdline").read_bytes():
                continue
            pid = int(d.name)
            while pid > 1 and pid != me:
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if pid == me:
            found.append(int(d.name))
    return found


def test_killed_actor_is_retried_and_output_is_exactly_once(tiny_model, clean_catalog, reference_run, tmp_path):
    """SIGKILL a generating actor once its first shard is written: Ray restarts it and retries its task;
    the finished partition holds exactly the reference reviews."""
    part = tmp_path / f"run_date={DATE}"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if any((part / "reviews").glob("part-*.parquet")):
                for pid in _descendants_named(b"GeneratorActor"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    s = run_generation(tiny_model, [str(clean_catalog)], tmp_path, cfg(seed=7, pps=4, actors=1), run_date=DATE, **QUIET)
    th.join(timeout=5)
    assert killed, "no generating actor was found to kill"
    assert s.counts.reviews_generated == 60 and (part / "_SUCCESS").exists()
    _same_as_reference(part, reference_run)


@pytest.mark.parametrize(
    "preset, file, id_col",
    [
        ("bigbasket", "catalog_bigbasket_products.parquet", "index"),
        ("flipkart", "catalog_flipkart_sample_1050.parquet", "uniq_id"),
    ],
)
def test_shared_catalog_samples_through_presets(ray_local, tiny_model, tmp_path, preset, file, id_col):
    raw = pd.read_parquet(sample_data_dir() / file).head(6)
    raw.to_parquet(tmp_path / file)
    s = run_generation(
        tiny_model,
        [str(tmp_path / file)],
        tmp_path / "out",
        cfg(rpp=1, **{"catalog.mapping": preset, "catalog.keep_columns": ["brand"]}),
        run_date=DATE,
        **QUIET,
    )
    assert s.counts.products_in == 6 and s.counts.products_valid == 6
    prods = pd.read_parquet(tmp_path / "out" / f"run_date={DATE}" / "products")
    assert sorted(prods["product_id"]) == sorted(str(v) for v in raw[id_col])
    gen = pd.read_parquet(tmp_path / "out" / f"run_date={DATE}" / "reviews")
    assert "brand" in gen.columns and gen["category"].notna().all()
    if preset == "flipkart":
        assert not gen["category"].str.contains(">>").any()


def test_since_generates_only_new_or_changed(ray_local, tiny_model, tmp_path):
    day1 = _products(10)
    day1.to_parquet(tmp_path / "day1.parquet")
    s1 = run_generation(
        tiny_model, [str(tmp_path / "day1.parquet")], tmp_path / "out", cfg(rpp=1), run_date="2024-05-01", **QUIET
    )
    assert s1.counts.products_to_generate == 10
    day2 = pd.concat([day1.drop(index=[9]), _products(2, start=50)], ignore_index=True)
    day2.loc[day2["product_id"] == "p001", "title"] = "Wireless speaker model 1, now waterproof"
    day2.loc[day2["product_id"] == "p002", "price"] = 99.0
    day2.to_parquet(tmp_path / "day2.parquet")
    # through the command line, with the default broken-text guard; --allow-empty: the tiny model's 4
    # reviews may all be rejected
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_model),
            "--catalog",
            str(tmp_path / "day2.parquet"),
            "--out",
            str(tmp_path / "out"),
            "--reviews-per-product",
            "1",
            "--run-date",
            "2024-05-02",
            "--since",
            "2024-05-01",
            "--allow-empty",
            "--no-watermark",
        ],
    )
    assert res.exit_code == 0, res.output
    part2 = tmp_path / "out" / "run_date=2024-05-02"
    man = json.loads((part2 / "manifest.json").read_text())["summary"]["counts"]
    assert man["products_valid"] == 11 and man["products_unchanged"] == 7 and man["products_to_generate"] == 4
    gen = pd.read_parquet(part2 / "reviews")
    rej = pd.read_parquet(part2 / "rejects", filters=[("stage", "=", "filter")])
    assert set(gen["product_id"]) | set(rej["product_id"]) == {"p001", "p002", "p050", "p051"}
    assert len(gen) + len(rej) == 4
    assert rej["text"].str.contains("\ufffd").sum() == (rej["reason"] == "broken_text").sum()
    assert not gen["text"].str.contains("\ufffd").any()  # the default guard is on through the CLI
    # the products table carries every valid product, so a later --since chains from this run
    assert len(pd.read_parquet(part2 / "products")) == 11


def test_duplicate_ids_first_occurrence_by_file_and_row_wins(ray_local, tiny_model, tmp_path):
    # b.parquet comes first on the command line, so its row 2 beats every row of a.parquet; within a file
    # the lower row wins; a rejected row (no title) never blocks a later valid one
    pd.DataFrame(
        {
            "product_id": ["u1", "x", "y", "x", "z"],
            "title": ["Alpha", "x from a, row 1", "y from a", "x from a, row 3", None],
        }
    ).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame(
        {
            "product_id": ["z", "q", "x", "y", "y"],
            "title": ["z from b", "Quill", "x from b, row 2", "y from b, row 3", "y from b, row 4"],
        }
    ).to_parquet(tmp_path / "b.parquet")
    files = [str(tmp_path / "b.parquet"), str(tmp_path / "a.parquet")]
    s = run_generation(tiny_model, files, tmp_path / "out", cfg(rpp=1, allow_empty=True), run_date=DATE, **QUIET)
    part = tmp_path / "out" / f"run_date={DATE}"
    c = s.counts
    assert c.products_in == 10 and c.products_valid == 5
    assert c.catalog_rejects_by_reason == {"duplicate_id": 4, "missing_title": 1}
    prods = pd.read_parquet(part / "products").set_index("product_id")
    winners = {p: (Path(f).name, int(r)) for p, f, r in zip(prods.index, prods["source_file"], prods["source_row"])}
    assert winners == {
        "x": ("b.parquet", 2),
        "y": ("b.parquet", 3),
        "z": ("b.parquet", 0),
        "q": ("b.parquet", 1),
        "u1": ("a.parquet", 0),
    }
    rej = pd.read_parquet(part / "rejects", filters=[("stage", "=", "catalog")])
    dups = sorted(
        (p, Path(f).name, int(r))
        for p, f, r, why in zip(rej["product_id"], rej["source_file"], rej["source_row"], rej["reason"])
        if why == "duplicate_id"
    )
    assert dups == [("x", "a.parquet", 1), ("x", "a.parquet", 3), ("y", "a.parquet", 2), ("y", "b.parquet", 4)]
    assert set(pd.read_parquet(part / "reviews")["title"]) <= {
        "x from b, row 2",
        "y from b, row 3",
        "z from b",
        "Quill",
        "Alpha",
    }


class _RowLimit:
    """Wraps the Dataset/constructor methods that bring rows into the driver; fails past `limit` rows."""

    def __init__(self, limit: int):
        self.limit, self.seen = limit, {}

    def check(self, name: str, n: int) -> None:
        self.seen[name] = max(self.seen.get(name, 0), n)
        if n > self.limit:
            raise AssertionError(f"{name} brought {n} rows into the driver (limit {self.limit})")

    def install(self, monkeypatch) -> None:
        import ray.data as rd

        for name in ("to_pandas", "take_all", "take", "take_batch", "to_arrow_refs", "to_pandas_refs"):
            orig = getattr(rd.Dataset, name)

            def wrapped(ds, *a, _orig=orig, _name=name, **kw):
                out = _orig(ds, *a, **kw)
                self.check(_name, len(out) if hasattr(out, "__len__") else 0)
                return out

            monkeypatch.setattr(rd.Dataset, name, wrapped)
        for name in ("iter_rows", "iter_batches"):
            orig = getattr(rd.Dataset, name)

            def wrapped_iter(ds, *a, _orig=orig, _name=name, **kw):
                n = 0
                for item in _orig(ds, *a, **kw):
                    rows = next(iter(item.values())) if isinstance(item, dict) else item
                    n += 1 if _name == "iter_rows" else len(rows)
                    self.check(_name, n)
                    yield item

            monkeypatch.setattr(rd.Dataset, name, wrapped_iter)
        for name in ("from_items", "from_pandas", "from_arrow"):
            orig = getattr(rd, name)

            def wrapped_from(data, *a, _orig=orig, _name=name, **kw):
                self.check(_name, len(data) if isinstance(data, list) else getattr(data, "num_rows", len(data)))
                return _orig(data, *a, **kw)

            monkeypatch.setattr(rd, name, wrapped_from)


def test_catalog_rows_never_enter_the_driver(ray_local, tiny_model, tmp_path, monkeypatch):
    # 3,000 rows: 20 valid products, 1,980 duplicates of them, 1,000 invalid; several row groups
    n = 3000
    ids = [f"v{i % 20:02d}" if i % 3 else None for i in range(n)]
    pq.write_table(
        pa.table({"product_id": ids, "title": [f"Steel bottle {i}" for i in range(n)]}),
        tmp_path / "big.parquet",
        row_group_size=700,
    )
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = (ctx.execution_options.preserve_order, ctx.shuffle_strategy)
    limit = _RowLimit(100)
    limit.install(monkeypatch)
    s = run_generation(
        tiny_model,
        [str(tmp_path / "big.parquet")],
        tmp_path / "out",
        cfg(rpp=1, pps=8, allow_empty=True),
        run_date=DATE,
        **QUIET,
    )
    c = s.counts
    assert c.products_in == n and c.products_valid == 20
    assert c.catalog_rejects_by_reason == {"missing_id": 1000, "duplicate_id": 1980}
    assert c.reviews_generated == 20 == c.reviews_accepted + c.reviews_rejected
    assert limit.seen.get("iter_rows", 0) > 0  # the guard really wrapped the driver's calls
    assert max(limit.seen.values()) <= 100
    # the run used its own copy of the DataContext; the caller's is untouched
    assert DataContext.get_current() is ctx and (ctx.execution_options.preserve_order, ctx.shuffle_strategy) == before


def test_all_invalid_catalog_fails_cleanly_and_allow_empty_accepts(ray_local, tiny_model, tmp_path):
    pd.DataFrame({"product_id": [None, "a", "b"], "title": ["x", None, ""]}).to_parquet(tmp_path / "bad.parquet")
    args = [
        "generate",
        "--model",
        str(tiny_model),
        "--catalog",
        str(tmp_path / "bad.parquet"),
        "--out",
        str(tmp_path / "out"),
        "--run-date",
        DATE,
        "--no-watermark",
    ]
    res = CliRunner().invoke(app, args)
    part = tmp_path / "out" / f"run_date={DATE}"
    assert res.exit_code == 2 and "error: " in res.output and "no valid product" in res.output
    assert not (part / "_SUCCESS").exists()
    man = json.loads((part / "manifest.json").read_text())["summary"]["counts"]
    assert man["products_in"] == 3 and man["products_rejected"] == 3 and man["shards"] == 0
    rej = pd.read_parquet(part / "rejects")
    assert sorted(rej["reason"]) == ["missing_id", "missing_title", "missing_title"]
    res = CliRunner().invoke(app, [*args, "--allow-empty"])
    assert res.exit_code == 0, res.output
    assert (part / "_SUCCESS").exists() and len(pd.read_parquet(part / "reviews")) == 0


def test_config_file_and_flags(ray_local, tiny_model, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: {reviews_per_prodcut: 2}\n")
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_model),
            "--catalog",
            "x.parquet",
            "--out",
            str(tmp_path),
            "--config",
            str(bad),
        ],
    )
    assert res.exit_code == 2 and "reviews_per_prodcut" in res.output
    good = tmp_path / "good.yaml"
    good.write_text("sampling: {reviews_per_product: 2, seed: 5}\nfilter: {min_score: 0.3}\n")
    c = load_generate_config(good, {"sampling.seed": 9, "filter.min_tokens": None})
    assert (c.sampling.reviews_per_product, c.sampling.seed, c.filter.min_score, c.filter.min_tokens) == (2, 9, 0.3, 3)
    # YAML, then --set, then the per-field flags
    c2 = load_generate_config(good, {"sampling.seed": 9}, sets=["sampling.seed=7", "filter.min_score=0.5"])
    assert (c2.sampling.reviews_per_product, c2.sampling.seed, c2.filter.min_score) == (2, 9, 0.5)
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_model),
            "--catalog",
            "x.parquet",
            "--out",
            str(tmp_path),
            "--set",
            "sampling.reviews_per_prodcut=2",
        ],
    )
    assert res.exit_code == 2 and "reviews_per_prodcut" in res.output
    with pytest.raises(GenerationError, match="not found"):
        run_generation(tiny_model, [str(tmp_path / "missing.parquet")], tmp_path / "o", c, **QUIET)


def test_compile_decode_reaches_the_sampler_and_the_run_identity(tiny_model, tmp_path, monkeypatch):
    """`--compile-decode` (sampling.compile_decode) sends an actor's decode steps through torch.compile and
    is part of the run id only when on, so runs made without it keep their ids."""
    import dataclasses

    import torch

    from reviewgen.core.checkpoint import load_checkpoint
    from reviewgen.generate.actor import GeneratorActor, ShardJob
    from reviewgen.generate.mapping import resolve_mapping
    from reviewgen.generate.run import identity_settings, run_identity

    res = CliRunner().invoke(app, ["generate", "--help"])
    assert "--compile-decode" in res.output
    on = load_generate_config(None, {"sampling.compile_decode": True})
    assert on.sampling.compile_decode and not GenerateConfig().sampling.compile_decode
    base = identity_settings(GenerateConfig(), resolve_mapping(None), [0.2] * 5, None)
    with_flag = identity_settings(on, resolve_mapping(None), [0.2] * 5, None)
    assert "compile_decode" not in base and with_flag == {**base, "compile_decode": True}
    inputs = [{"path": "a.parquet", "checksum": "sha256:1"}]
    assert run_identity("2024-01-01", "v", base, inputs) != run_identity("2024-01-01", "v", with_flag, inputs)

    compiled: list[int] = []

    def fake_compile(fn, **kw):
        def step(idx, **a):
            compiled.append(idx.shape[1])
            return fn(idx, **a)

        return step

    monkeypatch.setattr(torch, "compile", fake_compile)
    product = {"product_id": "p1", "title": "Kindle Paperwhite", "category": "E-Readers", "language": "en"}
    for cfg, expect in ((GenerateConfig(), False), (on, True)):
        cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, reviews_per_product=2))
        actor = GeneratorActor(
            ShardJob(
                config=cfg,
                run_id="t",
                model_version=load_checkpoint(tiny_model).version,
                model_dir=str(tiny_model),
                partition=str(tmp_path / str(expect)),
                rating_distribution=(0.2,) * 5,
            )
        )
        compiled.clear()
        stats = actor.write_shard(0, [product])
        assert stats["generated"] == 2
        assert bool(compiled) == expect and set(compiled) <= {1}


def test_default_filter_settings_keep_the_run_identity():
    """The run id hashes the filter's settings as given: a default run's stay what they were before the
    copy threshold got its one policy (an unset max_copy_span would mean the index's n; the default is 8)."""
    from reviewgen.generate.mapping import resolve_mapping
    from reviewgen.generate.run import identity_settings

    settings = identity_settings(GenerateConfig(), resolve_mapping(None), [0.2] * 5, None)
    assert settings["filter"] == {
        "min_score": 0.0,
        "max_copy_span": 8,
        "min_tokens": 3,
        "max_tokens": None,
        "min_chars": 1,
        "max_chars": None,
        "reject_broken_text": True,
        "check_pii": True,
        "check_copy": True,
        "check_language": True,
        "require_watermark": False,
    }


def test_max_copy_span_below_the_index_n_fails_before_any_work(tiny_model, tmp_path):
    """generate resolves its copy threshold with the filter's own rule (`FilterConfig.resolved`): the error
    names the setting and the model's n-gram size, and nothing is written."""
    from reviewgen.core.config import ConfigError

    with pytest.raises(ConfigError, match="max_copy_span 4 is below the model's n-gram size 8"):
        run_generation(tiny_model, ["x.parquet"], tmp_path / "o", cfg(**{"filter.max_copy_span": 4}), **QUIET)
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_model),
            "--catalog",
            "x.parquet",
            "--out",
            str(tmp_path / "o"),
            "--max-copy-span",
            "4",
            "--no-watermark",
        ],
    )
    assert res.exit_code == 2 and "max_copy_span 4 is below the model's n-gram size 8" in res.output
    assert not (tmp_path / "o").exists()


def test_run_summary_keeps_the_manifest_shape_and_reads_back():
    """manifest.json's "summary" keeps its keys and their order; from_dict reads it back to an equal value; the
    by-reason maps are the result's own (a change to the caller's Counter does not reach it)."""
    reasons = Counter({"missing_title": 2, "duplicate_id": 1})
    counts = RunCounts(
        products_in=10,
        products_valid=7,
        products_rejected=3,
        products_unchanged=0,
        products_to_generate=7,
        shards=2,
        shards_resumed=1,
        files_unreadable=0,
        reviews_generated=14,
        reviews_accepted=12,
        reviews_rejected=2,
        reviews_generated_this_invocation=8,
        catalog_rejects_by_reason=reasons,
        review_rejects_by_reason={"too_short": 2},
    )
    timings = RunTimings(
        read_validate=1.0,
        plan=0.5,
        generate_stage=4.0,
        actor_generate=3.0,
        actor_score=0.2,
        actor_filter=0.1,
        actor_write=0.1,
        finalize=0.2,
        total=6.0,
    )
    s = RunSummary(
        run_id="abc",
        run_date=DATE,
        partition="/o/run_date=" + DATE,
        noop=False,
        model_version="m1",
        counts=counts,
        timings_s=timings,
        reviews_per_s=2.0,
    )
    reasons["unreadable_file"] = 5
    d = json.loads(json.dumps(s.to_dict()))
    assert list(d) == [
        "run_id",
        "run_date",
        "partition",
        "noop",
        "model_version",
        "counts",
        "timings_s",
        "reviews_per_s",
    ]
    assert list(d["counts"]) == [
        "products_in",
        "products_valid",
        "products_rejected",
        "products_unchanged",
        "products_to_generate",
        "shards",
        "shards_resumed",
        "files_unreadable",
        "reviews_generated",
        "reviews_accepted",
        "reviews_rejected",
        "reviews_generated_this_invocation",
        "catalog_rejects_by_reason",
        "review_rejects_by_reason",
    ]
    assert d["counts"]["catalog_rejects_by_reason"] == {"duplicate_id": 1, "missing_title": 2}
    assert list(d["timings_s"]) == [
        "read_validate",
        "plan",
        "generate_stage",
        "actor_generate",
        "actor_score",
        "actor_filter",
        "actor_write",
        "finalize",
        "total",
    ]
    assert RunSummary.from_dict(d) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.counts.shards = 3  # type: ignore[misc]
    table = summary_table(s)
    assert "catalog:duplicate_id" in table and "filter:too_short" in table and "time generate_stage" in table
