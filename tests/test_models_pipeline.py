"""The speaker-verification pipeline (mlsv/models/pipeline_mlsv.py): where only transformers is installed,
``pipeline("speaker-verification", model=DIR, trust_remote_code=True)`` gives the scores, thresholds and
decisions of ``Verifier.verify`` (cosine, AS-norm and calibrated models, and a calibrated trial outside the
calibration's conditions) and the embeddings of ``Verifier.embed``, from paths, arrays with a rate, and
batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import saved_tiny_model
from data_helpers import voice

from mlsv.api import Verifier
from mlsv.scoring.embeddings import EmbeddingTable

SR = 16000
MEAN = [0.05 * i for i in range(16)]


def _cohort_table() -> EmbeddingTable:
    """A synthetic cohort of 12 speakers x 6 utterances of the tiny models' 16 dimensions."""
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((12, 16))
    emb = np.concatenate([c + 0.5 * rng.standard_normal((6, 16)) for c in centers]).astype(np.float32)
    return EmbeddingTable(
        np.array([f"u{i}" for i in range(len(emb))]),
        emb,
        rng.uniform(0.25, 5, len(emb)),  # durations the test recordings (0.3-0.7 s) lie within
        np.repeat([f"s{i}" for i in range(12)], 6),
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three saved tiny models, one per score scale: cosine (a mean and a threshold), AS-norm (a stored cohort
    and score statistics) and calibrated (a stored cohort, a QMF calibration and its threshold)."""
    from mlsv.models import MLSVModel
    from mlsv.scoring.backend import cohort_from_table
    from mlsv.scoring.calibration import fit_calibration

    root = tmp_path_factory.mktemp("pipeline-models")
    saved_tiny_model(root / "cosine", config={"training_mean": MEAN, "threshold": 0.25})
    table = _cohort_table()
    vectors = torch.from_numpy(cohort_from_table(table, np.asarray(MEAN, np.float32)).vectors)
    model = MLSVModel.from_pretrained(root / "cosine")
    model.set_cohort(vectors)
    model.config.threshold = None
    model.config.evaluation = {
        "top_k": 5,
        "threshold_scale": "asnorm",
        "score_statistics": {
            "asnorm": {"eer": 10.0, "eer_threshold": 1.5, "n_target": 4, "n_nontarget": 4, "trial_list": "dev"}
        },
    }
    model.save_pretrained(root / "asnorm")
    cal = fit_calibration(table, mean=np.asarray(MEAN, np.float32), top_k=5, n_pairs=400)
    model.config.calibration = cal.to_dict()
    model.config.threshold = float(cal.threshold_)
    model.config.evaluation = {"threshold_scale": "calibrated_llr", "top_k": 5}  # a model saved by an earlier mlsv
    model.save_pretrained(root / "calibrated")
    # guarded: a calibration with the SNR features fitted on clean recordings (SNR 35-55 dB) and AS-norm score
    # statistics, for the trials outside its conditions
    clean = EmbeddingTable(
        table.ids, table.embeddings, table.durations, table.speakers, np.linspace(35, 55, len(table))
    )
    cal = fit_calibration(clean, mean=np.asarray(MEAN, np.float32), top_k=5, n_pairs=400, with_snr=True)
    model.config.calibration = cal.to_dict()
    model.config.threshold = float(cal.threshold_)
    model.config.evaluation = {
        "top_k": 5,
        "threshold_scale": "calibrated",
        "score_statistics": {
            "asnorm": {"eer": 10.0, "eer_threshold": 0.5, "n_target": 4, "n_nontarget": 4, "trial_list": "dev"}
        },
    }
    model.save_pretrained(root / "guarded")
    return root


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """a.wav (16 kHz), b8k.flac (8 kHz: resampled), c.wav (stereo, 16 kHz), d.wav (0.4 s)."""
    d = tmp_path_factory.mktemp("pipeline-audio")
    sf.write(d / "a.wav", voice(0.7, seed=1), SR, subtype="FLOAT")
    sf.write(d / "b8k.flac", voice(0.6, f0=210, sr=8000, seed=2), 8000)
    sf.write(d / "c.wav", np.stack([voice(0.5, seed=3), voice(0.5, seed=4)], 1), SR, subtype="FLOAT")
    sf.write(d / "d.wav", voice(0.4, f0=180, seed=5), SR, subtype="FLOAT")
    # synthetic speech with pauses: clean (SNR estimate about 40 dB), and with white noise at 0 dB
    from mlsv.data.synthetic import _coloured_noise, sample_session, sample_voice, synthesize

    rng = np.random.default_rng(7)
    clean = [synthesize(sample_voice(np.random.default_rng(s)), sample_session(rng, 3.0), 1.6, rng) for s in (1, 2)]
    noise = _coloured_noise(len(clean[1]), 0.0, rng) * np.sqrt(np.mean(clean[1].astype(np.float64) ** 2))
    sf.write(d / "s1.wav", clean[0], SR, subtype="FLOAT")
    sf.write(d / "s2.wav", clean[1], SR, subtype="FLOAT")
    sf.write(d / "s2noisy.wav", (clean[1] + noise).astype(np.float32), SR, subtype="FLOAT")
    return d


# run where mlsv cannot be imported: the pipeline, its code and its scoring come from the model folders
WITHOUT_MLSV = textwrap.dedent("""
    import json, sys
    sys.modules["mlsv"] = None  # any import of mlsv fails
    import numpy as np, soundfile as sf
    from transformers import pipeline

    root, audio, out = sys.argv[1:4]
    a, b, c, d = (f"{audio}/{n}" for n in ("a.wav", "b8k.flac", "c.wav", "d.wav"))
    results = {}
    for name in ("cosine", "asnorm", "calibrated"):
        pipe = pipeline("speaker-verification", model=f"{root}/{name}", trust_remote_code=True)
        assert not type(pipe).__module__.startswith("mlsv"), type(pipe).__module__
        x, rate = sf.read(b, dtype="float32")
        results[name] = {
            "pair": pipe(a, b),
            "tuple": pipe((a, b)),
            "batch": pipe([(a, c), (d, b)]),
            "enrolment": pipe([a, d], c),
            "array": pipe({"array": x, "sampling_rate": rate}, c),
            "given": pipe(a, b, threshold=0.5),
        }
        single = pipe(a)
        arrays = pipe([{"raw": x, "sampling_rate": rate}, c])
        np.save(f"{out}/{name}-emb.npy", np.stack([single["embedding"], *[r["embedding"] for r in arrays]]))
        bare = pipe(sf.read(a, dtype="float32")[0], sampling_rate=16000)
        assert np.array_equal(bare["embedding"], single["embedding"])
    pipe = pipeline("speaker-verification", model=f"{root}/guarded", trust_remote_code=True)
    s1, s2, noisy = (f"{audio}/{n}" for n in ("s1.wav", "s2.wav", "s2noisy.wav"))
    results["guarded"] = {
        "inside": pipe(s1, s2),
        "outside": pipe(s1, noisy),
        "enrolment": pipe([noisy, s2], s1),
        "given": pipe(s1, noisy, threshold=0.5),
    }
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f)
    print("ok")
""")


def test_pipeline_without_mlsv_equals_the_verifier(models, audio, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(WITHOUT_MLSV)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, str(script), str(models), str(audio), str(tmp_path)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    a, b, c, d = (audio / n for n in ("a.wav", "b8k.flac", "c.wav", "d.wav"))
    x, rate = sf.read(b, dtype="float32")
    for name, scale in (("cosine", "cosine"), ("asnorm", "asnorm"), ("calibrated", "calibrated")):
        v = Verifier.from_pretrained(models / name)
        assert v.score_scale == scale
        got = results[name]
        for key, (enroll, test, kw) in {
            "pair": (a, b, {}),
            "tuple": (a, b, {}),
            "enrolment": ([a, d], c, {}),
            "array": (x, c, {"sample_rate": rate}),
            "given": (a, b, {"threshold": 0.5}),
        }.items():
            _same(got[key], v.verify(enroll, test, **kw).to_dict(), f"{name} {key}")
        _same(got["batch"][0], v.verify(a, c).to_dict(), f"{name} batch 0")
        _same(got["batch"][1], v.verify(d, b).to_dict(), f"{name} batch 1")
        assert got["given"]["threshold"] == 0.5 and got["given"]["threshold_source"] == "given by the caller"
        emb = np.load(tmp_path / f"{name}-emb.npy")
        np.testing.assert_allclose(emb, v.embed([a, b, c]), rtol=0, atol=1e-6)
    # a calibrated trial outside the calibration's conditions: decided on the AS-norm scale, as verify decides
    s1, s2, noisy = (audio / n for n in ("s1.wav", "s2.wav", "s2noisy.wav"))
    v = Verifier.from_pretrained(models / "guarded")
    got = results["guarded"]
    for key, (enroll, test, kw) in {
        "inside": (s1, s2, {}),
        "outside": (s1, noisy, {}),
        "enrolment": ([noisy, s2], s1, {}),
        "given": (s1, noisy, {"threshold": 0.5}),
    }.items():
        want = v.verify(enroll, test, **kw).to_dict()
        _same(got[key], want, f"guarded {key}")
        assert got[key]["outside_calibration"] == want["outside_calibration"], key
    assert got["inside"]["scale"] == "calibrated" and got["inside"]["outside_calibration"] is None
    assert got["outside"]["scale"] == "asnorm" and got["outside"]["threshold"] == 0.5
    assert got["outside"]["outside_calibration"].startswith("test SNR")
    assert got["given"]["decision"] is None and got["given"]["label"] == "no decision"
    # the scales' thresholds are the models' own: stored statistics, the calibration's
    assert results["asnorm"]["pair"]["threshold"] == 1.5
    assert "EER point" in results["asnorm"]["pair"]["threshold_source"]


def _same(got: dict, want: dict, what: str) -> None:
    """The pipeline's answer is the Verifier's: the same scale, threshold and decision, the same scores (to
    float32 rounding of the batched forward)."""
    assert got["scale"] == want["scale"] and got["threshold"] == want["threshold"], what
    assert got["decision"] == want["decision"] and got["label"] == want["label"], what
    assert got["threshold_source"] == want["threshold_source"], what
    assert got["score"] == pytest.approx(want["score"], rel=1e-6, abs=1e-6), what
    assert got["cosine"] == pytest.approx(want["cosine"], rel=1e-6, abs=1e-6), what


def test_pipeline_in_process_and_its_errors(models, audio):
    """mlsv registers the task: an in-memory model needs no remote code. Bad inputs are named."""
    from transformers import pipeline

    from mlsv.models import MLSVModel, SpeakerVerificationPipeline

    model = MLSVModel.from_pretrained(models / "cosine")
    pipe = pipeline("speaker-verification", model=model)
    assert isinstance(pipe, SpeakerVerificationPipeline)
    v = Verifier(model)
    r = pipe(audio / "a.wav", audio / "d.wav")
    assert r["score"] == pytest.approx(v.verify(audio / "a.wav", audio / "d.wav").score, abs=1e-6)
    with pytest.raises(ValueError, match="sampling_rate"):
        pipe((voice(0.5, seed=1), 16000))
    with pytest.raises(ValueError, match="'array'"):
        pipe({"samples": voice(0.5, seed=1)})
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        pipe(audio / "a.wav", audio / "missing.wav")
    with pytest.raises(ValueError, match="too short"):
        pipe(np.ones(10, np.float32))
    with pytest.raises(ValueError, match="silent"):
        pipe(np.zeros(SR, np.float32))
    with pytest.raises(ValueError, match="sampling_rate must be a positive integer"):
        pipe(voice(0.5, seed=1), sampling_rate="16000")
    with pytest.raises(TypeError, match="one recording, or a pair"):
        pipe(audio / "a.wav", audio / "d.wav", audio / "c.wav")
    with pytest.raises(ValueError, match="batch_size"):
        pipe([audio / "a.wav", audio / "d.wav"], batch_size=2)
    with pytest.raises(TypeError, match="unknown speaker-verification parameters: far"):
        pipe(audio / "a.wav", audio / "d.wav", far=0.01)
    # a model without a threshold on its scale: the error says what to pass
    model.config.threshold = None
    bare = pipeline("speaker-verification", model=model)
    with pytest.raises(ValueError, match="threshold="):
        bare(audio / "a.wav", audio / "d.wav")
    assert bare(audio / "a.wav", audio / "d.wav", threshold=0.1)["threshold"] == 0.1


def test_saved_config_names_the_pipeline(models):
    config = json.loads((models / "calibrated" / "config.json").read_text())
    assert config["custom_pipelines"]["speaker-verification"]["impl"] == "pipeline_mlsv.SpeakerVerificationPipeline"
    assert {"pipeline_mlsv.py", "scoring_mlsv.py", "modeling_mlsv.py"} <= {p.name for p in models.glob("*/*.py")}
