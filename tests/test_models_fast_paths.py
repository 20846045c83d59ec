"""Equivalence of every fast path with the plain one, on tiny models on a CPU.

* WavLM attention through SDPA (``mlsv.models.fast_attention``) against transformers' ``WavLMAttention``
  on the same weights: outputs and gradients, padding masks, eval and train mode (dropout 0), post-LN
  (Base) and pre-LN (Large) layers, fused QKV.
* transformers' own SDPA switch for the other families.
* LAP under bf16 autocast and compiled; the whole model compiled.
* The speed helpers (mlsv.models.runtime, mlsv.models.shapes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import padded_batch, tiny_model

from mlsv.models import runtime, shapes
from mlsv.models.aggregation import LayerAttentivePooling
from mlsv.models.fast_attention import (
    key_padding_bias,
    padded_length,
    relative_position_bias,
    wavlm_layer_forward,
)
from mlsv.models.frontend import Frontend, build_encoder, encoder_config_from_name

ROOT = Path(__file__).resolve().parents[1]
# transformers' eager WavLM attention mixes a bool padding mask with a float bias; torch warns each call
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")


def _no_dropout(cfg):
    for k in ("attention_dropout", "hidden_dropout", "activation_dropout", "feat_proj_dropout", "dropout"):
        if hasattr(cfg, k):
            setattr(cfg, k, 0.0)
    return cfg


def _wavlm_encoder(stable: bool = False, name: str = "small-wavlm"):
    cfg = _no_dropout(encoder_config_from_name(name))
    if stable:  # WavLM Large's layer type
        cfg.do_stable_layer_norm, cfg.feat_extract_norm = True, "layer"
    return build_encoder(cfg)


def _assert_grads_close(ga: dict, gb: dict, rel: float = 1e-4) -> None:
    """Each gradient within ``rel`` of its own scale, with a floor of 1e-5 of the largest gradient (the
    key-projection bias's gradient is zero in exact arithmetic, rounding noise in both paths)."""
    assert ga.keys() == gb.keys() and ga
    floor = 1e-5 * max(g.abs().max().item() for g in ga.values())
    for k in ga:
        scale = ga[k].abs().max().item()
        torch.testing.assert_close(gb[k], ga[k], rtol=0, atol=max(rel * scale, floor), msg=k)


@pytest.mark.parametrize("stable", [False, True], ids=["post-ln", "pre-ln"])
@pytest.mark.parametrize(
    "train,fused", [(False, False), (True, False), (True, True)], ids=["eval", "train", "train-fused-qkv"]
)
def test_wavlm_sdpa_layers_match_transformers(stable, train, fused):
    """The SDPA layers give transformers' outputs and gradients on the valid frames of a padded batch."""
    enc = _wavlm_encoder(stable).train(train)
    layers = enc.encoder.layers
    B, T, D = 3, 37, enc.config.hidden_size
    frame_mask = torch.arange(T)[None] < torch.tensor([37, 20, 9])[:, None]
    h0 = torch.randn(B, T, D, requires_grad=True)
    w = torch.randn(B, T, D) * frame_mask[..., None]  # a loss on the valid frames only

    def run(fast: bool):
        enc.zero_grad(set_to_none=True)
        h0.grad = None
        h, pb = h0, None
        if fast:
            key_bias, pb = key_padding_bias(frame_mask), relative_position_bias(layers[0].attention, T)
        for i, layer in enumerate(layers):
            if fast:
                h = wavlm_layer_forward(layer, h, key_bias, pb, fused_qkv=fused)
            else:
                h, pb = layer(h, attention_mask=frame_mask.long(), position_bias=pb, index=i)
        (h * w).sum().backward()
        grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
        return h.detach() * frame_mask[..., None], h0.grad.clone(), grads

    ref, fast = run(False), run(True)
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-4, atol=1e-5)
    _assert_grads_close(ref[2], fast[2])
    assert any("rel_attn_embed" in k for k in fast[2]) and any("gru_rel_pos_const" in k for k in fast[2])


def test_bias_is_aligned_and_masks_padding():
    frame_mask = torch.arange(20)[None] < torch.tensor([20, 7])[:, None]
    kb = key_padding_bias(frame_mask)
    assert kb.shape == (2, 1, 1, padded_length(20)) == (2, 1, 1, 32)
    assert (kb[0, ..., :20] == 0).all() and (kb[1, ..., 7:] < -1e30).all() and (kb[..., 20:] < -1e30).all()
    enc = _wavlm_encoder(name="tiny-wavlm")
    pb = relative_position_bias(enc.encoder.layers[0].attention, 20)
    assert pb.shape == (1, enc.config.num_attention_heads, 20, 32)
    torch.testing.assert_close(pb[0, ..., :20], enc.encoder.layers[0].attention.compute_bias(20, 20))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_long_inputs_attend_in_query_blocks_with_the_same_results(train, monkeypatch):
    """Past LONG_FRAMES the bias is a table of offsets and attention runs in blocks of query rows (a
    10-minute file needed a 43 GB bias): the rows cut from the table are compute_bias's, and the layers'
    outputs and gradients equal the one-block path's, with padding, over several uneven blocks."""
    from mlsv.models import fast_attention

    enc = _wavlm_encoder(name="tiny-wavlm").train(train)
    attention = enc.encoder.layers[0].attention
    T = 45
    table = fast_attention.relative_position_table(attention, T)
    full = attention.compute_bias(T, T)
    windows = table.unfold(1, fast_attention.padded_length(T), 1)
    for i in (0, 7, 30, 44):  # query i's row is window T - 1 - i
        torch.testing.assert_close(windows[:, T - 1 - i, :T], full[:, i])
    B, D = 2, enc.config.hidden_size
    frame_mask = torch.arange(T)[None] < torch.tensor([45, 30])[:, None]
    h0 = torch.randn(B, T, D, requires_grad=True)
    w = torch.randn(B, T, D) * frame_mask[..., None]
    key_bias = key_padding_bias(frame_mask)

    def run(blocked: bool):
        enc.zero_grad(set_to_none=True)
        h0.grad = None
        pb = (fast_attention.relative_position_table if blocked else relative_position_bias)(attention, T)
        h = h0
        for layer in enc.encoder.layers:
            h = wavlm_layer_forward(layer, h, key_bias, pb)
        (h * w).sum().backward()
        return (
            h.detach() * frame_mask[..., None],
            h0.grad.clone(),
            {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None},
        )

    monkeypatch.setattr(fast_attention, "BLOCK_BYTES", 4 * B * enc.config.num_attention_heads * 48 * 16)
    torch.manual_seed(0)
    one = run(False)
    torch.manual_seed(0)
    blocks = run(True)  # blocks of 16 query rows: 16, 16, 13
    torch.testing.assert_close(blocks[0], one[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blocks[1], one[1], rtol=1e-4, atol=1e-5)
    _assert_grads_close(one[2], blocks[2])
    # through the frontend: a long input takes the table once LONG_FRAMES is passed, with the same states
    f = Frontend(_wavlm_encoder(name="tiny-wavlm"), trainable="none").eval()
    wav, mask = padded_batch([6000, 4000])
    lengths = mask.sum(-1)
    with torch.no_grad():
        short, frames = f(wav, lengths)
        monkeypatch.setattr(fast_attention, "LONG_FRAMES", 8)
        calls = []
        real = fast_attention.relative_position_table
        monkeypatch.setattr("mlsv.models.frontend.relative_position_table", lambda *a: calls.append(a) or real(*a))
        long = f(wav, lengths)[0]
    assert calls
    valid = (torch.arange(short.shape[2])[None] < frames[:, None])[None, :, :, None]
    torch.testing.assert_close(long * valid, short * valid, rtol=1e-5, atol=1e-5)
    # a frozen frontend runs without gradients; a trained one keeps the one bias all layers share, since
    # autograd would hold every block's
    calls.clear()
    Frontend(_wavlm_encoder(name="tiny-wavlm"), trainable="all").train()(wav, lengths)
    assert not calls


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("stable", [False, True], ids=["post-ln", "pre-ln"])
def test_frontend_attention_switch_same_states_and_gradients(train, stable):
    """Frontend with attention "eager" vs "sdpa": same states on valid frames, same gradients."""
    f = Frontend(_wavlm_encoder(stable, "tiny-wavlm"), trainable="all").train(train)
    x, mask = padded_batch([3000, 2200, 1500])
    lengths = mask.sum(-1)
    out = {}
    for mode in ("eager", "sdpa"):
        f.set_attention(mode)
        assert f.attention == mode
        f.zero_grad(set_to_none=True)
        states, fl = f(x, lengths)
        valid = (torch.arange(states.shape[2])[None] < fl[:, None])[None, :, :, None]
        w = torch.randn(states.shape, generator=torch.Generator().manual_seed(1)) * valid
        (states * w).sum().backward()
        out[mode] = states.detach() * valid, {n: p.grad.clone() for n, p in f.named_parameters() if p.grad is not None}
    torch.testing.assert_close(out["sdpa"][0], out["eager"][0], rtol=1e-5, atol=1e-5)
    _assert_grads_close(out["eager"][1], out["sdpa"][1])


def test_frontend_sdpa_with_gradient_checkpointing_and_layerdrop():
    f = Frontend(
        _wavlm_encoder(False, "tiny-wavlm"), trainable="transformer", gradient_checkpointing=True, layerdrop=0.5
    ).train()
    f.set_attention("sdpa")
    states, _ = f(*padded_batch([2000, 1600])[:1])
    assert states.shape[0] == f.num_layers + 1
    states.sum().backward()


def test_set_attention_rejects_unknown_modes():
    f = Frontend(_wavlm_encoder(name="tiny-wavlm"))
    with pytest.raises(ValueError, match="eager, sdpa"):
        f.set_attention("flash")
    with pytest.raises(ValueError):
        f.attention = "xformers"


@pytest.mark.parametrize("name", ["tiny-hubert", "tiny-wav2vec2", "tiny-data2vec", "tiny-whisper"])
def test_other_families_use_transformers_attention_switch(name):
    f = Frontend(build_encoder(_no_dropout(encoder_config_from_name(name))))
    x, mask = padded_batch([4000, 2500])
    res = {}
    for mode in ("eager", "sdpa"):
        runtime.set_attention(f, mode)
        assert f.attention == mode == f.encoder.config._attn_implementation
        states, fl = f(x, mask.sum(-1))
        res[mode] = states * (torch.arange(states.shape[2])[None] < fl[:, None])[None, :, :, None]
    torch.testing.assert_close(res["sdpa"], res["eager"], rtol=1e-5, atol=1e-5)


def test_model_embeddings_same_with_either_attention_and_padding():
    model = tiny_model().eval()
    x, mask = padded_batch([6000, 3500, 2000])
    emb = {}
    for mode in ("eager", "sdpa"):
        runtime.set_attention(model, mode)
        assert runtime.get_attention(model) == mode
        with torch.no_grad():
            emb[mode] = model(x, attention_mask=mask).embeddings
            alone = model(x[2:, :2000]).embeddings
        torch.testing.assert_close(alone, emb[mode][2:], rtol=1e-5, atol=1e-5)  # padding changes nothing
    torch.testing.assert_close(emb["sdpa"], emb["eager"], rtol=1e-5, atol=1e-5)


W2V_FAMILIES = ["tiny-wavlm", "small-wavlm", "small-wavlm-pre-ln", "tiny-hubert", "tiny-wav2vec2", "tiny-data2vec"]


def _encoder(name: str):
    if name == "small-wavlm-pre-ln":
        return _wavlm_encoder(True)
    return build_encoder(_no_dropout(encoder_config_from_name(name)))


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
@pytest.mark.parametrize("name", W2V_FAMILIES)
def test_frontend_states_equal_transformers_forward(name, layout):
    """Our module-by-module forward (channel-last CNN, unpadded fast path, SDPA) gives every hidden state
    that transformers' own forward gives on the same weights. The last state is the encoder's output (after
    the final LayerNorm of pre-LN models, as the encoder returns it)."""
    enc = _encoder(name).eval()
    f = Frontend(enc, normalize_input=False)
    f.set_conv_layout(layout)
    x = torch.randn(2, 6000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = enc(x, output_hidden_states=True)
        ref = torch.stack([*out.hidden_states[:-1], out.last_hidden_state])
        states, _ = f(x)
    torch.testing.assert_close(states, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", W2V_FAMILIES)
def test_unpadded_fast_path_equals_masked_path(name):
    """No lengths (fixed crops: no masks built) gives what full lengths through the masked path give."""
    f = Frontend(_encoder(name)).eval()
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast, fl_fast = f(x)
        masked, fl = f(x, torch.full((3,), 5000))
    assert torch.equal(fl_fast, fl)
    torch.testing.assert_close(fast, masked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stable", [False, True], ids=["post-ln", "pre-ln"])
def test_conv_layouts_same_states_and_gradients(stable):
    """channels_last vs channels_first convolutions: same states and gradients, padded batch."""
    layout = "channels_last"
    f = Frontend(_wavlm_encoder(stable), trainable="all").train()
    x, mask = padded_batch([6000, 4100])
    out = {}
    for mode in ("channels_first", layout):
        f.set_conv_layout(mode)
        f.zero_grad(set_to_none=True)
        states, fl = f(x, mask.sum(-1))
        valid = (torch.arange(states.shape[2])[None] < fl[:, None])[None, :, :, None]
        w = torch.randn(states.shape, generator=torch.Generator().manual_seed(1)) * valid
        (states * w).sum().backward()
        out[mode] = states.detach() * valid, {n: p.grad.clone() for n, p in f.named_parameters() if p.grad is not None}
    torch.testing.assert_close(out[layout][0], out["channels_first"][0], rtol=1e-5, atol=1e-5)
    _assert_grads_close(out["channels_first"][1], out[layout][1])
    with pytest.raises(ValueError, match="channels_last, channels_first"):
        f.set_conv_layout("nhwc")


@pytest.mark.parametrize("groups,channels", [(16, 768), (4, 64), (16, 1024)])
def test_grouped_conv_with_groups_padded_to_64_channels(groups, channels):
    """The zero-padded grouped convolution (what a GPU runs for WavLM Base's positional convolution, 48
    channels per group) gives the Conv1d's output and gradients."""
    from mlsv.models.frontend import conv_channels_last

    conv = torch.nn.Conv1d(channels, channels, 16, padding=8, groups=groups)
    h = torch.randn(2, 40, channels, requires_grad=True)
    ref = conv(h.transpose(1, 2)).transpose(1, 2)
    g_ref = torch.autograd.grad((ref * ref).sum(), [h, conv.weight, conv.bias])
    out = conv_channels_last(conv, h, pad_groups=True)
    g_out = torch.autograd.grad((out * out).sum(), [h, conv.weight, conv.bias])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _first_layer(norm: str):
    """A CNN's first layer as transformers builds it: WavLM Base's GroupNorm (no conv bias), Large's
    LayerNorm (with one), or no norm."""
    cfg = encoder_config_from_name("tiny-wavlm")
    cfg.feat_extract_norm, cfg.conv_bias = ("layer", True) if norm == "layer" else ("group", False)
    layer = build_encoder(cfg).feature_extractor.conv_layers[0]
    if norm == "none":
        del layer.layer_norm
    torch.manual_seed(5)
    for p in layer.parameters():  # away from the identity init, so the norm's affine matters
        p.data.add_(0.3 * torch.randn_like(p))
    return layer


def _plain_first_layer(layer, x, frame_mask):
    from mlsv.models.frontend import _channel_norm_over_time, conv_channels_last

    h = conv_channels_last(layer.conv, x[:, :, None], "channels_first")
    norm = getattr(layer, "layer_norm", None)
    if isinstance(norm, torch.nn.GroupNorm):
        h = _channel_norm_over_time(h, norm, frame_mask)
    elif norm is not None:
        h = norm(h)
    return layer.activation(h)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("norm", ["group", "layer", "none"])
def test_first_conv_block_equals_the_layer(norm, masked):
    """The first CNN layer with its norm folded in (statistics from the waveform's windows) gives the
    convolution -> norm -> activation result and the same gradients (a CNN trained in stage 2)."""
    from mlsv.models.frontend import first_conv_block

    layer = _first_layer(norm)
    x = torch.randn(3, 4000, generator=torch.Generator().manual_seed(6)) + 0.2  # an offset: non-zero means
    T = (4000 - 10) // 5 + 1
    mask = torch.arange(T)[None] < torch.tensor([T, 500, 77])[:, None] if masked else None
    outs, grads = [], []
    for fn in (_plain_first_layer, lambda *a: first_conv_block(*a)):
        xi = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        y = fn(layer, xi, mask)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
        (y * w).sum().backward()
        outs.append(y.detach())
        grads.append({"x": xi.grad, **{n: p.grad for n, p in layer.named_parameters()}})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    _assert_grads_close(grads[0], grads[1])


def test_first_conv_block_compiled_and_bf16():
    """Compiled (inductor) it gives the eager result; under bf16 autocast it returns bf16, as the
    convolution it replaces would, within bf16 rounding of fp32 and no further from fp32 than the
    convolution -> norm path is."""
    from mlsv.models.frontend import first_conv_block

    x = torch.randn(2, 3000, generator=torch.Generator().manual_seed(8))
    T = (3000 - 10) // 5 + 1
    mask = torch.arange(T)[None] < torch.tensor([T, 321])[:, None]
    for norm in ("group", "layer"):
        layer = _first_layer(norm)
        with torch.no_grad():
            ref = first_conv_block(layer, x, mask)
            torch._dynamo.reset()
            compiled = torch.compile(first_conv_block, dynamic=False)(layer, x, mask)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fast = first_conv_block(layer, x, mask)
                plain = _plain_first_layer(layer, x, mask)
        torch.testing.assert_close(compiled, ref, rtol=1e-5, atol=1e-5)
        assert fast.dtype == plain.dtype == torch.bfloat16
        torch.testing.assert_close(fast.float(), ref, rtol=2e-2, atol=2e-2)
        assert (fast.float() - ref).abs().max() <= (plain.float() - ref).abs().max() * 1.5


def test_extract_embeddings_unpadded_batches_skip_masks_with_the_same_result():
    """A batch of equal lengths runs without masks (decided on the host copy of the mask); the embeddings
    equal those of the same utterances padded beside a longer one."""
    from mlsv.scoring.extract import extract_embeddings

    model = tiny_model().eval()
    x, mask = padded_batch([3000, 3000, 4500])

    def batch(rows, S):
        return {
            "waveforms": x[rows, :S],
            "attention_mask": mask[rows, :S],
            "ids": [f"u{i}" for i in rows],
            "durations": [mask[i].sum().item() / 16000 for i in rows],
        }

    calls = []
    hook = model.frontend.register_forward_hook(lambda m, args, out: calls.append(args[1] is None))
    uniform = extract_embeddings(model, [batch([0, 1], 3000)])
    padded = extract_embeddings(model, [batch([0, 1, 2], 4500)])
    hook.remove()
    assert calls == [True, False]  # no lengths (no masks) for the uniform batch only
    np.testing.assert_allclose(uniform.embeddings, padded.embeddings[:2], rtol=1e-5, atol=1e-5)


def test_lap_bf16_autocast_close_to_fp32():
    """LAP's channel-last products under bf16 autocast stay within bf16 rounding of fp32."""
    lap = LayerAttentivePooling(5, 64, heads=4, output_size=32, dropout=0.0).eval()
    states = torch.randn(5, 2, 11, 64)
    ref = lap(states)
    with runtime.autocast("bf16", "cpu"):
        out = lap(states.bfloat16())
    assert out.shape == ref.shape
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_compiled_lap_and_model_trace_as_eager():
    """The graphs torch.compile captures (aot_eager: traced, no kernels generated) give eager's results."""
    model = tiny_model().eval()
    x, mask = padded_batch([4000, 2600])
    with torch.no_grad():
        ref = model(x, attention_mask=mask).embeddings
        runtime.compile_model(model, backend="aot_eager")
        assert runtime.is_compiled(model.frontend) and runtime.is_compiled(model.backend)
        out = model(x, attention_mask=mask).embeddings
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert "frontend.encoder.encoder.layers.0.attention.q_proj.weight" in model.state_dict()  # names unchanged


@pytest.mark.slow
def test_compiled_model_inductor_matches_eager():
    """torch.compile with generated kernels (about 50 s on 2 CPU cores): same embeddings and loss gradients."""
    from mlsv.models.head import SubCenterAAMSoftmax

    model = tiny_model(lap_dropout=0.0, backend_dropout=0.0)
    model.configure_training(trainable="none")
    head = SubCenterAAMSoftmax(16, 10)
    x = torch.randn(2, 3000)
    labels = torch.tensor([1, 7])
    model.train()

    def grads():
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        loss, _ = head(model(x).embeddings, labels)
        loss.backward()
        return loss.detach(), model.aggregation.proj_out.weight.grad.clone()

    ref = grads()
    runtime.compile_model(model, head=head, dynamic=False)
    out = grads()
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-4, atol=1e-5)


def test_speed_helpers():
    import contextlib

    assert isinstance(runtime.autocast("fp32", "cpu"), contextlib.nullcontext)
    with runtime.autocast("bf16", "cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError):
        runtime.autocast("int8", "cpu")
    assert runtime.autocast_dtype("fp32") is None and runtime.autocast_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.autocast_dtype("int8")
    with pytest.raises(ValueError):
        runtime.compile_model(tiny_model(), mode="fastest")
    assert not runtime.grad_scaler("bf16", "cpu").is_enabled()
    assert runtime.peak_memory_mb("cpu") > 0 and runtime.device_name("cpu").startswith("cpu")
    base, large = shapes.benchmark_encoder_config("base"), shapes.benchmark_encoder_config("large")
    assert (base.hidden_size, base.num_hidden_layers, base.do_stable_layer_norm) == (768, 12, False)
    assert (large.hidden_size, large.num_hidden_layers, large.do_stable_layer_norm) == (1024, 24, True)
    with pytest.raises(ValueError, match="unknown shape"):
        shapes.benchmark_encoder_config("huge")


# -- on a GPU (run with `pytest -m gpu` where CUDA is available; skipped elsewhere) -----------------------
@pytest.fixture
def exact_cuda():
    """fp32 on the GPU without TF32, so kernels can be compared at fp32 tolerances (skips without CUDA)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _states_and_grads(f, x, lengths, seed=1):
    f.zero_grad(set_to_none=True)
    states, fl = f(x, lengths)
    valid = (torch.arange(states.shape[2], device=x.device)[None] < fl[:, None])[None, :, :, None]
    w = torch.randn(states.shape, generator=torch.Generator().manual_seed(seed)).to(x.device) * valid
    (states * w).sum().backward()
    return (states.detach() * valid).cpu(), {n: p.grad.cpu() for n, p in f.named_parameters() if p.grad is not None}


@pytest.mark.gpu
def test_gpu_long_inputs_in_query_blocks_match_one_block(exact_cuda, monkeypatch):
    """The blocked attention of long inputs on CUDA's memory-efficient kernel, several blocks, padded batch:
    the one-block path's frontend states in inference (fp32 and bf16), and its layer gradients."""
    from mlsv.models import fast_attention

    f = Frontend(_wavlm_encoder(), trainable="none").to(exact_cuda).eval()
    x, mask = padded_batch([16000, 11000, 7000])
    x, lengths = x.to(exact_cuda), mask.sum(-1).to(exact_cuda)
    heads = f.encoder.config.num_attention_heads
    for dtype in (torch.float32, torch.bfloat16):
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            monkeypatch.setattr(fast_attention, "LONG_FRAMES", 1 << 30)
            one, frames = f(x, lengths)
            monkeypatch.setattr(fast_attention, "LONG_FRAMES", 8)
            monkeypatch.setattr(fast_attention, "BLOCK_BYTES", 4 * 3 * heads * 64 * 16)
            blocks, _ = f(x, lengths)
        valid = (torch.arange(one.shape[2], device=exact_cuda)[None] < frames[:, None])[None, :, :, None]
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close((blocks * valid).float(), (one * valid).float(), rtol=tol, atol=tol)
    enc = _wavlm_encoder().to(exact_cuda).train()
    attention, T = enc.encoder.layers[0].attention, 49
    h0 = torch.randn(3, T, enc.config.hidden_size, device=exact_cuda, requires_grad=True)
    key_bias = key_padding_bias(
        torch.arange(T, device=exact_cuda)[None] < torch.tensor([49, 30, 9], device=exact_cuda)[:, None]
    )
    grads = []
    for pb in (relative_position_bias(attention, T), fast_attention.relative_position_table(attention, T)):
        enc.zero_grad(set_to_none=True)
        h0.grad = None
        h = h0
        for layer in enc.encoder.layers:
            h = wavlm_layer_forward(layer, h, key_bias, pb)
        h.square().sum().backward()
        grads.append({n: p.grad.cpu() for n, p in enc.named_parameters() if p.grad is not None})
    _assert_grads_close(grads[0], grads[1], rel=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("stable", [False, True], ids=["post-ln", "pre-ln"])
@pytest.mark.parametrize("setting", ["attention", "channels_last"])
def test_gpu_fast_kernels_match_plain_ones(exact_cuda, stable, setting):
    """On CUDA kernels (SDPA's memory-efficient kernel with the position bias; cuDNN's NHWC convolutions):
    the fast setting gives the plain one's states and gradients, padded batch, training mode."""
    f = Frontend(_wavlm_encoder(stable), trainable="all").to(exact_cuda).train()
    x, mask = padded_batch([16000, 11000, 7000])
    x, lengths = x.to(exact_cuda), mask.sum(-1).to(exact_cuda)
    plain, fast = ("eager", "sdpa") if setting == "attention" else ("channels_first", setting)
    out = {}
    for mode in (plain, fast):
        f.set_attention(mode) if setting == "attention" else f.set_conv_layout(mode)
        out[mode] = _states_and_grads(f, x, lengths)
    torch.testing.assert_close(out[fast][0], out[plain][0], rtol=1e-4, atol=1e-4)
    _assert_grads_close(out[plain][1], out[fast][1], rel=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("name", W2V_FAMILIES)
def test_gpu_frontend_equals_transformers_and_unpadded_equals_masked(exact_cuda, name):
    enc = _encoder(name).to(exact_cuda).eval()
    f = Frontend(enc, normalize_input=False)
    x = torch.randn(3, 16000, device=exact_cuda)
    with torch.no_grad():
        out = enc(x, output_hidden_states=True)
        ref = torch.stack([*out.hidden_states[:-1], out.last_hidden_state])
        fast, _ = f(x)
        masked, _ = f(x, torch.full((3,), 16000, device=exact_cuda))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast, masked, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_gpu_bf16_sdpa_embeddings_close_to_fp32_eager(exact_cuda):
    """The evaluation fast path (bf16 autocast, SDPA, padded batch) against the plain fp32 one on a WavLM
    Base+-shaped model: the stated tolerance is a cosine of at least 0.999 between the two embeddings."""
    model = shapes.build_benchmark_model("base").to(exact_cuda).eval()
    x, mask = padded_batch([48000, 40000, 32000, 20000])
    x, mask = x.to(exact_cuda), mask.to(exact_cuda)
    with torch.no_grad():
        runtime.set_attention(model, "eager")
        ref = torch.cat([model(x[i : i + 1, :n]).embeddings for i, n in enumerate(mask.sum(-1).tolist())])
        runtime.set_attention(model, "sdpa")
        with runtime.autocast("bf16", exact_cuda):
            fast = model(x, attention_mask=mask).embeddings.float()
    cos = torch.nn.functional.cosine_similarity(fast, ref, dim=-1)
    assert cos.min() > 0.999, cos


@pytest.mark.gpu
def test_gpu_compiled_training_step_matches_eager(exact_cuda):
    """torch.compile (inductor, CUDA kernels) of the model and head: same loss and gradients as eager."""
    from mlsv.models.head import SubCenterAAMSoftmax

    model = tiny_model("small-wavlm", lap_dropout=0.0, backend_dropout=0.0).to(exact_cuda)
    model.configure_training(trainable="transformer")
    for m in model.modules():  # no randomness: compiled code draws its random numbers differently
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):  # WavLM's attention dropout
            m.dropout = 0.0
    head = SubCenterAAMSoftmax(model.config.embedding_size, 20).to(exact_cuda)
    x = torch.randn(4, 16000, device=exact_cuda)
    labels = torch.tensor([1, 7, 3, 19], device=exact_cuda)
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        loss, _ = head(model(x).embeddings, labels)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = step()
    runtime.compile_model(model, head=head, dynamic=False)
    out = step()
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-4)
    _assert_grads_close(ref[1], out[1], rel=1e-3)
