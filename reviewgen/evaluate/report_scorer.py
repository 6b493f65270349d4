"""The scorer section of report.md: the scorer's mode and calibration, its metrics per sampling setting,
another generator's labelled reviews (`--fakes`) and the `reviewgen calibrate` check on them, and each
signal's AUROC alone."""

from __future__ import annotations

import json
from typing import Any, Mapping

from reviewgen.core.model_dir import Calibration
from reviewgen.evaluate.jsonio import json_default
from reviewgen.evaluate.markdown import table
from reviewgen.evaluate.results import EvalResult, ScorerResult
from reviewgen.evaluate.world import LengthBin
from reviewgen.score.combiner import Detector


def scorer_lines(r: EvalResult) -> list[str]:
    """The scorer section: its mode, the out-of-family generator, the calibration, and its tables."""
    ood = r.meta.out_of_family
    return [
        "## Scorer",
        "",
        f"p_human: {r.scorer.section.get('mode', 'discriminator-only')}. Out-of-family generator: "
        + (
            f"`{ood.model_dir}` ({ood.generator_params / 1e6:.2f}M parameters, seed {ood.seed}), sampled at top-k "
            "40; never used to fit or calibrate the scorer."
            if ood
            else "none given (no out-of-family check)."
        ),
        "",
        f"Calibration: {json.dumps(_calibration_summary(r.calibration), default=json_default)}",
        "",
        _scorer_table(r.scorer),
        "",
        _fakes_table(r.scorer),
        "",
        "AUROC of each signal alone (oriented by its known direction; human = positive):",
        "",
        _signal_table(r.scorer),
        "",
    ]


def _scorer_table(scorer: ScorerResult) -> str:
    rows = []
    for label, s in scorer.settings.items():
        for kind in ("calibrated", "discriminator", "uncalibrated", "tfidf_lr"):
            if kind not in s:
                continue
            m = s[kind]
            name = {"calibrated": "p_human", "discriminator": "D (Platt)", "uncalibrated": "D (raw)"}.get(kind, kind)
            rows.append(
                [
                    f"human vs {label}" + ("" if s["in_calibration"] else " (not in calibration)"),
                    s.get("source", "own"),
                    name,
                    m["auroc"],
                    m.get("tpr_1pct_fpr"),
                    m.get("tpr_5pct_fpr"),
                    m["accuracy"],
                    m["f1"],
                    m["ece"],
                    m.get("ece_floor"),
                    m["brier"],
                ]
            )
    return table(
        [
            "setting",
            "source",
            "scorer",
            "AUROC",
            "TPR@1%FPR",
            "TPR@5%FPR",
            "accuracy",
            "F1",
            "ECE",
            "ECE floor",
            "Brier",
        ],
        rows,
    )


def _fakes_table(scorer: ScorerResult) -> str:
    """The scorer on another generator's labelled reviews (`--fakes`), per language and length bin."""
    f = scorer.fakes
    if f is None:
        return "No fakes file of another generator was read (`--fakes`)."
    rows = [
        [
            lang,
            m.n_human,
            m.n_machine,
            m.auroc,
            m.worst_bin_auroc,
            " / ".join(_length_bin(b) for b in m.length_bins),
            m.tpr_1pct_fpr,
            m.tpr_5pct_fpr,
            m.flagged_1pct,
            m.humans_flagged_1pct,
            m.ece,
            m.confident_human,
            m.out_of_domain_machine,
            m.out_of_domain_human,
        ]
        for lang, m in f.languages.items()
    ]
    return (
        f"Another generator's reviews, never fitted on: `{f.file}` ({f.rows} rows). TPR at 1%/5% FPR of "
        "the file's own humans; flagged: by the model's stored 1% threshold (machine reviews, and humans "
        "falsely accused).\n\n"
        + table(
            [
                "language",
                "humans",
                "machine",
                "AUROC",
                "worst length bin",
                "AUROC by length (chars)",
                "TPR@1%",
                "TPR@5%",
                "flagged 1%",
                "humans flagged 1%",
                "ECE",
                "machine p_human>=0.9",
                "out-of-domain (machine)",
                "out-of-domain (human)",
            ],
            rows,
        )
        + "\n\n"
        + _calibrate_lines(f.calibrate)
    )


def _calibrate_lines(cal: Mapping[str, Any] | None) -> str:
    """`reviewgen calibrate` on the fakes file: fitted on half its groups, reported on the other half."""
    if not cal:
        return "No calibrate check: the fakes file has no group column (hotel_name, product_title, product_id)."
    if "skipped" in cal:
        return f"Calibrate check skipped: {cal['skipped']}"
    rows = [
        [
            x["language"],
            x["rows"],
            x["adapted"],
            x["auroc"],
            x["tpr_1pct"],
            x["tpr_5pct"],
            x["ece"],
            x["zero_shot_auroc"],
        ]
        for x in cal["languages"]
    ]
    return f"`reviewgen calibrate` with the file's labels, {cal['evaluation']} (fitted on the other half):\n\n" + table(
        ["language", "rows", "adapted", "AUROC", "TPR@1%", "TPR@5%", "ECE", "zero-shot AUROC"], rows
    )


def _length_bin(b: LengthBin) -> str:
    auc = "-" if b.auroc is None else f"{b.auroc:.3f}"
    lo, hi = b.chars
    return f"{lo}-{hi}: {auc}"


def _signal_table(scorer: ScorerResult) -> str:
    settings = {k: s for k, s in scorer.settings.items() if s.get("signals")}
    names = list(next(iter(settings.values()))["signals"]) if settings else []
    return table(["setting", *names], [[k, *[s["signals"][n] for n in names]] for k, s in settings.items()])


def _calibration_summary(calib: Calibration | None) -> Mapping[str, Any] | None:
    """The calibration with each language's detector combiner reduced to its features, weights and choice
    (the per-candidate detail stays in metrics.json)."""
    if calib is None or calib.detector is None:
        return None if calib is None else calib.to_dict()
    det = Detector.from_dict(calib.detector)
    return {
        **{k: v for k, v in calib.to_dict().items() if k != "detector"},
        "detector": {
            lang: {
                "features": list(c.features),
                "weights": [round(w, 4) for w in c.weights],
                "candidate": c.info.get("candidate"),
                "worst_held_out_auroc": c.info.get("worst_held_out_auroc"),
                "dropped_for_sign": c.info.get("dropped_for_sign"),
            }
            for lang, c in det.combiners.items()
        },
    }
