"""Metric values on hand-built score sets, ties, and agreement with scikit-learn's ROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from mlsv.scoring.metrics import act_dcf, cllr, compute_metrics, det_curve, eer, min_dcf


def test_eer_perfect_separation():
    value, thr = eer([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    assert value == 0.0
    assert 0.3 < thr <= 0.8


def test_eer_hand_computed_interpolation():
    # Non-targets 1, 2, 5; targets 3, 4. DET points (threshold: p_miss, p_fa):
    # 1: (0, 1), 2: (0, 2/3), 3: (0, 1/3), 4: (1/2, 1/3), 5: (1, 1/3), inf: (1, 0).
    # p_miss - p_fa goes from -1/3 at 3 to +1/6 at 4, crossing at a = (1/3) / (1/2) = 2/3 of the way:
    # EER = 0 + 2/3 * 1/2 = 1/3, threshold 3 + 2/3.
    value, thr = eer([1, 2, 3, 4, 5], [0, 0, 1, 1, 0])
    assert value == pytest.approx(100 / 3)
    assert thr == pytest.approx(3 + 2 / 3)


def test_eer_ties_grouped():
    # All scores tied: the only points are accept-all (0, 1) and reject-all (1, 0): EER 50%.
    value, thr = eer([0.5] * 6, [1, 1, 1, 0, 0, 0])
    assert value == pytest.approx(50.0)
    assert thr == 0.5
    # A tie across classes at the crossing: scores 1(non) 2(tar) 2(non) 3(tar).
    # Points: t=1: (0, 1); t=2: (0, 1/2); t=3: (1/2, 0); inf: (1, 0) -> d: -1, -1/2, 1/2: a = 1/2 -> 25%.
    value, thr = eer([1, 2, 2, 3], [0, 1, 0, 1])
    assert value == pytest.approx(25.0)
    assert thr == pytest.approx(2.5)


def test_eer_matches_sklearn_roc_interpolation():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(300, int), np.zeros(3000, int)]
    scores = np.round(np.r_[rng.normal(2, 1, 300), rng.normal(0, 1, 3000)], 2)  # many ties
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    # Classic EER: where the linearly interpolated ROC crosses fnr = fpr.
    classic = brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)
    assert eer(scores, labels)[0] == pytest.approx(100 * classic, abs=1e-6)
    # Our DET points are exactly sklearn's ROC points (ties grouped).
    c = det_curve(scores, labels)
    ours = sorted(zip(np.round(c.p_fa, 12), np.round(1 - c.p_miss, 12)))
    theirs = sorted(zip(np.round(fpr, 12), np.round(tpr, 12)))
    assert ours == theirs
    # Never worse than the reference's nearest-point max(fpr, fnr).
    i = np.argmin(np.abs((1 - tpr) - fpr))
    assert eer(scores, labels)[0] <= 100 * max(fpr[i], 1 - tpr[i]) + 1e-9


def test_min_dcf_hand_computed():
    scores = [1, 2, 3, 4, 5]
    labels = [0, 0, 1, 1, 0]
    # p=0.5: cost = 0.5 (p_miss + p_fa); best at t=3 (0 + 1/3) -> 1/6; normalised by 0.5 -> 1/3.
    value, thr = min_dcf(scores, labels, 0.5)
    assert value == pytest.approx(1 / 3)
    assert thr == 3
    # p=0.01: false alarms dominate; reject all (p_miss 1) costs 0.01, normalised 1.0, threshold inf.
    value, thr = min_dcf(scores, labels, 0.01)
    assert value == pytest.approx(1.0)
    assert math.isinf(thr)


def test_min_dcf_ties_are_one_threshold():
    # Tied target and non-target at 2: splitting the tie would give cost 0 (accept the target only);
    # grouped, the best is t=3: p_miss 1/2, p_fa 0 -> 0.5 * 0.5 / 0.5 = 0.5.
    value, _ = min_dcf([1, 2, 2, 3], [0, 1, 0, 1], 0.5)
    assert value == pytest.approx(0.5)


def test_min_dcf_matches_bruteforce():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(labels * 1.5, 1), 1)
    for p in (0.01, 0.05, 0.5):
        best = min(
            (p * np.mean(scores[labels == 1] < t) + (1 - p) * np.mean(scores[labels == 0] >= t))
            for t in np.r_[np.unique(scores), np.inf]
        ) / min(p, 1 - p)
        assert min_dcf(scores, labels, p)[0] == pytest.approx(best)


def test_act_dcf_and_cllr():
    llr = np.array([3.0, 1.0, -1.0, -3.0])
    y = np.array([1, 0, 1, 0])
    # Bayes threshold at p=0.5 is 0: one miss (-1) of two targets, one false alarm (1) of two non-targets.
    assert act_dcf(llr, y, 0.5) == pytest.approx(1.0)
    expected = (np.log1p(np.exp(-3)) + np.log1p(np.exp(1)) + np.log1p(np.exp(1)) + np.log1p(np.exp(-3))) / 4
    assert cllr(llr, y) == pytest.approx(expected / np.log(2))
    assert cllr(np.zeros(4), y) == pytest.approx(1.0)
    # p=0.01: threshold log(99) = 4.6: everything rejected -> p_miss 1 -> cost 0.01/0.01 = 1.
    assert act_dcf(llr, y, 0.01) == pytest.approx(1.0)


def test_compute_metrics_keys_and_errors():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(50, int), np.zeros(500, int)]
    s = rng.normal(y * 2.0, 1)
    m = compute_metrics(s, y)
    assert {"eer", "min_dcf_0.01", "min_dcf_0.05", "n_trials"} <= set(m)
    assert m["n_trials"] == 550 and m["n_target"] == 50
    assert "cllr" not in m
    mc = compute_metrics(s, y, calibrated=True)
    assert {"act_dcf_0.01", "act_dcf_0.05", "cllr"} <= set(mc)
    assert mc["act_dcf_0.01"] >= mc["min_dcf_0.01"] - 1e-12
    with pytest.raises(ValueError, match="both target"):
        eer([1, 2], [1, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        eer([1, 2], [1, -1])
    with pytest.raises(ValueError, match="NaN"):
        eer([1, np.nan], [1, 0])
