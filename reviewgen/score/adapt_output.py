"""Writing an adapted model (`reviewgen calibrate --out`): a copy of the model directory, but its training
state, with the adapted detector's lexical files, calibration.json's "adapted" entry, adapt_report.json and
a new content version. The copy is built beside the output directory and renamed into place, so a failed
write leaves no half-written model."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from reviewgen.core.errors import InputError
from reviewgen.core.model_dir import META_FILE, Calibration, read_calibration, read_meta, write_calibration
from reviewgen.infra.storage import staged_dir
from reviewgen.score.adapt_report import AdaptReport
from reviewgen.score.adapted import AdaptedDetector, sha256_file

# sub-directories of a model directory that are training state, not the model: not copied
TRAINING_DIRS = ("state",)


def check_output_dir(model_dir: str | Path, out_dir: str | Path) -> None:
    """Refuse an output directory that is the model directory or already holds files."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise InputError(f"--out {out_dir} is the model directory itself; write the adapted model elsewhere")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"--out {out_dir} already exists and is not empty; choose a new directory")


def write_adapted_model(
    model_dir: str | Path, out_dir: str | Path, detector: AdaptedDetector, report: AdaptReport, labels_file: str | Path
) -> str:
    """Copy `model_dir` (but its training state) to `out_dir` with the lexical files, calibration.json's
    "adapted" entry, adapt_report.json and meta.json (written last) with a new content version. Returns it."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_output_dir(model_dir, out_dir)
    with staged_dir(out_dir) as tmp:  # check_output_dir: out_dir is absent or empty
        _write_adapted(model_dir, tmp, detector, report, Path(labels_file))
    return read_meta(out_dir).version


def _stale(name: str) -> bool:
    # meta.json is written last; an earlier adaptation's files are replaced, not kept beside the new ones
    return name in (META_FILE, "adapt_report.json", *TRAINING_DIRS) or (
        name.startswith(("lexical-", "lexical_")) and name.endswith(".npz")
    )


def _write_adapted(model_dir: Path, tmp: Path, detector: AdaptedDetector, report: AdaptReport, labels: Path) -> None:
    meta = read_meta(model_dir)
    shutil.copytree(
        model_dir,
        tmp,
        ignore=lambda d, names: [n for n in names if Path(d) == model_dir and _stale(n)],
        dirs_exist_ok=True,
    )
    labels_sha256 = sha256_file(labels)
    by_language = {r.language: {"human": r.human, "machine": r.machine} for r in report.languages}
    doc = {
        **detector.to_doc(tmp),
        "report": report.to_dict(),
        "labels": {
            "file": labels.name,
            "sha256": labels_sha256,
            "rows": report.rows,
            "dropped": dict(report.dropped),
            "by_language": by_language,
        },
    }
    (tmp / "adapt_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    # meta.json last, with the content version over the new calibration.json
    write_calibration(
        tmp,
        replace(read_calibration(tmp) or Calibration(), adapted=doc),
        replace(meta, adapted_from={"version": meta.version, "labels_sha256": labels_sha256}),
    )
