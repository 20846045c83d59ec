"""The real-voice benchmark's CTranslate2 -> transformers Whisper converter (benchmarks/real_speech/
convert_whisper.py) on a tiny random Whisper written in CTranslate2's model.bin layout: the variables read back,
the converted model computes what the original does, and mlsv loads its encoder from the saved folder.
(The benchmark itself, with the real weights and voices, is not run here: see its README.)"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def convert_whisper():
    sys.path.insert(0, str(ROOT / "benchmarks" / "real_speech"))
    try:
        import convert_whisper
    finally:
        sys.path.pop(0)
    return convert_whisper


def _tiny_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51864,  # tiny.en's vocabulary: the converter's special token ids lie in it
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=40,
        max_target_positions=16,
        pad_token_id=50256,
        bos_token_id=50256,
        eos_token_id=50256,
        decoder_start_token_id=50257,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random biases everywhere a bias exists, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _ct2_variables(model) -> dict[str, np.ndarray]:
    """The model's weights under CTranslate2's Whisper names (fused q/k/v with a zero key bias), in float16."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    v: dict[str, np.ndarray] = {}

    def lin(dst, src, bias=True):
        v[f"{dst}/weight"] = sd[f"{src}.weight"]
        if bias:
            v[f"{dst}/bias"] = sd[f"{src}.bias"]

    def norm(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst, src, parts):
        v[f"{dst}/weight"] = np.concatenate([sd[f"{src}.{p}_proj.weight"] for p in parts])
        zero = np.zeros_like(sd[f"{src}.q_proj.bias"])
        v[f"{dst}/bias"] = np.concatenate([zero if p == "k" else sd[f"{src}.{p}_proj.bias"] for p in parts])

    cfg = model.config
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            src, dst = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm")
            fused(f"{dst}/self_attention/linear_0", f"{src}.self_attn", ("q", "k", "v"))
            lin(f"{dst}/self_attention/linear_1", f"{src}.self_attn.out_proj")
            if side == "decoder":
                norm(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm")
                lin(f"{dst}/attention/linear_0", f"{src}.encoder_attn.q_proj")
                fused(f"{dst}/attention/linear_1", f"{src}.encoder_attn", ("k", "v"))
                lin(f"{dst}/attention/linear_2", f"{src}.encoder_attn.out_proj")
            norm(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm")
            lin(f"{dst}/ffn/linear_0", f"{src}.fc1")
            lin(f"{dst}/ffn/linear_1", f"{src}.fc2")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        v[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
        v[f"{side}/num_heads"] = np.array(cfg.encoder_attention_heads, dtype=np.int16)
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    v["decoder/activation"] = np.array(3, dtype=np.int8)
    return v


def _write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """CTranslate2's binary layout, version 6 (as convert_whisper's docstring states it)."""
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}

    def string(s: str) -> bytes:
        b = s.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    out = [struct.pack("<I", 6), string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    for name, a in variables.items():
        out += [string(name), struct.pack("<B", a.ndim), struct.pack("<" + "I" * a.ndim, *a.shape)]
        out += [struct.pack("<BI", codes[a.dtype], a.nbytes), a.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [string(alias), string(target)]
    path.write_bytes(b"".join(out))


def test_converter_reads_ctranslate2_and_mlsv_loads_the_encoder(convert_whisper, tmp_path):
    from transformers import WhisperForConditionalGeneration

    from mlsv.models.frontend import load_pretrained_encoder

    original = _tiny_whisper()
    variables = _ct2_variables(original)
    _write_ct2(tmp_path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})

    read = convert_whisper.read_ct2(tmp_path / "model.bin")
    assert set(read) == set(variables) | {"decoder/projection/weight"}
    for name, a in variables.items():
        assert read[name].dtype == a.dtype and np.array_equal(read[name], a), name

    config = convert_whisper.whisper_config(read)
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads) == (
        32,
        2,
        2,
        2,
    )
    converted = WhisperForConditionalGeneration(config).eval()
    state = {
        k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in convert_whisper.to_transformers(read).items()
    }
    missing, unexpected = converted.load_state_dict(state, strict=False)
    assert set(missing) <= {"proj_out.weight"} and not unexpected
    converted.tie_weights()

    # the original, rounded to float16 as CTranslate2 stored it, computes the same logits
    with torch.no_grad():
        for p in original.parameters():
            p.copy_(p.half().float())
        features = torch.randn(1, 80, 80)
        tokens = torch.tensor([[50257, 50362, 7, 9000]])
        want = original(input_features=features, decoder_input_ids=tokens).logits
        got = converted(input_features=features, decoder_input_ids=tokens).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # mlsv takes the saved folder as model.encoder (family whisper) and keeps the encoder only
    converted.save_pretrained(tmp_path / "folder")
    encoder = load_pretrained_encoder(str(tmp_path / "folder"))
    assert type(encoder).__name__ == "WhisperEncoder"
    torch.testing.assert_close(encoder.conv1.weight, converted.model.encoder.conv1.weight)


def test_converter_refuses_other_models(convert_whisper, tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(struct.pack("<I", 6) + struct.pack("<H", 16) + b"TransformerSpec\0" + struct.pack("<II", 1, 0))
    with pytest.raises(ValueError, match="TransformerSpec"):
        convert_whisper.read_ct2(path)
    path.write_bytes(struct.pack("<I", 3))
    with pytest.raises(ValueError, match="version 3"):
        convert_whisper.read_ct2(path)
