"""ONNX export (mlsv.inference.export) of the whole embedding model, parity with PyTorch, and the ONNX runtime
of the Verifier: exports of other weights and corrupt ONNX files refused naming the re-export command."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_FAMILIES

from mlsv.api import Verifier

pytest.importorskip("onnxruntime")

warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")


def tiny_model_dir(root, encoder: str, cohort: bool = True):
    import torch

    from mlsv.models import MLSVModel

    torch.manual_seed(0)
    model = MLSVModel.from_encoder(encoder, lap_heads=4, lap_channels=32, embedding_size=16)
    model.config.training_mean = [0.01] * 16
    model.config.threshold = 0.3
    if cohort:
        model.config.evaluation = {"threshold_scale": "asnorm", "top_k": 4}
        model.set_cohort(torch.randn(6, 16))  # AS-norm speaker means stored in the weights
    out = root / encoder
    model.save_pretrained(out)
    return out, model


@pytest.mark.parametrize("encoder", ["tiny-wavlm", "tiny-hubert"])
def test_export_parity_at_other_lengths(tmp_path, encoder):
    from mlsv.api import Verifier
    from mlsv.inference.export import export_onnx

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
    assert onnx_v.embedder.runtime == "onnx" and onnx_v.device == "cpu"
    with pytest.raises(ValueError, match="an 'onnx' runtime Verifier cannot move: load it again with device='cuda'"):
        onnx_v.to("cuda")
    inputs = [tmp_path / "x.wav", wav[:3000]]  # one row at 11025 Hz (a third length), one padded
    e_onnx, e_torch = onnx_v.embed(inputs), torch_v.embed(inputs)
    np.testing.assert_allclose(e_onnx, e_torch, atol=1e-4)
    assert onnx_v.score_scale == torch_v.score_scale == "asnorm" and onnx_v.top_k == 4
    assert onnx_v.threshold().value == torch_v.threshold().value == 0.3
    s_onnx = onnx_v.score_embeddings(*e_onnx)["asnorm"]
    assert s_onnx == pytest.approx(torch_v.score_embeddings(*e_torch)["asnorm"], abs=1e-3)
    # sliding windows and a live stream run on ONNX Runtime as on PyTorch
    t_onnx = onnx_v.track(wav[:3000], wav, window=0.1, hop=0.07, sample_rate=11025)
    t_torch = torch_v.track(wav[:3000], wav, window=0.1, hop=0.07, sample_rate=11025)
    np.testing.assert_allclose(t_onnx.scores, t_torch.scores, atol=1e-3)
    live = onnx_v.online(wav[:3000], window=0.1, hop=0.07, sample_rate=11025)
    scores = [w.score for i in range(0, wav.size, 700) for w in live.push(wav[i : i + 700])] + [
        w.score for w in live.flush()
    ]
    np.testing.assert_allclose(scores, t_onnx.scores, atol=1e-3)


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


def retrain(model, model_dir) -> None:
    """Changes one weight and saves over ``model_dir``: what a retrain does to an exported folder."""
    import torch

    with torch.no_grad():
        next(model.backend.parameters()).view(-1)[0] += 0.01
    model.save_pretrained(model_dir)


@pytest.mark.parametrize("encoder", TINY_FAMILIES)
def test_weights_fingerprint_of_the_model_equals_the_saved_files(tmp_path, encoder):
    import torch

    from mlsv.inference.export import saved_weights_fingerprint, weights_fingerprint
    from mlsv.models import MLSVModel

    model_dir, model = tiny_model_dir(tmp_path, encoder)
    saved = saved_weights_fingerprint(model_dir)  # what loading with runtime onnx computes
    assert weights_fingerprint(model) == saved == saved_weights_fingerprint(model_dir / "model.safetensors")
    assert weights_fingerprint(MLSVModel.from_pretrained(model_dir)) == saved  # what `mlsv export` records
    # the stored cohort is not in the graph (mlsv evaluate rewrites it); every weight is
    model.set_cohort(torch.randn(3, 16))
    assert weights_fingerprint(model) == saved
    with torch.no_grad():
        next(model.frontend.encoder.parameters()).view(-1)[0] += 1e-3
    assert weights_fingerprint(model) != saved
    # stored as bf16 and loaded as float32: the same values, the same fingerprint
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    loaded = MLSVModel.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    assert weights_fingerprint(loaded) == saved_weights_fingerprint(tmp_path / "bf16") == weights_fingerprint(model)


def test_onnx_export_of_other_weights_is_refused(tmp_path, capsys):
    import torch

    from mlsv import cli
    from mlsv.api import Verifier
    from mlsv.inference.export import StaleExportError, export_onnx, saved_weights_fingerprint

    model_dir, model = tiny_model_dir(tmp_path, "tiny-hubert")
    onnx = model_dir / "model.onnx"
    export_onnx(model, onnx, trace_seconds=0.4, check=False)
    report = json.loads((model_dir / "model.onnx.json").read_text())  # written without the parity check too
    assert report["max_abs_diff"] is None and report["weights_fingerprint"] == saved_weights_fingerprint(model_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*unchecked")
        Verifier.from_pretrained(model_dir, runtime="onnx")
        # mlsv evaluate rewrites the config and the stored cohort, not the graph's weights
        model.set_cohort(torch.randn(5, 16))
        model.config.threshold = 0.5
        model.save_pretrained(model_dir)
        Verifier.from_pretrained(model_dir, runtime="onnx")

    retrain(model, model_dir)
    with pytest.raises(StaleExportError) as info:
        Verifier.from_pretrained(model_dir, runtime="onnx")
    message = str(info.value)
    assert f"{onnx} was exported from other weights than {model_dir / 'model.safetensors'}" in message
    assert f"mlsv export --model {model_dir} --out {onnx}" in message
    with pytest.raises(StaleExportError):
        Verifier.from_pretrained(onnx, runtime="onnx")  # the .onnx file itself, its weights beside it
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32), 16000)
    assert cli.main(["verify", "--model", str(model_dir), "--runtime", "onnx", str(wav), str(wav)]) == 2
    assert "mlsv export --model" in capsys.readouterr().err

    export_onnx(model, onnx, trace_seconds=0.4, check=False)  # the re-export the message asks for
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*unchecked")
        assert Verifier.from_pretrained(model_dir, runtime="onnx").embedder.runtime == "onnx"


def test_onnx_export_that_cannot_be_checked_warns_once_and_loads(tmp_path):
    from mlsv.api import Verifier
    from mlsv.inference.export import export_onnx

    model_dir, model = tiny_model_dir(tmp_path, "tiny-hubert", cohort=False)
    report = model_dir / "model.onnx.json"
    export_onnx(model, model_dir / "model.onnx", trace_seconds=0.4, check=False)
    only = tmp_path / "onnx-only"  # the export and the config, no weights
    only.mkdir()
    for name in ("config.json", "model.onnx", "model.onnx.json"):
        shutil.copy(model_dir / name, only / name)
    old = json.loads(report.read_text())
    del old["weights_fingerprint"]  # an export made before reports recorded the weights
    report.write_text(json.dumps(old))
    retrain(model, model_dir)
    for src, reason in ((model_dir, "records no weights fingerprint"), (only, "no weights beside")):
        with pytest.warns(UserWarning, match=reason) as record:
            v = Verifier.from_pretrained(src, runtime="onnx")
        assert v.embedder.runtime == "onnx" and len([w for w in record if "unchecked" in str(w.message)]) == 1
    report.unlink()
    with pytest.warns(UserWarning, match="has no export report"):
        Verifier.from_pretrained(model_dir, runtime="onnx")


def test_hub_export_is_checked_against_weights_already_downloaded(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from mlsv.api import Verifier
    from mlsv.inference.export import StaleExportError, export_onnx

    repos = {}
    for repo_id, cohort in (("me/plain", False), ("me/cohort", True)):
        model_dir, model = tiny_model_dir(tmp_path / repo_id.replace("/", "-"), "tiny-hubert", cohort=cohort)
        export_onnx(model, model_dir / "model.onnx", trace_seconds=0.4, check=False)
        retrain(model, model_dir)  # new weights pushed after the export
        repos[repo_id] = model_dir
    cache = tmp_path / "cache"

    def download(repo_id, filename, revision=None, **kw):  # the hub: a copy into the local cache
        if not (repos[repo_id] / filename).is_file():
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        (cache / repo_id).mkdir(parents=True, exist_ok=True)
        return str(shutil.copy(repos[repo_id] / filename, cache / repo_id / filename))

    def cached(repo_id, filename, revision=None, **kw):
        return str(cache / repo_id / filename) if (cache / repo_id / filename).is_file() else None

    # the hub client's functions where mlsv calls them (the ONNX runtime imports huggingface_hub when it
    # meets a hub id, and downloads config.json with it too)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)
    # the weights are not downloaded for the check alone
    assert Verifier.from_pretrained("me/plain", runtime="onnx").embedder.runtime == "onnx"
    assert sorted(p.name for p in (cache / "me/plain").iterdir()) == ["config.json", "model.onnx", "model.onnx.json"]
    # a stored cohort downloads them anyway: then the export is compared with them
    with pytest.raises(StaleExportError, match="mlsv export --model me/cohort"):
        Verifier.from_pretrained("me/cohort", runtime="onnx")


def test_corrupt_onnx_file_is_named_with_the_reexport_command(small_model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "folder"
    shutil.copytree(small_model_dir, folder)
    (folder / "model.onnx").write_text("garbage\n")
    with pytest.raises(
        ValueError,
        match=rf"{folder / 'model.onnx'}: not a loadable ONNX model.*re-export it: "
        rf"mlsv export --model {folder} --out {folder / 'model.onnx'}",
    ):
        Verifier.from_pretrained(folder, runtime="onnx")
