"""How audio is cut and batched for embedding: the rules evaluation and the verification API share (numpy
only, no torch: the ONNX runtime uses them too)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["chunk_shares", "chunk_spans", "pack_batches"]


def chunk_spans(frames: int, rate: int, chunk_seconds: float) -> np.ndarray:
    """Where an utterance of ``frames`` samples at ``rate`` Hz is cut to be embedded in chunks.

    The one rule of evaluation (manifests, ``plan_eval_batches``) and of the verification API (files
    and arrays), so that a file gets the same embedding either way: an utterance longer than
    ``chunk_seconds`` (> 0) is cut into n = ceil(seconds / chunk_seconds) windows of exactly
    ``chunk_seconds``, the first at the start, the last at the end and the others evenly between, so
    neighbours overlap by (n x chunk - frames) / (n - 1) samples: every window has the length the model
    was trained on (a crop), none is a short tail. A shorter utterance, or ``chunk_seconds <= 0``, stays
    whole.

    Returns:
        (n, 2) int64 ``[start, end)`` sample offsets, in order.
    """
    chunk = int(round(chunk_seconds * rate)) if chunk_seconds > 0 else 0
    if chunk <= 0 or frames <= chunk:
        return np.array([[0, frames]], dtype=np.int64)
    n = max(2, math.ceil(frames / chunk - 1e-9))
    starts = np.linspace(0, frames - chunk, n).round().astype(np.int64)
    return np.stack([starts, starts + chunk], axis=1)


def chunk_shares(spans: np.ndarray) -> np.ndarray:
    """(n,) float64: the fraction of each window's samples that counts towards the utterance's duration.
    The utterance is divided equally among its windows, so the counted samples of overlapping windows sum
    to its length (1.0 for a whole utterance or windows that do not overlap)."""
    frames = int(spans[-1, 1] - spans[0, 0])
    return (frames / len(spans)) / (spans[:, 1] - spans[:, 0])


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
