"""ONNX export of the whole embedding model, parity with PyTorch, and the ONNX runtime of the Verifier."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("onnxruntime")

warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")


def tiny_model_dir(root, encoder: str):
    import torch

    from mlsv.models import MLSVModel

    torch.manual_seed(0)
    model = MLSVModel.from_encoder(encoder, lap_heads=4, lap_channels=32, embedding_size=16)
    model.config.training_mean = [0.01] * 16
    model.config.threshold = 0.3
    model.config.evaluation = {"threshold_scale": "asnorm", "top_k": 4}
    model.set_cohort(torch.randn(6, 16))  # AS-norm speaker means stored in the weights
    out = root / encoder
    model.save_pretrained(out)
    return out, model


@pytest.mark.parametrize("encoder", ["tiny-wavlm", "tiny-hubert"])
def test_export_parity_at_other_lengths(tmp_path, encoder):
    from mlsv.api import Verifier
    from mlsv.export import export_onnx

    model_dir, model = tiny_model_dir(tmp_path, encoder)
    report = export_onnx(model, model_dir / "model.onnx", trace_seconds=0.4, check_seconds=(0.7, 0.25))
    assert report.exporter == "torchscript" and report.max_abs_diff is not None
    assert report.max_abs_diff < 1e-4
    saved = json.loads((model_dir / "model.onnx.json").read_text())
    assert saved["max_abs_diff"] == pytest.approx(report.max_abs_diff)
    assert saved["check_lengths"] == [0.7, 0.25] and saved["trace_seconds"] == 0.4

    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(6000)).astype(np.float32)
    sf.write(tmp_path / "x.wav", wav, 11025, subtype="FLOAT")
    torch_v = Verifier.from_pretrained(model_dir)
    onnx_v = Verifier.from_pretrained(model_dir, runtime="onnx")
    assert onnx_v.embedder.runtime == "onnx"
    inputs = [tmp_path / "x.wav", wav[:3000]]  # one row at 11025 Hz (a third length), one padded
    e_onnx, e_torch = onnx_v.embed(inputs), torch_v.embed(inputs)
    np.testing.assert_allclose(e_onnx, e_torch, atol=1e-4)
    assert onnx_v.score_scale == torch_v.score_scale == "asnorm" and onnx_v.top_k == 4
    assert onnx_v.threshold().value == torch_v.threshold().value == 0.3
    s_onnx = onnx_v.score_embeddings(*e_onnx)["asnorm"]
    assert s_onnx == pytest.approx(torch_v.score_embeddings(*e_torch)["asnorm"], abs=1e-3)


def test_export_command_prints_difference(tmp_path, capsys):
    from mlsv.commands import export

    model_dir, _ = tiny_model_dir(tmp_path, "tiny-hubert")
    parser = argparse.ArgumentParser()
    export.register(parser.add_subparsers())
    out = tmp_path / "exported" / "m.onnx"
    args = parser.parse_args(["export", "--model", str(model_dir), "--out", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "max abs difference" in text and out.is_file() and (tmp_path / "exported" / "m.onnx.json").is_file()
    from mlsv.api import Verifier

    v = Verifier.from_pretrained(model_dir, runtime="onnx", onnx_path=out)
    assert v.embedding_size == 16 and v.embedder.runtime == "onnx"
    with pytest.raises(FileNotFoundError, match="config.json"):
        Verifier.from_pretrained(out, runtime="onnx")  # a bare .onnx file: its config is not beside it


def test_onnx_runtime_without_export_explains(tmp_path):
    from mlsv.api import Verifier

    model_dir, _ = tiny_model_dir(tmp_path, "tiny-hubert")
    with pytest.raises(FileNotFoundError, match="mlsv export"):
        Verifier.from_pretrained(model_dir, runtime="onnx")
