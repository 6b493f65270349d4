"""`reviewgen calibrate`: the lexical model on its own (fit, stable hashing, pickle-free round trip), the
command end to end on the tiny model with a learnable labels file, and its errors for bad label files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reviewgen.cli import app
from reviewgen.core.checkpoint import export_model
from reviewgen.core.metrics import auroc
from reviewgen.data.corpus import load_split
from reviewgen.score.adapted import AdaptedDetector
from reviewgen.score.lexical import LexicalModel, LexicalSettings, fit_lexical, gram_bucket, hash_counts
from reviewgen.score.scorer import Scorer
from reviewgen.score.signals import SIGNALS

# appended to the machine-written rows of the labels file: a stock phrase the lexical model can learn
STOCK = {
    "en": " Overall, this product exceeded my expectations in every way.",
    "zh": "总的来说，这款产品超出了我的预期。",
}


@pytest.fixture(autouse=True)
def _logs(tmp_path, monkeypatch):
    monkeypatch.setenv("RG_LOG_DIR", str(tmp_path / "logs"))


def _synthetic(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Reviews from a shared vocabulary; the machine-written half prefers other words and spells 'colour'."""
    rng = np.random.default_rng(seed)
    shared = "good bad fine works battery screen price fast slow okay nice 很好 质量".split()
    human = shared + "honestly meh broke returned cheap".split()
    machine = shared + "exceptional seamless colour".split()
    y = rng.integers(0, 2, n)
    texts = [" ".join(rng.choice(human if label else machine, size=12)) for label in y]
    return texts, y


def test_lexical_model_learns_round_trips_and_hashes_stably(tmp_path) -> None:
    settings = LexicalSettings(buckets=1 << 16)
    texts, y = _synthetic(400, 0)
    model = fit_lexical(hash_counts(texts, settings), y, settings)
    test_texts, test_y = _synthetic(200, 1)
    z = model.logit(test_texts)
    assert auroc(test_y, z) > 0.95
    model.save(tmp_path / "lex.npz")
    back = LexicalModel.load(tmp_path / "lex.npz")
    assert back.settings == settings
    np.testing.assert_allclose(back.logit(test_texts), z, rtol=1e-5, atol=1e-5)  # stored as float32
    # buckets are fixed arithmetic, the same in every process and Python version
    full = LexicalSettings()
    assert gram_bucket("hello", "word", full) == 140389
    assert gram_bucket(" he", "char", full) == 45305
    assert gram_bucket("好评", "char", full) == 232124
    counts = hash_counts(["Hello", "好评如潮", "", None], full)
    assert counts.rows == 4 and list(np.diff(counts.indptr)) == [16, 19, 0, 0]
    assert {gram_bucket("hello", "word", full), gram_bucket("lo ", "char", full)} <= set(counts.indices[:16])
    assert gram_bucket("好 评", "word", full) in set(counts.indices[16:35])


def _labels(prepared_data: Path) -> pd.DataFrame:
    """English: 70 human test reviews and 70 other ones with the stock phrase; Chinese: 30 and 30 (too few
    for its own model)."""
    test = load_split(prepared_data, "test")
    parts = []
    for lang, n in (("en", 70), ("zh", 30)):
        rows = test[test["language"] == lang].sample(n=2 * n, random_state=0)
        human, machine = rows.iloc[:n], rows.iloc[n:].copy()
        machine["text"] = machine["text"].astype(str) + STOCK[lang]
        parts += [human.assign(is_generated=0), machine.assign(is_generated=1)]
    return pd.concat(parts, ignore_index=True)[
        ["text", "is_generated", "product_title", "category", "rating", "language"]
    ]


def test_calibrate_writes_a_new_version_that_separates_the_labels(tiny_model, prepared_data, tmp_path) -> None:
    labels = tmp_path / "labels.parquet"
    _labels(prepared_data).to_parquet(labels)
    out = tmp_path / "adapted"
    r = CliRunner().invoke(
        app, ["calibrate", "--model", str(tiny_model), "--labels", str(labels), "--out", str(out), "--folds", "3"]
    )
    assert r.exit_code == 0, r.output
    assert "[en]" in r.output and "TPR@1%FPR" in r.output
    meta, old = (json.loads((d / "meta.json").read_text()) for d in (out, tiny_model))
    assert meta["version"] != old["version"] and meta["adapted_from"]["version"] == old["version"]
    assert not (out / "state").exists() and (out / "generator.safetensors").is_file()
    assert Scorer(out, device="cpu").version == meta["version"]  # what Serve reports as model_version
    report = json.loads((out / "adapt_report.json").read_text())
    en, zh = (next(x for x in report["languages"] if x["language"] == k) for k in ("en", "zh"))
    assert en["adapted"] and en["auroc"] > 0.9 and en["human"] + en["machine"] == en["rows"] > 100
    assert not zh["adapted"] and zh["auroc"] is None
    calib = json.loads((out / "calibration.json").read_text())
    assert "detector" in calib and calib["adapted"]["format"] == "reviewgen-adapted/1"
    assert calib["adapted"]["labels"]["file"] == "labels.parquet"
    det = AdaptedDetector.load(out, calib["adapted"])
    assert det.languages == ("en",)
    t1, t5 = det.thresholds("en")
    assert 0.0 < t1 <= t5 < 1.0 and det.thresholds("zh") is None
    # the stored model scores new rows of its language and leaves the others to the zero-shot detector
    texts = ["Sturdy case, fits well." + STOCK["en"], "Sturdy case, fits well.", "质量很好。"]
    sig = {k: np.zeros(3) for k in SIGNALS}
    z = det.logit(texts, sig, np.zeros(3), ["en", "en", "zh"])
    assert np.isfinite(z[:2]).all() and np.isnan(z[2]) and z[0] < z[1]
    # `reviewgen export` keeps the lexical files the entry names
    exported = export_model(out, tmp_path / "exported")
    assert AdaptedDetector.load(exported, calib["adapted"]).languages == ("en",)
    # the source model is unchanged; the same --out again is refused
    assert "adapted" not in json.loads((tiny_model / "calibration.json").read_text())
    r = CliRunner().invoke(app, ["calibrate", "--model", str(tiny_model), "--labels", str(labels), "--out", str(out)])
    assert r.exit_code != 0 and "not empty" in r.output


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def _frame(n_human: int, n_machine: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [f"review number {i}, works fine" for i in range(n_human + n_machine)],
            "is_generated": [0] * n_human + [1] * n_machine,
        }
    )


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing_column", ["missing column", "is_generated"]),
        ("one_class", ["one class only", "0 human", "120 machine-written"]),
        ("too_few", ["fewer than 50 rows per class", "40 human", "200 machine-written"]),
        ("bad_label", ["row 5", "is_generated=2", "0 (human) or 1"]),
        ("empty_text", ["row 3", "empty 'text'"]),
        ("out_is_model", ["is the model directory"]),
    ],
)
def test_bad_label_files_get_named_errors(case, expected, tmp_path) -> None:
    df = {"one_class": _frame(0, 120), "too_few": _frame(40, 200)}.get(case, _frame(60, 60))
    if case == "missing_column":
        df = df.drop(columns="is_generated")
    elif case == "bad_label":
        df.loc[4, "is_generated"] = 2
    elif case == "empty_text":
        df.loc[2, "text"] = "  "
    labels = _write(df, tmp_path / "labels.csv")
    model = tmp_path / "model"  # never loaded: the labels are checked first
    out = model if case == "out_is_model" else tmp_path / "out"
    r = CliRunner().invoke(app, ["calibrate", "--model", str(model), "--labels", str(labels), "--out", str(out)])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())  # the console may wrap long lines
    assert all(e in text for e in expected), r.output
    assert not (tmp_path / "out").exists()
