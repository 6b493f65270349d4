"""Tests for reviewgen.data.corpus: loaders on the carried sample, malformed inputs, split, prepare."""

import json
from pathlib import Path

import pandas as pd
import pytest

from reviewgen.data.corpus import load_split, prepare, review_sources, sample_data_dir, split_by_product
from reviewgen.data.sources import REVIEW_COLUMNS, DataError, detect_corpus, load_corpus

SAMPLE = sample_data_dir()
FILES = {
    "amazon_devices": "reviews_en_datafiniti_amazon_devices.parquet",
    "multibrand": "reviews_en_datafiniti_multibrand_sample30.parquet",
    "womens_clothing": "reviews_en_womens_clothing.parquet",
    "zh_shopping": "reviews_zh_online_shopping_10_cats.parquet",
}
PREFIX = {"amazon_devices": "amz:", "multibrand": "mb:", "womens_clothing": "wc:", "zh_shopping": "zh:"}


def _invariant(counts: dict) -> None:
    assert counts["in"] == counts["kept"] + sum(counts["dropped"].values())


@pytest.fixture(scope="module")
def loaded():
    return {c: load_corpus(SAMPLE / f) for c, f in FILES.items()}


@pytest.mark.parametrize("corpus", list(FILES))
def test_sample_loader_schema(loaded, corpus):
    res = loaded[corpus]
    df = res.frame
    assert list(df.columns) == REVIEW_COLUMNS
    assert str(df["rating"].dtype) == "Int64"
    for c in REVIEW_COLUMNS:
        if c != "rating":
            assert pd.api.types.is_string_dtype(df[c]), c
    _invariant(res.counts)
    assert res.counts["source"] == corpus and res.counts["kept"] == len(df) > 100
    assert (df["source"] == corpus).all()
    assert df["product_id"].str.startswith(PREFIX[corpus]).all()
    assert df[["product_id", "product_title", "category", "text", "sentiment"]].notna().all().all()
    assert (df["text"].str.len() > 0).all() and not df["text"].duplicated().any()
    assert set(df["sentiment"]) <= {"positive", "negative", "neutral"}
    if corpus == "zh_shopping":
        assert (df["language"] == "zh").all() and df["rating"].isna().all()
        assert df["product_title"].equals(df["category"])
    else:
        assert (df["language"] == "en").all() and df["rating"].between(1, 5).all()
        expect = df["rating"].map(lambda r: "positive" if r >= 4 else "negative" if r <= 2 else "neutral")
        assert (df["sentiment"] == expect.astype("string")).all()


def test_sample_cleaning(loaded):
    raw_mb = pd.read_parquet(SAMPLE / FILES["multibrand"])
    assert raw_mb["reviews_text"].str.contains("part of a promotion").sum() > 0  # the sample exercises it
    for res in loaded.values():
        txt = res.frame["text"]
        assert not txt.str.contains("collected as part of a promotion", case=False).any()
        assert not txt.str.contains(r"&(?:#\d+|amp|quot|hellip|lt|gt);", regex=True).any()
        assert not txt.str.contains("\ufeff").any()
    wc = loaded["womens_clothing"].frame
    assert wc["text"].str.contains("'").any()
    assert wc["product_title"].str.contains(r"\(item \d+\)", regex=True).all()


def test_amazon_titles_are_clean(loaded):
    df = loaded["amazon_devices"].frame
    assert not df["product_title"].str.contains(r",,|\r|\n", regex=True).any()
    # each product has exactly one title and category, including the nameless ids
    per = df.groupby("product_id")[["product_title", "category"]].nunique()
    assert (per == 1).all().all()


def test_detect_and_sources():
    srcs = review_sources(SAMPLE)
    assert sorted(p.name for p in srcs) == sorted(FILES.values())
    for corpus, f in FILES.items():
        assert detect_corpus(SAMPLE / f) == corpus


def _write(tmp_path: Path, name: str, rows: dict) -> Path:
    p = tmp_path / name
    pd.DataFrame(rows).to_parquet(p, index=False)
    return p


def _clothing(**over) -> dict:
    rows = {
        "clothing_id": [1, 1, 2, 3, 4, 5],
        "title": ["t"] * 6,
        "review_text": ["Great fit", "Great fit", "  ", None, "Runs small &amp; tight", "ok " * 50],
        "rating": [5, 4, 1, 3, None, 2],
        "division_name": ["General"] * 6,
        "department_name": ["Tops"] * 6,
        "class_name": ["Knits"] * 6,
    }
    rows.update(over)
    return rows


def test_drop_reasons_counted(tmp_path):
    p = _write(tmp_path, "my_womens_clothing.parquet", _clothing())
    res = load_corpus(p, max_text_chars=100)
    d = res.counts["dropped"]
    assert d["duplicate_text"] == 1 and d["empty_text"] == 2
    assert d["missing_rating"] == 1 and d["text_too_long"] == 1
    _invariant(res.counts)
    assert res.frame["text"].tolist() == ["Great fit"]


def test_missing_column(tmp_path):
    rows = _clothing()
    del rows["review_text"]
    p = _write(tmp_path, "reviews_en_womens_clothing.parquet", rows)
    with pytest.raises(DataError, match=r"reviews_en_womens_clothing\.parquet.*review_text"):
        load_corpus(p)


def test_wrong_type_names_row_and_column(tmp_path):
    p = _write(tmp_path, "bad_womens_clothing.parquet", _clothing(rating=["5", "4", "five", "3", "2", "1"]))
    with pytest.raises(DataError) as e:
        load_corpus(p)
    msg = str(e.value)
    assert "bad_womens_clothing.parquet" in msg and "row 2" in msg and "'rating'" in msg and "five" in msg


def test_corrupt_and_missing_file(tmp_path):
    bad = tmp_path / "reviews_zh_online_shopping_10_cats.parquet"
    bad.write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(DataError, match="reviews_zh_online_shopping_10_cats.parquet"):
        load_corpus(bad)
    junk = tmp_path / "mystery.parquet"
    junk.write_bytes(b"garbage")
    with pytest.raises(DataError, match="mystery.parquet"):
        load_corpus(junk)
    with pytest.raises(DataError, match="nothere.parquet"):
        load_corpus(tmp_path / "nothere.parquet", "multibrand")


def test_zh_and_multibrand_small(tmp_path):
    zh = _write(
        tmp_path,
        "zh.parquet",
        {
            "category": ["手机", "手机", "书籍"],
            "category_en": ["a", "a", "b"],
            "label": [1, 0, None],
            "review": ["很好，电话13812345678", "很好，电话13812345678", "一般"],
        },
    )
    res = load_corpus(zh)
    assert res.counts["source"] == "zh_shopping"
    assert res.counts["dropped"]["duplicate_text"] == 1 and res.counts["dropped"]["missing_label"] == 1
    assert res.frame["text"].tolist() == ["很好，电话<phone>"]
    assert res.frame["sentiment"].tolist() == ["positive"]
    mb = _write(
        tmp_path,
        "mb.parquet",
        {
            "id": ["A", None, "B"],
            "name": ["L'or233al Paris Cream", "x", "Thing"],
            "brand": ["L'or233al", "b", "c"],
            "categories": ["Beauty,Skin", "x", "Food,Snacks"],
            "reviews_rating": [5, 4, 3],
            "reviews_title": ["t", "t", None],
            "reviews_text": ["Nice. This review was collected as part of a promotion.", "y", "z"],
        },
    )
    res = load_corpus(mb, "multibrand")
    assert res.counts["dropped"]["missing_product_id"] == 1
    assert res.frame["text"].tolist() == ["Nice.", "z"]
    assert res.frame["category"].tolist() == ["Beauty", "Food"]
    assert res.frame["product_title"].iloc[0] == "L'oréal Paris Cream"


def test_product_cap_stable(tmp_path):
    rows = _clothing(clothing_id=[7] * 6, review_text=[f"review number {i}" for i in range(6)], rating=[5] * 6)
    p = _write(tmp_path, "a_womens_clothing.parquet", rows)
    shuffled = pd.DataFrame(rows).sample(frac=1, random_state=3)
    q = _write(tmp_path, "b_womens_clothing.parquet", shuffled.to_dict("list"))
    a = load_corpus(p, max_reviews_per_product=2)
    b = load_corpus(q, max_reviews_per_product=2)
    assert a.counts["dropped"]["product_cap"] == 4 and a.counts["kept"] == 2
    assert sorted(a.frame["text"]) == sorted(b.frame["text"])


def _toy(n_products: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_id": [f"p{i % n_products}" for i in range(n_products * 3)],
            "text": [f"t{i}" for i in range(n_products * 3)],
        }
    )


def test_split_by_product():
    df = _toy(200)
    s = split_by_product(df, seed=1)
    sides = {k: set(v["product_id"]) for k, v in s.items()}
    assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"])
    assert not (sides["val"] & sides["test"])
    assert sum(len(v) for v in s.values()) == len(df)
    assert 5 < len(sides["test"]) < 40 and 5 < len(sides["val"]) < 40
    # row order does not matter
    s2 = split_by_product(df.sample(frac=1, random_state=0), seed=1)
    assert {k: set(v["product_id"]) for k, v in s2.items()} == sides
    # adding a product does not move the others
    more = pd.concat([df, pd.DataFrame({"product_id": ["new"], "text": ["x"]})])
    s3 = split_by_product(more, seed=1)
    assert all(sides[k] <= set(v["product_id"]) for k, v in s3.items())
    # the seed changes the assignment
    assert {k: set(v["product_id"]) for k, v in split_by_product(df, seed=2).items()} != sides


def test_prepare_and_load_split(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write(
        src,
        "reviews_en_womens_clothing.parquet",
        _clothing(
            clothing_id=list(range(30)),
            title=["t"] * 30,
            review_text=[f"text {i}" for i in range(30)],
            rating=[(i % 5) + 1 for i in range(30)],
            division_name=["General"] * 30,
            department_name=["Tops"] * 30,
            class_name=["Knits"] * 30,
        ),
    )
    zh = _write(
        tmp_path,
        "zh_extra.parquet",
        {
            "category": ["水果"] * 20,
            "category_en": ["fruit"] * 20,
            "label": [i % 2 for i in range(20)],
            "review": [f"好吃{i}" for i in range(20)],
        },
    )
    logs: list[str] = []
    out = tmp_path / "prepared"
    stats = prepare([src, zh], out, seed=0, val_frac=0.2, test_frac=0.2, log=logs.append)
    assert len(logs) == 2 and "womens_clothing" in logs[0] and "zh_shopping" in logs[1]
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk == stats and len(stats["data_hash"]) == 64 and stats["seed"] == 0
    total = 0
    for split in ("train", "val", "test"):
        df = load_split(out, split)
        assert list(df.columns) == REVIEW_COLUMNS and str(df["rating"].dtype) == "Int64"
        assert len(df) == stats["splits"][split]["rows"]
        assert df["product_id"].nunique() == stats["splits"][split]["products"]
        total += len(df)
    assert total == stats["rows"] == sum(f["kept"] for f in stats["files"]) == 50
    again = prepare([src, zh], tmp_path / "again", seed=0, val_frac=0.2, test_frac=0.2, log=lambda m: None)
    assert again["data_hash"] == stats["data_hash"]
    other = prepare([src, zh], tmp_path / "other", seed=5, val_frac=0.2, test_frac=0.2, log=lambda m: None)
    assert other["data_hash"] != stats["data_hash"]


def test_load_split_errors(tmp_path):
    with pytest.raises(DataError, match="nodir"):
        load_split(tmp_path / "nodir", "train")
    with pytest.raises(DataError, match="val.parquet"):
        load_split(tmp_path, "val")
    pd.DataFrame({"product_id": ["a"], "text": ["b"]}).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(DataError, match="rating"):
        load_split(tmp_path, "train")
