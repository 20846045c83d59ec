"""Pre-trained speech encoders as frontends: waveforms in, every hidden state out.

Contract: ``Frontend(waveforms (B, S), lengths (B,)) -> (states (L+1, B, T, D), frame_lengths (B,))``.

The encoder's own modules (CNN feature encoder, projection, positional convolution, transformer layers)
are called one by one here instead of through the encoder's ``forward`` so that

* aggregation always receives all L+1 states: LayerDrop is ours, and a dropped layer passes its input
  on as its output (transformers drops the state instead);
* padding never changes an embedding: the input normalisation and the GroupNorm of the first CNN layer
  (wav2vec 2.0 / WavLM Base style) are computed over the valid samples only;
* Whisper's encoder takes any length (transformers insists on 30 s): positions are sliced to length.

One class per family, in ``FRONTENDS`` (``build_frontend`` picks it; so does ``Frontend(encoder, ...)``):
``Frontend`` runs what is common (trainability, LayerDrop, the layers), ``Wav2Vec2Frontend`` the
wav2vec 2.0-like encoders (HuBERT, wav2vec 2.0, data2vec-audio), ``WavLMFrontend`` adds WavLM's
relative-position attention, ``WhisperFrontend`` Whisper's log-mel and convolution stem. ``frame_count``
and ``min_samples`` give the frame arithmetic from an encoder config alone.

This module is part of the model code saved beside a model for ``trust_remote_code``: it imports only
torch, transformers and its sibling modules.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fast_attention import (
    ATTENTION_MODES,
    is_long,
    key_padding_bias,
    relative_position_bias,
    relative_position_table,
    set_encoder_attention,
    wavlm_layer_forward,
)
from .fast_conv import (  # noqa: F401  (re-exported: their home was this module)
    CONV_LAYOUTS,
    GROUP_ALIGN,
    _channel_norm_over_time,
    _compute_dtype,
    _var_mean,
    _window_products,
    conv_channels_last,
    first_conv_block,
)

# transformers' WavLM attention passes a bool padding mask beside its float position bias; torch warns
# about the mix on every call although the result is right.
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")

WAV2VEC2_FAMILY = ("wavlm", "hubert", "wav2vec2", "data2vec-audio")
FAMILIES = WAV2VEC2_FAMILY + ("whisper",)
WHISPER_N_FFT, WHISPER_HOP = 400, 160  # Whisper's 25 ms window, 10 ms hop at 16 kHz

# Tiny shapes for tests and the demo: build, run and round-trip in milliseconds on a CPU.
_TINY_COMMON = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32, 32),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
TINY_ENCODERS = {
    "tiny-wavlm": ("wavlm", dict(_TINY_COMMON, num_buckets=32, max_bucket_distance=100)),
    "tiny-hubert": ("hubert", dict(_TINY_COMMON)),
    "tiny-wav2vec2": ("wav2vec2", dict(_TINY_COMMON)),
    "tiny-data2vec": ("data2vec-audio", dict(_TINY_COMMON, num_conv_pos_embeddings=4, conv_pos_kernel_size=5)),
    "tiny-whisper": (
        "whisper",
        dict(
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            num_mel_bins=80,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            max_source_positions=1500,
            max_target_positions=64,
        ),
    ),
    # The demo encoder of `python train.py`: WavLM-shaped (seven-layer CNN, 20 ms frames), 4 layers of 64.
    "small-wavlm": (
        "wavlm",
        dict(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            conv_dim=(32, 32, 32, 32, 32, 64, 64),
            conv_kernel=(10, 3, 3, 3, 3, 2, 2),
            conv_stride=(5, 2, 2, 2, 2, 2, 2),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            num_buckets=32,
            max_bucket_distance=100,
        ),
    ),
}


def encoder_config_from_name(name: str, encoder_type: str = ""):
    """A transformers config for a built-in tiny name, a local folder or a hub id."""
    from transformers import CONFIG_MAPPING, AutoConfig

    if name in TINY_ENCODERS:
        family, kwargs = TINY_ENCODERS[name]
        return CONFIG_MAPPING[family](**kwargs)
    if encoder_type:
        if encoder_type not in FAMILIES:
            raise ValueError(f"unsupported encoder type {encoder_type!r}; choose one of {', '.join(FAMILIES)}")
    cfg = AutoConfig.from_pretrained(name)
    if cfg.model_type not in FAMILIES:
        raise ValueError(
            f"{name}: encoder type {cfg.model_type!r} is not supported; choose one of {', '.join(FAMILIES)}"
        )
    return cfg


def build_encoder(encoder_config) -> nn.Module:
    """Builds a randomly initialised encoder from a transformers config (Whisper: its encoder only)."""
    return frontend_class(encoder_config.model_type).encoder_from_config(encoder_config)


def load_pretrained_encoder(name_or_path: str) -> nn.Module:
    """Loads pre-trained encoder weights from a local folder or hub id with the family's own class
    (HuBERT with HubertModel, never wav2vec 2.0's class)."""
    cfg = encoder_config_from_name(name_or_path)
    return frontend_class(cfg.model_type).pretrained_encoder(name_or_path)


class TrainingDraws(NamedTuple):
    """One training forward's random draws (``Frontend._training_draws``)."""

    keep: tuple[bool, ...] | None  # LayerDrop: whether each transformer layer runs (host)
    keep_on_device: torch.Tensor | None  # the same (L,) bool, on the device, for compiled graphs
    time_spans: torch.Tensor | None  # SpecAugment: (B, T) bool, frames given the mask embedding
    feature_spans: torch.Tensor | None  # (B, D) bool, channels zeroed


def _host_to_device(data, device: torch.device) -> torch.Tensor:
    """Host data on ``device`` without waiting for its queue (pinned memory, non-blocking on a GPU); the
    same as ``mlsv.data.augment.host_to_device``, here because saved model code imports nothing from mlsv."""
    t = torch.as_tensor(data)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _additive_mask(frame_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) bool -> (B, 1, 1, T) additive attention mask (None: no padding, no mask)."""
    if frame_mask is None:
        return None
    return (~frame_mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


def _first(out):
    """A transformers layer's hidden states: its output, or the first item of its output tuple."""
    return out[0] if isinstance(out, tuple) else out


class Frontend(nn.Module):
    """Wraps a transformers speech encoder; returns all hidden states stacked.

    ``Frontend(encoder, ...)`` builds the subclass of the encoder's family (``build_frontend``); the
    subclasses give the family's embedding (``_embed``), layers and frame arithmetic.

    Args:
        encoder: a WavLM / HuBERT / wav2vec 2.0 / data2vec-audio model or a Whisper encoder.
        trainable: "none" (frozen: eval mode, no graph), "transformer" (CNN feature encoder frozen) or "all".
        layerdrop: probability of skipping a transformer layer in training (its input is passed on).
        mask_time_prob: SpecAugment-style time masking probability in training (0 disables it).
        normalize_input: zero-mean unit-variance per utterance over valid samples (the feature
            extractor's ``do_normalize``).
        layers: indices of the hidden states to return (None: all L+1).
        gradient_checkpointing: recompute transformer layers in the backward pass.
    """

    families: tuple[str, ...] = ()  # the encoder families (config.model_type) a subclass runs

    # How the CNN and the positional convolution run (same parameters, same outputs): "channels_last"
    # keeps (B, T, C) throughout; "channels_first" is transformers' (B, C, T) with transposes around it.
    conv_layout = "channels_last"
    # channels_last: the first CNN layer (convolution, norm, activation) as ``first_conv_block``
    fuse_first_conv = True
    fused_qkv = False  # WavLM "sdpa" only: one matrix product for q, k and v

    def __new__(cls, encoder: nn.Module | None = None, *args, **kwargs):
        if cls is Frontend:  # the base class stands for its families: build the encoder's own
            if encoder is None:
                raise TypeError("Frontend needs an encoder")
            cls = frontend_class(encoder.config.model_type)
        return super().__new__(cls)

    def __init__(
        self,
        encoder: nn.Module,
        *,
        trainable: str = "none",
        layerdrop: float = 0.0,
        mask_time_prob: float = 0.0,
        normalize_input: bool = True,
        layers: list[int] | None = None,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.family = encoder.config.model_type
        if self.family not in self.families:
            raise ValueError(
                f"encoder type {self.family!r} is not supported by {type(self).__name__} "
                f"({', '.join(self.families)}); build_frontend picks the class of a family"
            )
        self.normalize_input = normalize_input
        self.layerdrop = float(layerdrop)
        self.mask_time_prob = float(mask_time_prob)
        self.gradient_checkpointing = gradient_checkpointing
        n_states = self.num_layers + 1
        if layers:
            bad = [i for i in layers if not -n_states <= i < n_states]
            if bad:
                raise ValueError(f"layer indices {bad} out of range for an encoder with {n_states} hidden states")
            self.layers = [i % n_states for i in layers]
        else:
            self.layers = None
        # transformers' own LayerDrop would remove states; ours keeps them (see the module docstring)
        if hasattr(encoder.config, "layerdrop"):
            encoder.config.layerdrop = 0.0
        if hasattr(encoder, "layerdrop"):
            encoder.layerdrop = 0.0
        if hasattr(encoder.config, "mask_time_prob"):
            encoder.config.mask_time_prob = self.mask_time_prob
            encoder.config.mask_feature_prob = 0.0
            encoder.config.apply_spec_augment = self.mask_time_prob > 0
        self._build_buffers()
        self.set_trainable(trainable)

    def _build_buffers(self) -> None:
        """Registers the family's computed (unsaved) buffers, before the first forward."""

    # -- family hooks ---------------------------------------------------------------------------------
    @classmethod
    def encoder_from_config(cls, encoder_config) -> nn.Module:
        """A randomly initialised encoder of this family from its transformers config."""
        raise NotImplementedError

    @classmethod
    def pretrained_encoder(cls, name_or_path: str) -> nn.Module:
        """This family's pre-trained encoder from a local folder or hub id."""
        raise NotImplementedError

    @classmethod
    def _frame_count(cls, encoder_config, n):
        """Frames for ``n`` samples (int or LongTensor; may be negative: ``frame_count`` clamps)."""
        raise NotImplementedError

    @classmethod
    def _min_samples(cls, encoder_config) -> int:
        """Fewest samples that give one frame and run through this frontend."""
        raise NotImplementedError

    @property
    def _layer_stack(self) -> nn.Module:
        """The encoder module holding the transformer ``layers``."""
        raise NotImplementedError

    @property
    def _final_layer_norm(self) -> nn.Module | None:
        """The LayerNorm applied to the last layer's output (None: none)."""
        return None

    def _cnn_parameters(self) -> list[nn.Parameter]:
        """The parameters of the convolutional front (frozen by trainable="transformer")."""
        raise NotImplementedError

    def _embed(self, x: torch.Tensor, lengths: torch.Tensor, padded: bool = True, draws: TrainingDraws | None = None):
        """Normalised waveforms (B, S) -> (states[0] (B, T, D), frame_lengths (B,), frame_mask (B, T))."""
        raise NotImplementedError

    def _draw_spans(self, batch: int, samples: int, lengths: torch.Tensor | None, device: torch.device):
        """SpecAugment's (time_spans, feature_spans) for this forward (None, None: no masking)."""
        return None, None

    # -- shapes ------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def num_states(self) -> int:
        return len(self.layers) if self.layers else self.num_layers + 1

    @property
    def layers_run(self) -> int:
        """Transformer layers computed: up to the deepest selected state (the later ones feed nothing)."""
        return max(self.layers) if self.layers else self.num_layers

    def frame_lengths(self, lengths: torch.Tensor | int) -> torch.Tensor | int:
        """Number of output frames for ``lengths`` samples: (B,) -> (B,), or an int -> int (no tensor)."""
        return frame_count(self.encoder.config, lengths)

    # -- trainability --------------------------------------------------------------------------------
    def set_trainable(self, trainable: str) -> None:
        if trainable not in ("none", "transformer", "all"):
            raise ValueError(f"trainable must be 'none', 'transformer' or 'all', got {trainable!r}")
        self.trainable = trainable
        for p in self.encoder.parameters():
            p.requires_grad_(trainable != "none")
        if trainable == "transformer":
            for p in self._cnn_parameters():
                p.requires_grad_(False)
        for p in self._unused_parameters():  # no gradient would reach them (and DDP requires one)
            p.requires_grad_(False)
        self.train(self.training)

    def _unused_parameters(self) -> list[nn.Parameter]:
        """Encoder parameters this frontend never uses: the SpecAugment mask embedding without masking,
        and the layers (and final LayerNorm) beyond the deepest selected state."""
        e = self.encoder
        unused = []
        if self.mask_time_prob == 0 and isinstance(getattr(e, "masked_spec_embed", None), nn.Parameter):
            unused.append(e.masked_spec_embed)
        if self.layers_run < self.num_layers:
            for layer in self._layer_stack.layers[self.layers_run :]:
                unused.extend(layer.parameters())
            if self._final_layer_norm is not None:
                unused.extend(self._final_layer_norm.parameters())
        return unused

    def train(self, mode: bool = True):
        super().train(mode)
        if self.trainable == "none":
            self.encoder.eval()  # frozen: no dropout, no masking, no LayerDrop
        return self

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None):
        """waveforms (B, S) float, lengths (B,) valid samples -> (states (L', B, T, D), frame_lengths (B,))."""
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be (batch, samples), got shape {tuple(waveforms.shape)}")
        B, S = waveforms.shape
        # Without lengths every sample is valid (fixed training crops): no masks are built or applied.
        padded = lengths is not None
        if not padded:
            lengths = torch.full((B,), S, dtype=torch.long, device=waveforms.device)
        if self.trainable == "none":
            with torch.no_grad():
                states, frame_lengths = self._forward(waveforms, lengths, padded)
        else:
            draws = (
                self._training_draws(B, S, lengths if padded else None)
                if self.training and (self.layerdrop > 0 or self.mask_time_prob > 0)
                else None
            )
            states, frame_lengths = self._forward(waveforms, lengths, padded, draws)
        return states, frame_lengths

    @torch.compiler.disable
    def _training_draws(self, batch: int, samples: int, lengths: torch.Tensor | None) -> TrainingDraws:
        """This forward's LayerDrop and SpecAugment draws, made on the host (Python's generator for
        LayerDrop, numpy's for the spans, as transformers draws them) and sent to the device without
        waiting for it; only a padded batch reads its lengths back. Kept out of compiled graphs: one
        graph break here instead of one per layer, and the graphs take the draws as tensors, so new
        draws never recompile them."""
        device = self.encoder.device
        keep = None
        if self.layerdrop > 0:  # the first layer is never dropped
            keep = tuple(i == 0 or random.random() >= self.layerdrop for i in range(self.num_layers))
        time_spans, feature_spans = self._draw_spans(batch, samples, lengths, device)
        return TrainingDraws(keep, _host_to_device(keep, device) if keep else None, time_spans, feature_spans)

    def _forward(self, waveforms, lengths, padded: bool = True, draws: TrainingDraws | None = None):
        x = waveforms.float()
        sample_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None] if padded else None
        if self.normalize_input:
            # audio beyond full scale ([-1, 1]) is first divided by its peak (audio within it is left exactly
            # as it is): the normalisation is scale-free, and the variance of |x| ~ 1e19 no longer overflows
            x = x / x.abs().amax(1, keepdim=True).clamp_min(1.0)
            var, mean = _var_mean(x, 1, sample_mask)
            x = (x - mean) * torch.rsqrt(var + 1e-7)
        if sample_mask is not None:
            x = x * sample_mask
        hidden, frame_lengths, frame_mask = self._embed(x, lengths, padded, draws)
        states = self._run_layers(hidden, frame_mask if padded else None, draws)
        if self.layers:
            states = [states[i] for i in self.layers]
        return torch.stack(states), frame_lengths

    def _cnn_context(self):
        return torch.no_grad() if self.trainable != "all" else torch.enable_grad()

    # -- attention implementation ---------------------------------------------------------------------
    # transformers' own switch (config._attn_implementation); WavLM overrides it with mlsv's fast path.
    # The same parameters either way; not saved with the model.
    @property
    def attention(self) -> str:
        """The attention implementation: "eager" or "sdpa"."""
        return getattr(self.encoder.config, "_attn_implementation", None) or "eager"

    @attention.setter
    def attention(self, mode: str) -> None:
        self.set_attention(mode)

    def set_attention(self, mode: str, fused_qkv: bool | None = None) -> None:
        """Chooses the attention implementation ("eager" | "sdpa"); same outputs, different kernels."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {mode!r}")
        self._set_attention(mode)
        if fused_qkv is not None:
            self.fused_qkv = bool(fused_qkv)

    def _set_attention(self, mode: str) -> None:
        set_encoder_attention(self.encoder, mode)

    def set_conv_layout(self, layout: str, fuse_first_conv: bool | None = None) -> None:
        """Chooses how the convolutions run: "channels_last" (default) or "channels_first", and whether
        channels_last runs the first CNN layer as ``first_conv_block``; same outputs."""
        if layout not in CONV_LAYOUTS:
            raise ValueError(f"conv layout must be one of {', '.join(CONV_LAYOUTS)}, got {layout!r}")
        self.conv_layout = layout
        if fuse_first_conv is not None:
            self.fuse_first_conv = bool(fuse_first_conv)

    # -- transformer layers ---------------------------------------------------------------------------
    def _layer_calls(self, h: torch.Tensor, frame_mask: torch.Tensor | None):
        """This forward's layer calls: ``call(layer, i)`` is ``fn(h, carry) -> (h, carry)``, with the first
        carry (what a layer hands the next one: WavLM's position bias). Here transformers' layers with an
        additive padding mask, and no carry."""
        mask = _additive_mask(frame_mask, h.dtype)

        def call(layer: nn.Module, i: int):
            return lambda h_, carry: (_first(layer(h_, attention_mask=mask)), carry)

        return call, None

    def _run_layers(self, h, frame_mask, draws: TrainingDraws | None = None):
        states = [h]
        call, carry = self._layer_calls(h, frame_mask)
        keep = draws.keep if draws is not None else None
        # compiled: every layer runs and a dropped one's output is replaced by its input, which keeps one
        # static graph; eager: a dropped layer is skipped (its input passed on), the same result for less work
        blend = keep is not None and torch.compiler.is_compiling()
        for i, layer in enumerate(self._layer_stack.layers[: self.layers_run]):
            if not blend and keep is not None and not keep[i]:
                states.append(h)
                continue
            fn = call(layer, i)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                out, carry = checkpoint(fn, h, carry, use_reentrant=False)
            else:
                out, carry = fn(h, carry)
            h = torch.where(draws.keep_on_device[i], out, h) if blend and i > 0 else out
            states.append(h)
        if self.layers_run < self.num_layers:  # the final LayerNorm belongs to the last layer's state only
            return states
        if self._final_layer_norm is not None:
            states[-1] = self._final_layer_norm(states[-1])
        return states


class Wav2Vec2Frontend(Frontend):
    """HuBERT, wav2vec 2.0, data2vec-audio (and WavLM's base): CNN feature encoder, feature projection,
    SpecAugment, positional convolution; post- or pre-LayerNorm ("stable layer norm") transformer."""

    families = ("hubert", "wav2vec2", "data2vec-audio")

    @classmethod
    def encoder_from_config(cls, encoder_config) -> nn.Module:
        from transformers import AutoModel

        return AutoModel.from_config(encoder_config)

    @classmethod
    def pretrained_encoder(cls, name_or_path: str) -> nn.Module:
        from transformers import AutoModel

        return AutoModel.from_pretrained(name_or_path)

    @classmethod
    def _frame_count(cls, encoder_config, n):
        for k, s in zip(_config_value(encoder_config, "conv_kernel"), _config_value(encoder_config, "conv_stride")):
            n = (n - k) // s + 1
        return n

    @classmethod
    def _min_samples(cls, encoder_config) -> int:
        n = 1  # one frame out of the last CNN layer; each layer needs (n - 1) * stride + kernel samples
        for k, s in zip(
            reversed(list(_config_value(encoder_config, "conv_kernel"))),
            reversed(list(_config_value(encoder_config, "conv_stride"))),
        ):
            n = (n - 1) * s + k
        return n

    @property
    def num_layers(self) -> int:
        return self.encoder.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def _layer_stack(self) -> nn.Module:
        return self.encoder.encoder

    @property
    def _stable_layer_norm(self) -> bool:
        return bool(getattr(self.encoder.config, "do_stable_layer_norm", False))

    @property
    def _final_layer_norm(self) -> nn.Module | None:
        return self.encoder.encoder.layer_norm if self._stable_layer_norm else None

    def _cnn_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.feature_extractor.parameters())

    def _draw_spans(self, batch: int, samples: int, lengths: torch.Tensor | None, device: torch.device):
        if self.mask_time_prob == 0:
            return None, None
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

        cfg = self.encoder.config
        frames = self.frame_lengths(samples)
        mask = None
        if lengths is not None:
            mask = (torch.arange(frames)[None, :] < self.frame_lengths(lengths.cpu())[:, None]).long()
        time_spans = _host_to_device(
            _compute_mask_indices(
                (batch, frames),
                mask_prob=cfg.mask_time_prob,
                mask_length=cfg.mask_time_length,
                attention_mask=mask,
                min_masks=cfg.mask_time_min_masks,
            ),
            device,
        )
        feature_spans = None
        if cfg.mask_feature_prob > 0:
            feature_spans = _host_to_device(
                _compute_mask_indices(
                    (batch, self.hidden_size),
                    mask_prob=cfg.mask_feature_prob,
                    mask_length=cfg.mask_feature_length,
                    min_masks=cfg.mask_feature_min_masks,
                ),
                device,
            )
        return time_spans, feature_spans

    def _cnn(self, x, lengths, padded: bool = True):
        """The CNN feature encoder, channel-last: (B, S) normalised waveforms -> (B, T, C) features."""
        enc = self.encoder
        with self._cnn_context():
            h = x[:, :, None]  # (B, S, 1)
            cur_len = lengths
            for i, layer in enumerate(enc.feature_extractor.conv_layers):
                k, s = enc.config.conv_kernel[i], enc.config.conv_stride[i]
                cur_len = torch.div(cur_len - k, s, rounding_mode="floor") + 1
                if (
                    i == 0
                    and self.fuse_first_conv
                    and self.conv_layout == "channels_last"
                    and layer.conv.in_channels == 1
                    and layer.conv.padding[0] == 0
                    and layer.conv.dilation[0] == 1
                ):
                    T = (x.shape[1] - k) // s + 1
                    mask = torch.arange(T, device=x.device)[None, :] < cur_len[:, None] if padded else None
                    h = first_conv_block(layer, x, mask)
                    continue
                h = conv_channels_last(layer.conv, h, self.conv_layout)  # (B, L, C)
                norm = getattr(layer, "layer_norm", None)
                if isinstance(norm, nn.GroupNorm):
                    mask = torch.arange(h.shape[1], device=h.device)[None, :] < cur_len[:, None] if padded else None
                    h = _channel_norm_over_time(h, norm, mask)
                elif norm is not None:
                    h = norm(h)  # LayerNorm over channels: the last axis already
                h = layer.activation(h)
        return h

    def _spec_augment(self, h: torch.Tensor, draws: TrainingDraws) -> torch.Tensor:
        """SpecAugment as transformers' ``_mask_hidden_states``, with the spans drawn beforehand: time
        spans get the learned mask embedding, feature spans zero (``torch.where``, no boolean indexing)."""
        if draws.time_spans is not None:
            h = torch.where(draws.time_spans[..., None], self.encoder.masked_spec_embed.to(h.dtype), h)
        if draws.feature_spans is not None:
            h = h.masked_fill(draws.feature_spans[:, None], 0.0)
        return h

    def _embed(self, x, lengths, padded: bool = True, draws: TrainingDraws | None = None):
        """The CNN feature encoder, channel-last from the waveform on: (B, S) -> (B, T, C) states[0]."""
        enc = self.encoder
        frame_lengths = self.frame_lengths(lengths)
        h = self._cnn(x, lengths, padded)
        T = h.shape[1]
        frame_mask = torch.arange(T, device=h.device)[None, :] < frame_lengths[:, None]
        proj = enc.feature_projection(h)
        h = proj[0] if isinstance(proj, tuple) else proj
        if draws is not None:
            h = self._spec_augment(h, draws)
        if padded:
            h = h * frame_mask[..., None].to(h.dtype)
        e = enc.encoder
        h = h + self._positional(e.pos_conv_embed, h, frame_mask if padded else None)
        if not self._stable_layer_norm:
            h = e.layer_norm(h)
        h = e.dropout(h)
        return h, frame_lengths, frame_mask

    def _positional(self, pos_conv: nn.Module, h: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """The positional convolution on (B, T, D), channel-last like the CNN; data2vec-audio's stack of
        them gets its padded frames zeroed between layers (its LayerNorm makes them non-zero)."""
        if hasattr(pos_conv, "layers"):
            x = h.transpose(1, 2)
            m = frame_mask[:, None, :].to(h.dtype) if frame_mask is not None else None
            for layer in pos_conv.layers:
                x = layer(x * m if m is not None else x)
            return x.transpose(1, 2)
        y = conv_channels_last(pos_conv.conv, h, self.conv_layout)  # the weight norm applies on access
        remove = getattr(pos_conv.padding, "num_pad_remove", 0)
        if remove:
            y = y[:, :-remove]
        return pos_conv.activation(y)


class WavLMFrontend(Wav2Vec2Frontend):
    """WavLM: a wav2vec 2.0-like encoder whose layers carry a gated relative-position bias.

    Attention "sdpa" runs mlsv.models.fast_attention (the bias as an additive mask to
    scaled_dot_product_attention), "eager" transformers' WavLMAttention; the same parameters either way.
    """

    families = ("wavlm",)
    _wavlm_attention = "sdpa"

    @Frontend.attention.getter  # type: ignore[attr-defined]  # mypy does not follow a property's getter()
    def attention(self) -> str:
        """The attention implementation: "eager" or "sdpa"."""
        return self._wavlm_attention

    def _set_attention(self, mode: str) -> None:
        self._wavlm_attention = mode

    def _layer_calls(self, h: torch.Tensor, frame_mask: torch.Tensor | None):
        """WavLM's layers hand the position bias on: computed once by the first ("sdpa": here, as a table
        of offsets for long inputs, which then attend in blocks of queries)."""
        if self._wavlm_attention == "sdpa":
            key_bias = key_padding_bias(frame_mask) if frame_mask is not None else None
            position_bias = (relative_position_table if is_long(h.shape[1]) else relative_position_bias)(
                self._layer_stack.layers[0].attention, h.shape[1]
            )

            def call_sdpa(layer: nn.Module, i: int):
                return lambda h_, pb_: (wavlm_layer_forward(layer, h_, key_bias, pb_, self.fused_qkv), pb_)

            return call_sdpa, position_bias
        long_mask = frame_mask.long() if frame_mask is not None else None  # transformers' WavLM layers

        def call(layer: nn.Module, i: int):
            def fn(h_, pb_):
                out = layer(h_, attention_mask=long_mask, position_bias=pb_, index=i)
                return out[0], out[1]

            return fn

        return call, None


class WhisperFrontend(Frontend):
    """Whisper's encoder on any length: log-mel (over each utterance's valid frames), two convolutions,
    sliced sinusoidal positions, pre-LayerNorm transformer."""

    families = ("whisper",)

    def _build_buffers(self) -> None:
        # built here, not on first use: a compiled forward then has no graph break
        self.register_buffer("mel_filters", self.whisper_mel_filters(), persistent=False)

    @classmethod
    def encoder_from_config(cls, encoder_config) -> nn.Module:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return WhisperEncoder(encoder_config)

    @classmethod
    def pretrained_encoder(cls, name_or_path: str) -> nn.Module:
        from transformers import WhisperModel

        return WhisperModel.from_pretrained(name_or_path).get_encoder()

    @classmethod
    def _frame_count(cls, encoder_config, n):
        return (n // WHISPER_HOP - 1) // 2 + 1  # log-mel frames, then conv2's stride 2

    @classmethod
    def _min_samples(cls, encoder_config) -> int:
        # One log-mel frame. The STFT zero-pads both edges by half a window (``log_mel``), so a lone hop
        # of samples runs: no 400-sample window is needed.
        return WHISPER_HOP

    @property
    def num_layers(self) -> int:
        return self.encoder.config.encoder_layers

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.d_model

    @property
    def _layer_stack(self) -> nn.Module:
        return self.encoder

    @property
    def _final_layer_norm(self) -> nn.Module:
        return self.encoder.layer_norm

    def _cnn_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.conv1.parameters()) + list(self.encoder.conv2.parameters())

    def _embed(self, x, lengths, padded: bool = True, draws: TrainingDraws | None = None):
        enc = self.encoder
        mel = self.log_mel(x, lengths)  # (B, n_mels, F)
        F_len = lengths // WHISPER_HOP
        with self._cnn_context():
            fmask = torch.arange(mel.shape[-1], device=x.device)[None, :] < F_len[:, None]
            h = F.gelu(enc.conv1(mel * fmask[:, None, :]))
            h = h * fmask[:, None, :]
            h = F.gelu(enc.conv2(h))
        frame_lengths = self.frame_lengths(lengths)
        T = h.shape[-1]
        if T > enc.embed_positions.num_embeddings:
            raise ValueError(
                f"input of {T} frames exceeds Whisper's {enc.embed_positions.num_embeddings} positions "
                "(30 s); chunk longer audio"
            )
        frame_mask = torch.arange(T, device=x.device)[None, :] < frame_lengths[:, None]
        h = h.transpose(1, 2) + enc.embed_positions.weight[:T]
        h = F.dropout(h, p=enc.dropout, training=self.training)
        return h, frame_lengths, frame_mask

    def whisper_mel_filters(self) -> torch.Tensor:
        """Whisper's slaney mel filter bank (n_mels, n_fft // 2 + 1), the feature extractor's own."""
        from transformers.audio_utils import mel_filter_bank

        fb = mel_filter_bank(
            num_frequency_bins=1 + WHISPER_N_FFT // 2,
            num_mel_filters=self.encoder.config.num_mel_bins,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=16000,
            norm="slaney",
            mel_scale="slaney",
        )
        return torch.tensor(fb, dtype=torch.float32).T

    def log_mel(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Whisper's log-mel front end, per utterance over its valid frames. (B, S) -> (B, n_mels, S // 160)."""
        n_fft, hop = WHISPER_N_FFT, WHISPER_HOP
        window = torch.hann_window(n_fft, device=x.device)
        # audio beyond full scale is divided by its peak s and the log power given back 2 log10(s): the same
        # log-mel (but for the 1e-10 floor), where |x| ~ 1e19 overflowed the float32 power spectrum into NaN;
        # audio within [-1, 1] is left exactly as it is
        scale = x.abs().amax(1, keepdim=True).clamp_min(1.0)
        # zero (not reflect) padding at the edges, so that a padded batch sees what a lone utterance sees
        spec = (
            torch.stft(x / scale, n_fft, hop, window=window, pad_mode="constant", return_complex=True)[..., :-1].abs()
            ** 2
        )
        mel = torch.log10(torch.clamp(self.mel_filters.float() @ spec, min=1e-10)) + 2 * torch.log10(scale)[..., None]
        F_len = lengths // hop
        fmask = torch.arange(mel.shape[-1], device=x.device)[None, None, :] < F_len[:, None, None]
        peak = mel.masked_fill(~fmask, -math.inf).amax(dim=(1, 2), keepdim=True)
        mel = torch.maximum(mel, peak - 8.0)
        return (mel + 4.0) / 4.0


#: The frontend class of each encoder family (``config.model_type``).
FRONTENDS: dict[str, type[Frontend]] = {
    family: cls for cls in (WavLMFrontend, Wav2Vec2Frontend, WhisperFrontend) for family in cls.families
}
assert set(FRONTENDS) == set(FAMILIES)


def frontend_class(family: str) -> type[Frontend]:
    """The ``Frontend`` subclass of an encoder family; ValueError naming the supported ones otherwise."""
    try:
        return FRONTENDS[family]
    except (KeyError, TypeError):
        raise ValueError(f"encoder type {family!r} is not supported; choose one of {', '.join(FAMILIES)}") from None


def build_frontend(encoder: nn.Module, **settings) -> Frontend:
    """The frontend of ``encoder``'s family around it; ``settings`` as ``Frontend``'s keyword arguments."""
    return frontend_class(encoder.config.model_type)(encoder, **settings)


def _family(encoder_config) -> str:
    family = (
        encoder_config.get("model_type")
        if isinstance(encoder_config, dict)
        else getattr(encoder_config, "model_type", None)
    )
    if not family:
        raise ValueError(f"encoder config has no model_type; choose one of {', '.join(FAMILIES)}")
    return family


def _config_value(encoder_config, key: str):
    """``key`` of a transformers config or of its dict (missing from a dict: the family's default)."""
    if not isinstance(encoder_config, dict):
        return getattr(encoder_config, key)
    if key in encoder_config:
        return encoder_config[key]
    from transformers import CONFIG_MAPPING

    return getattr(CONFIG_MAPPING[_family(encoder_config)](), key)


def frame_count(encoder_config, lengths: torch.Tensor | int) -> torch.Tensor | int:
    """Output frames of the encoder for ``lengths`` samples: an int -> an int, a tensor (B,) -> LongTensor
    (B,), never negative. ``encoder_config``: a transformers config or its dict (``MLSVConfig.encoder_config``)."""
    is_tensor = isinstance(lengths, torch.Tensor)
    n = lengths.to(torch.long) if is_tensor else lengths
    n = frontend_class(_family(encoder_config))._frame_count(encoder_config, n)
    return n.clamp_min(0) if is_tensor else max(n, 0)


def min_samples(encoder_config) -> int:
    """Fewest samples that give one output frame and run through the frontend (alone or in a padded
    batch); one fewer gives 0 frames. ``encoder_config`` as for ``frame_count``."""
    return int(frontend_class(_family(encoder_config))._min_samples(encoder_config))
