"""Random-initialised encoders with the real shapes of WavLM Base+ and Large (no download), for benchmarks.

"tiny" and "small" are the test/demo encoders of ``TINY_ENCODERS``.
"""

from __future__ import annotations

from transformers import WavLMConfig

from .configuration_mlsv import MLSVConfig
from .frontend import TINY_ENCODERS, build_encoder, encoder_config_from_name
from .modeling_mlsv import MLSVModel

WAVLM_SHAPES: dict[str, dict] = {
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
    ),
    "large": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    ),
}
_WAVLM_COMMON = dict(
    conv_dim=(512,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=False,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    num_buckets=320,
    max_bucket_distance=800,
)
SHAPE_ALIASES = {"tiny": "tiny-wavlm", "small": "small-wavlm"}


def benchmark_encoder_config(shape: str):
    """A transformers config for a benchmark shape: "base" (WavLM Base+: 12 x 768), "large" (WavLM Large:
    24 x 1024), "tiny"/"small" (``tiny-wavlm``/``small-wavlm``) or any ``TINY_ENCODERS`` name."""
    if shape in WAVLM_SHAPES:
        return WavLMConfig(**_WAVLM_COMMON, **WAVLM_SHAPES[shape])
    name = SHAPE_ALIASES.get(shape, shape)
    if name not in TINY_ENCODERS:
        raise ValueError(
            f"unknown shape {shape!r}; choose base, large, tiny, small or one of {', '.join(TINY_ENCODERS)}"
        )
    return encoder_config_from_name(name)


def build_benchmark_model(shape: str, **settings):
    """A random-initialised ``MLSVModel`` (LAP + ASTP by default) around a benchmark encoder shape."""
    enc_cfg = benchmark_encoder_config(shape)
    config = MLSVConfig(encoder_config=enc_cfg.to_dict(), encoder_name_or_path=f"random-{shape}", **settings)
    return MLSVModel(config, encoder=build_encoder(enc_cfg))
