"""The blind SNR estimate (mlsv.data.audio.estimate_snr), SNR in embedding tables, the SNR quality features of
the QMF calibration and its conditions guard (docs/evaluation.md#calibration-conditions): a calibration fitted
on clean speech refuses noisy trials, old calibration files load unchanged, `mlsv score` counts the trials
outside and gives metrics on the rest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlsv.data.audio import SNR_RANGE, estimate_snr
from mlsv.data.synthetic import SAMPLE_RATE, _coloured_noise, _talker, sample_session, sample_voice, synthesize
from mlsv.data.trials import Trials
from mlsv.models import scoring_mlsv
from mlsv.scoring.calibration import (
    FEATURES,
    FORMAT_VERSION,
    SNR_FEATURES,
    QualityCalibrator,
    draw_calibration_pairs,
    fit_calibration,
    pair_features,
)
from mlsv.scoring.embeddings import EmbeddingTable, load_embeddings, pool_rows, save_embeddings
from mlsv.scoring.metrics import cllr
from mlsv.scoring.pipeline import calibration_outside, score_trials, trial_metrics

DIM = 16


def _speech(seed: int, seconds: float) -> np.ndarray:
    """One synthetic utterance (phones and pauses) of a speaker ``seed``, float64 at 16 kHz."""
    rng = np.random.default_rng([seed, 1])
    return synthesize(sample_voice(np.random.default_rng([seed, 0])), sample_session(rng, 3.0), seconds, rng).astype(
        np.float64
    )


def _add_noise(x: np.ndarray, snr_db: float, rng, kind: str = "white") -> np.ndarray:
    """``x`` plus noise at a global SNR of ``snr_db`` (mean speech power over noise power)."""
    if kind == "babble":
        n = sum(_talker(i, rng, len(x) / SAMPLE_RATE, 3.0, 5)[: len(x)] for i in range(3))
    else:
        n = _coloured_noise(len(x), 0.0 if kind == "white" else 1.0, rng)
    n = n / np.sqrt(np.mean(n**2))
    return x + n * np.sqrt(np.mean(x**2) / 10 ** (snr_db / 10))


# -- the estimate ------------------------------------------------------------------------------------


def test_snr_estimate_is_monotone_in_the_true_snr_and_high_on_clean_speech():
    """Over 0-20 dB of white or pink noise the estimate rises with the true SNR on every utterance and reads
    3 to 13 dB above it (measured on 12 utterances: +3.5 to +8.1 white, +4.1 to +12.9 pink: it compares loud
    speech frames with the pauses, not mean speech power with noise power); clean synthetic speech of 1.5 s
    or more reads above 35 dB (measured: 38 and up); babble at 5 dB below clean. The Hub pipeline's copy of
    the arithmetic gives the same values."""
    rng = np.random.default_rng(0)
    true = np.array([0.0, 5.0, 10.0, 15.0, 20.0])
    for k in range(5):
        x = _speech(k, 2.0 + 0.5 * k)
        clean = estimate_snr(x, SAMPLE_RATE)
        assert clean > 35.0 and clean <= SNR_RANGE[1]
        assert scoring_mlsv.estimate_snr(x, SAMPLE_RATE) == clean
        for kind in ("white", "pink"):
            est = np.array([estimate_snr(_add_noise(x, s, rng, kind), SAMPLE_RATE) for s in true])
            assert (np.diff(est) > 0).all(), (kind, est)
            assert ((est - true >= 3.0) & (est - true <= 13.0)).all(), (kind, est - true)
            assert (est < clean).all()
        babble = estimate_snr(_add_noise(x, 5.0, rng, "babble"), SAMPLE_RATE)
        assert babble < clean - 5.0
    # the frame powers, computed 1,000 frames at a time, are those of explicit 25 ms frames every 10 ms
    long = np.concatenate([_add_noise(_speech(k, 4.0), 10.0 * k, rng) for k in range(6)]).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(long.astype(np.float64), 400)[::160]
    power = (frames**2).mean(1)
    noise, speech = np.percentile(power, 5), np.percentile(power, 95)
    assert estimate_snr(long, SAMPLE_RATE) == pytest.approx(10 * np.log10((speech - noise) / noise), abs=1e-6)
    assert scoring_mlsv.estimate_snr(long, SAMPLE_RATE) == estimate_snr(long, SAMPLE_RATE)
    # edge cases: digital silence in the pauses is the top of the range, noise alone the bottom, any length
    x = _speech(9, 1.5)
    x[: SAMPLE_RATE // 2] = 0.0
    assert estimate_snr(x, SAMPLE_RATE) == SNR_RANGE[1]
    assert estimate_snr(rng.standard_normal(SAMPLE_RATE), SAMPLE_RATE) < 3.0
    assert SNR_RANGE[0] <= estimate_snr(np.ones(10), SAMPLE_RATE) <= SNR_RANGE[1]


# -- tables --------------------------------------------------------------------------------------------


def test_tables_round_trip_snr_and_older_files_load_it_unknown(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3, 4)).astype(np.float32)
    table = EmbeddingTable(np.array(["a", "b", "c"]), emb, [1.0, 2.0, 3.0], np.array(["x", "x", "y"]), [40.0, 12.5, 7])
    save_embeddings(table, tmp_path / "t.npz")
    back = load_embeddings(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.snr, np.array([40.0, 12.5, 7.0], np.float32))
    assert back.has_snr
    # a file written before mlsv stored SNR (no "snr" array): it loads, SNR unknown
    np.savez(tmp_path / "old.npz", ids=table.ids, embeddings=emb, durations=table.durations, speakers=table.speakers)
    old = load_embeddings(tmp_path / "old.npz")
    assert np.isnan(old.snr).all() and not old.has_snr and old.snr.shape == (3,)
    save_embeddings(old, tmp_path / "again.npz")
    assert "snr" not in np.load(tmp_path / "again.npz").files  # unknown is not written
    with pytest.raises(ValueError, match="snr has shape"):
        EmbeddingTable(table.ids, emb, table.durations, snr=[1.0, 2.0])
    # rows pooled (one speaker's recordings, a file's chunks): SNR weighted by duration
    pooled = pool_rows(["s", "s", "t"], emb, table.durations, table.snr)
    np.testing.assert_allclose(pooled.snr, [(40.0 * 1 + 12.5 * 2) / 3, 7.0], rtol=1e-6)
    assert np.isnan(pool_rows(["s", "s", "t"], emb, table.durations).snr).all()


# -- calibration -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus():
    """14 synthetic speakers x 5 utterances (1.5-3 s of synthetic speech): each recording's SNR estimated
    clean and with white noise at 5 dB; embeddings a speaker vector plus noise whose scale grows as the
    recording gets noisier (as a real encoder's embeddings drift with the channel)."""
    rng = np.random.default_rng(3)
    n_spk, per = 14, 5
    centres = rng.standard_normal((n_spk, DIM))
    spk = np.repeat(np.arange(n_spk), per)
    seconds = rng.uniform(1.5, 3.0, len(spk))
    clean_snr, noisy_snr = [], []
    for i, (s, sec) in enumerate(zip(spk, seconds)):
        x = _speech(100 * s + i, sec)
        clean_snr.append(estimate_snr(x, SAMPLE_RATE))
        noisy_snr.append(estimate_snr(_add_noise(x, 5.0, rng), SAMPLE_RATE))
    ids = np.array([f"u{i}" for i in range(len(spk))])
    clean = EmbeddingTable(
        ids,
        (centres[spk] + 0.6 * rng.standard_normal((len(spk), DIM))).astype(np.float32),
        seconds,
        np.array([f"s{s}" for s in spk]),
        np.array(clean_snr),
    )
    noisy = EmbeddingTable(
        np.array([f"n{i}" for i in range(len(spk))]),
        (centres[spk] + 0.3 + 1.6 * rng.standard_normal((len(spk), DIM))).astype(np.float32),
        seconds,
        np.array([f"s{s}" for s in spk]),
        np.array(noisy_snr),
    )
    return clean, noisy


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``mlsv ARGV`` in this process: (exit code, what it printed to stdout and stderr)."""
    from mlsv.cli import main

    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def _both(clean: EmbeddingTable, noisy: EmbeddingTable) -> EmbeddingTable:
    return EmbeddingTable(
        np.r_[clean.ids, noisy.ids],
        np.r_[clean.embeddings, noisy.embeddings],
        np.r_[clean.durations, noisy.durations],
        np.r_[clean.speakers, noisy.speakers],
        np.r_[clean.snr, noisy.snr],
    )


def _cross_trials(a: EmbeddingTable, b: EmbeddingTable, name: str) -> Trials:
    """Every row of ``a`` against every row of ``b`` (different ids), labelled by speaker."""
    e, t = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    e, t = e.ravel(), t.ravel()
    keep = a.ids[e] != np.char.replace(b.ids[t], "n", "u")  # not a recording against its own noisy copy
    e, t = e[keep], t[keep]
    labels = (a.speakers[e] == b.speakers[t]).astype(np.int8)
    return Trials(a.ids[e].astype(object), b.ids[t].astype(object), labels, name)


def test_a_calibration_fitted_on_clean_speech_refuses_noisy_trials_and_accepts_clean_ones(corpus):
    clean, noisy = corpus
    assert min(clean.snr) > max(noisy.snr) + 10  # the estimate separates the two conditions
    cal = fit_calibration(clean, top_k=5, n_pairs=600)
    assert cal.features == FEATURES and set(cal.conditions_) == {"log_dur", "snr"} and cal.unguarded == []
    lo, hi = cal.conditions_["snr"]
    # the 1st-99th percentiles of the pairs' sides, widened by 3 dB
    assert min(clean.snr) - 3.0 - 1e-4 <= lo < np.median(clean.snr) < hi <= max(clean.snr) + 3.0 + 1e-4
    both = _both(clean, noisy)
    inside = calibration_outside(both, _cross_trials(clean, clean, "clean"), cal)
    outside = calibration_outside(both, _cross_trials(clean, noisy, "noisy"), cal)
    assert inside.mean() < 0.05 and outside.all()
    # the reasons name the side, the measure, the value and the fitted range
    pairs = draw_calibration_pairs(both, 40, seed=1)
    from mlsv.scoring.backend import cohort_from_table, embedding_mean

    feats = pair_features(both, pairs, cohort_from_table(both, embedding_mean(both.embeddings)), 5)
    reasons = cal.outside_reasons(feats)
    flagged = [r for r in reasons if r]
    assert flagged and all("SNR" in r and "outside the calibration's" in r and " dB" in r for r in flagged)
    np.testing.assert_array_equal(cal.outside_conditions(feats), [r is not None for r in reasons])
    assert scoring_mlsv.outside_reasons(cal.conditions_, feats) == reasons  # the Hub pipeline's copy
    # a cohort without SNR estimates: duration still guarded, SNR said to be unguarded
    bare = EmbeddingTable(clean.ids, clean.embeddings, clean.durations, clean.speakers)
    cal_bare = fit_calibration(bare, top_k=5, n_pairs=600)
    assert set(cal_bare.conditions_) == {"log_dur"} and cal_bare.unguarded == ["snr"]
    short = EmbeddingTable(noisy.ids, noisy.embeddings, noisy.durations * 0.2, noisy.speakers, noisy.snr)
    assert calibration_outside(_both(clean, short), _cross_trials(clean, short, "short"), cal_bare).all()
    with pytest.raises(ValueError, match="SNR estimate"):
        fit_calibration(bare, top_k=5, n_pairs=600, with_snr=True)


def test_snr_features_fitted_on_clean_and_noisy_pairs_are_less_overconfident_on_noisy_trials(corpus):
    """The clean-only calibration extrapolates to noisy trials and is over-confident there: in this corpus it
    says "different speakers" to noisy same-speaker trials (mean target LLR about -4; Cllr 2.9, worse than no
    decision). One with the SNR features, fitted on clean and noisy recordings, brings the noisy targets'
    LLRs up, its Cllr on noisy trials below 1 (measured 0.75), and counts them inside its conditions. (Here
    the embedding norms already carry the noise: without the SNR features the clean+noisy fit does as well,
    Cllr 0.75; what the SNR estimate adds for certain is the guard.)"""
    from mlsv.scoring.backend import embedding_mean

    clean, noisy = corpus
    both = _both(clean, noisy)
    mean = embedding_mean(both.embeddings)
    clean_only = fit_calibration(clean, mean=mean, top_k=5, n_pairs=2000)
    with_snr = fit_calibration(both, mean=mean, top_k=5, n_pairs=2000, with_snr=True)
    assert with_snr.features == FEATURES + SNR_FEATURES
    trials = _cross_trials(clean, noisy, "noisy")
    a = score_trials(both, trials, cohort=both, top_k=5, calibrator=clean_only)["calibrated"]
    b = score_trials(both, trials, cohort=both, top_k=5, calibrator=with_snr)["calibrated"]
    tar = trials.labels == 1
    assert cllr(a, trials.labels) > 1.5 and cllr(b, trials.labels) < 1.0
    assert a[tar].mean() < -2.0 and b[tar].mean() > a[tar].mean() + 2.0
    assert calibration_outside(both, trials, with_snr).mean() < 0.05
    assert calibration_outside(both, trials, clean_only).all()
    # metrics on all trials and on those inside the conditions
    mixed = _cross_trials(clean, both, "mixed")
    scores = score_trials(both, mixed, cohort=both, top_k=5, calibrator=clean_only)
    out = calibration_outside(both, mixed, clean_only)
    m = trial_metrics(mixed, scores, outside=out)
    assert m["n_outside_calibration"] == int(out.sum()) > 0 and m["n_trials"] == len(mixed)
    assert m["inside_calibration"]["n_trials"] == len(mixed) - int(out.sum())
    assert "cllr" in m["inside_calibration"] and "act_dcf_0.01" in m["inside_calibration"]
    assert "n_outside_calibration" not in trial_metrics(mixed, scores, stage="asnorm", outside=out)


def test_old_calibration_files_load_unchanged_and_guard_nothing(corpus, tmp_path):
    clean, noisy = corpus
    cal = fit_calibration(clean, top_k=5, n_pairs=600)
    d = cal.to_dict()
    assert d["format_version"] == FORMAT_VERSION == 2 and d["conditions"] == cal.conditions_
    old = {k: v for k, v in d.items() if k != "conditions"}
    old["format_version"] = 1
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = QualityCalibrator.load(tmp_path / "old.json")
    both = _both(clean, noisy)
    trials = _cross_trials(clean, noisy, "noisy")
    want = score_trials(both, trials, cohort=both, top_k=5, calibrator=cal)["calibrated"]
    got = score_trials(both, trials, cohort=both, top_k=5, calibrator=loaded)["calibrated"]
    np.testing.assert_array_equal(got, want)  # the same LLRs
    assert loaded.conditions_ == {} and loaded.unguarded == ["log_dur", "snr"]
    assert not calibration_outside(both, trials, loaded).any()
    cal.save(tmp_path / "new.json")
    assert QualityCalibrator.load(tmp_path / "new.json").conditions_ == cal.conditions_
    # a calibration with the SNR features refuses recordings without an estimate, saying what to do
    with_snr = fit_calibration(clean, top_k=5, n_pairs=600, with_snr=True)
    bare = EmbeddingTable(both.ids, both.embeddings, both.durations, both.speakers)
    with pytest.raises(ValueError, match="embed them again"):
        score_trials(bare, trials, cohort=both, top_k=5, calibrator=with_snr)


def test_score_command_counts_the_trials_outside_and_gives_metrics_on_the_rest(corpus, tmp_path, capsys):
    clean, noisy = corpus
    both = _both(clean, noisy)
    save_embeddings(both, tmp_path / "emb.npz")
    save_embeddings(clean, tmp_path / "cohort.npz")
    trials = _cross_trials(clean, both, "mixed")
    (tmp_path / "mixed.txt").write_text(
        "".join(f"{lab} {e} {t}\n" for lab, e, t in zip(trials.labels, trials.enroll, trials.test))
    )
    code, _ = run_cli(
        ["calibrate", "--embeddings", str(tmp_path / "cohort.npz"), "--asnorm-top-k", "5", "--pairs", "600",
         "--out", str(tmp_path / "cal.json"), "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert code == 0
    common = ["score", "--embeddings", str(tmp_path / "emb.npz"), "--trials", str(tmp_path / "mixed.txt"),
              "--cohort", str(tmp_path / "cohort.npz"), "--asnorm-top-k", "5", "--calibration",
              str(tmp_path / "cal.json"), "--out", str(tmp_path / "s.tsv"), "--device", "cpu"]  # fmt: skip
    code, out = run_cli([*common, "--metrics", str(tmp_path / "m.json")], capsys)
    assert code == 0
    n_out = int(calibration_outside(both, trials, QualityCalibrator.load(tmp_path / "cal.json")).sum())
    assert n_out > 0 and f"mixed: {n_out} of {len(trials)} trials outside the calibration's conditions" in out
    assert "all trials: actDCF0.01" in out and "inside the conditions" in out
    m = json.loads((tmp_path / "m.json").read_text())["mixed"]
    assert m["n_outside_calibration"] == n_out and m["inside_calibration"]["n_trials"] == len(trials) - n_out
    code, out = run_cli([*common, "--metrics", str(tmp_path / "m2.json"), "--no-calibration-guard"], capsys)
    m2 = json.loads((tmp_path / "m2.json").read_text())["mixed"]
    assert code == 0 and "outside" not in out and "n_outside_calibration" not in m2
    assert m2["cllr"] == m["cllr"]
    # --quality snr: the SNR features join
    code, out = run_cli(
        ["calibrate", "--embeddings", str(tmp_path / "cohort.npz"), "--asnorm-top-k", "5", "--pairs", "600",
         "--out", str(tmp_path / "cal_snr.json"), "--quality", "snr", "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "conditions guard: log_dur" in out
    assert QualityCalibrator.load(tmp_path / "cal_snr.json").features == FEATURES + SNR_FEATURES


# -- the Verifier ------------------------------------------------------------------------------------------


def _snr_cohort(seed: int = 1) -> EmbeddingTable:
    """12 speakers x 6 utterances of the tiny models' 16 dimensions, recorded clean (SNR estimates 35-55 dB)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((12, DIM))
    emb = np.concatenate([c + 0.5 * rng.standard_normal((6, DIM)) for c in centers]).astype(np.float32)
    return EmbeddingTable(
        np.array([f"u{i}" for i in range(len(emb))]),
        emb,
        rng.uniform(0.5, 5, len(emb)),
        np.repeat([f"s{i}" for i in range(12)], 6),
        rng.uniform(35, 55, len(emb)),
    )


@pytest.fixture(scope="module")
def recordings():
    """Two clean synthetic utterances (2 s, 2.5 s) and the second with white noise at 0 dB, at 16 kHz."""
    a, b = _speech(21, 2.0), _speech(22, 2.5)
    noisy = _add_noise(b, 0.0, np.random.default_rng(5))
    return [x.astype(np.float32) for x in (a, b, noisy)]


def test_verifier_gives_no_calibrated_decision_outside_the_conditions(model_dir, recordings, tmp_path, capsys):
    from mlsv.api import Verifier, record_score_statistics
    from mlsv.models import MLSVModel

    a, b, noisy = recordings
    cohort = _snr_cohort()
    cal = fit_calibration(cohort, top_k=5, n_pairs=400)
    lo, hi = cal.conditions_["snr"]
    assert lo <= estimate_snr(a, SAMPLE_RATE) <= hi and lo <= estimate_snr(b, SAMPLE_RATE) <= hi
    assert estimate_snr(noisy, SAMPLE_RATE) < lo
    model = MLSVModel.from_pretrained(model_dir)
    model.config.calibration = cal.to_dict()
    model.config.threshold = None  # the calibration's threshold; no AS-norm threshold stored
    v = Verifier(model, cohort=cohort)
    inside = v.verify(a, b, sample_rate=SAMPLE_RATE)
    assert inside.scale == "calibrated" and inside.outside_calibration is None
    assert inside.threshold == pytest.approx(cal.threshold_) and inside.decision == (inside.score >= inside.threshold)
    # outside: no calibrated decision, and with no AS-norm threshold no decision at all, saying why
    r = v.verify(a, noisy, sample_rate=SAMPLE_RATE)
    assert r.outside_calibration.startswith("test SNR") and f"{lo:.1f}-{hi:.1f} dB" in r.outside_calibration
    assert r.scale == "asnorm" and r.decision is None and r.threshold is None and r.label == "no decision"
    scores = v.score_embeddings(*v.embed([a, noisy], sample_rate=SAMPLE_RATE), 2.0, 2.5)
    assert r.score == pytest.approx(scores["asnorm"], abs=1e-5) and "no AS-norm threshold" in r.threshold_source
    assert "outside the calibration" in str(r) and r.to_dict()["outside_calibration"] == r.outside_calibration
    assert v.verify(noisy, a, sample_rate=SAMPLE_RATE).outside_calibration.startswith("enrolment SNR")
    # mlsv verify says so too, and --no-calibration-guard decides on the calibrated scale
    import soundfile as sf

    model.save_pretrained(tmp_path / "model")
    save_embeddings(cohort, tmp_path / "cohort.npz")
    for name, x in (("a", a), ("noisy", noisy)):
        sf.write(tmp_path / f"{name}.wav", x, SAMPLE_RATE, subtype="FLOAT")
    argv = ["verify", "--model", str(tmp_path / "model"), "--cohort", str(tmp_path / "cohort.npz"), "--device", "cpu"]
    code, out = run_cli([*argv, str(tmp_path / "a.wav"), str(tmp_path / "noisy.wav")], capsys)
    assert code == 0 and "decision   no decision" in out and "threshold  none" in out
    assert "outside the calibration's conditions: test SNR" in out and "(asnorm)" in out
    code, out = run_cli([*argv, "--no-calibration-guard", str(tmp_path / "a.wav"), str(tmp_path / "noisy.wav")], capsys)
    assert code == 0 and "(calibrated)" in out and "outside" not in out
    # an enrolment of several recordings: their duration-weighted SNR
    assert v.verify([a, b], noisy, sample_rate=SAMPLE_RATE).outside_calibration.startswith("test SNR")
    # a threshold given for LLRs does not apply to AS-norm scores
    given = v.verify(a, noisy, threshold=0.0, sample_rate=SAMPLE_RATE)
    assert given.decision is None and "applies to calibrated LLRs" in given.threshold_source
    # with AS-norm score statistics stored: decided on the AS-norm scale with its threshold
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(50), np.zeros(200)]
    record_score_statistics(v.config, {"asnorm": np.r_[rng.normal(3, 1, 50), rng.normal(0, 1, 200)]}, labels)
    r2 = v.verify(a, noisy, sample_rate=SAMPLE_RATE)
    t = v.threshold(scale="asnorm")
    assert r2.scale == "asnorm" and r2.threshold == t.value and r2.decision == (r2.score >= t.value)
    assert r2.threshold_source == t.source and r2.outside_calibration == r.outside_calibration
    batched = v.verify_pairs([(a, b), (a, noisy)], sample_rate=SAMPLE_RATE)
    for got, want in zip(batched, (v.verify(a, b, sample_rate=SAMPLE_RATE), r2)):  # to float32 rounding
        assert (got.scale, got.decision, got.threshold, got.outside_calibration) == (
            want.scale,
            want.decision,
            want.threshold,
            want.outside_calibration,
        )
        assert got.score == pytest.approx(want.score, abs=1e-4)
    # a calibration with the SNR features: verify measures them; score_embeddings takes them
    with_snr = fit_calibration(cohort, top_k=5, n_pairs=400, with_snr=True)
    model.config.calibration = with_snr.to_dict()
    vs = Verifier(model, cohort=cohort)
    r3 = vs.verify(a, b, sample_rate=SAMPLE_RATE)
    table = vs.embed_table([a, b], ids=["a", "b"], sample_rate=SAMPLE_RATE)
    got = vs.score_embeddings(*table.embeddings, *table.durations.tolist(), *table.snr.tolist())
    assert r3.scale == "calibrated" and got["calibrated"] == pytest.approx(r3.score, abs=1e-5)
    with pytest.raises(ValueError, match="SNR estimates"):
        vs.score_embeddings(*table.embeddings, *table.durations.tolist())
    model.config.calibration = cal.to_dict()
    # the guard turned off: every trial decided on the calibrated scale
    off = Verifier(model, cohort=cohort, calibration_guard=False).verify(a, noisy, sample_rate=SAMPLE_RATE)
    assert off.scale == "calibrated" and off.outside_calibration is None and isinstance(off.decision, bool)


def test_evaluate_records_snr_counts_the_trials_outside_and_can_fit_the_snr_features(model_dir, tmp_path):
    from data_helpers import write_voice_manifest

    from mlsv.inference.evaluation import evaluate_model

    rng = np.random.default_rng(11)
    test = {}
    for s in range(2):
        for k in range(2):
            x = _speech(500 + 10 * s + k, 1.6)
            test[f"t{s}{k}"] = (f"spk{s}", x.astype(np.float32))
            test[f"t{s}{k}n"] = (f"spk{s}", _add_noise(x, 0.0, rng).astype(np.float32))
    (tmp_path / "test").mkdir()
    (tmp_path / "cohort").mkdir()
    manifest = write_voice_manifest(tmp_path / "test" / "m.jsonl", test)
    cohort = write_voice_manifest(
        tmp_path / "cohort" / "c.jsonl",
        {f"c{s}{k}": (f"c{s}", _speech(600 + 10 * s + k, 1.6).astype(np.float32)) for s in range(7) for k in range(2)},
    )
    lines = ["1 t00 t01", "0 t00 t10", "1 t10 t11", "0 t01 t11", "1 t00 t01n", "0 t00 t10n", "1 t10 t11n", "0 t01 t11n"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    common = dict(manifest=str(manifest), trials=[str(tmp_path / "list.txt")], cohort=str(cohort), top_k=4)
    result = evaluate_model(
        model_dir, out_dir=tmp_path / "ev", device="cpu", plots=False, calibration_pairs=200, **common
    )
    table = load_embeddings(tmp_path / "ev" / "embeddings.npz")
    assert table.has_snr and (table.snr[np.char.endswith(table.ids, "n")] < 20).all()
    assert (table.snr[~np.char.endswith(table.ids, "n")] > 30).all()
    m = result["metrics"]["calibrated"]["list"]
    assert m["n_outside_calibration"] == 4 and m["n_trials"] == 8  # the trials with a noisy side
    assert m["inside_calibration"]["n_trials"] == 4 and "cllr" in m["inside_calibration"]
    cal = QualityCalibrator.load(tmp_path / "ev" / "calibration.json")
    assert cal.features == FEATURES and set(cal.conditions_) == {"log_dur", "snr"}
    again = evaluate_model(model_dir, out_dir=tmp_path / "ev2", calibration_snr=True, **common)
    assert QualityCalibrator.load(tmp_path / "ev2" / "calibration.json").features == FEATURES + SNR_FEATURES
    assert again["metrics"]["calibrated"]["list"]["n_outside_calibration"] == 4
