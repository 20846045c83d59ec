"""The `evaluate` metric module loads offline from its folder and matches mlsv.scoring.metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlsv.scoring.metrics import compute_metrics

MODULE = Path(__file__).resolve().parents[1] / "metrics" / "mlsv_verification"


def test_evaluate_module_matches_library():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(MODULE))
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200, int), np.zeros(2000, int)]
    scores = np.round(rng.normal(labels * 2.0, 1.0), 2)  # with ties
    got = metric.compute(predictions=scores.tolist(), references=labels.tolist())
    ref = compute_metrics(scores, labels)
    for key in (
        "eer",
        "eer_threshold",
        "min_dcf_0.01",
        "min_dcf_0.05",
        "min_dcf_0.01_threshold",
        "min_dcf_0.05_threshold",
        "n_trials",
        "n_target",
        "n_nontarget",
    ):
        assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key
    got = metric.compute(predictions=scores, references=labels, p_targets=[0.001])
    assert got["min_dcf_0.001"] == pytest.approx(compute_metrics(scores, labels, (0.001,))["min_dcf_0.001"])
    with pytest.raises(ValueError, match="both target"):
        metric.compute(predictions=[0.1, 0.2], references=[1, 1])
