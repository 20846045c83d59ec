"""Shared fixtures and helpers: tiny random-initialised models, saved models and generated audio, command-line
inputs, synthetic corpora and stage settings for training. Nothing downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

TINY_FAMILIES = ["tiny-wavlm", "tiny-hubert", "tiny-wav2vec2", "tiny-data2vec", "tiny-whisper"]
TINY_SETTINGS = dict(lap_heads=4, lap_channels=32, embedding_size=16)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for model tests (cpu or cuda)")


@pytest.fixture
def device(request):
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def tiny_model(encoder: str = "tiny-wavlm", **settings):
    from mlsv.models import MLSVModel

    return MLSVModel.from_encoder(encoder, **{**TINY_SETTINGS, **settings})


def saved_tiny_model(folder, *, seed: int = 0, encoder: str = "tiny-wavlm", config: dict | None = None, **settings):
    """``tiny_model(encoder, **settings)`` from ``seed``, with ``config`` fields set, saved to ``folder``."""
    torch.manual_seed(seed)
    model = tiny_model(encoder, **settings)
    for key, value in (config or {}).items():
        setattr(model.config, key, value)
    model.save_pretrained(folder)
    return folder


def padded_batch(lengths, seed=0):
    """Random waveforms (B, max) zero-padded, with their (B, max) attention mask."""
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    wav = torch.zeros(len(lengths), S)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for i, n in enumerate(lengths):
        wav[i, :n] = torch.randn(n, generator=g) * 0.1
        mask[i, :n] = 1
    return wav, mask


# -- saved models, audio and command-line inputs shared by several test modules ---------------------------
# (module-scoped fixtures are made once in each module that uses them)

THRESHOLD = 0.25  # the stored threshold of the ``model_dir`` fixture's model
SMALL_DIM = 8  # the embedding size of ``small_model_dir`` and of the tables in ``cli_files``


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny saved model (16-dimensional embeddings) with a training mean and a stored threshold."""
    return saved_tiny_model(
        tmp_path_factory.mktemp("model") / "model",
        config={"training_mean": [0.05 * i for i in range(16)], "threshold": THRESHOLD},
    )


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    """A smaller tiny saved model: 2 LAP heads of 8 channels, 8-dimensional embeddings, threshold 0.3."""
    return saved_tiny_model(
        tmp_path_factory.mktemp("model") / "model",
        config={"threshold": 0.3},
        lap_heads=2,
        lap_channels=16,
        embedding_size=SMALL_DIM,
    )


@pytest.fixture(scope="module")
def small_verifier(small_model_dir):
    from mlsv.api import Verifier

    return Verifier.from_pretrained(small_model_dir)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """a.wav and b.wav (two voices), silent.wav, and late.wav (silent for 1 s, then a voice)."""
    import soundfile as sf
    from data_helpers import sine_voice

    sr = 16000
    d = tmp_path_factory.mktemp("wavs")
    sf.write(d / "a.wav", sine_voice(seed=1), sr, subtype="FLOAT")
    sf.write(d / "b.wav", sine_voice(f0=210, seed=2), sr, subtype="FLOAT")
    sf.write(d / "silent.wav", np.zeros(sr // 2, np.float32), sr)
    # silent for 1 s, then voice: chunks of 0.3 s include silent ones, the file as a whole is not silent
    sf.write(d / "late.wav", np.concatenate([np.zeros(sr, np.float32), sine_voice(0.3, seed=3)]), sr, subtype="FLOAT")
    return d


@pytest.fixture()
def eval_inputs(tmp_path):
    """A manifest of two speakers' four recordings (written beside it) and a trial list over them."""
    from data_helpers import voice, write_voice_manifest

    manifest = write_voice_manifest(
        tmp_path / "m.jsonl",
        {
            "a1": ("a", voice(0.6, seed=1)),
            "a2": ("a", voice(0.5, seed=2)),
            "b1": ("b", voice(0.6, f0=210, seed=3)),
            "b2": ("b", voice(0.5, f0=210, seed=4)),
        },
    )
    trials = tmp_path / "list.txt"
    trials.write_text("1 a1 a2\n0 a1 b1\n1 b1 b2\n0 a2 b2\n")
    return manifest, trials


@pytest.fixture()
def cli_files(tmp_path):
    """test.npz (4 speakers x 3), cohort.npz (10 x 2), a trial list, a manifest, a wav and a folder."""
    import json

    from data_helpers import speaker_table, tone, write_wav

    from mlsv.scoring.embeddings import save_embeddings

    rng = np.random.default_rng(0)
    test = speaker_table(rng, 4, 3, "id", SMALL_DIM, spread=0.5, max_seconds=5.0)
    save_embeddings(test, tmp_path / "test.npz")
    save_embeddings(speaker_table(rng, 10, 2, "co", SMALL_DIM, spread=0.5, max_seconds=5.0), tmp_path / "cohort.npz")
    ids = test.ids
    lines = [
        f"{int(test.speakers[i] == test.speakers[j])} {ids[i]} {ids[j]}"
        for i in range(len(ids))
        for j in range(i + 1, len(ids))
    ]
    (tmp_path / "trials.txt").write_text("\n".join(lines) + "\n")
    write_wav(tmp_path / "good.wav", tone(1.0))
    rows = [{"id": f"u{i}", "path": "good.wav", "speaker": f"s{i % 3}", "duration": 1.0} for i in range(6)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "somedir").mkdir()
    (tmp_path / "afile").write_text("keep me\n")
    return tmp_path


def cli_error(capsys) -> str:
    """What the command wrote to stderr, which holds no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``mlsv ARGV`` in this process: (exit code, stderr stripped)."""
    from mlsv.cli import main

    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


# -- training: synthetic corpora, stage settings, train.py ---------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_corpus(tmp_path_factory):
    """A synthetic corpus of 8 training speakers (6 utterances each) to train stages on."""
    from mlsv.data.synthetic import make_synthetic_corpus

    return make_synthetic_corpus(
        tmp_path_factory.mktemp("corpus"),
        n_speakers=8,
        utts_per_speaker=6,
        n_validation_speakers=4,
        n_test_speakers=4,
        max_seconds=2.5,
        seed=1,
    )


def stage_overrides(corpus, **extra) -> list[str]:
    """``--set`` overrides for a small, fast stage on ``corpus`` (``train_corpus``), with ``extra`` ones."""
    sets = {
        "data.train_manifest": corpus.train,
        "data.validation_manifest": corpus.validation,
        "data.validation_trials": corpus.validation_trials,
        "data.batch_size": 8,
        "data.crop_seconds": 1.0,
        "data.num_workers": 0,
        "augment.noise_manifest": corpus.noise,
        "augment.rir_manifest": corpus.rirs,
        "model.encoder": "tiny-wavlm",
        "model.random_init": True,
        "model.lap_heads": 4,
        "model.lap_channels": 32,
        "model.embedding_size": 16,
        "stage.mean_utterances": 16,
        "log.progress": False,
        "optim.lr": 0.01,
        "optim.min_lr": 0.001,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def metrics_rows(out) -> list[dict]:
    """The rows of a stage's metrics.csv."""
    import csv

    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A smaller synthetic corpus (4 training speakers of 3 utterances, a small noise bank and 2 RIRs)."""
    from mlsv.data.synthetic import make_synthetic_corpus

    return make_synthetic_corpus(
        tmp_path_factory.mktemp("corpus"),
        n_speakers=4,
        utts_per_speaker=3,
        n_validation_speakers=2,
        n_test_speakers=2,
        max_seconds=1.5,
        bank_files=1,
        bank_seconds=3.0,
        n_rirs=2,
    )


@pytest.fixture(scope="module")
def tiny_stage(small_corpus, tmp_path_factory) -> Path:
    """A stage config: tiny random model, 2 epochs of 2 steps on the small synthetic corpus."""
    import yaml

    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "train_manifest": str(small_corpus.train),
                    "crop_seconds": 0.5,
                    "batch_size": 4,
                    "num_workers": 0,
                    "speed_factors": [1.0],
                },
                "augment": {"probability": 0},
                "model": {
                    "encoder": "tiny-wavlm",
                    "random_init": True,
                    "lap_heads": 2,
                    "lap_channels": 8,
                    "embedding_size": 8,
                },
                "head": {"sub_centers": 1, "top_k": 0},
                "stage": {"epochs": 2, "steps_per_epoch": 2, "mean_utterances": 4},
                "log": {"progress": False},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def tiny_stage_run(tiny_stage, tmp_path_factory) -> Path:
    """A completed ``tiny_stage`` (its checkpoints kept), for the resumption tests to copy and damage."""
    from mlsv.config import load_config
    from mlsv.train.loop import run_stage

    out = tmp_path_factory.mktemp("trained") / "run"
    run_stage(load_config(tiny_stage, ["stage.keep_best=2"]), out)
    return out


def run_train_py(argv: list[str], capsys) -> tuple[int, str]:
    """Runs train.py's main in this process: (exit code, stderr)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlsv_train_script", ROOT / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    capsys.readouterr()
    rc = script.main(argv)
    return rc, capsys.readouterr().err
