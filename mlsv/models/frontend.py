"""Pre-trained speech encoders as frontends: waveforms in, every hidden state out.

Contract: ``Frontend(waveforms (B, S), lengths (B,)) -> (states (L+1, B, T, D), frame_lengths (B,))``.

The encoder's own modules (CNN feature encoder, projection, positional convolution, transformer layers)
are called one by one here instead of through the encoder's ``forward`` so that

* aggregation always receives all L+1 states: LayerDrop is ours, and a dropped layer passes its input
  on as its output (transformers drops the state instead);
* padding never changes an embedding: the input normalisation and the GroupNorm of the first CNN layer
  (wav2vec 2.0 / WavLM Base style) are computed over the valid samples only;
* Whisper's encoder takes any length (transformers insists on 30 s): positions are sliced to length.

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

# transformers' WavLM attention passes a bool padding mask beside its float position bias; torch warns
# about the mix on every call although the result is right.
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")

CONV_LAYOUTS = ("channels_last", "channels_first")
WAV2VEC2_FAMILY = ("wavlm", "hubert", "wav2vec2", "data2vec-audio")
FAMILIES = WAV2VEC2_FAMILY + ("whisper",)
WHISPER_N_FFT, WHISPER_HOP = 400, 160  # Whisper's 25 ms window, 10 ms hop at 16 kHz

# Tiny shapes for tests and the demo: build, run and round-trip in milliseconds on a CPU.
_TINY_COMMON = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
)
TINY_ENCODERS = {
    "tiny-wavlm": ("wavlm", dict(_TINY_COMMON, num_buckets=32, max_bucket_distance=100)),
    "tiny-hubert": ("hubert", dict(_TINY_COMMON)),
    "tiny-wav2vec2": ("wav2vec2", dict(_TINY_COMMON)),
    "tiny-data2vec": ("data2vec-audio", dict(_TINY_COMMON, num_conv_pos_embeddings=4, conv_pos_kernel_size=5)),
    "tiny-whisper": ("whisper", dict(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=80,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=64)),
    # The demo encoder of `python train.py`: WavLM-shaped (seven-layer CNN, 20 ms frames), 4 layers of 64.
    "small-wavlm": ("wavlm", dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        conv_dim=(32, 32, 32, 32, 32, 64, 64), conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32, max_bucket_distance=100)),
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
        raise ValueError(f"{name}: encoder type {cfg.model_type!r} is not supported; "
                         f"choose one of {', '.join(FAMILIES)}")
    return cfg


def build_encoder(encoder_config) -> nn.Module:
    """Builds a randomly initialised encoder from a transformers config (Whisper: its encoder only)."""
    from transformers import AutoModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if encoder_config.model_type not in FAMILIES:
        raise ValueError(f"encoder type {encoder_config.model_type!r} is not supported; "
                         f"choose one of {', '.join(FAMILIES)}")
    if encoder_config.model_type == "whisper":
        return WhisperEncoder(encoder_config)
    return AutoModel.from_config(encoder_config)


def load_pretrained_encoder(name_or_path: str) -> nn.Module:
    """Loads pre-trained encoder weights from a local folder or hub id with the family's own class
    (HuBERT with HubertModel, never wav2vec 2.0's class)."""
    from transformers import AutoModel, WhisperModel

    cfg = encoder_config_from_name(name_or_path)
    if cfg.model_type == "whisper":
        return WhisperModel.from_pretrained(name_or_path).get_encoder()
    return AutoModel.from_pretrained(name_or_path)


def _var_mean(x: torch.Tensor, dim: int, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Population variance and mean over ``dim`` (kept), over the positions where ``mask`` (x's shape
    without its trailing axes past ``dim``) is True, or over all when ``mask`` is None."""
    if mask is None:
        return torch.var_mean(x, dim=dim, correction=0, keepdim=True)
    m = mask.reshape(*mask.shape, *([1] * (x.dim() - mask.dim()))).to(x.dtype)
    n = m.sum(dim, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim, keepdim=True) / n
    return (((x - mean) * m) ** 2).sum(dim, keepdim=True) / n, mean


def _channel_norm_over_time(h: torch.Tensor, norm: nn.GroupNorm, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm with one group per channel (wav2vec 2.0 / WavLM Base's first CNN layer) on a channel-last
    (B, T, C) tensor, over the valid frames only when ``frame_mask`` (B, T) is given, over all otherwise.

    The statistics are reduced once; normalisation and affine are then one fused multiply-add in the
    input's dtype (an fp32 output under autocast would double the bytes of the largest tensor).
    """
    var, mean = _var_mean(h, 1, frame_mask)
    scale = torch.rsqrt(var.float() + norm.eps) * norm.weight
    shift = norm.bias - mean.float() * scale
    return torch.addcmul(shift.to(h.dtype), h, scale.to(h.dtype))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a convolution would give under the active autocast (x's own otherwise)."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _window_products(windows: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype):
    """``windows`` (B, T, k) @ ``weight`` (B or 1, k, C) + ``shift`` (B or 1, 1, C): one batched matrix
    product in ``dtype`` (the same kernel eager and compiled, so the two agree to the bit)."""
    batch = windows.shape[0]
    with torch.autocast(windows.device.type, enabled=False):
        return torch.baddbmm(shift.to(dtype).expand(batch, -1, -1), windows.to(dtype),
                             weight.to(dtype).expand(batch, -1, -1))


def first_conv_block(layer: nn.Module, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """The first CNN layer (a 1-channel convolution, its norm, its activation) without materialising the
    convolution's output before the norm: (B, S) -> (B, T, C), equal to the layer's own result.

    Since the convolution is linear in each window (B, T, k) of the waveform, its norm's statistics come
    from the windows: a GroupNorm with a group per channel (over time, over the valid frames of
    ``frame_mask`` when given) from the windows' mean and k x k covariance per utterance, a LayerNorm
    (over channels, per frame) from a k x k quadratic form per window. The norm then folds into
    per-utterance weights (GroupNorm) or a per-frame scale (LayerNorm): the largest tensor of the
    encoder (128 x 2 s: 128 x 6,399 x 512) is not re-read for statistics, and a 1-channel convolution
    (a poor fit for convolution kernels) becomes a matrix product. Statistics are fp32; the output has
    the autocast dtype.
    """
    conv, norm = layer.conv, getattr(layer, "layer_norm", None)
    k, stride = conv.kernel_size[0], conv.stride[0]
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        windows = x.unfold(1, k, stride)  # (B, T, k): a view
        w = conv.weight.float().reshape(conv.out_channels, k)  # (C, k)
        bias = conv.bias.float() if conv.bias is not None else w.new_zeros(conv.out_channels)
        if isinstance(norm, nn.GroupNorm):
            if frame_mask is None:
                n = windows.new_full((windows.shape[0], 1), windows.shape[1])
                weighted = windows
            else:
                m = frame_mask[..., None].float()
                n = m.sum(1).clamp_min(1.0)  # (B, 1)
                weighted = windows * m
            mean = weighted.sum(1) / n  # (B, k)
            cov = weighted.transpose(1, 2) @ windows / n[..., None] - mean[:, :, None] * mean[:, None, :]
            var = ((w @ cov) * w).sum(-1)  # (B, C): w_c' cov w_c; the conv bias cancels in the norm
            scale = torch.rsqrt(var.clamp_min(0.0) + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight.float()
            shift = -scale * (mean @ w.T) + (norm.bias.float() if norm.bias is not None else 0.0)
            y = _window_products(windows, w.T[None] * scale[:, None, :], shift[:, None, :], dtype)
        elif isinstance(norm, nn.LayerNorm):
            w0, b0 = w - w.mean(0), bias - bias.mean()  # centred over channels
            C = conv.out_channels
            gram = w0.T @ w0 / C  # (k, k)
            var = ((windows @ gram) * windows).sum(-1) + windows @ (2.0 / C * (w0.T @ b0)) + (b0 @ b0) / C
            r = torch.rsqrt(var.clamp_min(0.0) + norm.eps)[..., None]  # (B, T, 1)
            y = _window_products(windows, w0.T[None], b0[None, None], dtype) * r
            if norm.weight is not None:
                y = y * norm.weight.float()
            if norm.bias is not None:
                y = y + norm.bias.float()
        else:
            y = _window_products(windows, w.T[None], bias[None, None], dtype)
        return layer.activation(y).to(dtype)


GROUP_ALIGN = 64  # channels per group that cuDNN's grouped convolutions run fast with


def conv_channels_last(conv: nn.Conv1d, h: torch.Tensor, layout: str = "channels_last",
                       pad_groups: bool = False) -> torch.Tensor:
    """``conv`` applied to a channel-last sequence: (B, L, C_in) -> (B, L_out, C_out).

    "channels_last" runs it as a 2-D convolution over (B, C, 1, L) in the channels-last memory format,
    which is the (B, L, C) tensor itself: no transposed copies before or after, and cuDNN's NHWC kernels
    on a GPU. "channels_first" transposes to (B, C, L) and calls the Conv1d (the reference layout).
    On a GPU, grouped convolutions whose groups are not a multiple of 64 channels are zero-padded to
    one (``pad_groups``: on any device, for tests). (Window matrix products through cuBLAS were also
    tried for the feature encoder: 7.9 ms against cuDNN's 5.8 ms on an H200, benchmarks/RESULTS.md.)
    """
    if layout == "channels_first":
        return conv(h.transpose(1, 2)).transpose(1, 2)
    weight, bias, G = conv.weight, conv.bias, conv.groups
    c_in, c_out = conv.in_channels // G, conv.out_channels // G
    pad_groups = pad_groups or (G > 1 and h.is_cuda and bool(c_in % GROUP_ALIGN or c_out % GROUP_ALIGN))
    if pad_groups:
        # cuDNN's grouped kernels are several times slower for groups of 48 channels (WavLM Base's
        # positional convolution: 13 ms per 128 x 2 s on an H200) than for 64 (Large's: 1.8 ms); zero
        # channels pad each group to a multiple of 64 and are sliced off the output.
        pi, po = (-c % GROUP_ALIGN for c in (c_in, c_out))
        B, L, _ = h.shape
        h = F.pad(h.view(B, L, G, c_in), (0, pi)).view(B, L, G * (c_in + pi))
        weight = F.pad(weight.view(G, c_out, c_in, -1), (0, 0, 0, pi, 0, po)).view(G * (c_out + po), c_in + pi, -1)
        bias = F.pad(bias.view(G, c_out), (0, po)).view(-1) if bias is not None else None
    x = h.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)
    w = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, w, bias, stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
                 dilation=(1, conv.dilation[0]), groups=G)
    y = y.squeeze(2).transpose(1, 2)
    if pad_groups:
        y = y.reshape(*y.shape[:2], G, c_out + po)[..., :c_out].reshape(*y.shape[:2], G * c_out)
    return y.contiguous()


class TrainingDraws(NamedTuple):
    """One training forward's random draws (``Frontend._training_draws``)."""

    keep: tuple[bool, ...] | None  # LayerDrop: whether each transformer layer runs (host)
    keep_on_device: torch.Tensor | None  # the same (L,) bool, on the device, for compiled graphs
    time_spans: torch.Tensor | None  # SpecAugment: (B, T) bool, frames given the mask embedding
    feature_spans: torch.Tensor | None  # (B, D) bool, channels zeroed


def _host_to_device(data, device: torch.device) -> torch.Tensor:
    """Host data on ``device`` without waiting for its queue (pinned memory, non-blocking on a GPU); the
    same as ``mlsv.speed.host_to_device``, here because saved model code imports nothing from mlsv."""
    t = torch.as_tensor(data)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _additive_mask(frame_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) bool -> (B, 1, 1, T) additive attention mask (None: no padding, no mask)."""
    if frame_mask is None:
        return None
    return (~frame_mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


class Frontend(nn.Module):
    """Wraps a transformers speech encoder; returns all hidden states stacked.

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

    def __init__(self, encoder: nn.Module, *, trainable: str = "none", layerdrop: float = 0.0,
                 mask_time_prob: float = 0.0, normalize_input: bool = True, layers: list[int] | None = None,
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.encoder = encoder
        self.family = encoder.config.model_type
        if self.family not in FAMILIES:
            raise ValueError(f"encoder type {self.family!r} is not supported")
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
        if self.family == "whisper":  # built here, not on first use: a compiled forward then has no graph break
            self.register_buffer("mel_filters", self.whisper_mel_filters(), persistent=False)
        self.set_trainable(trainable)

    # -- shapes ------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        c = self.encoder.config
        return c.encoder_layers if self.family == "whisper" else c.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        c = self.encoder.config
        return c.d_model if self.family == "whisper" else c.hidden_size

    @property
    def num_states(self) -> int:
        return len(self.layers) if self.layers else self.num_layers + 1

    @property
    def layers_run(self) -> int:
        """Transformer layers computed: up to the deepest selected state (the later ones feed nothing)."""
        return max(self.layers) if self.layers else self.num_layers

    def frame_lengths(self, lengths: torch.Tensor | int) -> torch.Tensor | int:
        """Number of output frames for ``lengths`` samples: (B,) -> (B,), or an int -> int (no tensor)."""
        is_tensor = isinstance(lengths, torch.Tensor)
        n = lengths.to(torch.long) if is_tensor else lengths
        if self.family == "whisper":
            n = (n // WHISPER_HOP - 1) // 2 + 1  # log-mel frames, then conv2's stride 2
        else:
            for k, s in zip(self.encoder.config.conv_kernel, self.encoder.config.conv_stride):
                n = (n - k) // s + 1
        return n.clamp_min(0) if is_tensor else max(n, 0)

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
            stack = e if self.family == "whisper" else e.encoder
            for layer in stack.layers[self.layers_run:]:
                unused.extend(layer.parameters())
            if self.family == "whisper" or self._stable_layer_norm:
                unused.extend(stack.layer_norm.parameters())
        return unused

    def _cnn_parameters(self):
        e = self.encoder
        if self.family == "whisper":
            return list(e.conv1.parameters()) + list(e.conv2.parameters())
        return list(e.feature_extractor.parameters())

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
            draws = self._training_draws(B, S, lengths if padded else None) \
                if self.training and (self.layerdrop > 0 or self.mask_time_prob > 0) else None
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
        time_spans = feature_spans = None
        if self.mask_time_prob > 0 and self.family != "whisper":
            from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

            cfg = self.encoder.config
            frames = self.frame_lengths(samples)
            mask = None
            if lengths is not None:
                mask = (torch.arange(frames)[None, :] < self.frame_lengths(lengths.cpu())[:, None]).long()
            time_spans = _host_to_device(_compute_mask_indices(
                (batch, frames), mask_prob=cfg.mask_time_prob, mask_length=cfg.mask_time_length,
                attention_mask=mask, min_masks=cfg.mask_time_min_masks), device)
            if cfg.mask_feature_prob > 0:
                feature_spans = _host_to_device(_compute_mask_indices(
                    (batch, self.hidden_size), mask_prob=cfg.mask_feature_prob,
                    mask_length=cfg.mask_feature_length, min_masks=cfg.mask_feature_min_masks), device)
        return TrainingDraws(keep, _host_to_device(keep, device) if keep else None, time_spans, feature_spans)

    def _forward(self, waveforms, lengths, padded: bool = True, draws: TrainingDraws | None = None):
        x = waveforms.float()
        sample_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None] if padded else None
        if self.normalize_input:
            var, mean = _var_mean(x, 1, sample_mask)
            x = (x - mean) * torch.rsqrt(var + 1e-7)
        if sample_mask is not None:
            x = x * sample_mask
        if self.family == "whisper":
            hidden, frame_lengths, frame_mask = self._whisper_embed(x, lengths)
        else:
            hidden, frame_lengths, frame_mask = self._w2v_embed(x, lengths, padded, draws)
        states = self._run_layers(hidden, frame_mask if padded else None, draws)
        if self.layers:
            states = [states[i] for i in self.layers]
        return torch.stack(states), frame_lengths

    def _cnn_context(self):
        return torch.no_grad() if self.trainable != "all" else torch.enable_grad()

    def _cnn(self, x, lengths, padded: bool = True):
        """The CNN feature encoder, channel-last: (B, S) normalised waveforms -> (B, T, C) features."""
        enc = self.encoder
        with self._cnn_context():
            h = x[:, :, None]  # (B, S, 1)
            cur_len = lengths
            for i, layer in enumerate(enc.feature_extractor.conv_layers):
                k, s = enc.config.conv_kernel[i], enc.config.conv_stride[i]
                cur_len = torch.div(cur_len - k, s, rounding_mode="floor") + 1
                if i == 0 and self.fuse_first_conv and self.conv_layout == "channels_last" \
                        and layer.conv.in_channels == 1 and layer.conv.padding[0] == 0 and layer.conv.dilation[0] == 1:
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

    def _w2v_embed(self, x, lengths, padded: bool = True, draws: TrainingDraws | None = None):
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

    @property
    def _stable_layer_norm(self) -> bool:
        return self.family != "whisper" and bool(getattr(self.encoder.config, "do_stable_layer_norm", False))

    def _whisper_embed(self, x, lengths):
        enc = self.encoder
        mel = self.log_mel(x, lengths)  # (B, n_mels, F)
        F_len = lengths // 160
        with self._cnn_context():
            fmask = torch.arange(mel.shape[-1], device=x.device)[None, :] < F_len[:, None]
            h = F.gelu(enc.conv1(mel * fmask[:, None, :]))
            h = h * fmask[:, None, :]
            h = F.gelu(enc.conv2(h))
        frame_lengths = self.frame_lengths(lengths)
        T = h.shape[-1]
        if T > enc.embed_positions.num_embeddings:
            raise ValueError(f"input of {T} frames exceeds Whisper's {enc.embed_positions.num_embeddings} positions "
                             "(30 s); chunk longer audio")
        frame_mask = torch.arange(T, device=x.device)[None, :] < frame_lengths[:, None]
        h = h.transpose(1, 2) + enc.embed_positions.weight[:T]
        h = F.dropout(h, p=enc.dropout, training=self.training)
        return h, frame_lengths, frame_mask

    def whisper_mel_filters(self) -> torch.Tensor:
        """Whisper's slaney mel filter bank (n_mels, n_fft // 2 + 1), the feature extractor's own."""
        from transformers.audio_utils import mel_filter_bank

        fb = mel_filter_bank(num_frequency_bins=1 + WHISPER_N_FFT // 2, num_mel_filters=self.encoder.config.num_mel_bins,
                             min_frequency=0.0, max_frequency=8000.0, sampling_rate=16000,
                             norm="slaney", mel_scale="slaney")
        return torch.tensor(fb, dtype=torch.float32).T

    def log_mel(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Whisper's log-mel front end, per utterance over its valid frames. (B, S) -> (B, n_mels, S // 160)."""
        n_fft, hop = WHISPER_N_FFT, WHISPER_HOP
        window = torch.hann_window(n_fft, device=x.device)
        # zero (not reflect) padding at the edges, so that a padded batch sees what a lone utterance sees
        spec = torch.stft(x, n_fft, hop, window=window, pad_mode="constant",
                          return_complex=True)[..., :-1].abs() ** 2
        mel = torch.log10(torch.clamp(self.mel_filters.float() @ spec, min=1e-10))
        F_len = lengths // hop
        fmask = torch.arange(mel.shape[-1], device=x.device)[None, None, :] < F_len[:, None, None]
        peak = mel.masked_fill(~fmask, -math.inf).amax(dim=(1, 2), keepdim=True)
        mel = torch.maximum(mel, peak - 8.0)
        return (mel + 4.0) / 4.0

    # -- attention implementation ---------------------------------------------------------------------
    # WavLM: "sdpa" runs mlsv.models.fast_attention (its gated relative-position bias as an additive mask
    # to scaled_dot_product_attention), "eager" transformers' WavLMAttention. Other families: transformers'
    # own switch (config._attn_implementation). The same parameters either way; not saved with the model.
    _wavlm_attention = "sdpa"
    fused_qkv = False  # WavLM "sdpa" only: one matrix product for q, k and v
    # How the CNN and the positional convolution run (same parameters, same outputs): "channels_last"
    # keeps (B, T, C) throughout; "channels_first" is transformers' (B, C, T) with transposes around it.
    conv_layout = "channels_last"
    # channels_last: the first CNN layer (convolution, norm, activation) as ``first_conv_block``
    fuse_first_conv = True

    @property
    def attention(self) -> str:
        """The attention implementation: "eager" or "sdpa"."""
        if self.family == "wavlm":
            return self._wavlm_attention
        return getattr(self.encoder.config, "_attn_implementation", None) or "eager"

    @attention.setter
    def attention(self, mode: str) -> None:
        self.set_attention(mode)

    def set_attention(self, mode: str, fused_qkv: bool | None = None) -> None:
        """Chooses the attention implementation ("eager" | "sdpa"); same outputs, different kernels."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {mode!r}")
        if self.family == "wavlm":
            self._wavlm_attention = mode
        else:
            set_encoder_attention(self.encoder, mode)
        if fused_qkv is not None:
            self.fused_qkv = bool(fused_qkv)

    def set_conv_layout(self, layout: str, fuse_first_conv: bool | None = None) -> None:
        """Chooses how the convolutions run: "channels_last" (default) or "channels_first", and whether
        channels_last runs the first CNN layer as ``first_conv_block``; same outputs."""
        if layout not in CONV_LAYOUTS:
            raise ValueError(f"conv layout must be one of {', '.join(CONV_LAYOUTS)}, got {layout!r}")
        self.conv_layout = layout
        if fuse_first_conv is not None:
            self.fuse_first_conv = bool(fuse_first_conv)

    def _run_layers(self, h, frame_mask, draws: TrainingDraws | None = None):
        states = [h]
        add_mask = _additive_mask(frame_mask, h.dtype)
        position_bias = None
        layers = self.encoder.layers if self.family == "whisper" else self.encoder.encoder.layers
        fast_wavlm = self.family == "wavlm" and self._wavlm_attention == "sdpa"
        long_mask = frame_mask.long() if frame_mask is not None else None  # transformers' WavLM layers
        if fast_wavlm:
            key_bias = key_padding_bias(frame_mask) if frame_mask is not None else None
            # long inputs keep the bias as a table of offsets and attend in blocks of queries
            position_bias = (relative_position_table if is_long(h.shape[1]) else relative_position_bias)(
                layers[0].attention, h.shape[1])
        keep = draws.keep if draws is not None else None
        # compiled: every layer runs and a dropped one's output is replaced by its input, which keeps one
        # static graph; eager: a dropped layer is skipped (its input passed on), the same result for less work
        blend = keep is not None and torch.compiler.is_compiling()
        for i, layer in enumerate(layers[:self.layers_run]):
            if not blend and keep is not None and not keep[i]:
                states.append(h)
                continue
            if fast_wavlm:
                fn = lambda h_, pb_, layer=layer: (wavlm_layer_forward(  # noqa: E731
                    layer, h_, key_bias, pb_, self.fused_qkv), pb_)
                args = (h, position_bias)
            elif self.family == "wavlm":
                fn = lambda h_, pb_, layer=layer, i=i: layer(h_, attention_mask=long_mask,  # noqa: E731
                                                              position_bias=pb_, index=i)
                args = (h, position_bias)
            else:
                fn = lambda h_, layer=layer: layer(h_, attention_mask=add_mask)  # noqa: E731
                args = (h,)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                out = checkpoint(fn, *args, use_reentrant=False)
            else:
                out = fn(*args)
            if self.family == "wavlm":
                out, position_bias = out
            elif isinstance(out, tuple):
                out = out[0]
            h = torch.where(draws.keep_on_device[i], out, h) if blend and i > 0 else out
            states.append(h)
        if self.layers_run < self.num_layers:  # the final LayerNorm belongs to the last layer's state only
            return states
        if self.family == "whisper":
            states[-1] = self.encoder.layer_norm(states[-1])
        elif self._stable_layer_norm:
            states[-1] = self.encoder.encoder.layer_norm(states[-1])
        return states
