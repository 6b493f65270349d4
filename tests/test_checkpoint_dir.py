"""The model directory's documents: meta.json and calibration.json read and written only through
`reviewgen.core.checkpoint`, as typed records that refuse what they do not know, naming the file."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from reviewgen.core.memorization import NGramIndex
from reviewgen.core.model_dir import (
    Calibration,
    CalibrationFit,
    CheckpointError,
    Meta,
    content_version,
    is_model_dir,
    ngram_order,
    read_calibration,
    read_meta,
    write_calibration,
)
from reviewgen.score.combiner import Combiner, CombinerError, Detector

DETECTOR = Detector({"*": Combiner(("d_logit",), (0.0,), (1.0,), (1.0,), 0.0)}).to_dict()


def _model_dir(tmp_path: Path, **meta) -> Path:
    """A directory with the files the content version hashes (stand-ins) and a meta.json."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"format": 1}')
    (d / "generator.safetensors").write_bytes(b"G")
    (d / "meta.json").write_text(json.dumps(Meta(version="v0", **meta).to_dict()))
    return d


def test_meta_and_calibration_round_trip_through_json():
    meta = Meta(
        version="abc",
        created_at="2024-01-01T00:00:00Z",
        data_hash="h",
        role="final",
        complete=True,
        phase="done",
        step=3,
        global_step=9,
        metrics={"val_nll": 2.5},
        rating_distribution=(0.1, 0.1, 0.2, 0.3, 0.3),
        base={"path": "/b", "sha256": "0" * 64},
    )
    assert Meta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert "exported_from" not in meta.to_dict()  # unset fields are not written
    fit = CalibrationFit(
        n=10,
        temperatures=(0.7, 1.0),
        settings=("T=0.7", "T=1"),
        ece_raw=0.2,
        ece=0.05,
        nonfinite_signals={"binoculars": 1},
        rows_left_out=1,
        source="refit",
        checkpoints=("a",),
    )
    calib = Calibration(
        scale=1.5,
        bias=-0.25,
        fit=fit,
        detector=DETECTOR,
        thresholds={"en": {"fpr_1pct": 0.1}},
        adapted={"format": "reviewgen-adapted/1"},
    )
    doc = json.loads(json.dumps(calib.to_dict()))
    assert doc["n"] == 10 and doc["settings"] == ["T=0.7", "T=1"] and "fit" not in doc  # the fit sits flat
    assert Calibration.from_dict(doc) == calib
    failed = Calibration(detector_error="ValueError: no rows")
    assert Calibration.from_dict(failed.to_dict()) == failed and failed.fit is None and failed.scale == 1.0


def test_write_calibration_refreshes_the_content_version(tmp_path):
    d = _model_dir(tmp_path, role="final", metrics={"val_nll": 2.0})
    assert is_model_dir(d) and read_calibration(d) is None and read_meta(d).version == "v0"
    calib = Calibration(scale=2.0, bias=0.5, detector=DETECTOR)
    written = write_calibration(d, calib)
    assert read_calibration(d) == calib
    assert read_meta(d) == written == dataclasses.replace(read_meta(d), version=content_version(d))
    assert written.version != "v0" and written.role == "final" and written.metrics == {"val_nll": 2.0}
    # a changed calibration is a new version; a meta given by the caller is written with it
    again = write_calibration(d, dataclasses.replace(calib, bias=0.75), dataclasses.replace(written, role="x"))
    assert again.version not in ("v0", written.version) and read_meta(d).role == "x"
    assert not list(d.glob(".*tmp*"))  # the atomic writes leave no temporary file behind


def test_unknown_formats_and_keys_are_refused_naming_the_file(tmp_path):
    d = _model_dir(tmp_path)
    meta_doc = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta_doc, "format": 2}))
    with pytest.raises(CheckpointError, match=r"meta\.json: unsupported checkpoint format 2"):
        read_meta(d)
    (d / "meta.json").write_text(json.dumps({**meta_doc, "trained_on": "x"}))
    with pytest.raises(CheckpointError, match=r"meta\.json: unknown key\(s\) \['trained_on'\]"):
        read_meta(d)
    (d / "meta.json").write_text(json.dumps({**meta_doc, "step": "3"}))
    with pytest.raises(CheckpointError, match=r"meta\.json: 'step' must be int"):
        read_meta(d)
    (d / "calibration.json").write_text(json.dumps({"scale": 1.0, "bias": 0.0, "platt": {}}))
    with pytest.raises(CheckpointError, match=rf"{d / 'calibration.json'}: unknown key\(s\) \['platt'\]"):
        read_calibration(d)
    (d / "calibration.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"calibration\.json: expected a JSON object"):
        read_calibration(d)
    # a detector of a combiner format no release wrote: the score layer refuses it, naming the file
    old = {**DETECTOR["by_language"]["*"], "format": "reviewgen-detector/1"}
    (d / "calibration.json").write_text(json.dumps({"scale": 1.0, "bias": 0.0, "detector": old}))
    calib = read_calibration(d)
    with pytest.raises(CombinerError, match=r"calibration\.json: format 'reviewgen-detector/1' is not"):
        Detector.from_dict(calib.detector, source=str(d / "calibration.json"))


def test_ngram_order_reads_the_index_header(tmp_path):
    d = _model_dir(tmp_path)
    assert ngram_order(d) is None
    NGramIndex.build([[1, 2, 3, 4, 5, 6]], n=4).save(d / "ngrams.npy")
    assert ngram_order(d) == 4
    (d / "ngrams.npy").write_bytes(b"not numpy")
    with pytest.raises(CheckpointError, match=r"ngrams\.npy: not a readable n-gram index"):
        ngram_order(d)
    assert not is_model_dir(tmp_path) and math.isnan(CalibrationFit(n=1).ece)
