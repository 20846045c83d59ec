"""QMF calibration: pair drawing, features with exclusions, Cllr gain on held-out data, JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from mlsv.data.trials import Trials
from mlsv.scoring.backend import cohort_from_table
from mlsv.scoring.calibration import (
    FEATURES,
    QualityCalibrator,
    draw_calibration_pairs,
    fit_calibration,
    pair_features,
    quality_measures,
)
from mlsv.scoring.embeddings import EmbeddingTable
from mlsv.scoring.metrics import cllr, compute_metrics
from mlsv.scoring.pipeline import score_trials

DIM = 24


def _corpus(rng, n_spk: int, per_spk: int, prefix: str) -> EmbeddingTable:
    """Speaker vectors plus noise whose scale grows as the duration shrinks (so quality matters)."""
    centres = rng.standard_normal((n_spk, DIM))
    spk = np.repeat(np.arange(n_spk), per_spk)
    dur = np.exp(rng.uniform(np.log(0.5), np.log(30), len(spk)))
    noise = rng.standard_normal((len(spk), DIM)) * (2.5 / np.sqrt(dur))[:, None]
    emb = (centres[spk] + noise + 0.5).astype(np.float32)
    return EmbeddingTable(
        np.array([f"{prefix}{i}" for i in range(len(spk))]),
        emb,
        dur.astype(np.float32),
        np.array([f"{prefix}spk{s}" for s in spk]),
    )


def _trials(rng, table: EmbeddingTable, n: int) -> Trials:
    e = rng.integers(len(table), size=n)
    t = rng.integers(len(table), size=n)
    keep = e != t
    e, t = e[keep], t[keep]
    labels = (table.speakers[e] == table.speakers[t]).astype(np.int8)
    # Balance a little: add same-speaker trials.
    same = rng.integers(len(table), size=n // 2)
    partner = np.array(
        [rng.choice(np.flatnonzero((table.speakers == table.speakers[i]) & (np.arange(len(table)) != i))) for i in same]
    )
    e, t = np.r_[e, same], np.r_[t, partner]
    labels = np.r_[labels, np.ones(len(same), np.int8)]
    return Trials(table.ids[e].astype(object), table.ids[t].astype(object), labels, "heldout")


def test_draw_calibration_pairs():
    rng = np.random.default_rng(0)
    table = _corpus(rng, 20, 3, "c")
    table.speakers[-1] = "solo"  # a one-utterance speaker can only appear in non-target pairs
    pairs = draw_calibration_pairs(table, 1001, seed=1)
    assert len(pairs) == 1001 and pairs.labels.sum() == 500
    spk = table.speakers
    names = np.unique(spk)
    tar = pairs.labels == 1
    assert (spk[pairs.enroll[tar]] == spk[pairs.test[tar]]).all()
    assert (pairs.enroll[tar] != pairs.test[tar]).all()
    assert (spk[pairs.enroll[~tar]] != spk[pairs.test[~tar]]).all()
    assert (names[pairs.exclude[tar, 0]] == spk[pairs.enroll[tar]]).all() and (pairs.exclude[tar, 1] == -1).all()
    assert (names[pairs.exclude[~tar, 0]] == spk[pairs.enroll[~tar]]).all()
    assert (names[pairs.exclude[~tar, 1]] == spk[pairs.test[~tar]]).all()
    again = draw_calibration_pairs(table, 1001, seed=1)
    np.testing.assert_array_equal(again.enroll, pairs.enroll)


def test_pair_features_exclude_the_pairs_speakers():
    rng = np.random.default_rng(1)
    table = _corpus(rng, 15, 3, "c")
    cohort = cohort_from_table(table)
    pairs = draw_calibration_pairs(table, 20, seed=0)
    feats = pair_features(table, pairs, cohort, top_k=5)
    assert set(feats) == set(FEATURES)
    # Naive: remove the pair's speakers from the cohort, then AS-norm one pair at a time.
    x = table.embeddings - cohort.mean
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    for p in range(len(pairs)):
        keep = np.ones(len(cohort), bool)
        keep[[s for s in pairs.exclude[p] if s >= 0]] = False
        c = unit(cohort.vectors[keep].astype(np.float64))
        e, t = unit(x[pairs.enroll[p]].astype(np.float64)), unit(x[pairs.test[p]].astype(np.float64))
        se, st = np.sort(c @ e)[::-1][:5], np.sort(c @ t)[::-1][:5]
        s = e @ t
        expected = 0.5 * ((s - se.mean()) / se.std(ddof=1) + (s - st.mean()) / st.std(ddof=1))
        assert feats["score"][p] == pytest.approx(expected, abs=1e-4)
    q = quality_measures(table.embeddings, table.durations)
    np.testing.assert_allclose(feats["l2_e"], q["l2"][pairs.enroll])
    np.testing.assert_allclose(feats["log_dur_t"], np.log(table.durations[pairs.test]), rtol=1e-6)


def test_qmf_improves_heldout_cllr_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    cohort = _corpus(rng, 80, 8, "c")
    heldout = _corpus(rng, 40, 8, "e")
    trials = _trials(rng, heldout, 3000)
    qmf = fit_calibration(cohort, top_k=20, n_pairs=6000, seed=3)
    linear = fit_calibration(cohort, top_k=20, n_pairs=6000, seed=3, features=("score",))
    s_qmf = score_trials(heldout, trials, cohort=cohort, top_k=20, calibrator=qmf)
    s_lin = score_trials(heldout, trials, cohort=cohort, top_k=20, calibrator=linear)
    assert set(s_qmf) == {"cosine", "asnorm", "calibrated"}
    c_qmf, c_lin = cllr(s_qmf["calibrated"], trials.labels), cllr(s_lin["calibrated"], trials.labels)
    assert c_qmf < 0.97 * c_lin < 0.9, (c_qmf, c_lin)  # about 6% better on these data
    m = compute_metrics(s_qmf["calibrated"], trials.labels, calibrated=True)
    assert m["eer"] < compute_metrics(s_qmf["asnorm"], trials.labels)["eer"]
    # JSON round trip gives identical LLRs and keeps threshold and settings.
    path = tmp_path / "cal.json"
    qmf.save(path)
    back = QualityCalibrator.load(path)
    again = score_trials(heldout, trials, cohort=cohort, top_k=20, calibrator=back)
    np.testing.assert_allclose(again["calibrated"], s_qmf["calibrated"], rtol=1e-12, atol=1e-12)
    assert back.threshold_ == qmf.threshold_ and back.info["top_k"] == 20
    assert back.decide(np.array([back.threshold_]))[0]


def test_calibrator_prior_threshold_and_errors():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(2000, int), np.zeros(20000, int)]
    score = rng.normal(y * 3.0, 1.0)
    feats = {"score": score, "log_dur_e": rng.normal(size=len(y))}
    balanced = QualityCalibrator(("score",), prior=0.5, regularization=100).fit(feats, y)
    empirical = QualityCalibrator(("score",), prior=None, regularization=100).fit(feats, y)
    # Both output LLRs (the training prior's log-odds removed): with unit-variance Gaussian scores at 0
    # and 3, the true LLR is 3 s - 4.5.
    true = 3.0 * score - 4.5
    for cal in (balanced, empirical):
        assert np.median(np.abs(cal.transform(feats) - true)) < 0.15
    far = QualityCalibrator(("score",), threshold="far", target_far=0.05).fit(feats, y)
    llr = far.transform(feats)
    assert np.mean(llr[y == 0] >= far.threshold_) <= 0.05
    bayes = QualityCalibrator(("score",), threshold="bayes", p_target=0.01).fit(feats, y)
    assert bayes.threshold_ == pytest.approx(np.log(99))
    with pytest.raises(ValueError, match="features"):
        QualityCalibrator(("score", "nope"))
    with pytest.raises(KeyError, match="l1_e"):
        QualityCalibrator(("score", "l1_e")).fit(feats, y)
    with pytest.raises(RuntimeError, match="not fitted"):
        QualityCalibrator().transform(feats)
    with pytest.raises(ValueError, match="cohort"):
        fit_calibration(_corpus(rng, 5, 2, "c"), top_k=4, n_pairs=10)


def test_calibration_pair_errors_name_the_setting_and_the_need():
    from mlsv.scoring.calibration import draw_calibration_pairs, pair_features

    rng = np.random.default_rng(0)
    table = EmbeddingTable(
        ids=np.array([f"u{i}" for i in range(12)]),
        embeddings=rng.normal(size=(12, 8)),
        durations=np.ones(12, np.float32),
        speakers=np.repeat(np.array(["a", "b", "c", "d"]), 3),
    )
    with pytest.raises(ValueError, match=r"n_pairs \(--calibration-pairs\) must be at least 2, got 1"):
        draw_calibration_pairs(table, 1)
    pairs, cohort = draw_calibration_pairs(table, 20), cohort_from_table(table, np.zeros(8))
    with pytest.raises(ValueError, match=r"top_k \(--asnorm-top-k\) must be at least 2, got 1"):
        pair_features(table, pairs, cohort, 1)
    with pytest.raises(ValueError, match=r"the cohort has 4 speakers, too few .* top_k=3: .* needs top_k \+ 2 = 5"):
        pair_features(table, pairs, cohort, 3)
