"""The synthetic corpus: deterministic, complete, and hard for an MFCC-mean baseline but learnable."""

from __future__ import annotations

import numpy as np
import pytest

from mlsv.data.audio import read_audio
from mlsv.data.manifest import iter_rows
from mlsv.data.synthetic import corpus_baseline, make_synthetic_corpus, mfcc, sample_voice
from mlsv.data.validate import validate

SMALL = {
    "n_speakers": 2,
    "utts_per_speaker": 3,
    "n_validation_speakers": 2,
    "n_test_speakers": 2,
    "bank_files": 1,
    "bank_seconds": 3.0,
    "n_rirs": 2,
    "max_seconds": 2.0,
}


def test_corpus_is_deterministic_and_valid(tmp_path):
    a = make_synthetic_corpus(tmp_path / "a", seed=3, **SMALL)
    b = make_synthetic_corpus(tmp_path / "b", seed=3, **SMALL)
    c = make_synthetic_corpus(tmp_path / "c", seed=4, **SMALL)
    for name in ("train", "validation", "test", "noise", "rirs"):
        rows_a = [r for _, r in iter_rows(getattr(a, name))]
        assert rows_a == [r for _, r in iter_rows(getattr(b, name))]
        assert validate(getattr(a, name)).ok
    assert a.test_trials.read_text() == b.test_trials.read_text()
    assert validate(a.test, a.test_trials).ok and validate(a.validation, a.validation_trials).ok
    first = next(iter_rows(a.train))[1]["path"]
    x, y, z = (read_audio(p.root / first)[0] for p in (a, b, c))
    np.testing.assert_array_equal(x, y)
    assert len(x) != len(z) or not np.array_equal(x, z)
    assert {r["category"] for _, r in iter_rows(a.noise)} == {"noise", "music", "speech"}
    speakers = [{r["speaker"] for _, r in iter_rows(getattr(a, n))} for n in ("train", "validation", "test")]
    assert not (speakers[0] & speakers[1]) and not (speakers[0] & speakers[2]) and not (speakers[1] & speakers[2])


def test_second_call_reuses_a_complete_corpus(tmp_path):
    a = make_synthetic_corpus(tmp_path, **SMALL)
    stamp = (a.root / "corpus.json").stat().st_mtime_ns
    make_synthetic_corpus(tmp_path, **SMALL)
    assert (a.root / "corpus.json").stat().st_mtime_ns == stamp


def test_voices_differ_and_mfcc_shape():
    voices = [sample_voice(np.random.default_rng(i)) for i in range(20)]
    assert len({round(v.f0) for v in voices}) > 15 and np.std([v.vtl for v in voices]) > 0.05
    assert mfcc(np.zeros(16000, np.float32)).shape == (98, 20)


@pytest.mark.slow
def test_default_corpus_baseline_is_poor_but_identity_learnable(tmp_path):
    result = corpus_baseline(make_synthetic_corpus(tmp_path))
    assert 15.0 <= result["mfcc_cosine_eer"] <= 35.0
    assert result["lda_eer"] < result["mfcc_cosine_eer"] / 2
