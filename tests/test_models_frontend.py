"""Frontends (mlsv.models.frontend): the class per encoder family, their frame arithmetic, the shortest input
they take, and audio far beyond full scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_FAMILIES, TINY_SETTINGS, padded_batch, tiny_model
from data_helpers import sine_voice
from transformers import AutoConfig

from mlsv.api import Verifier
from mlsv.models import MLSVModel, fast_conv
from mlsv.models.frontend import (
    FAMILIES,
    FRONTENDS,
    TINY_ENCODERS,
    Frontend,
    Wav2Vec2Frontend,
    WavLMFrontend,
    WhisperFrontend,
    build_encoder,
    build_frontend,
    encoder_config_from_name,
    frame_count,
    min_samples,
)

EXPECTED_CLASS = {
    "wavlm": WavLMFrontend,
    "hubert": Wav2Vec2Frontend,
    "wav2vec2": Wav2Vec2Frontend,
    "data2vec-audio": Wav2Vec2Frontend,
    "whisper": WhisperFrontend,
}


def _model(name: str) -> MLSVModel:
    return MLSVModel.from_encoder(name, **TINY_SETTINGS).eval()


def _runs_alone(model: MLSVModel, samples: int) -> int:
    """Frames the frontend gives a lone utterance of ``samples`` (0 also when it refuses the input)."""
    try:
        with torch.no_grad():
            states, frames = model.frontend(torch.randn(1, samples) * 0.1)
            embeddings = model(torch.randn(1, samples) * 0.1).embeddings
    except (RuntimeError, ValueError, IndexError):  # refused (Whisper: an empty log-mel)
        return 0
    assert states.shape[2] == int(frames[0]) and torch.isfinite(states).all() and torch.isfinite(embeddings).all()
    return int(frames[0])


@pytest.mark.parametrize("name", list(TINY_ENCODERS))
def test_min_samples_is_the_shortest_input_that_runs(name):
    model = _model(name)
    cfg = model.config.encoder_config  # the dict saved in config.json
    need = min_samples(cfg)
    assert need == min_samples(encoder_config_from_name(name)) > 1
    assert frame_count(cfg, need) == 1 and frame_count(cfg, need - 1) == 0
    assert _runs_alone(model, need) == 1
    assert _runs_alone(model, need - 1) == 0
    wav, mask = padded_batch([need + 4000, need, need - 1])  # beside longer utterances, in one batch
    with torch.no_grad():
        out = model(wav, attention_mask=mask)
    assert out.frame_lengths.tolist()[1:] == [1, 0]
    assert torch.isfinite(out.embeddings[:2]).all()


def test_min_samples_per_family():
    """One frame: the CNN's receptive field, or one 10 ms hop for Whisper (its STFT zero-pads the edges)."""
    got = {name: min_samples(encoder_config_from_name(name)) for name in TINY_ENCODERS}
    assert got == {
        "tiny-wavlm": 40,
        "tiny-hubert": 40,
        "tiny-wav2vec2": 40,
        "tiny-data2vec": 40,
        "tiny-whisper": 160,
        "small-wavlm": 400,
    }
    assert min_samples({"model_type": "wavlm"}) == 400  # a dict without the CNN's shape: the family's default
    assert min_samples(AutoConfig.for_model("whisper")) == 160


@pytest.mark.parametrize("name", list(TINY_ENCODERS))
def test_frame_count_is_frame_lengths_and_the_encoder_output(name):
    model = _model(name)
    f, cfg = model.frontend, model.config.encoder_config
    lengths = torch.tensor([0, 1, 39, 40, 159, 160, 399, 400, 401, 4321, 6000])
    assert torch.equal(frame_count(cfg, lengths), f.frame_lengths(lengths))
    assert frame_count(cfg, lengths).dtype == torch.long
    assert (
        [frame_count(cfg, int(n)) for n in lengths]
        == [f.frame_lengths(int(n)) for n in lengths]
        == frame_count(f.encoder.config, lengths).tolist()
    )
    assert isinstance(frame_count(cfg, 6000), int)
    wav, mask = padded_batch([6000, 4321, 401])
    with torch.no_grad():
        states, frames = f(wav, mask.sum(-1))
    assert frames.tolist() == [frame_count(cfg, n) for n in (6000, 4321, 401)]
    assert states.shape[2] == frame_count(cfg, 6000)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_build_frontend_picks_the_family_class(name):
    family = encoder_config_from_name(name).model_type
    encoder = build_encoder(encoder_config_from_name(name))
    f = build_frontend(encoder, trainable="transformer", layers=[0, -1])
    assert type(f) is EXPECTED_CLASS[family] is FRONTENDS[family]
    assert isinstance(f, Frontend) and f.family == family and f.trainable == "transformer" and f.num_states == 2
    g = Frontend(encoder)  # the base class builds the family's class too
    assert type(g) is EXPECTED_CLASS[family]
    assert type(tiny_model(name).frontend) is EXPECTED_CLASS[family]


def test_every_family_has_one_class():
    assert set(FRONTENDS) == set(FAMILIES) == set(EXPECTED_CLASS)
    for family, cls in FRONTENDS.items():
        assert family in cls.families and issubclass(cls, Frontend)


def test_unknown_family_is_refused():
    bert = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    from transformers import AutoModel

    encoder = AutoModel.from_config(bert)
    for build in (build_frontend, Frontend):
        with pytest.raises(ValueError, match="not supported.*wavlm, hubert, wav2vec2, data2vec-audio, whisper"):
            build(encoder)
    with pytest.raises(ValueError, match="not supported"):
        frame_count({"model_type": "bert"}, 16000)
    with pytest.raises(ValueError, match="model_type"):
        min_samples({})


def test_a_family_class_refuses_another_familys_encoder():
    wavlm = build_encoder(encoder_config_from_name("tiny-wavlm"))
    for cls in (Wav2Vec2Frontend, WhisperFrontend):
        with pytest.raises(ValueError, match="not supported by"):
            cls(wavlm)


def test_whisper_only_members_live_on_whisper():
    w = Frontend(build_encoder(encoder_config_from_name("tiny-whisper")))
    assert w.whisper_mel_filters().shape == (80, 201) and torch.equal(w.mel_filters, w.whisper_mel_filters())
    mel = w.log_mel(torch.randn(2, 1600), torch.tensor([1600, 800]))
    assert mel.shape == (2, 80, 10)
    v = Frontend(build_encoder(encoder_config_from_name("tiny-hubert")))
    assert not hasattr(v, "log_mel") and "mel_filters" not in dict(v.named_buffers())


def test_attention_switch_per_family():
    f = Frontend(build_encoder(encoder_config_from_name("tiny-wavlm")))
    assert f.attention == "sdpa"
    f.attention = "eager"
    assert f.attention == "eager" and f._wavlm_attention == "eager"
    g = Frontend(build_encoder(encoder_config_from_name("tiny-hubert")))
    g.set_attention("sdpa", fused_qkv=True)
    assert g.attention == "sdpa" and g.encoder.config._attn_implementation == "sdpa" and g.fused_qkv
    with pytest.raises(ValueError, match="attention must be"):
        g.set_attention("flash")


def test_conv_fast_paths_are_re_exported():
    from mlsv.models import frontend

    for name in (
        "first_conv_block",
        "conv_channels_last",
        "_window_products",
        "_channel_norm_over_time",
        "GROUP_ALIGN",
        "CONV_LAYOUTS",
    ):
        assert getattr(frontend, name) is getattr(fast_conv, name)


def test_saved_model_code_includes_fast_conv(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    assert {"modeling_mlsv.py", "frontend.py", "fast_attention.py", "fast_conv.py"} <= {
        p.name for p in tmp_path.glob("*.py")
    }


def test_float_audio_far_beyond_full_scale_gives_the_same_embedding():
    """|x| ~ 1e19 passed the NaN check and overflowed the input normalisation (cosine 0.375 against the same
    signal at amplitude 1), and Whisper's power spectrum into NaN."""
    from conftest import tiny_model

    x = sine_voice(1.0, seed=5)
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
            torch.testing.assert_close(loud - ref, torch.full_like(ref, np.log10(amplitude) / 2), rtol=0, atol=1e-3)
