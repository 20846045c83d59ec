"""How audio is cut and batched for embedding: the rules evaluation and the verification API share (numpy
only, no torch: the ONNX runtime uses them too)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["chunk_bounds", "pack_batches"]


def chunk_bounds(frames: int, rate: int, chunk_seconds: float) -> np.ndarray:
    """Where an utterance of ``frames`` samples at ``rate`` Hz is cut to be embedded in chunks.

    The one rule of evaluation (manifests, ``plan_eval_batches``) and of the verification API (files
    and arrays), so that a file gets the same embedding either way: an utterance longer than
    ``chunk_seconds`` (> 0) is cut into ceil(seconds / chunk_seconds) equal, contiguous chunks (equal
    lengths avoid a tiny last chunk); a shorter one, or ``chunk_seconds <= 0``, stays whole.

    Returns:
        (n_chunks + 1,) int64 offsets from 0 to ``frames``; chunk c is ``[bounds[c], bounds[c + 1])``.
    """
    n_chunks = max(1, math.ceil(frames / rate / chunk_seconds - 1e-9)) if chunk_seconds > 0 else 1
    return np.linspace(0, frames, n_chunks + 1).round().astype(np.int64)


def pack_batches(lengths: Sequence[float], budget: float) -> list[list[int]]:
    """Indices of ``lengths`` packed into batches, longest first, each padded to its first (longest) item
    with at most ``budget`` of padded length (count x longest); an item longer than ``budget`` is a batch
    alone. Equal lengths keep their order. The one batching rule of evaluation and the Verifier."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
