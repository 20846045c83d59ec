"""The Verifier (mlsv.inference.verifier, through mlsv.api) and the `mlsv verify` / `mlsv embed` /
`mlsv identify` commands: audio in, scores and decisions, enrolment from several recordings,
identification, sliding windows and online tracking, and bad input refused naming the culprit."""

from __future__ import annotations

import argparse
import json
import math
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import THRESHOLD, run_cli
from data_helpers import (
    latin1_name,
    sine_voice,
    tone,
    voice,
    write_voice_manifest,
    write_wav,
    write_wav_bytes_path,
)

from mlsv.api import Verifier, find_audio_files, load_audio, record_score_statistics
from mlsv.data.audio import AudioError
from mlsv.inference.embedder import Embedder
from mlsv.scoring.embeddings import EmbeddingTable, load_embeddings

warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")

SR = 16000


@pytest.fixture(scope="module")
def verifier(model_dir):
    return Verifier.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    sf.write(d / "a16k.wav", voice(0.65, seed=1), SR, subtype="FLOAT")
    sf.write(d / "a22k_stereo.wav", np.stack([voice(0.55, 22050, seed=2)] * 2, axis=1), 22050, subtype="FLOAT")
    sf.write(d / "b8k.flac", voice(0.45, 8000, f0=210, seed=3), 8000)
    sf.write(d / "c.ogg", voice(0.4, SR, f0=180, seed=4), SR)
    return d


def run_command(name: str, argv: list[str]) -> int:
    import importlib

    parser = argparse.ArgumentParser(prog="mlsv")
    sub = parser.add_subparsers(dest="command", required=True)
    importlib.import_module(f"mlsv.commands.{name}").register(sub)
    args = parser.parse_args([name, *argv])
    return args.func(args)


# -- audio in ------------------------------------------------------------------------------------


def test_odd_rates_and_stereo_match_array_inputs(verifier, audio_dir):
    x22 = voice(0.55, 22050, seed=2)
    from_file = verifier.embed(audio_dir / "a22k_stereo.wav")
    stereo = np.stack([x22, x22], axis=1)
    assert from_file.shape == (16,) and np.isfinite(from_file).all()
    np.testing.assert_allclose(from_file, verifier.embed(stereo, sample_rate=22050), atol=1e-5)
    np.testing.assert_allclose(from_file, verifier.embed(stereo.T.copy(), sample_rate=22050), atol=1e-5)
    x8, sr8 = sf.read(audio_dir / "b8k.flac", dtype="float32")
    np.testing.assert_allclose(verifier.embed(audio_dir / "b8k.flac"), verifier.embed(x8, sample_rate=sr8), atol=1e-5)
    pcm = (voice(0.3) * 32767).astype(np.int16)
    np.testing.assert_allclose(verifier.embed(pcm), verifier.embed(pcm / 32768.0), atol=1e-5)


def test_batched_equals_alone_and_sorted_back(verifier, audio_dir):
    files = [audio_dir / n for n in ("c.ogg", "a16k.wav", "b8k.flac", "a22k_stereo.wav")]
    table = Verifier.from_pretrained(verifier.config._name_or_path, batch_seconds=5.0).embed_table(files)
    assert table.embeddings.shape == (4, 16)
    for f, row in zip(files, table.embeddings):  # back in input order, each as embedded alone
        np.testing.assert_allclose(row, verifier.embed(f), atol=2e-5)
    assert list(table.ids) == [str(f) for f in files]
    np.testing.assert_allclose(table.durations, [0.4, 0.65, 0.45, 0.55], atol=1e-3)


def test_chunked_embedding(verifier):
    long = voice(1.5, seed=5)
    whole = verifier.embed(long)
    chunked = verifier.embed(long, chunk_seconds=0.5)
    assert chunked.shape == whole.shape and np.isfinite(chunked).all()
    parts = verifier.embed([long[: SR // 2], long[SR // 2 : SR], long[SR:]])
    np.testing.assert_allclose(chunked, parts.mean(0), atol=1e-5)


def test_chunks_of_a_file_match_the_manifest_path(model_dir, verifier, tmp_path):
    """`mlsv embed FILE`, `Verifier.embed` and `mlsv embed --manifest` (evaluation) cut a long file the same
    way: 3.3 s at 1 s chunks is 4 overlapping windows of 1 s, not 1 + 1 + 1 + 0.3 s."""
    path = tmp_path / "long.wav"
    sf.write(path, voice(3.3, seed=6), SR, subtype="FLOAT")
    manifest = write_voice_manifest(tmp_path / "m.jsonl", {"long": ("a", voice(3.3, seed=6))})
    chunked = verifier.embed(path, chunk_seconds=1.0)
    assert not np.allclose(chunked, verifier.embed(path), atol=1e-3)  # chunking changes the embedding
    out = tmp_path / "manifest.npz"
    assert (
        run_command(
            "embed",
            [
                "--model",
                str(model_dir),
                "--manifest",
                str(manifest),
                "--out",
                str(out),
                "--chunk-seconds",
                "1",
                "--num-workers",
                "0",
            ],
        )
        == 0
    )
    np.testing.assert_allclose(load_embeddings(out).embeddings[0], chunked, atol=1e-5)
    assert (
        run_command(
            "embed", ["--model", str(model_dir), str(path), "--out", str(tmp_path / "file.npz"), "--chunk-seconds", "1"]
        )
        == 0
    )
    np.testing.assert_allclose(load_embeddings(tmp_path / "file.npz").embeddings[0], chunked, atol=1e-5)
    # and the same SNR estimate (the mean over its windows), a calibration quality measure
    file_snr = load_embeddings(tmp_path / "file.npz").snr
    assert np.isfinite(file_snr).all()
    np.testing.assert_allclose(file_snr, load_embeddings(out).snr, atol=1e-3)
    # windows are never shorter than the chunk: 50 samples in 3 ms windows (48) embed; 2 ms windows (32) are
    # shorter than the encoder's 40-sample minimum, named before anything is read
    assert verifier.embed(voice(0.5)[:50], chunk_seconds=0.003).shape == chunked.shape
    with pytest.raises(ValueError, match=r"chunk_seconds=0\.002 gives chunks of 32 samples.*at least 40"):
        verifier.embed(voice(0.5)[:50], chunk_seconds=0.002)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "empty.wav").write_bytes(b""), "empty file"),
        (lambda d: sf.write(d / "noframes.wav", np.zeros(0, np.float32), SR), "empty"),
        (lambda d: sf.write(d / "silent.wav", np.zeros(800, np.float32), SR), "silent"),
        (lambda d: (d / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" * 20), "not decodable"),
        (lambda d: sf.write(d / "short.wav", voice(0.001), SR), "too short"),
    ],
)
def test_bad_files_are_refused_naming_them(verifier, tmp_path, make, message):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(AudioError, match=message) as info:
        verifier.embed(path)
    assert str(path) in str(info.value)


def test_bad_arrays_and_missing_file(verifier, tmp_path):
    with pytest.raises(AudioError, match="empty"):
        verifier.embed(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        verifier.embed(np.full(800, np.nan, np.float32))
    with pytest.raises(AudioError, match=r"input #1 .*silent"):
        verifier.embed([voice(0.1), np.zeros(800, np.float32)])
    with pytest.raises(AudioError, match="not found"):
        verifier.embed(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="channels"):
        load_audio(np.ones((20, 30), np.float32), SR, target_sr=SR)


# -- scores and decisions ------------------------------------------------------------------------


def test_score_is_mean_subtracted_cosine(verifier, audio_dir):
    a, b = audio_dir / "a16k.wav", audio_dir / "b8k.flac"
    ea, eb = verifier.embed([a, b])
    mean = np.asarray(verifier.config.training_mean, np.float32)
    x, y = ea - mean, eb - mean
    expected = float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
    assert verifier.score_scale == "cosine"
    assert verifier.score(a, b) == pytest.approx(expected, abs=1e-5)
    assert verifier.score(a, a) == pytest.approx(1.0, abs=1e-5)


def test_decisions_follow_the_stored_threshold(verifier, audio_dir):
    a, b = audio_dir / "a16k.wav", audio_dir / "c.ogg"
    r = verifier.verify(a, b)
    assert r.threshold == THRESHOLD and r.scale == "cosine"
    assert r.decision == (r.score >= THRESHOLD)
    same = verifier.verify(a, a)
    assert same.decision and "same speaker (score" in str(same)
    assert verifier.verify(a, b, threshold=r.score - 1e-3).decision
    assert not verifier.verify(a, b, threshold=r.score + 1e-3).decision


def test_far_needs_score_statistics(model_dir, audio_dir):
    v = Verifier.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="only a threshold"):
        v.threshold(far=0.01)
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.7, 0.1, 500), rng.normal(0.1, 0.1, 2000)])
    labels = np.concatenate([np.ones(500), np.zeros(2000)])
    stats = record_score_statistics(v.config, {"cosine": scores}, labels, trial_list="dev")
    for far in (0.1, 0.01, 0.003):
        t = v.threshold(far=far)
        assert (scores[labels == 0] >= t.value).mean() <= far and t.scale == "cosine"
        assert "dev" in t.source
    with pytest.raises(ValueError, match="below what"):
        v.threshold(far=1e-5)
    assert v.threshold().value == pytest.approx(stats["cosine"]["eer_threshold"])
    r = v.verify(audio_dir / "a16k.wav", audio_dir / "a16k.wav", far=0.01)
    assert r.decision and r.threshold == v.threshold(far=0.01).value


@pytest.fixture(scope="module")
def calibrated_setup(model_dir):
    """The model with a QMF calibration fitted on a synthetic cohort of its own embedding size."""
    from mlsv.scoring.calibration import fit_calibration

    rng = np.random.default_rng(1)
    centers = rng.standard_normal((12, 16))
    emb = np.concatenate([c + 0.5 * rng.standard_normal((6, 16)) for c in centers]).astype(np.float32)
    cohort = EmbeddingTable(
        np.array([f"u{i}" for i in range(len(emb))]),
        emb,
        rng.uniform(0.25, 5, len(emb)),  # durations the test recordings (0.3-0.7 s) lie within
        np.repeat([f"s{i}" for i in range(12)], 6),
    )
    cal = fit_calibration(cohort, top_k=5, n_pairs=400)
    return cal, cohort


@pytest.fixture(scope="module")
def calibrated(model_dir, calibrated_setup):
    """A Verifier on the calibrated scale: the model with that calibration (and its threshold), the
    synthetic cohort given."""
    from mlsv.models import MLSVModel

    cal, cohort = calibrated_setup
    model = MLSVModel.from_pretrained(model_dir)
    model.config.calibration = cal.to_dict()
    model.config.threshold = None  # the calibration's threshold
    return Verifier(model, cohort=cohort)


def test_calibrated_scale_with_a_given_or_stored_cohort(model_dir, audio_dir, calibrated_setup, tmp_path):
    import torch

    from mlsv.models import MLSVModel
    from mlsv.scoring.backend import cohort_from_table

    cal, cohort = calibrated_setup
    model = MLSVModel.from_pretrained(model_dir)
    model.config.calibration = cal.to_dict()
    model.config.threshold = None
    a, b = audio_dir / "a16k.wav", audio_dir / "c.ogg"
    given = Verifier(model, cohort=cohort)
    assert given.score_scale == "calibrated" and given.top_k == 5
    r = given.verify(a, b)
    assert r.threshold == pytest.approx(cal.threshold_) and r.decision == (r.score >= r.threshold)
    assert given.threshold(far=0.01).value == pytest.approx(math.log(100))
    # without a cohort: plain cosine, and no threshold for it (explained)
    plain = Verifier(model)
    assert plain.score_scale == "cosine"
    with pytest.raises(ValueError, match="cohort"):
        plain.verify(a, b)
    assert plain.verify(a, b, threshold=0.0).scale == "cosine"
    # the cohort stored in the model as `mlsv evaluate` does: same scores from two utterances alone
    mean = np.asarray(model.config.training_mean, np.float32)
    model.set_cohort(torch.from_numpy(cohort_from_table(cohort, mean).vectors))
    model.config.threshold = float(cal.threshold_)
    model.config.evaluation = {"threshold_scale": "calibrated_llr", "top_k": 5}
    model.save_pretrained(tmp_path / "calibrated")
    stored = Verifier.from_pretrained(tmp_path / "calibrated")
    assert stored.score_scale == "calibrated" and stored.top_k == 5
    r2 = stored.verify(a, b)
    assert r2.score == pytest.approx(r.score, abs=1e-4) and r2.threshold == pytest.approx(cal.threshold_)
    assert Verifier.from_pretrained(tmp_path / "calibrated", use_stored_cohort=False).score_scale == "cosine"


def test_enrolment_from_several_recordings(model_dir, audio_dir, calibrated, capsys):
    """A list of one speaker's recordings enrols as one: their embeddings averaged weighted by duration,
    their durations added (what the calibrated scale sees), for verify, score, track and online alike."""
    v = calibrated
    enrol = [audio_dir / "a16k.wav", audio_dir / "b8k.flac", voice(0.3, f0=150, seed=12)]
    test = audio_dir / "c.ogg"
    table = v.embed_table(enrol + [test], ids=["a", "b", "c", "t"])
    seconds = table.durations[:3].astype(np.float64)
    pooled = (table.embeddings[:3] * seconds[:, None]).sum(0) / seconds.sum()
    expected = v.score_embeddings(pooled, table.embeddings[3], float(seconds.sum()), float(table.durations[3]))
    r = v.verify(enrol, test)
    assert r.scale == "calibrated" and r.score == pytest.approx(expected["calibrated"], abs=1e-5)
    assert v.score(tuple(enrol), test) == pytest.approx(r.score, abs=1e-6)
    # the same as one recording: the pooled embedding and total duration are what it scores
    assert r.score != pytest.approx(v.verify(enrol[0], test).score, abs=1e-3)
    recording = np.concatenate([voice(0.6, seed=13), voice(0.5, f0=210, seed=14)])
    t = v.track(enrol, recording, window=0.5, hop=0.3, sample_rate=SR)
    assert t.scores[0] == pytest.approx(v.score(enrol, recording[:8000], sample_rate=SR), abs=1e-4)
    live = _stream(v.online(enrol, window=0.5, hop=0.3, sample_rate=SR), recording)
    np.testing.assert_allclose([w.score for w in live], t.scores, atol=1e-4)
    for call in (lambda: v.verify([], test), lambda: v.track((), recording, sample_rate=SR), lambda: v.online([])):
        with pytest.raises(ValueError, match="an empty enrolment"):
            call()
    # the command: every recording but the last is the enrolment
    plain = Verifier.from_pretrained(model_dir)
    files = [str(audio_dir / "a16k.wav"), str(audio_dir / "b8k.flac"), str(test)]
    assert run_command("verify", ["--model", str(model_dir), *files, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a"] == files[:2] and out["b"] == files[2]
    assert out["score"] == pytest.approx(plain.verify(files[:2], files[2]).score, abs=1e-6)
    # options may come between the recordings (argparse alone matched "E1 E2 --json T" as E1 E2, then failed)
    from mlsv.cli import main

    for argv in ([*files[:2], "--json", files[2]], [files[0], "--json", *files[1:]]):
        assert main(["verify", "--model", str(model_dir), *argv]) == 0
        again = json.loads(capsys.readouterr().out)
        assert (again["a"], again["b"], again["score"]) == (out["a"], out["b"], out["score"])
    assert main(["verify", "--model", str(model_dir), files[0]]) == 2
    assert "give the enrolment recording(s) and then the test recording" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["verify", "--model", str(model_dir), *files[:2], "--jsn", files[2]])
    assert "unrecognized arguments: --jsn" in capsys.readouterr().err


# -- identification ------------------------------------------------------------------------------


def test_identify_names_the_enrolled_speaker_or_none(verifier, calibrated, audio_dir):
    """The best of the enrolled speakers when it reaches the threshold, else unknown; each speaker scored
    as verify scores it (enrolment side), from recordings or from a table of embeddings with speakers."""
    x, y, z = voice(0.6, seed=20), voice(0.6, f0=220, seed=21), voice(0.5, f0=300, seed=22)
    enrolled = {"ann": [x, voice(0.4, seed=23)], "bob": y, "cy": (z,)}
    r = verifier.identify(x, enrolled, sample_rate=SR)
    assert r.speaker == r.ranking[0][0] and r.threshold == THRESHOLD and r.scale == "cosine"
    assert [s for s, _ in r.ranking] == sorted(enrolled, key=lambda n: -dict(r.ranking)[n])
    assert r.score == r.ranking[0][1] and "ranking" in r.to_dict()
    unknown = verifier.identify(x, enrolled, threshold=r.score + 1e-3, sample_rate=SR)
    assert unknown.speaker is None and unknown.ranking == r.ranking and "unknown speaker" in str(unknown)
    # every scale, the enrolment side: the scores of verify
    c = calibrated.identify(audio_dir / "c.ogg", {"ann": [x, y], "cy": z}, sample_rate=SR)
    assert c.scale == "calibrated"
    for name, enrolment in (("ann", [x, y]), ("cy", z)):
        assert dict(c.ranking)[name] == pytest.approx(
            calibrated.score(enrolment, audio_dir / "c.ogg", sample_rate=SR), abs=1e-5
        )
    # a table with speakers: its rows pooled as recordings are
    table = calibrated.embed_table([x, y, z], ids=["a", "b", "c"], sample_rate=SR)
    table.speakers = np.array(["ann", "ann", "cy"])
    t = calibrated.identify(audio_dir / "c.ogg", table, sample_rate=SR)
    np.testing.assert_allclose([v for _, v in t.ranking], [v for _, v in c.ranking], atol=1e-5)
    assert [n for n, _ in t.ranking] == [n for n, _ in c.ranking]
    table.speakers = None
    empty = EmbeddingTable(np.array([], str), np.zeros((0, 16), np.float32), np.zeros(0), np.array([], str))
    for speakers, message in (
        (table, "no speaker labels"),
        ({}, "non-empty mapping"),
        ([x], "non-empty mapping"),
        ({1: x, "1": y}, "speaker names repeat as text"),
        (empty, "table is empty"),
    ):
        with pytest.raises(ValueError, match=message):
            calibrated.identify(x, speakers, sample_rate=SR)


def test_identify_command(model_dir, audio_dir, tmp_path, capsys, monkeypatch):
    from mlsv.cli import main

    a, b, c = (str(audio_dir / n) for n in ("a16k.wav", "b8k.flac", "c.ogg"))
    argv = ["identify", "--model", str(model_dir), "--speaker", f"ann={a},{b}", "--speaker", f"cy={c}"]
    assert main([*argv, a, "--json", c]) == 0  # options may come between the test recordings
    out = json.loads(capsys.readouterr().out)
    v = Verifier.from_pretrained(model_dir)
    assert [o["test"] for o in out] == [a, c]
    for o, test in zip(out, (a, c)):
        expected = v.identify(test, {"ann": [a, b], "cy": c})
        assert o["speaker"] == expected.speaker and o["score"] == pytest.approx(expected.score, abs=1e-6)
        assert [r["speaker"] for r in o["ranking"]] == [n for n, _ in expected.ranking]
    # the enrolment is embedded once for all the tests: 3 recordings, then one per test (every embedding pass,
    # embed_many's too, goes through embed_measured)
    sizes = []
    embed = Embedder.embed_measured
    monkeypatch.setattr(
        Embedder, "embed_measured", lambda self, inputs, *rest: sizes.append(len(inputs)) or embed(self, inputs, *rest)
    )
    assert main([*argv, a, "--top", "1", b, "--", c]) == 0  # after "--" everything is a test recording
    assert sizes == [3, 1, 1, 1]
    monkeypatch.undo()
    text = capsys.readouterr().out
    assert text.startswith(f"{a}: ") and len(text.strip().splitlines()) == 6
    table = tmp_path / "enrolled.npz"
    assert main(["embed", "--model", str(model_dir), "--out", str(table), a, c]) == 0
    capsys.readouterr()
    for extra, message in (
        (["--speaker", "ann"], "expected NAME=FILE"),
        (["--speaker", f"ann={a}", "--speaker", f"ann={b}"], "'ann' is given twice"),
        (["--speakers", str(table), "--speaker", f"ann={a}"], "not both"),
        ([], "no enrolled speakers"),
        (["--speakers", str(table)], "no speaker labels"),
    ):
        assert main(["identify", "--model", str(model_dir), *extra, a]) == 2
        assert message in capsys.readouterr().err


# -- sliding windows -----------------------------------------------------------------------------


def test_windows_cover_the_recording_and_each_gets_its_embedding_alone(model_dir, verifier):
    wav = np.concatenate([voice(0.5, seed=5), voice(0.45, f0=210, seed=6)])  # 15,200 samples
    small = Verifier.from_pretrained(model_dir, batch_seconds=0.9)  # two windows per batch
    w = small.embed_windows(wav, window=0.4, hop=0.25, sample_rate=SR)
    starts = np.round(w.starts * SR).astype(int)
    assert starts.tolist() == [0, 4000, 8000, 8800]  # the last window ends at the end
    np.testing.assert_allclose(w.ends - w.starts, 0.4)
    alone = verifier.embed([wav[a : a + 6400] for a in starts], sample_rate=SR)
    np.testing.assert_allclose(w.embeddings, alone, atol=1e-5)
    # the default hop is half a window; a recording shorter than a window is one window, all of it
    assert np.diff(verifier.embed_windows(wav, window=0.4, sample_rate=SR).starts)[0] == pytest.approx(0.2)
    short = verifier.embed_windows(wav[:5000], window=2.0, sample_rate=SR)
    assert short.starts.tolist() == [0.0] and short.ends.tolist() == [5000 / SR]
    np.testing.assert_allclose(short.embeddings[0], verifier.embed(wav[:5000], sample_rate=SR), atol=1e-5)


def test_track_finds_the_enrolled_recording_and_merges_accepted_windows(verifier):
    from mlsv.api import SpeakerTrack

    x, y = voice(0.5, seed=7), voice(0.5, f0=230, seed=8)
    recording = np.concatenate([x, y, x])
    first = verifier.track(x, recording, window=0.5, hop=0.5, threshold=0.0, sample_rate=SR)
    assert first.starts.tolist() == [0.0, 0.5, 1.0] and first.scale == "cosine"
    assert first.scores[0] == pytest.approx(1.0, abs=1e-5) and first.scores[2] == pytest.approx(1.0, abs=1e-5)
    assert first.scores[1] < first.scores[0]
    middle = float((first.scores[0] + first.scores[1]) / 2)
    t = verifier.track(x, recording, window=0.5, hop=0.5, threshold=middle, sample_rate=SR)
    assert t.decisions.tolist() == [True, False, True] and t.segments() == [(0.0, 0.5), (1.0, 1.5)]
    assert t.threshold == middle and t.threshold_source == "given by the caller"
    # overlapping and touching accepted windows merge into one span
    merged = SpeakerTrack(
        np.array([0.0, 0.5, 1.0, 2.0, 3.0]),
        np.array([1.0, 1.5, 2.0, 3.0, 4.0]),
        np.array([1.0, 1.0, 1.0, 0.0, 1.0]),
        0.5,
        "cosine",
        "given",
    )
    assert merged.segments() == [(0.0, 2.0), (3.0, 4.0)]
    assert merged.to_dict()["segments"] == [[0.0, 2.0], [3.0, 4.0]]
    # the stored threshold by default, as verify
    assert verifier.track(x, recording, window=0.5, sample_rate=SR).threshold == THRESHOLD


def test_track_scores_equal_verify_scores_of_each_window_on_the_calibrated_scale(calibrated_setup, calibrated):
    cal, v = calibrated_setup[0], calibrated
    enroll, recording = voice(0.6, seed=9), np.concatenate([voice(0.7, seed=10), voice(0.5, f0=200, seed=11)])
    t = v.track(enroll, recording, window=0.45, hop=0.3, sample_rate=SR)
    assert t.scale == "calibrated" and t.threshold == pytest.approx(cal.threshold_)
    for a, b, score in zip(t.starts, t.ends, t.scores):
        piece = recording[int(round(a * SR)) : int(round(b * SR))]
        assert score == pytest.approx(v.score(enroll, piece, sample_rate=SR), abs=1e-4)


def _stream(tracker, samples, seed: int = 0, most: int = 3000) -> list:
    """Pushes ``samples`` in chunks of random sizes (an empty one among them), then flushes."""
    rng = np.random.default_rng(seed)
    out, i = tracker.push(samples[:0]), 0
    while i < len(samples):
        n = int(rng.integers(1, most))
        out += tracker.push(samples[i : i + n])
        i += n
    return out + tracker.flush()


def test_online_tracker_gives_the_windows_and_scores_of_track(calibrated):
    """A stream pushed in chunks of any size gives track's windows and scores, on the calibrated scale
    and resampled on the way; each window is scored by the push that completes it."""
    import soxr

    v = calibrated
    enroll, recording = voice(0.6, seed=9), np.concatenate([voice(1.3, seed=10), voice(1.1, f0=220, seed=11)])
    whole = v.track(enroll, recording, window=0.5, hop=0.3, sample_rate=SR)
    windows = _stream(v.online(enroll, window=0.5, hop=0.3, sample_rate=SR), recording)
    assert [(w.start, w.end) for w in windows] == list(zip(whole.starts.tolist(), whole.ends.tolist()))
    np.testing.assert_allclose([w.score for w in windows], whole.scores, atol=1e-4)
    assert [w.decision for w in windows] == whole.decisions.tolist()
    # an 8 kHz stream, resampled chunk by chunk, against the whole 8 kHz recording resampled at once
    slow = [soxr.resample(x, SR, 8000).astype(np.float32) for x in (enroll, recording)]
    whole8 = v.track(*slow, window=0.5, hop=0.3, sample_rate=8000)
    windows8 = _stream(v.online(slow[0], window=0.5, hop=0.3, sample_rate=8000), slow[1], seed=1, most=1500)
    assert [w.start for w in windows8] == whole8.starts.tolist()
    np.testing.assert_allclose([w.score for w in windows8], whole8.scores, atol=1e-3)


def test_online_windows_come_as_soon_as_complete_and_old_samples_are_dropped(verifier):
    tracker = verifier.online(voice(0.5, seed=1), window=0.5, hop=0.25, threshold=0.0, sample_rate=SR)
    stream = voice(4.0, f0=190, seed=2)
    assert tracker.push(stream[:7999]) == []
    first = tracker.push(stream[7999:12000])  # 0.75 s: the windows ending at 0.5 and 0.75 s
    assert [(w.start, w.end) for w in first] == [(0.0, 0.5), (0.25, 0.75)]
    for i in range(12000, len(stream), 1000):
        tracker.push(stream[i : i + 1000])
        assert tracker._buffer.size <= 8000 + 4000 + 1000  # a window, a hop and a chunk at most
    assert tracker.seconds == 4.0 and tracker.flush() == []  # the last window already ends at the end
    assert tracker.flush() == []
    with pytest.raises(ValueError, match="flushed"):
        tracker.push(stream[:100])
    # a stream shorter than a window is one window, all of it; too short for the encoder is an error
    short = verifier.online(voice(0.5, seed=1), window=2.0, sample_rate=SR)
    short.push(stream[:5000])
    assert [(w.start, w.end) for w in short.flush()] == [(0.0, 5000 / SR)]
    tiny = verifier.online(voice(0.5, seed=1), window=2.0, sample_rate=SR)
    tiny.push(stream[:10])
    with pytest.raises(AudioError, match="stream is too short"):
        tiny.flush()
    bad = verifier.online(voice(0.5, seed=1), sample_rate=SR)
    bad.push(stream[:100])
    with pytest.raises(AudioError, match="stream chunk 1: audio contains NaN"):
        bad.push(np.full(100, np.nan, np.float32))
    with pytest.raises(AudioError, match=r"stream chunk 2: 2 channel\(s\), where the stream's first chunk had 1"):
        bad.push(np.zeros((100, 2), np.float32))
    with pytest.raises(AudioError, match=r"stream chunk 3: shape \(2, 1000\) has 1000 channels"):
        bad.push(np.zeros((2, 1000), np.float32))  # (channels, samples) is not a stream's layout
    with pytest.raises(AudioError, match="the stream is empty"):
        verifier.online(voice(0.5, seed=1), sample_rate=SR).flush()


def test_online_stereo_chunks_of_any_size_and_a_failed_pass_retried(verifier, monkeypatch):
    """Chunks are (samples, channels) however short (a one-frame stereo chunk was read as two mono
    samples); windows whose forward pass failed are scored by the next push."""
    left, right = voice(1.0, seed=4), voice(1.0, f0=200, seed=5)
    whole = verifier.track(voice(0.5, seed=1), (left + right) / 2, window=0.4, hop=0.3, sample_rate=SR)
    tracker = verifier.online(voice(0.5, seed=1), window=0.4, hop=0.3, sample_rate=SR)
    stereo = np.stack([left, right], axis=1)
    windows = []
    for i in range(0, len(stereo), 3):
        windows += tracker.push(stereo[i : i + 3])
    windows += tracker.flush()
    assert [w.start for w in windows] == whole.starts.tolist()
    np.testing.assert_allclose([w.score for w in windows], whole.scores, atol=1e-4)

    tracker = verifier.online(voice(0.5, seed=1), window=0.4, hop=0.3, sample_rate=SR)
    real = verifier.embedder.backend

    def failing(*args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(verifier.embedder, "backend", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        tracker.push(left[:8000])  # completes the window at 0-0.4 s
    monkeypatch.setattr(verifier.embedder, "backend", real)
    assert [w.start for w in tracker.push(left[8000:12000])] == [0.0, pytest.approx(0.3)]


def test_bad_windows_are_refused_before_reading_audio(verifier, tmp_path):
    x = voice(0.5, seed=7)
    with pytest.raises(
        ValueError, match=r"window must be at least 0\.0025 s \(the encoder needs 40 samples\), got 0\.001"
    ):
        verifier.embed_windows(x, window=0.001, sample_rate=SR)
    for hop in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="hop must"):
            verifier.embed_windows(tmp_path / "missing.wav", window=0.5, hop=hop)
    with pytest.raises(ValueError, match="not both"):
        verifier.track(tmp_path / "missing.wav", x, far=0.01, threshold=0.2)
    for call in (verifier.track, lambda e, r, **kw: verifier.online(e, **kw)):
        with pytest.raises(ValueError, match="window must be at least"):
            call(tmp_path / "missing.wav", x, window=0.001, sample_rate=SR)
    with pytest.raises(AudioError, match="silent audio"):
        verifier.track(x, np.zeros(SR, np.float32), sample_rate=SR)


def test_verify_command_with_windows(model_dir, audio_dir, capsys):
    a, b = str(audio_dir / "a16k.wav"), str(audio_dir / "a22k_stereo.wav")
    assert run_command("verify", ["--model", str(model_dir), a, b, "--window", "0.3", "--hop", "0.2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == THRESHOLD and out["windows"][0]["start"] == 0.0 and len(out["windows"]) == 3
    assert all(w["decision"] == (w["score"] >= THRESHOLD) for w in out["windows"])
    assert run_command("verify", ["--model", str(model_dir), a, a, "--window", "0.65", "--threshold", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "a16k.wav speaks in a16k.wav: 0.00-0.65 s" in text
    from mlsv.cli import main

    assert main(["verify", "--model", str(model_dir), a, b, "--hop", "0.2"]) == 2
    assert "--hop needs --window" in capsys.readouterr().err


# -- commands ------------------------------------------------------------------------------------


def test_verify_command_json_and_text(model_dir, audio_dir, capsys):
    assert (
        run_command(
            "verify",
            ["--model", str(model_dir), str(audio_dir / "a16k.wav"), str(audio_dir / "a22k_stereo.wav"), "--json"],
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == THRESHOLD and out["decision"] == (out["score"] >= THRESHOLD)
    assert out["label"] in ("same speaker", "different speakers")
    assert (
        run_command("verify", ["--model", str(model_dir), str(audio_dir / "a16k.wav"), str(audio_dir / "a16k.wav")])
        == 0
    )
    text = capsys.readouterr().out
    assert "score" in text and "threshold" in text and "same speaker" in text


def test_embed_command_files_and_folders(model_dir, audio_dir, tmp_path):
    out = tmp_path / "emb.npz"
    assert (
        run_command("embed", ["--model", str(model_dir), str(audio_dir), "--out", str(out), "--batch-seconds", "2"])
        == 0
    )
    table = load_embeddings(out)
    files = find_audio_files([audio_dir])
    assert list(table.ids) == files and table.embeddings.shape == (4, 16)
    ref = Verifier.from_pretrained(model_dir).embed(files[0])
    np.testing.assert_allclose(table.embeddings[0], ref, atol=2e-5)
    with pytest.raises(FileNotFoundError):
        run_command("embed", ["--model", str(model_dir), str(tmp_path / "missing.wav"), "--out", str(out)])


def test_embed_command_windows(model_dir, audio_dir, tmp_path, capsys):
    out = tmp_path / "windows.npz"
    a, c = str(audio_dir / "a16k.wav"), str(audio_dir / "c.ogg")
    assert (
        run_command("embed", ["--model", str(model_dir), a, c, "--out", str(out), "--window", "0.3", "--hop", "0.2"])
        == 0
    )
    table = load_embeddings(out)
    v = Verifier.from_pretrained(model_dir)
    expected = [v.embed_windows(f, window=0.3, hop=0.2) for f in (a, c)]
    assert len(table.ids) == sum(len(w.starts) for w in expected)
    assert table.ids[0] == f"{a}@0-0.3" and table.ids[1] == f"{a}@0.2-0.5" and table.ids[-1] == f"{c}@0.1-0.4"
    np.testing.assert_allclose(table.embeddings, np.concatenate([w.embeddings for w in expected]), atol=1e-5)
    np.testing.assert_allclose(table.durations, 0.3, atol=1e-6)
    # an end-aligned last window a few samples after the one before it gets an id of its own
    odd = tmp_path / "odd.wav"
    sf.write(odd, voice(8003 / SR, seed=3), SR, subtype="FLOAT")
    assert (
        run_command(
            "embed", ["--model", str(model_dir), str(odd), "--out", str(out), "--window", "0.25", "--hop", "0.25"]
        )
        == 0
    )
    assert load_embeddings(out).ids.tolist() == [f"{odd}@0-0.25", f"{odd}@0.25-0.5", f"{odd}@0.250188-0.500188"]
    from mlsv.cli import main

    for extra, message in (
        (["--hop", "0.2"], "--hop needs --window"),
        (["--window", "0.3", "--chunk-seconds", "5"], "without --manifest or --chunk-seconds"),
    ):
        assert main(["embed", "--model", str(model_dir), a, "--out", str(out), *extra]) == 2
        assert message in capsys.readouterr().err


def test_embed_command_manifest_keeps_ids_and_speakers(model_dir, audio_dir, tmp_path):
    rows = [
        {
            "id": f"spk{i}/utt{i}.wav",
            "path": str(audio_dir / name),
            "speaker": f"spk{i}",
            "duration": sf.info(audio_dir / name).duration,
            "sample_rate": sf.info(audio_dir / name).samplerate,
        }
        for i, name in enumerate(["a16k.wav", "c.ogg"])
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.npz"
    assert (
        run_command(
            "embed", ["--model", str(model_dir), "--manifest", str(manifest), "--out", str(out), "--num-workers", "0"]
        )
        == 0
    )
    table = load_embeddings(out)
    assert sorted(table.ids) == ["spk0/utt0.wav", "spk1/utt1.wav"]
    assert list(table.speakers) == [u.split("/")[0] for u in table.ids]
    ref = Verifier.from_pretrained(model_dir).embed(audio_dir / "a16k.wav")
    np.testing.assert_allclose(table.embeddings[list(table.ids).index("spk0/utt0.wav")], ref, atol=2e-5)
    # the bf16 fast path (autocast) stays within bf16 rounding of fp32
    fast = tmp_path / "bf16.npz"
    assert (
        run_command(
            "embed",
            [
                "--model",
                str(model_dir),
                "--manifest",
                str(manifest),
                "--out",
                str(fast),
                "--num-workers",
                "0",
                "--precision",
                "bf16",
            ],
        )
        == 0
    )
    a, b = load_embeddings(fast).embeddings, table.embeddings
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.99 and not np.array_equal(a, b)


def test_non_finite_embeddings_and_cohorts_are_named(model_dir, eval_inputs, audio_dir, tmp_path):
    import torch

    from mlsv.models import MLSVModel

    model = MLSVModel.from_pretrained(model_dir)
    with torch.no_grad():
        model.backend.embedding_norm.bias.fill_(float("nan"))  # as an fp16 overflow would
    model.save_pretrained(tmp_path / "nan_model")
    manifest, _ = eval_inputs
    with pytest.raises(ValueError, match=r"4 embeddings are NaN.*a1 \(.*a1\.wav\)"):
        run_command(
            "embed",
            [
                "--model",
                str(tmp_path / "nan_model"),
                "--manifest",
                str(manifest),
                "--out",
                str(tmp_path / "e.npz"),
                "--num-workers",
                "0",
            ],
        )
    assert not (tmp_path / "e.npz").exists()
    emb = np.ones((4, 16), np.float32)
    emb[2, 3] = np.nan
    bad = tmp_path / "nan_cohort.npz"
    np.savez(
        bad,
        ids=np.array(["u0", "u1", "u2", "u3"]),
        embeddings=emb,
        durations=np.ones(4, np.float32),
        speakers=np.array(["s0", "s0", "s1", "s1"]),
    )
    with pytest.raises(ValueError, match=r"nan_cohort\.npz: 1 embeddings are NaN.*u2"):
        run_command(
            "verify",
            ["--model", str(model_dir), str(audio_dir / "a16k.wav"), str(audio_dir / "c.ogg"), "--cohort", str(bad)],
        )
    table = EmbeddingTable(["u0", "u1", "u2", "u3"], emb, np.ones(4), ["s0", "s0", "s1", "s1"])
    with pytest.raises(ValueError, match="cohort.*u2"):
        Verifier.from_pretrained(model_dir, cohort=table)
    not_npz = tmp_path / "emb.txt"
    not_npz.write_text("u0 0.1 0.2\n")
    with pytest.raises(ValueError, match=r"emb\.txt: not an embeddings \.npz"):
        load_embeddings(not_npz)


def test_too_short_audio_and_chunks_are_named(model_dir, verifier, tmp_path):
    manifest = write_voice_manifest(tmp_path / "short.jsonl", {"tiny": ("a", voice(0.5)[:30])})
    out = str(tmp_path / "e.npz")
    with pytest.raises(ValueError, match=r"at least 40 samples.*tiny: 30 samples"):
        run_command(
            "embed", ["--model", str(model_dir), "--manifest", str(manifest), "--out", out, "--num-workers", "0"]
        )
    mixed = write_voice_manifest(tmp_path / "mixed.jsonl", {"long": ("a", voice(0.5)), "tiny": ("b", voice(0.5)[:30])})
    with pytest.raises(ValueError, match="tiny: 30 samples"):  # padded beside a long one it gave a wrong embedding
        run_command("embed", ["--model", str(model_dir), "--manifest", str(mixed), "--out", out, "--num-workers", "0"])
    with pytest.raises(ValueError, match=r"chunk-seconds.*0\.002"):
        run_command(
            "embed",
            [
                "--model",
                str(model_dir),
                "--manifest",
                str(mixed),
                "--out",
                out,
                "--chunk-seconds",
                "0.002",
                "--num-workers",
                "0",
            ],
        )
    with pytest.raises(ValueError, match=r"chunk_seconds=0\.001.*at least 40"):
        verifier.embed(voice(0.5), chunk_seconds=0.001)
    sf.write(tmp_path / "v.wav", voice(0.5), SR)
    with pytest.raises(ValueError, match=r"--max-seconds 0\.001 keeps 16 samples.*at least 40"):
        run_command(
            "inspect",
            [
                "--model",
                str(model_dir),
                str(tmp_path / "v.wav"),
                "--out",
                str(tmp_path / "x.png"),
                "--max-seconds",
                "0.001",
            ],
        )


def test_missing_model_folder_and_bad_top_k_are_named(model_dir, tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match=f"model folder not found: {missing}"):
        Verifier.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        run_command(
            "embed",
            ["--model", str(missing), "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "e.npz")],
        )
    with pytest.raises(ValueError, match="at least 2, got 0"):
        Verifier.from_pretrained(model_dir, asnorm_top_k=0)


# -- bad input: thresholds, sample rates, dtypes, repeated ids, file names that are not UTF-8 ----------------


def test_nonsense_thresholds_and_sample_rates_are_refused(small_verifier, wavs, small_model_dir, capsys):
    from mlsv.api import check_sample_rate

    a, b = wavs / "a.wav", wavs / "b.wav"
    for bad in (float("nan"), float("inf"), "x", True):
        with pytest.raises(ValueError, match=r"^threshold \(--threshold\) must be a (finite )?number"):
            small_verifier.verify(a, b, threshold=bad)
    with pytest.raises(ValueError, match=r"far \(--far\) or threshold \(--threshold\), not both"):
        small_verifier.verify(a, b, far=0.01, threshold=0.3)
    with pytest.raises(ValueError, match=r"far \(--far\) must be a finite number, got nan"):
        small_verifier.verify(a, b, far=float("nan"))
    with pytest.raises(ValueError, match=r"far \(--far\) must be in \(0, 1\), got 2"):
        small_verifier.verify(a, b, far=2)
    rc, err = run_cli(["verify", "--model", str(small_model_dir), "--threshold", "nan", str(a), str(b)], capsys)
    assert rc == 2 and "must be a finite number, got nan" in err
    x = sine_voice()
    for bad in (0, -16000, "16000", 16000.5, True, float("nan")):
        with pytest.raises(ValueError, match=r"^sample_rate must be a positive integer \(samples per second\), got"):
            small_verifier.embed(x, sample_rate=bad)
        with pytest.raises(ValueError, match=r"^sample_rate must be a positive integer"):
            small_verifier.verify(x, x, sample_rate=bad)
    assert check_sample_rate(np.int64(8000)) == 8000 and check_sample_rate(16000.0) == 16000
    np.testing.assert_array_equal(small_verifier.embed(x, sample_rate=16000.0), small_verifier.embed(x))
    # a rate no audio has would resample into gigabytes (sample_rate=1 grew a process to 18 GB)
    for bad in (1, 3999, 384001):
        with pytest.raises(ValueError, match=rf"^sample_rate {bad} Hz is outside 4000-384000 Hz"):
            small_verifier.embed(x, sample_rate=bad)
    sr1 = wavs.parent / "sr1.wav"
    sf.write(sr1, 0.3 * np.random.default_rng(0).standard_normal(32000), 1, subtype="PCM_16")
    rc, err = run_cli(["verify", "--model", str(small_model_dir), str(sr1), str(a)], capsys)
    assert rc == 2 and err.count("\n") == 1 and f"{sr1}: sample rate 1 Hz is outside 4000-384000 Hz" in err, err


def test_half_precision_tensors_are_embedded_as_float32(small_verifier):
    x = torch.from_numpy(sine_voice())
    ref = small_verifier.embed(x)
    for dtype in (torch.bfloat16, torch.float16):
        e = small_verifier.embed(x.to(dtype))
        assert e.dtype == np.float32
        np.testing.assert_allclose(e, small_verifier.embed(x.to(dtype).float()), atol=1e-6)
        assert np.abs(e - ref).max() < 1e-2


def test_repeated_ids_are_refused_and_a_file_named_twice_is_embedded_once(
    small_verifier, wavs, small_model_dir, tmp_path, caplog, capsys
):
    a, b = str(wavs / "a.wav"), str(wavs / "b.wav")
    with pytest.raises(ValueError, match=r"id 'a' is given twice \(inputs #0 and #2\)"):
        small_verifier.embed_table([a, b, a], ids=["a", "b", "a"])
    with pytest.raises(ValueError, match=rf"id '{a}' is given twice"):
        small_verifier.embed_table([a, a])
    assert small_verifier.embed([a, a]).shape == (2, 8)  # embed() returns no ids: a repeat is harmless there
    with pytest.raises(ValueError, match=r"id 'a' appears 2 times \(rows 0, 2\); ids must be unique"):
        EmbeddingTable(["a", "b", "a"], np.zeros((3, 4)), np.ones(3))
    dup = tmp_path / "dup.npz"
    np.savez(
        dup, ids=np.array(["a", "b", "a"]), embeddings=np.zeros((3, 4), np.float32), durations=np.ones(3, np.float32)
    )
    with pytest.raises(ValueError, match=rf"^{dup}: id 'a' appears 2 times"):
        load_embeddings(dup)
    with caplog.at_level("WARNING", logger="mlsv.data.inputs"):
        assert find_audio_files([a, wavs / "a.wav", b, str(wavs)]) == [
            a,
            b,
            str(wavs / "late.wav"),
            str(wavs / "silent.wav"),
        ]
    assert "named more than once" in caplog.text
    out = tmp_path / "e.npz"
    rc, _ = run_cli(["embed", "--model", str(small_model_dir), a, a, b, "--out", str(out)], capsys)
    assert rc == 0 and list(load_embeddings(out).ids) == [a, b]


def test_verify_cli_reads_a_file_named_in_latin1_and_names_it_readably(tmp_path, capsys):
    from conftest import saved_tiny_model

    from mlsv.cli import main

    model = str(saved_tiny_model(tmp_path / "model"))
    a = write_wav(tmp_path / "a.wav", tone(1.0))
    b = write_wav_bytes_path(latin1_name(tmp_path, b"caf\xe9.wav"), tone(1.0, 300))
    readable = f"{tmp_path}/caf\\xe9.wav"
    capsys.readouterr()
    assert main(["verify", "--model", model, str(a), str(b), "--threshold", "0.5"]) == 0
    assert "decision" in capsys.readouterr().out
    assert main(["verify", "--model", model, str(a), str(b), "--threshold", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["b"] == readable
    assert main(["verify", "--model", model, str(a), str(b), "--threshold", "0.5", "--window", "0.5"]) == 0
    assert "speaks in caf\\xe9.wav: " in capsys.readouterr().out
    bad = latin1_name(tmp_path, b"d\xe9j\xe0.wav")  # not audio: the error names it, readably, on one line
    bad.write_bytes(b"not audio at all")
    assert main(["verify", "--model", model, str(a), str(bad), "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mlsv verify: error: {tmp_path}/d\\xe9j\\xe0.wav: not decodable audio")


def test_a_verifier_tells_and_changes_its_device(model_dir, tmp_path):
    import torch

    v = Verifier.from_pretrained(model_dir)
    assert v.device == torch.device("cpu")
    x = voice(0.6, seed=3)
    before = v.embed(x)
    assert v.to("cpu") is v and v.device == torch.device("cpu")
    np.testing.assert_array_equal(v.embed(x), before)
    with pytest.raises(ValueError, match="device 'gpu' is not a torch device"):
        v.to("gpu")
    assert v.device == torch.device("cpu")  # nothing moved
