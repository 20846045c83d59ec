"""Embedding extraction: batches of padded waveforms -> an ``EmbeddingTable``.

Batches are dicts ``{"waveforms": (B, S), "attention_mask": (B, S), "ids": list[str],
"durations": (B,)}`` as the evaluation loader yields them. When a long file was cut into chunks, its
chunks share one id and their embeddings are averaged (weighted by chunk length).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from mlsv.scoring.embeddings import EmbeddingTable


@torch.no_grad()
def extract_embeddings(model, batches: Iterable[dict], *, device: torch.device | str | None = None,
                       autocast_dtype: torch.dtype | None = None, progress: bool = False,
                       total: int | None = None) -> EmbeddingTable:
    """Embeds every batch with ``model`` in eval mode; returns one row per distinct id (input order)."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    durations: dict[str, float] = {}
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=total, desc="embedding", unit="batch")
    for batch in batches:
        wav = batch["waveforms"].to(device, non_blocking=True)
        # a batch without padding (equal lengths, e.g. fixed chunks) needs no masks; asked of the host copy
        full = bool(batch["attention_mask"].all())
        mask = None if full else batch["attention_mask"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            emb = model(wav, attention_mask=mask).embeddings
        emb = emb.float().cpu().numpy()
        n_valid = batch["attention_mask"].sum(-1).cpu().numpy().astype(np.float64)
        for i, uid in enumerate(batch["ids"]):
            if uid in sums:
                sums[uid] += emb[i] * n_valid[i]
                weights[uid] += n_valid[i]
                durations[uid] += float(batch["durations"][i])  # chunks: the utterance is their sum
            else:
                sums[uid] = emb[i] * n_valid[i]
                weights[uid] = n_valid[i]
                durations[uid] = float(batch["durations"][i])
    model.train(was_training)
    ids = list(sums)
    if not ids:
        return EmbeddingTable(np.array([], dtype=str), np.zeros((0, 0), np.float32), np.zeros(0, np.float32))
    matrix = np.stack([sums[u] / max(weights[u], 1.0) for u in ids]).astype(np.float32)
    return EmbeddingTable(np.array(ids), matrix, np.array([durations[u] for u in ids], dtype=np.float32))
