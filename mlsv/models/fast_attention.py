"""WavLM self-attention through ``torch.nn.functional.scaled_dot_product_attention``.

transformers' ``WavLMAttention`` computes its gated relative-position bias and hands it, with a boolean
key-padding mask, to ``F.multi_head_attention_forward`` with ``need_weights=True``: the (B*H, T, T)
attention matrix is materialised in float32 and no fused kernel can run. Here the same bias is passed
to ``scaled_dot_product_attention`` as an additive float mask (the key padding folded in), so the
memory-efficient kernel runs on a GPU (it takes an additive bias, and its gradient) and the math or
CPU-flash kernel runs on a CPU.

Nothing is copied: the functions read the existing modules' parameters (``q_proj``, ``k_proj``,
``v_proj``, ``out_proj``, ``gru_rel_pos_linear``, ``gru_rel_pos_const``, ``rel_attn_embed``), so a model
saved or loaded with either implementation is the same model.

Shapes: hidden states (B, T, D); ``key_bias`` (B, 1, 1, Tp) additive float (0 for valid keys, a very
negative number for padding); the ungated relative-position bias (1, H, T, Tp). Tp is T rounded up to a
multiple of 16 and the extra columns are sliced away before the attention call: the kernel then sees a
bias whose rows are 16-element aligned and does not copy it to pad it.

Long inputs in inference (more than ``LONG_FRAMES`` frames, about 41 s of audio, without gradients): the
(B, H, T, T) bias grows with the square of the length (43 GB for 10 minutes of WavLM Base+), so the bias
is kept as its (H, 2T - 1) table of one value per relative position, and attention runs in blocks of
query rows whose bias rows are cut from that table (a Toeplitz matrix) when needed: ``BLOCK_BYTES`` of
float32 bias per block (with its working copies, about twice that). Each query's row of attention is
computed as before, so the output is the same.

This module is part of the model code saved beside a model for ``trust_remote_code``: it imports only
torch and transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_MODES = ("eager", "sdpa")
_ALIGN = 16  # the memory-efficient kernel wants the bias rows aligned to 16 elements
#: Frames above which the relative-position bias is kept as a table and attention runs in query blocks.
LONG_FRAMES = 2048
#: Most bytes of float32 bias one block of query rows may take.
BLOCK_BYTES = 1 << 28


def padded_length(T: int) -> int:
    """T rounded up to a multiple of the bias alignment."""
    return -(-T // _ALIGN) * _ALIGN


def key_padding_bias(frame_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, True for valid frames -> (B, 1, 1, Tp) float32 additive bias (0 / float32 min).

    Columns past T are padding of the bias itself and are masked too (they are sliced away anyway).
    """
    B, T = frame_mask.shape
    Tp = padded_length(T)
    valid = F.pad(frame_mask, (0, Tp - T), value=False)
    bias = torch.zeros(B, 1, 1, Tp, dtype=torch.float32, device=frame_mask.device)
    return bias.masked_fill(~valid[:, None, None, :], torch.finfo(torch.float32).min)


def relative_position_bias(attention: nn.Module, T: int) -> torch.Tensor:
    """WavLM's ungated relative-position bias from the first layer's ``rel_attn_embed``: (1, H, T, Tp).

    The same buckets as ``WavLMAttention.compute_bias``; columns past T are zero (never used).
    """
    values = attention.compute_bias(T, T)  # (H, T, T) float32
    return F.pad(values, (0, padded_length(T) - T))[None]


def relative_position_table(attention: nn.Module, T: int) -> torch.Tensor:
    """The ungated relative-position bias of every offset j - i from -(T - 1) to T - 1, zero-padded on the
    right to Tp + T - 1 columns: (H, Tp + T - 1) float32, the same buckets as ``compute_bias``. Query i's
    row of a head's (T, Tp) bias is columns T - 1 - i to T - 1 - i + Tp of its row."""
    device = attention.rel_attn_embed.weight.device
    offsets = torch.arange(-(T - 1), T, dtype=torch.long, device=device)
    table = attention.rel_attn_embed(attention._relative_positions_bucket(offsets)).t().float()  # (H, 2T - 1)
    return F.pad(table, (0, padded_length(T) - T))


def is_long(T: int) -> bool:
    """Whether T frames take the blocked attention: in inference only (no gradients: autograd would keep
    every block's bias for the backward pass, more than the one bias all layers share) and never while
    compiling (one static graph)."""
    return T > LONG_FRAMES and not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _gate(attention: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """The per-query gate of the relative-position bias. (B, T, D) -> (B, H, T, 1).

    ``gru_rel_pos_linear`` maps each head's d channels to 8 values summed in two groups of 4; the sum of
    the outputs of a linear map is the linear map with summed rows, so a (2, d) weight does it at once.
    """
    B, T, _ = hidden_states.shape
    H = attention.num_heads
    lin = attention.gru_rel_pos_linear
    w = lin.weight.view(2, 4, -1).sum(1)
    b = lin.bias.view(2, 4).sum(1)
    x = hidden_states.view(B, T, H, -1).transpose(1, 2)  # (B, H, T, d)
    gate_a, gate_b = torch.sigmoid(F.linear(x, w, b)).float().chunk(2, dim=-1)
    return gate_a * (gate_b * attention.gru_rel_pos_const.float() - 1.0) + 2.0


def wavlm_sdpa_attention(
    attention: nn.Module,
    hidden_states: torch.Tensor,
    key_bias: torch.Tensor | None,
    position_bias: torch.Tensor,
    fused_qkv: bool = False,
) -> torch.Tensor:
    """``WavLMAttention``'s output (before its residual) computed with ``scaled_dot_product_attention``.

    Args:
        attention: a transformers ``WavLMAttention`` whose parameters are used as they are.
        hidden_states: (B, T, D), what the layer passes to its attention.
        key_bias: (B, 1, 1, Tp) from ``key_padding_bias``, or None when no frame is padding.
        position_bias: (1, H, T, Tp) from ``relative_position_bias`` (computed once, by the first layer),
            or, for long inputs, the (H, Tp + T - 1) ``relative_position_table``: attention in query blocks.
        fused_qkv: one (3D x D) matrix product for the queries, keys and values instead of three.

    Returns:
        (B, T, D). Attention dropout follows ``attention.training`` and ``attention.dropout``.
    """
    B, T, D = hidden_states.shape
    H = attention.num_heads
    gate = _gate(attention, hidden_states)  # (B, H, T, 1) float32
    if fused_qkv:
        w = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
        b = torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias])
        q, k, v = F.linear(hidden_states, w, b).view(B, T, 3, H, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q = attention.q_proj(hidden_states).view(B, T, H, -1).transpose(1, 2)
        k = attention.k_proj(hidden_states).view(B, T, H, -1).transpose(1, 2)
        v = attention.v_proj(hidden_states).view(B, T, H, -1).transpose(1, 2)
    p = float(attention.dropout) if attention.training else 0.0
    if position_bias.dim() == 2:  # a long input: blocks of query rows
        # window s of the offset table is the bias row of query T - 1 - s: with the queries (and their
        # gates) in reverse order, a block's rows are consecutive windows, copied row-major once
        Tp = padded_length(T)
        rows = max(_ALIGN, BLOCK_BYTES // (4 * B * H * Tp))
        windows = position_bias.unfold(1, Tp, 1)  # (H, T, Tp) view
        q_rev, gate_rev = q.flip(2), gate.flip(2)
        out = torch.cat(
            [
                _attend(
                    q_rev[:, :, a : a + rows],
                    k,
                    v,
                    gate_rev[:, :, a : a + rows],
                    windows[:, a : a + rows].contiguous(),
                    key_bias,
                    p,
                )
                for a in range(0, T, rows)
            ],
            dim=2,
        ).flip(2)
    else:
        out = _attend(q, k, v, gate, position_bias, key_bias, p)
    return attention.out_proj(out.transpose(1, 2).reshape(B, T, D))


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate: torch.Tensor,
    position_bias: torch.Tensor,
    key_bias: torch.Tensor | None,
    p: float,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` of queries (B, H, R, d) over all T keys with the bias
    gate * position_bias + key_bias, built in one kernel and cast to the queries' dtype (the kernel wants
    them equal) while still Tp wide; the view of its T columns keeps its rows 16-aligned."""
    T = k.shape[2]
    bias = gate * position_bias if key_bias is None else torch.addcmul(key_bias, gate, position_bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype)[..., :T], dropout_p=p)


def wavlm_layer_forward(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    key_bias: torch.Tensor | None,
    position_bias: torch.Tensor,
    fused_qkv: bool = False,
) -> torch.Tensor:
    """One WavLM transformer layer (post-LN ``WavLMEncoderLayer`` or pre-LN
    ``WavLMEncoderLayerStableLayerNorm``) with the SDPA attention; the layer's own modules otherwise.

    (B, T, D) -> (B, T, D). ``position_bias`` is the ungated bias of ``relative_position_bias`` (or, for
    long inputs, ``relative_position_table``).
    """
    stable = type(layer).__name__.endswith("StableLayerNorm")
    residual = hidden_states
    if stable:
        hidden_states = layer.layer_norm(hidden_states)
    hidden_states = wavlm_sdpa_attention(layer.attention, hidden_states, key_bias, position_bias, fused_qkv)
    hidden_states = residual + layer.dropout(hidden_states)
    if stable:
        return hidden_states + layer.feed_forward(layer.final_layer_norm(hidden_states))
    hidden_states = layer.layer_norm(hidden_states)
    hidden_states = hidden_states + layer.feed_forward(hidden_states)
    return layer.final_layer_norm(hidden_states)


def set_encoder_attention(encoder: nn.Module, mode: str) -> None:
    """transformers' own attention switch for the families that have one (wav2vec 2.0, HuBERT,
    data2vec-audio, Whisper): "eager" or "sdpa". A no-op for WavLM (its switch is the Frontend's)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {mode!r}")
    if encoder.config.model_type == "wavlm":
        return
    if hasattr(encoder, "set_attn_implementation"):
        encoder.set_attn_implementation(mode)
    else:  # older transformers: the layers read the shared config at call time
        encoder.config._attn_implementation = mode
