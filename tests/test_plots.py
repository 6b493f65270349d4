"""Each plot function writes a real, non-empty PNG; importing the module pulls in no matplotlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from reviewgen.core import metrics
from reviewgen.evaluate import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 2000  # something was drawn, not an empty canvas header


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, reviewgen.evaluate.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_training_curves_with_missing_keys(tmp_path: Path) -> None:
    history = [{"phase": "mle", "step": i, "g_loss": 5 - i * 0.1, "val_nll": 4 - i * 0.05} for i in range(10)]
    history += [{"phase": "adv", "step": 10 + i, "g_loss": 3.0, "d_loss": 0.7, "d_acc": 0.6} for i in range(10)]
    history.append({"step": 25})
    p = plots.plot_training_curves(history, tmp_path / "sub" / "curves.png")
    assert p == tmp_path / "sub" / "curves.png"
    assert_png(p)


def test_quality_diversity(tmp_path: Path) -> None:
    curves = {
        "GAN": [(0.30, 0.20, 0.7), (0.25, 0.18, 1.0), (0.20, 0.15, 1.3)],
        "MLE": [(0.35, 0.21), (0.22, 0.16)],
    }
    assert_png(plots.plot_quality_diversity(curves, (0.18, 0.19), tmp_path / "qd.png"))
    assert_png(plots.plot_quality_diversity(curves, None, tmp_path / "qd2.png"))


def test_roc_reliability_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.clip(rng.random(300) * 0.7 + 0.3 * y, 0, 1)
    fpr, tpr, _ = metrics.roc_curve(y, s)
    assert_png(plots.plot_roc({"D": (fpr, tpr), "baseline": ([0, 1], [0, 1])}, tmp_path / "roc.png"))
    bins = metrics.reliability_bins(y, s, n_bins=15)  # has empty (NaN) bins at the ends
    assert_png(plots.plot_reliability(bins, tmp_path / "rel.png"))
    assert_png(plots.plot_score_histograms({"human": s[y == 1], "generated": s[y == 0]}, tmp_path / "hist.png"))


def test_distributions_lengths_and_ratings(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    real_len = rng.poisson(40, 500).tolist()
    gen_len = {"GAN": rng.poisson(35, 300).tolist(), "MLE": rng.poisson(30, 300).tolist()}
    assert_png(plots.plot_distributions(real_len, gen_len, tmp_path / "len.png", "review length (tokens)"))
    real_r = rng.integers(1, 6, 200).tolist()
    assert_png(plots.plot_distributions(real_r, {"GAN": [5, 5, 4, 1]}, tmp_path / "rating.png", "rating"))
