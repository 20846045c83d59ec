"""The model (mlsv.models.modeling_mlsv) and its parts: encoders, aggregation, backends, MLSVModel save/load."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import TINY_FAMILIES, TINY_SETTINGS, padded_batch, tiny_model
from transformers import AutoConfig, AutoModel, AutoModelForAudioXVector

from mlsv.models import (
    LayerAttentivePooling,
    MLSVConfig,
    MLSVModel,
    build_aggregation,
    build_backend,
)
from mlsv.models.frontend import Frontend, build_encoder, encoder_config_from_name, load_pretrained_encoder


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_encoder_folder_roundtrip_same_hidden_states(name, tmp_path):
    cfg = encoder_config_from_name(name)
    enc = build_encoder(cfg).eval()
    if cfg.model_type == "whisper":
        from transformers import WhisperModel

        full = WhisperModel(cfg)
        full.encoder.load_state_dict(enc.state_dict())
        full.save_pretrained(tmp_path)
    else:
        enc.save_pretrained(tmp_path)
    loaded = load_pretrained_encoder(str(tmp_path)).eval()
    assert type(loaded).__name__ == type(enc).__name__  # HuBERT loads as HubertModel, not wav2vec 2.0's class
    wav, _ = padded_batch([8000, 8000])
    a, la = Frontend(enc)(wav)
    b, lb = Frontend(loaded)(wav)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape[0] == Frontend(enc).num_layers + 1 == 3
    assert torch.equal(la, lb)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_all_states_in_train_and_eval_mode_with_layerdrop(name):
    cfg = encoder_config_from_name(name)
    cfg.layerdrop = 0.9
    f = Frontend(build_encoder(cfg), trainable="all", layerdrop=0.9)
    wav, _ = padded_batch([4000, 4000])
    L = f.num_layers + 1
    f.train()
    for _ in range(3):
        states, _ = f(wav)
        assert states.shape[0] == L
    f.eval()
    assert f(wav)[0].shape[0] == L


def test_frame_lengths_match_encoder_output():
    f = Frontend(build_encoder(encoder_config_from_name("tiny-wavlm")))
    wav, mask = padded_batch([16000, 9001, 4000])
    states, fl = f(wav, mask.sum(-1))
    expected = f.encoder._get_feat_extract_output_lengths(mask.sum(-1))
    assert torch.equal(fl, expected)
    assert states.shape[2] == int(expected.max())


def test_frozen_frontend_builds_no_graph():
    model = tiny_model()
    model.configure_training(trainable="none")
    model.train()
    wav, _ = padded_batch([4000, 4000])
    states, _ = model.frontend(wav)
    assert not states.requires_grad and states.grad_fn is None
    assert not model.frontend.encoder.training  # frozen stays in eval mode: no dropout or masking
    assert all(not p.requires_grad for p in model.frontend.encoder.parameters())
    emb = model(wav).embeddings
    emb.sum().backward()
    assert all(p.grad is None for p in model.frontend.encoder.parameters())
    assert model.aggregation.proj_in.weight.grad is not None


def test_transformer_trainable_keeps_cnn_frozen():
    model = tiny_model()
    model.configure_training(trainable="transformer")
    model.train()
    wav, _ = padded_batch([4000, 4000])
    model(wav).embeddings.sum().backward()
    enc = model.frontend.encoder
    assert all(p.grad is None for p in enc.feature_extractor.parameters())
    assert any(p.grad is not None for p in enc.encoder.layers.parameters())


def test_layer_subset_selection():
    model = tiny_model(layers=[0, 2])
    wav, _ = padded_batch([4000])
    states, _ = model.frontend(wav)
    assert states.shape[0] == 2
    with pytest.raises(ValueError, match="out of range"):
        tiny_model(layers=[7])


@pytest.mark.parametrize("name", ["tiny-wavlm", "tiny-whisper"])
def test_layer_subset_stops_at_the_deepest_selected_layer(name):
    """States up to the deepest selected one are computed, and are the full stack's states."""
    full, first = tiny_model(name), tiny_model(name, layers=[1, 0])
    first.frontend.load_state_dict(full.frontend.state_dict())
    wav, mask = padded_batch([4000, 3000])
    lengths = mask.sum(-1)
    calls = []
    for layer in (first.frontend.encoder if name == "tiny-whisper" else first.frontend.encoder.encoder).layers:
        layer.final_layer_norm.register_forward_hook(lambda *_: calls.append(1))
    states, _ = first.frontend.eval()(wav, lengths)
    torch.testing.assert_close(states, full.frontend.eval()(wav, lengths)[0][[1, 0]], rtol=0, atol=0)
    assert len(calls) == 1


@pytest.mark.parametrize("name", TINY_FAMILIES)
@pytest.mark.parametrize(
    "trainable,settings,training",
    [
        ("transformer", {}, {}),
        ("all", {"layers": [0, 1], "aggregation": "superb", "backend": "mhfa"}, {"mask_time_prob": 0.5}),
    ],
)
def test_every_trainable_parameter_gets_a_gradient(name, trainable, settings, training):
    """Multi-process training (DDP) fails on a trainable parameter that gets no gradient: SpecAugment's
    mask embedding without masking, and layers past the deepest selected state, are frozen."""
    model = tiny_model(name, **settings)
    model.configure_training(trainable=trainable, **training)
    model.train()(padded_batch([4000, 4000])[0]).embeddings.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert any(n.startswith("frontend.encoder.") for n, p in model.named_parameters() if p.requires_grad)


PAIRS = [(a, b) for a in ("lap", "superb", "last") for b in ("astp", "xvector", "ecapa", "mhfa")]


@pytest.mark.parametrize("aggregation,backend", PAIRS)
def test_padding_invariance_every_aggregator_backend(aggregation, backend):
    model = tiny_model(aggregation=aggregation, backend=backend, ecapa_channels=512).eval()
    lengths = [12000, 7000, 3000]
    wav, mask = padded_batch(lengths)
    batch = model(wav, attention_mask=mask).embeddings
    for i, n in enumerate(lengths):
        alone = model(wav[i : i + 1, :n]).embeddings
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_padding_invariance_every_encoder(name):
    model = tiny_model(name).eval()
    wav, mask = padded_batch([11000, 5000])
    batch = model(wav, attention_mask=mask).embeddings
    alone = model(wav[1:2, :5000]).embeddings
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-4)


def test_lap_invalid_heads_fail_clearly():
    with pytest.raises(ValueError, match="cannot be split into 12 heads"):
        LayerAttentivePooling(13, 32, heads=12)
    with pytest.raises(KeyError, match="choose one of"):
        build_aggregation("weighted", 3, 32)
    with pytest.raises(KeyError, match="choose one of"):
        build_backend("resnet", 32, 16)


def test_lap_scores_shape_and_range():
    lap = LayerAttentivePooling(5, 32, heads=4, output_size=24, dropout=0.0).eval()
    states = torch.randn(5, 2, 7, 32)
    out, scores = lap(states, return_scores=True)
    assert out.shape == (2, 7, 24)
    assert scores.shape == (2, 4, 7, 5)
    assert (scores > 0).all() and (scores < 1).all()


def test_lap_matches_a_direct_reading_of_the_method():
    """LAP against a literal, loop-based reading of docs/method.md#lap on the same parameters."""
    torch.manual_seed(3)
    L, B, T, D, h = 5, 2, 4, 8, 2
    lap = LayerAttentivePooling(L, D, heads=h, output_size=6, dropout=0.0).eval()
    with torch.no_grad():
        lap.norm.running_mean.uniform_(-0.5, 0.5)
        lap.norm.running_var.uniform_(0.5, 2)
    x = torch.randn(L, B, T, D)
    out = lap(x)
    d = D // h
    ref = torch.zeros(B, T, 6)
    bn = lap.norm
    for b in range(B):
        for t in range(T):
            z = torch.zeros(D)
            feats = []
            for layer in range(L):
                v = (x[layer, b, t] - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
                feats.append(lap.proj_in(v))
            feats = torch.stack(feats)  # (L, D)
            for j in range(h):
                xj = feats[:, j * d : (j + 1) * d]  # (L, d)

                def mlp(v, j=j):
                    z1 = torch.relu(v @ lap.squeeze_weight[j] + lap.squeeze_bias[j, 0])
                    return z1 @ lap.excite_weight[j] + lap.excite_bias[j, 0]

                s = torch.sigmoid(mlp(xj.mean(1)) + mlp(xj.amax(1)))  # (L,)
                z[j * d : (j + 1) * d] = (s[:, None] * xj).amax(0)
            o = lap.proj_out(z)
            ref[b, t] = (o - lap.norm_out.running_mean) / torch.sqrt(
                lap.norm_out.running_var + 1e-5
            ) * lap.norm_out.weight + lap.norm_out.bias
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_parameter_count_matches_paper_for_wavlm_large_shape():
    lap = build_aggregation("lap", 25, 1024, heads=16, output_size=512)
    astp = build_backend("astp", 512, 192)
    n = sum(p.numel() for p in lap.parameters()) + sum(p.numel() for p in astp.parameters())
    assert 2.25e6 < n < 2.35e6  # the paper: about 2.3 M


def test_model_save_load_roundtrip_through_automodel(tmp_path):
    model = tiny_model().eval()
    model.config.training_mean = [0.1] * 16
    model.save_pretrained(tmp_path)
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_mlsv.py"):
        assert (tmp_path / f).is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MLSVConfig)
    wav, mask = padded_batch([9000, 4000])
    ref = model(wav, attention_mask=mask).embeddings
    saved = model.state_dict()
    for cls in (AutoModel, AutoModelForAudioXVector, MLSVModel):
        loaded = cls.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, MLSVModel)
        # the stored tensors come back bit for bit ...
        for name, value in loaded.state_dict().items():
            assert torch.equal(value, saved[name]), name
        # ... but transformers' loader may rebuild modules (the positional convolution's weight norm, fused
        # projections) whose float32 forward then rounds in another order: observed differences are ~1e-7 on
        # embeddings whose entries are O(1) (transformers 5.25); 1e-5 is ~100 float32 ulps at that size, far
        # below any change that matters.
        torch.testing.assert_close(loaded(wav, attention_mask=mask).embeddings, ref, rtol=1e-5, atol=1e-5)
        assert loaded.config.training_mean == [0.1] * 16


def test_trust_remote_code_in_a_process_without_mlsv(tmp_path):
    model = tiny_model(aggregation="superb").eval()
    model.save_pretrained(tmp_path / "model")
    wav, mask = padded_batch([6000, 3000])
    torch.save({"wav": wav, "mask": mask, "emb": model(wav, attention_mask=mask).embeddings}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        "sys.modules['mlsv'] = None\n"
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True).eval()\n"
        "assert not type(m).__module__.startswith('mlsv'), type(m).__module__\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "d = (m(io['wav'], attention_mask=io['mask']).embeddings - io['emb']).abs().max().item()\n"
        "assert d < 1e-5, d\n"  # float32 rounding of another code path: see the round-trip test above
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_unknown_encoder_type_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        build_encoder(
            AutoConfig.for_model(
                "bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
            )
        )


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = tiny_model(backend_dropout=0.0, lap_dropout=0.0)
    b = tiny_model(backend_dropout=0.0, lap_dropout=0.0)
    b.load_state_dict(a.state_dict())
    for m, gc in ((a, False), (b, True)):
        m.configure_training(trainable="all", gradient_checkpointing=gc)
        m.frontend.encoder.config.hidden_dropout = 0.0
        m.eval()  # no dropout anywhere: the gradients must be identical
        m.frontend.encoder.train(False)
    wav, _ = padded_batch([4000, 4000])
    for m in (a, b):
        m.frontend.training = True  # checkpointing is a training-mode feature
        m(wav).embeddings.pow(2).sum().backward()
    ga = a.frontend.encoder.encoder.layers[0].feed_forward.intermediate_dense.weight.grad
    gb = b.frontend.encoder.encoder.layers[0].feed_forward.intermediate_dense.weight.grad
    torch.testing.assert_close(ga, gb)


def test_tiny_settings_are_valid():
    assert TINY_SETTINGS["lap_channels"] % TINY_SETTINGS["lap_heads"] == 0
