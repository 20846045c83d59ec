"""Layer aggregation: (L, B, T, D) hidden-state stacks -> (B, T, D') frame features.

* ``SuperbAggregation``: softmax-weighted sum of layers (SUPERB).
* ``LayerAttentivePooling``: LAP (Kim et al., Interspeech 2025), per-frame, per-head layer scores from
  mean and max statistics through a shared squeeze-excite MLP over the layer axis, then a max over
  layers of the re-weighted states.
* ``LastLayer``: the last state only (baseline).

All work channel-last on the frontend's layer-major layout: no transposed copies of the stack.
"""

from __future__ import annotations

import torch
from torch import nn


class SuperbAggregation(nn.Module):
    """Softmax-weighted sum of the L states. (L, B, T, D) -> (B, T, D)."""

    def __init__(self, num_layers: int, input_size: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))  # uniform weights at start
        self.output_size = input_size

    def layer_weights(self) -> torch.Tensor:
        return self.logits.softmax(0)

    def forward(self, states: torch.Tensor, return_scores: bool = False):
        w = self.layer_weights().to(states.dtype)
        out = torch.einsum("l,lbtd->btd", w, states)
        return (out, None) if return_scores else out


class LastLayer(nn.Module):
    """The last state. (L, B, T, D) -> (B, T, D)."""

    def __init__(self, num_layers: int, input_size: int):
        super().__init__()
        self.output_size = input_size

    def forward(self, states: torch.Tensor, return_scores: bool = False):
        return (states[-1], None) if return_scores else states[-1]


class LayerAttentivePooling(nn.Module):
    """Layer Attentive Pooling (docs/method.md#lap).

    Steps, per frame: a BatchNorm over channels shared by all layers, a D->D linear projection, a split
    into ``heads`` groups of d = D/heads channels; for each head and layer the mean and the max over the
    head's channels give two length-L vectors, each through the head's squeeze-excite MLP
    (L -> L//2 -> L), summed, sigmoid, dropout: the scores s (B, T, heads, L). The output is the max over
    layers of s * x, heads concatenated, then a D->C linear projection and a BatchNorm.

    Args:
        num_layers: L, the number of hidden states.
        input_size: D, the encoder width; must be divisible by ``heads``.
        heads: h.
        output_size: C.
        dropout: dropout on the scores (training only).
    """

    def __init__(self, num_layers: int, input_size: int, heads: int = 16, output_size: int = 512, dropout: float = 0.1):
        super().__init__()
        if heads < 1 or input_size % heads != 0:
            raise ValueError(
                f"LAP heads must divide the encoder width: {input_size} channels cannot be split "
                f"into {heads} heads (choose a divisor of {input_size})"
            )
        if num_layers < 2:
            raise ValueError(f"LAP needs at least 2 layers to attend over, got {num_layers}")
        L, h = num_layers, heads
        r = max(L // 2, 1)
        self.heads, self.num_layers, self.output_size = h, L, output_size
        self.norm = nn.BatchNorm1d(input_size)
        self.proj_in = nn.Linear(input_size, input_size) if h > 1 else nn.Identity()
        self.squeeze_weight = nn.Parameter(torch.empty(h, L, r))
        self.squeeze_bias = nn.Parameter(torch.zeros(h, 1, r))
        self.excite_weight = nn.Parameter(torch.empty(h, r, L))
        self.excite_bias = nn.Parameter(torch.zeros(h, 1, L))
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(input_size, output_size)
        self.norm_out = nn.BatchNorm1d(output_size)
        nn.init.xavier_uniform_(self.squeeze_weight)
        nn.init.xavier_uniform_(self.excite_weight)

    def _mlp(self, v: torch.Tensor) -> torch.Tensor:
        """Per-head MLP over the layer axis: (N, h, L) -> (N, h, L)."""
        z = torch.einsum("nhl,hlr->nhr", v, self.squeeze_weight) + self.squeeze_bias.squeeze(1)
        z = torch.relu(z)
        return torch.einsum("nhr,hrl->nhl", z, self.excite_weight) + self.excite_bias.squeeze(1)

    def forward(self, states: torch.Tensor, return_scores: bool = False):
        """states (L, B, T, D) -> (B, T, C) [, scores (B, heads, T, L)]."""
        L, B, T, D = states.shape
        if L != self.num_layers:
            raise ValueError(f"LAP was built for {self.num_layers} layers, got {L}")
        h, d = self.heads, D // self.heads
        x = self.norm(states.reshape(-1, D))
        x = self.proj_in(x).view(L, B * T, h, d)
        # per-layer statistics over each head's channels: (L, N, h) -> (N, h, L)
        mean = x.mean(-1).permute(1, 2, 0)
        peak = x.amax(-1).permute(1, 2, 0)
        scores = self.dropout(torch.sigmoid(self._mlp(mean) + self._mlp(peak)))  # (N, h, L)
        weights = scores.permute(2, 0, 1).unsqueeze(-1).to(x.dtype)  # (L, N, h, 1)
        z = (x * weights).amax(0).reshape(B * T, D)
        out = self.norm_out(self.proj_out(z)).view(B, T, -1)
        if return_scores:
            return out, scores.view(B, T, h, L).permute(0, 2, 1, 3)
        return out


AGGREGATIONS = {"lap": LayerAttentivePooling, "superb": SuperbAggregation, "last": LastLayer}


def build_aggregation(
    name: str, num_layers: int, input_size: int, *, heads: int = 16, output_size: int = 512, dropout: float = 0.1
) -> nn.Module:
    if name not in AGGREGATIONS:
        raise KeyError(f"unknown aggregation {name!r}; choose one of {', '.join(AGGREGATIONS)}")
    if name == "lap":
        return LayerAttentivePooling(num_layers, input_size, heads=heads, output_size=output_size, dropout=dropout)
    return AGGREGATIONS[name](num_layers, input_size)
