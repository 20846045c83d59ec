"""DET and histogram PNGs, the markdown report, and the scores/metrics writers."""

from __future__ import annotations

import json

import numpy as np

from mlsv.data.trials import Trials
from mlsv.scoring.pipeline import write_metrics_json, write_scores_tsv
from mlsv.scoring.plots import plot_det, plot_histogram, write_report


def test_plots_and_report(tmp_path):
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(100, int), np.zeros(1000, int)]
    s = rng.normal(y * 2.0, 1.0)
    det = plot_det({"cosine": (s, y), "asnorm": (s * 1.1, y)}, tmp_path / "det.png")
    hist = plot_histogram(s, y, tmp_path / "plots" / "hist.png", threshold=1.0)
    for p in (det, hist):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = {"vox1_O": {"eer": 1.234, "min_dcf_0.01": 0.1, "min_dcf_0.05": 0.05, "n_trials": 1100}}
    report = write_report(tmp_path, metrics, [det, hist])
    text = report.read_text()
    assert "| vox1_O | 1.2340 |" in text
    assert "](det.png)" in text and "](plots/hist.png)" in text


def test_writers(tmp_path):
    trials = Trials(np.array(["a", "b"], object), np.array(["c", "d"], object), np.array([1, -1], np.int8), "t")
    path = write_scores_tsv(
        tmp_path / "s.tsv", trials, {"cosine": np.array([0.5, 0.25]), "asnorm": np.array([3.0, -1.5])}
    )
    assert path.read_text() == "enroll\ttest\tscore\tlabel\na\tc\t3\t1\nb\td\t-1.5\t\n"
    write_metrics_json(tmp_path / "m.json", {"t": {"eer": 1.0, "min_dcf_0.01_threshold": float("inf")}})
    assert json.loads((tmp_path / "m.json").read_text()) == {"t": {"eer": 1.0, "min_dcf_0.01_threshold": None}}
