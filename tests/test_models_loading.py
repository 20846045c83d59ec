"""Loading a saved model (mlsv.models.loading, through mlsv.api.load_model and Verifier.from_pretrained):
devices checked before anything loads; corrupt weights, another library's model, a run's folder and a
mistyped hub name each named in one clear error, at once."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from conftest import run_cli

from mlsv.api import Verifier, load_model

# -- corrupt weights -----------------------------------------------------------------------------------------


def test_corrupt_weights_file_is_named(small_model_dir, wavs, tmp_path, capsys):
    bad = tmp_path / "badst"
    shutil.copytree(small_model_dir, bad)
    data = (small_model_dir / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:1000])
    msg = rf"{bad / 'model.safetensors'}: corrupt or truncated weights file"
    with pytest.raises(ValueError, match=msg):
        load_model(bad)
    with pytest.raises(ValueError, match=msg):
        Verifier.from_pretrained(bad)
    (bad / "model.safetensors").write_bytes(data[:-100])  # header intact, tensors cut short
    with pytest.raises(ValueError, match=msg):
        load_model(bad)
    rc, err = run_cli(["verify", "--model", str(bad), str(wavs / "a.wav"), str(wavs / "b.wav")], capsys)
    assert rc == 2 and "corrupt or truncated weights file" in err and len(err.splitlines()) == 1


# -- devices -------------------------------------------------------------------------------------------------


def test_bad_devices_are_named_before_anything_loads(small_model_dir, tmp_path):
    from mlsv.api import TorchEmbedder, check_device
    from mlsv.inference.evaluation import embed_manifest, evaluate_model

    assert check_device("cpu") == torch.device("cpu")
    gpu = r"device 'gpu' is not a torch device \(cpu, cuda, cuda:0, mps, \.\.\.\)"
    with pytest.raises(ValueError, match=gpu):
        check_device("gpu")
    with pytest.raises(ValueError, match=gpu):
        Verifier.from_pretrained(small_model_dir, device="gpu")
    with pytest.raises(ValueError, match=gpu):
        load_model(small_model_dir, device="gpu")
    model = load_model(small_model_dir)
    with pytest.raises(ValueError, match=gpu):
        TorchEmbedder(model, "gpu")
    with pytest.raises(ValueError, match=gpu):
        embed_manifest(model, tmp_path / "m.jsonl", device="gpu")
    with pytest.raises(ValueError, match=gpu):  # before reading the (missing) trial lists
        evaluate_model(
            small_model_dir,
            manifest=str(tmp_path / "m.jsonl"),
            trials=[str(tmp_path / "t.txt")],
            out_dir=tmp_path / "ev",
            device="gpu",
        )
    assert not (tmp_path / "ev").exists()
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device for ONNX Runtime"):
        Verifier.from_pretrained(small_model_dir, runtime="onnx", device="gpu")
    if not torch.backends.cuda.is_built():
        with pytest.raises(ValueError, match=r"device 'cuda': this torch build has no CUDA \(use cpu\)"):
            Verifier.from_pretrained(small_model_dir, device="cuda")
    elif torch.cuda.device_count():
        with pytest.raises(ValueError, match=r"device 'cuda:99': this machine has \d+ CUDA device"):
            check_device("cuda:99")


# -- folders of other models ---------------------------------------------------------------------------------


def test_models_of_other_types_and_incomplete_configs_are_named(small_model_dir, tmp_path):
    from transformers import BertConfig, BertModel

    from mlsv.models import MLSVConfig

    other = tmp_path / "othermodel"
    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, vocab_size=10)
    ).save_pretrained(other)
    with pytest.raises(ValueError, match=rf"^{other}: a 'bert' model, not an mlsv model$"):
        load_model(other)
    with pytest.raises(ValueError, match="a 'bert' model, not an mlsv model"):
        Verifier.from_pretrained(other)
    mincfg = tmp_path / "mincfg"
    mincfg.mkdir()
    (mincfg / "config.json").write_text('{"model_type": "mlsv"}')
    with pytest.raises(
        ValueError,
        match=rf"^{mincfg / 'config.json'}: no encoder_config \(not a complete mlsv "
        r"model config\)$",
    ):
        load_model(mincfg)
    config = json.loads((small_model_dir / "config.json").read_text())
    config["encoder_config"]["model_type"] = "wavlmx"
    (mincfg / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: encoder_config has an unknown model_type 'wavlmx'"):
        load_model(mincfg)
    with pytest.raises(ValueError, match=r"^no encoder_config \(not a complete mlsv model config\)$"):
        MLSVConfig().encoder_pretrained_config()
    with pytest.raises(ValueError, match="encoder_config has no model_type"):
        MLSVConfig(encoder_config={"hidden_size": 8}).encoder_pretrained_config()


def test_a_run_or_stage_folder_points_to_its_model_folder(small_model_dir, tmp_path, capsys):
    """A stage folder (config.yaml, checkpoints, model/) has no config.json: it was reported as "a
    config.json without a model_type"; now the error says so and names its model/ folder."""
    from mlsv.cli import main

    stage = tmp_path / "stage1"
    shutil.copytree(small_model_dir, stage / "model")
    (stage / "config.yaml").write_text("stage: {name: stage1}\n")
    message = (
        rf"^{stage}: not a model folder \(no config.json\); a run's or training stage's model is in its "
        rf"model/ folder: {stage / 'model'}$"
    )
    for load in (load_model, Verifier.from_pretrained, lambda m: Verifier.from_pretrained(m, runtime="onnx")):
        with pytest.raises(FileNotFoundError, match=message):
            load(stage)
    assert main(["verify", "--model", str(stage), "a.wav", "b.wav"]) == 2
    assert f"model/ folder: {stage / 'model'}" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}: not a model folder \(no config.json\)$"):
        load_model(tmp_path)


# -- a mistyped model name fails at once ---------------------------------------------------------------------


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
    with pytest.raises(
        FileNotFoundError,
        match=r"someone/modle \(nor in the local hub cache, and the hub cannot be "
        r"asked: cannot reach http://127.0.0.1:9",
    ):
        load_model("someone/modle")
    assert time.monotonic() - start < 10  # the hub client's retries take about 25 s
