"""Bad input to the verification API (mlsv.api, mlsv.inference.evaluation, embedding tables): one clear error naming
the culprit, never a traceback from deep inside safetensors, onnxruntime, torch or the hub client."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import saved_tiny_model

from mlsv.api import Verifier, find_audio_files, load_model
from mlsv.data.audio import AudioError
from mlsv.scoring.embeddings import EmbeddingTable, load_embeddings

SR = 16000


def voice(seconds: float = 0.5, f0: float = 150.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.2 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_tiny_model(tmp_path_factory.mktemp("model") / "model", config={"threshold": 0.3}, lap_heads=2,
                            lap_channels=16, embedding_size=8)


@pytest.fixture(scope="module")
def verifier(model_dir):
    return Verifier.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    sf.write(d / "a.wav", voice(seed=1), SR, subtype="FLOAT")
    sf.write(d / "b.wav", voice(f0=210, seed=2), SR, subtype="FLOAT")
    sf.write(d / "silent.wav", np.zeros(SR // 2, np.float32), SR)
    # silent for 1 s, then voice: chunks of 0.3 s include silent ones, the file as a whole is not silent
    sf.write(d / "late.wav", np.concatenate([np.zeros(SR, np.float32), voice(0.3, seed=3)]), SR, subtype="FLOAT")
    return d


def cli(argv: list[str], capsys) -> tuple[int, str]:
    from mlsv.cli import main

    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


# -- 1. corrupt weights / ONNX files ---------------------------------------------------------------


def test_corrupt_weights_file_is_named(model_dir, wavs, tmp_path, capsys):
    bad = tmp_path / "badst"
    shutil.copytree(model_dir, bad)
    data = (model_dir / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:1000])
    msg = rf"{bad / 'model.safetensors'}: corrupt or truncated weights file"
    with pytest.raises(ValueError, match=msg):
        load_model(bad)
    with pytest.raises(ValueError, match=msg):
        Verifier.from_pretrained(bad)
    (bad / "model.safetensors").write_bytes(data[:-100])  # header intact, tensors cut short
    with pytest.raises(ValueError, match=msg):
        load_model(bad)
    rc, err = cli(["verify", "--model", str(bad), str(wavs / "a.wav"), str(wavs / "b.wav")], capsys)
    assert rc == 2 and "corrupt or truncated weights file" in err and len(err.splitlines()) == 1


def test_corrupt_onnx_file_is_named_with_the_reexport_command(model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "folder"
    shutil.copytree(model_dir, folder)
    (folder / "model.onnx").write_text("garbage\n")
    with pytest.raises(ValueError, match=rf"{folder / 'model.onnx'}: not a loadable ONNX model.*re-export it: "
                                         rf"mlsv export --model {folder} --out {folder / 'model.onnx'}"):
        Verifier.from_pretrained(folder, runtime="onnx")


# -- 2. devices ------------------------------------------------------------------------------------


def test_bad_devices_are_named_before_anything_loads(model_dir, tmp_path):
    from mlsv.api import TorchEmbedder, check_device
    from mlsv.inference.evaluation import embed_manifest, evaluate_model

    assert check_device("cpu") == torch.device("cpu")
    gpu = r"device 'gpu' is not a torch device \(cpu, cuda, cuda:0, mps, \.\.\.\)"
    with pytest.raises(ValueError, match=gpu):
        check_device("gpu")
    with pytest.raises(ValueError, match=gpu):
        Verifier.from_pretrained(model_dir, device="gpu")
    with pytest.raises(ValueError, match=gpu):
        load_model(model_dir, device="gpu")
    model = load_model(model_dir)
    with pytest.raises(ValueError, match=gpu):
        TorchEmbedder(model, "gpu")
    with pytest.raises(ValueError, match=gpu):
        embed_manifest(model, tmp_path / "m.jsonl", device="gpu")
    with pytest.raises(ValueError, match=gpu):  # before reading the (missing) trial lists
        evaluate_model(model_dir, manifest=str(tmp_path / "m.jsonl"), trials=[str(tmp_path / "t.txt")],
                       out_dir=tmp_path / "ev", device="gpu")
    assert not (tmp_path / "ev").exists()
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device for ONNX Runtime"):
        Verifier.from_pretrained(model_dir, runtime="onnx", device="gpu")
    if not torch.backends.cuda.is_built():
        with pytest.raises(ValueError, match=r"device 'cuda': this torch build has no CUDA \(use cpu\)"):
            Verifier.from_pretrained(model_dir, device="cuda")
    elif torch.cuda.device_count():
        with pytest.raises(ValueError, match=r"device 'cuda:99': this machine has \d+ CUDA device"):
            check_device("cuda:99")


# -- 3. folders of other models ----------------------------------------------------------------------


def test_models_of_other_types_and_incomplete_configs_are_named(model_dir, tmp_path):
    from transformers import BertConfig, BertModel

    from mlsv.models import MLSVConfig

    other = tmp_path / "othermodel"
    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                         vocab_size=10)).save_pretrained(other)
    with pytest.raises(ValueError, match=rf"^{other}: a 'bert' model, not an mlsv model$"):
        load_model(other)
    with pytest.raises(ValueError, match="a 'bert' model, not an mlsv model"):
        Verifier.from_pretrained(other)
    mincfg = tmp_path / "mincfg"
    mincfg.mkdir()
    (mincfg / "config.json").write_text('{"model_type": "mlsv"}')
    with pytest.raises(ValueError, match=rf"^{mincfg / 'config.json'}: no encoder_config \(not a complete mlsv "
                                         r"model config\)$"):
        load_model(mincfg)
    config = json.loads((model_dir / "config.json").read_text())
    config["encoder_config"]["model_type"] = "wavlmx"
    (mincfg / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: encoder_config has an unknown model_type 'wavlmx'"):
        load_model(mincfg)
    with pytest.raises(ValueError, match=r"^no encoder_config \(not a complete mlsv model config\)$"):
        MLSVConfig().encoder_pretrained_config()
    with pytest.raises(ValueError, match="encoder_config has no model_type"):
        MLSVConfig(encoder_config={"hidden_size": 8}).encoder_pretrained_config()


def test_a_run_or_stage_folder_points_to_its_model_folder(model_dir, tmp_path, capsys):
    """A stage folder (config.yaml, checkpoints, model/) has no config.json: it was reported as "a
    config.json without a model_type"; now the error says so and names its model/ folder."""
    from mlsv.cli import main

    stage = tmp_path / "stage1"
    shutil.copytree(model_dir, stage / "model")
    (stage / "config.yaml").write_text("stage: {name: stage1}\n")
    message = rf"^{stage}: not a model folder \(no config.json\); a run's or training stage's model is in its " \
              rf"model/ folder: {stage / 'model'}$"
    for load in (load_model, Verifier.from_pretrained, lambda m: Verifier.from_pretrained(m, runtime="onnx")):
        with pytest.raises(FileNotFoundError, match=message):
            load(stage)
    assert main(["verify", "--model", str(stage), "a.wav", "b.wav"]) == 2
    assert f"model/ folder: {stage / 'model'}" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}: not a model folder \(no config.json\)$"):
        load_model(tmp_path)


# -- 4. nonsense thresholds, sample rates and dtypes -------------------------------------------------


def test_nonsense_thresholds_and_sample_rates_are_refused(verifier, wavs, model_dir, capsys):
    from mlsv.api import check_sample_rate

    a, b = wavs / "a.wav", wavs / "b.wav"
    for bad in (float("nan"), float("inf"), "x", True):
        with pytest.raises(ValueError, match=r"^threshold \(--threshold\) must be a (finite )?number"):
            verifier.verify(a, b, threshold=bad)
    with pytest.raises(ValueError, match=r"far \(--far\) or threshold \(--threshold\), not both"):
        verifier.verify(a, b, far=0.01, threshold=0.3)
    with pytest.raises(ValueError, match=r"far \(--far\) must be a finite number, got nan"):
        verifier.verify(a, b, far=float("nan"))
    with pytest.raises(ValueError, match=r"far \(--far\) must be in \(0, 1\), got 2"):
        verifier.verify(a, b, far=2)
    rc, err = cli(["verify", "--model", str(model_dir), "--threshold", "nan", str(a), str(b)], capsys)
    assert rc == 2 and "must be a finite number, got nan" in err
    x = voice()
    for bad in (0, -16000, "16000", 16000.5, True, float("nan")):
        with pytest.raises(ValueError, match=r"^sample_rate must be a positive integer \(samples per second\), got"):
            verifier.embed(x, sample_rate=bad)
        with pytest.raises(ValueError, match=r"^sample_rate must be a positive integer"):
            verifier.verify(x, x, sample_rate=bad)
    assert check_sample_rate(np.int64(8000)) == 8000 and check_sample_rate(16000.0) == 16000
    np.testing.assert_array_equal(verifier.embed(x, sample_rate=16000.0), verifier.embed(x))
    # a rate no audio has would resample into gigabytes (sample_rate=1 grew a process to 18 GB)
    for bad in (1, 3999, 384001):
        with pytest.raises(ValueError, match=rf"^sample_rate {bad} Hz is outside 4000-384000 Hz"):
            verifier.embed(x, sample_rate=bad)
    sr1 = wavs.parent / "sr1.wav"
    sf.write(sr1, 0.3 * np.random.default_rng(0).standard_normal(32000), 1, subtype="PCM_16")
    rc, err = cli(["verify", "--model", str(model_dir), str(sr1), str(a)], capsys)
    assert rc == 2 and err.count("\n") == 1 and f"{sr1}: sample rate 1 Hz is outside 4000-384000 Hz" in err, err


def test_float_audio_far_beyond_full_scale_gives_the_same_embedding():
    """|x| ~ 1e19 passed the NaN check and overflowed the input normalisation (cosine 0.375 against the same
    signal at amplitude 1), and Whisper's power spectrum into NaN."""
    from conftest import tiny_model

    x = voice(1.0, seed=5)
    x = x / np.abs(x).max()
    for family in ("tiny-wavlm", "tiny-hubert"):  # input normalisation: scale-free, so the same embedding
        v = Verifier(tiny_model(family).eval())
        a = v.embed(x)
        for amplitude in (3.0, 1e19, 1e37):
            b = v.embed(x * np.float32(amplitude))
            assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.99999, (family, amplitude)
    whisper = tiny_model("tiny-whisper").eval().frontend
    lengths = torch.tensor([x.size])
    with torch.no_grad():
        ref = whisper.log_mel(torch.from_numpy(x)[None], lengths)
        for amplitude in (1e19, 1e37):  # Whisper's log-mel is not scale-free: log10(a) / 2 higher everywhere
            loud = whisper.log_mel(torch.from_numpy(x * np.float32(amplitude))[None], lengths)
            assert torch.isfinite(loud).all()
            torch.testing.assert_close(loud - ref, torch.full_like(ref, np.log10(amplitude) / 2), rtol=0,
                                       atol=1e-3)


def test_half_precision_tensors_are_embedded_as_float32(verifier):
    x = torch.from_numpy(voice())
    ref = verifier.embed(x)
    for dtype in (torch.bfloat16, torch.float16):
        e = verifier.embed(x.to(dtype))
        assert e.dtype == np.float32
        np.testing.assert_allclose(e, verifier.embed(x.to(dtype).float()), atol=1e-6)
        assert np.abs(e - ref).max() < 1e-2


# -- 5. a mistyped model name fails at once ----------------------------------------------------------


def test_mistyped_model_names_fail_at_once(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"model folder not found: modle \(a hub model id is namespace/name\)"):
        load_model("modle")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"model folder not found: someone/modle .*HF_HUB_OFFLINE is set"):
        Verifier.from_pretrained("someone/modle")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    with pytest.raises(FileNotFoundError, match=r"someone/modle \(nor in the local hub cache, and the hub cannot be "
                                                r"asked: cannot reach http://127.0.0.1:9"):
        load_model("someone/modle")
    assert time.monotonic() - start < 10  # the hub client's retries take about 25 s


# -- 6. repeated ids ---------------------------------------------------------------------------------


def test_repeated_ids_are_refused_and_a_file_named_twice_is_embedded_once(verifier, wavs, model_dir, tmp_path,
                                                                          caplog, capsys):
    a, b = str(wavs / "a.wav"), str(wavs / "b.wav")
    with pytest.raises(ValueError, match=r"id 'a' is given twice \(inputs #0 and #2\)"):
        verifier.embed_table([a, b, a], ids=["a", "b", "a"])
    with pytest.raises(ValueError, match=rf"id '{a}' is given twice"):
        verifier.embed_table([a, a])
    assert verifier.embed([a, a]).shape == (2, 8)  # embed() returns no ids: a repeat is harmless there
    with pytest.raises(ValueError, match=r"id 'a' appears 2 times \(rows 0, 2\); ids must be unique"):
        EmbeddingTable(["a", "b", "a"], np.zeros((3, 4)), np.ones(3))
    dup = tmp_path / "dup.npz"
    np.savez(dup, ids=np.array(["a", "b", "a"]), embeddings=np.zeros((3, 4), np.float32),
             durations=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=rf"^{dup}: id 'a' appears 2 times"):
        load_embeddings(dup)
    with caplog.at_level("WARNING", logger="mlsv.data.inputs"):
        assert find_audio_files([a, wavs / "a.wav", b, str(wavs)]) == [a, b, str(wavs / "late.wav"),
                                                                        str(wavs / "silent.wav")]
    assert "named more than once" in caplog.text
    out = tmp_path / "e.npz"
    rc, _ = cli(["embed", "--model", str(model_dir), a, a, b, "--out", str(out)], capsys)
    assert rc == 0 and list(load_embeddings(out).ids) == [a, b]


# -- 7. silent audio: the same rule from a manifest as from a path -----------------------------------


def test_silent_file_is_refused_from_a_manifest_as_from_its_path(verifier, wavs, tmp_path):
    from mlsv.inference.evaluation import embed_manifest

    rows = [{"id": name, "path": str(wavs / f"{name}.wav"), "speaker": "s",
             "duration": sf.info(wavs / f"{name}.wav").duration, "sample_rate": SR} for name in ("a", "silent", "late")]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AudioError, match=r"silent\.wav: silent audio"):
        verifier.embed(wavs / "silent.wav")
    for chunk_seconds in (0.0, 0.3):
        with pytest.raises(AudioError, match=rf"{wavs / 'silent.wav'} \(manifest id silent\): silent audio"):
            embed_manifest(verifier.embedder.backend.model, manifest, progress=False, chunk_seconds=chunk_seconds)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] != "silent"))
    table = embed_manifest(verifier.embedder.backend.model, manifest, progress=False, chunk_seconds=0.3)
    assert sorted(table.ids) == ["a", "late"]  # a silent chunk of a voiced file is not a silent file
    np.testing.assert_allclose(table.embeddings[list(table.ids).index("late")],
                               verifier.embed(wavs / "late.wav", chunk_seconds=0.3), atol=2e-5)


def test_repeated_ids_are_found_in_one_pass():
    """A cohort file made of two concatenated tables (the search was quadratic: about 30 s at this size)."""
    from mlsv.scoring.embeddings import repeated_ids

    ids = np.array([f"utt{i}" for i in range(50_000)] * 2 + ["x", "y", "x"])
    found = repeated_ids(ids)
    assert len(found) == 50_001 and found[0] == ("utt0", [0, 50_000]) and found[-1] == ("x", [100_000, 100_002])
