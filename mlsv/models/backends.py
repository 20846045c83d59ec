"""Speaker backends: (B, T, C) frame features + frame mask -> (B, E) embeddings.

Every temporal operation is masked: a padded batch gives the embeddings each utterance gives alone.
Convolutional backends (x-vector, ECAPA-TDNN) use length-preserving padding and zero the padded frames
before every convolution, so a frame near the end sees zeros in both cases.

* ``ASTP``: the LAP paper's light backend (docs/method.md#astp): global-context attentive statistics with
  frame dropout, BN, Linear to E, BN.
* ``XVector``: TDNN x-vector. Its embedding is the first segment-level layer in training and
  evaluation alike (the reference returned different layers in the two modes).
* ``EcapaTdnn``: ECAPA-TDNN (Desplanques et al., 2020) with 512 or 1024 channels.
* ``MHFA``: multi-head factorised attentive pooling (Peng et al., SLT 2022); it takes the layer stack
  itself, with two layer aggregators for keys and values.
"""

from __future__ import annotations

import torch
from torch import nn

from .aggregation import build_aggregation


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, eps: float = 1e-5):
    """Mean and std over time of valid frames. x (B, T, C), mask (B, T) bool -> (B, C), (B, C)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    n = m.sum(1).clamp_min(1.0)
    mean = (x * m).sum(1) / n
    denom = (n - 1).clamp_min(1.0) if unbiased else n
    var = (((x - mean.unsqueeze(1)) * m) ** 2).sum(1) / denom
    return mean, var.clamp_min(eps).sqrt()


def _attentive_stats(x: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor):
    """Attention-weighted mean and std. x, logits (B, T, C); mask (B, T) -> (B, C), (B, C)."""
    logits = logits.float().masked_fill(~mask.unsqueeze(-1), torch.finfo(torch.float32).min)
    alpha = logits.softmax(dim=1)
    xf = x.float()
    mu = (alpha * xf).sum(1)
    var = (alpha * xf * xf).sum(1) - mu * mu
    return mu, var.clamp_min(1e-4).sqrt()


class ASTP(nn.Module):
    """Attentive statistics pooling with global context and frame dropout, then the embedding layer.

    (B, T, C) + mask (B, T) -> (B, E).
    """

    def __init__(self, input_size: int, embedding_size: int = 192, reduction: float = 0.5, frame_dropout: float = 0.1):
        super().__init__()
        C = input_size
        hidden = max(int(C * reduction), 1)
        self.context = nn.Linear(3 * C, hidden)  # applied to [x; mean; std] without building the concatenation
        self.context_norm = nn.BatchNorm1d(hidden)
        self.attention = nn.Linear(hidden, C)
        self.frame_dropout = frame_dropout
        self.pool_norm = nn.BatchNorm1d(2 * C)
        self.embedding = nn.Linear(2 * C, embedding_size)
        self.embedding_norm = nn.BatchNorm1d(embedding_size)
        self.input_size, self.output_size = C, embedding_size

    def attention_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        mean, std = masked_mean_std(x, mask)
        w = self.context.weight  # (hidden, 3C): split into the frame, mean and std parts
        frame = x @ w[:, :C].T
        glob = mean @ w[:, C : 2 * C].T + std @ w[:, 2 * C :].T + self.context.bias
        z = torch.relu(frame + glob.unsqueeze(1))
        z = self.context_norm(z.reshape(B * T, -1)).view(B, T, -1)
        return self.attention(z)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.attention_logits(x, mask)
        if self.training and self.frame_dropout > 0:
            keep = torch.rand(mask.shape, device=mask.device) >= self.frame_dropout
            keep = keep | ~(keep & mask).any(1, keepdim=True)  # never drop every frame of an utterance
            mask = mask & keep
        mu, sigma = _attentive_stats(x, logits, mask)
        pooled = self.pool_norm(torch.cat([mu, sigma], dim=-1).to(x.dtype))
        return self.embedding_norm(self.embedding(pooled))


class _MaskedConv(nn.Module):
    """Conv1d on (B, C, T) with length-preserving padding; zeroes padded frames first."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(x * mask[:, None, :].to(x.dtype))


class _TdnnBlock(nn.Module):
    def __init__(self, cin, cout, kernel, dilation=1):
        super().__init__()
        self.conv = _MaskedConv(cin, cout, kernel, dilation)
        self.norm = nn.BatchNorm1d(cout)

    def forward(self, x, mask):
        return self.norm(torch.relu(self.conv(x, mask)))


class XVector(nn.Module):
    """TDNN x-vector: five frame layers, masked mean+std pooling, Linear to E. (B, T, C) -> (B, E)."""

    def __init__(self, input_size: int, embedding_size: int = 512, channels: int = 512):
        super().__init__()
        spec = [
            (input_size, channels, 5, 1),
            (channels, channels, 3, 2),
            (channels, channels, 3, 3),
            (channels, channels, 1, 1),
            (channels, 3 * channels, 1, 1),
        ]
        self.frames = nn.ModuleList(_TdnnBlock(*s) for s in spec)
        self.embedding = nn.Linear(6 * channels, embedding_size)
        self.input_size, self.output_size = input_size, embedding_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        for layer in self.frames:
            h = layer(h, mask)
        mean, std = masked_mean_std(h.transpose(1, 2), mask)
        return self.embedding(torch.cat([mean, std], dim=-1))


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.down = nn.Linear(channels, bottleneck)
        self.up = nn.Linear(bottleneck, channels)

    def forward(self, x, mask):
        m = mask[:, None, :].to(x.dtype)
        s = (x * m).sum(-1) / m.sum(-1).clamp_min(1.0)
        return x * torch.sigmoid(self.up(torch.relu(self.down(s))))[:, :, None]


class _Res2Block(nn.Module):
    """SE-Res2Net block: 1x1, Res2 dilated 3-tap convolutions over ``scale`` channel groups, 1x1, SE."""

    def __init__(self, channels: int, dilation: int, scale: int = 8):
        super().__init__()
        if channels % scale:
            raise ValueError(f"ECAPA channels ({channels}) must be divisible by its scale ({scale})")
        width = channels // scale
        self.scale = scale
        self.pre = _TdnnBlock(channels, channels, 1)
        self.convs = nn.ModuleList(_TdnnBlock(width, width, 3, dilation) for _ in range(scale - 1))
        self.post = _TdnnBlock(channels, channels, 1)
        self.se = _SqueezeExcite(channels)

    def forward(self, x, mask):
        h = self.pre(x, mask)
        parts = list(h.chunk(self.scale, dim=1))
        out, prev = [parts[0]], None
        for i, conv in enumerate(self.convs, 1):
            prev = conv(parts[i] if prev is None else parts[i] + prev, mask)
            out.append(prev)
        h = self.se(self.post(torch.cat(out, dim=1), mask), mask)
        return h + x


class EcapaTdnn(nn.Module):
    """ECAPA-TDNN with global-context attentive statistics pooling. (B, T, C) -> (B, E)."""

    def __init__(self, input_size: int, embedding_size: int = 192, channels: int = 512):
        super().__init__()
        self.stem = _TdnnBlock(input_size, channels, 5)
        self.blocks = nn.ModuleList(_Res2Block(channels, d) for d in (2, 3, 4))
        self.merge = _MaskedConv(3 * channels, 1536, 1)
        self.pool = ASTP(1536, embedding_size, reduction=128 / 1536, frame_dropout=0.0)
        self.input_size, self.output_size = input_size, embedding_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.transpose(1, 2), mask)
        outs = []
        for block in self.blocks:
            h = block(h, mask)
            outs.append(h)
        h = torch.relu(self.merge(torch.cat(outs, dim=1), mask))
        return self.pool(h.transpose(1, 2), mask)


class MHFA(nn.Module):
    """Multi-head factorised attentive pooling over the layer stack. (L, B, T, D) -> (B, E).

    Keys and values come from two separate layer aggregators (SUPERB weights or LAP), are compressed to
    ``compression`` channels, and each of ``heads`` attention heads pools the values over time with its
    own softmax over the keys.
    """

    takes_layer_stack = True

    def __init__(
        self,
        num_layers: int,
        input_size: int,
        embedding_size: int = 256,
        heads: int = 64,
        compression: int = 128,
        aggregation: str = "superb",
        lap_heads: int = 16,
        lap_channels: int = 512,
        lap_dropout: float = 0.1,
    ):
        super().__init__()
        kw = dict(heads=lap_heads, output_size=lap_channels, dropout=lap_dropout)
        self.keys_aggregation = build_aggregation(aggregation, num_layers, input_size, **kw)
        self.values_aggregation = build_aggregation(aggregation, num_layers, input_size, **kw)
        width = self.keys_aggregation.output_size
        self.keys = nn.Linear(width, compression)
        self.values = nn.Linear(width, compression)
        self.attention = nn.Linear(compression, heads)
        self.embedding = nn.Linear(heads * compression, embedding_size)
        self.input_size, self.output_size = input_size, embedding_size

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k = self.keys(self.keys_aggregation(states))
        v = self.values(self.values_aggregation(states))
        logits = self.attention(k).float().masked_fill(~mask.unsqueeze(-1), torch.finfo(torch.float32).min)
        alpha = logits.softmax(dim=1).to(v.dtype)  # (B, T, heads)
        pooled = torch.einsum("bth,btc->bhc", alpha, v).flatten(1)
        return self.embedding(pooled)


BACKENDS = {"astp": ASTP, "xvector": XVector, "ecapa": EcapaTdnn, "mhfa": MHFA}


def build_backend(
    name: str,
    input_size: int,
    embedding_size: int,
    *,
    dropout: float = 0.1,
    ecapa_channels: int = 512,
    num_layers: int = 0,
    stack_size: int = 0,
    mhfa_heads: int = 64,
    mhfa_compression: int = 128,
    aggregation: str = "superb",
    lap_heads: int = 16,
    lap_channels: int = 512,
    lap_dropout: float = 0.1,
) -> nn.Module:
    """Builds a backend by name; MHFA takes the layer stack (``num_layers`` x ``stack_size``)."""
    if name == "astp":
        return ASTP(input_size, embedding_size, frame_dropout=dropout)
    if name == "xvector":
        return XVector(input_size, embedding_size)
    if name == "ecapa":
        if ecapa_channels not in (512, 1024):
            raise ValueError(f"ECAPA-TDNN channels must be 512 or 1024, got {ecapa_channels}")
        return EcapaTdnn(input_size, embedding_size, ecapa_channels)
    if name == "mhfa":
        return MHFA(
            num_layers,
            stack_size,
            embedding_size,
            heads=mhfa_heads,
            compression=mhfa_compression,
            aggregation=aggregation,
            lap_heads=lap_heads,
            lap_channels=lap_channels,
            lap_dropout=lap_dropout,
        )
    raise KeyError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["ASTP", "XVector", "EcapaTdnn", "MHFA", "BACKENDS", "build_backend", "masked_mean_std"]
