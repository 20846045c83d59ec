"""Fast paths of the encoders' convolutions (CNN feature encoder, positional convolution).

Every function reads the existing modules' parameters and gives the module's own result (up to
floating-point rounding), so a model runs and saves the same with or without them:

* ``first_conv_block``: the first CNN layer (1-channel convolution, its norm, its activation) as one
  batched matrix product with the norm folded in, from the waveform's windows;
* ``conv_channels_last``: a ``Conv1d`` on a channel-last (B, L, C) sequence, without transposed copies
  ("channels_last") or as the reference ``Conv1d`` ("channels_first"), with grouped convolutions padded
  to ``GROUP_ALIGN`` channels per group on a GPU;
* ``_channel_norm_over_time``: a GroupNorm with a group per channel over the valid frames only.

This module is part of the model code saved beside a model for ``trust_remote_code``: it imports only
torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONV_LAYOUTS = ("channels_last", "channels_first")


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
        return torch.baddbmm(
            shift.to(dtype).expand(batch, -1, -1), windows.to(dtype), weight.to(dtype).expand(batch, -1, -1)
        )


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


def conv_channels_last(
    conv: nn.Conv1d, h: torch.Tensor, layout: str = "channels_last", pad_groups: bool = False
) -> torch.Tensor:
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
    y = F.conv2d(
        x, w, bias, stride=(1, conv.stride[0]), padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]), groups=G
    )
    y = y.squeeze(2).transpose(1, 2)
    if pad_groups:
        y = y.reshape(*y.shape[:2], G, c_out + po)[..., :c_out].reshape(*y.shape[:2], G * c_out)
    return y.contiguous()
