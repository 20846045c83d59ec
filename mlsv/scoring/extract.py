"""Embedding extraction: batches of padded waveforms -> an ``EmbeddingTable``.

Batches are dicts ``{"waveforms": (B, S), "attention_mask": (B, S), "ids": list[str],
"durations": (B,)}`` as the evaluation loader yields them. When a long file was cut into chunks, its
chunks share one id and their embeddings are averaged (weighted by chunk length).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from mlsv.data.audio import estimate_snr
from mlsv.models.loading import min_samples
from mlsv.scoring.embeddings import EmbeddingTable


def _check_lengths(model, batch: dict, sample_rate: int) -> None:
    """Raises ValueError naming the batch's utterances (or chunks) too short to give the encoder a frame."""
    frontend = getattr(model, "frontend", None)
    if frontend is None:
        return
    lengths = batch["attention_mask"].sum(-1)
    short = (frontend.frame_lengths(lengths) < 1).nonzero().flatten().tolist()
    if short:
        chunks = batch.get("chunks")
        names = [
            f"{batch['ids'][i]}"
            + (f" (chunk {int(chunks[i])})" if chunks is not None and chunks[i] else "")
            + f": {int(lengths[i])} samples"
            for i in short[:5]
        ]
        need = min_samples(model.config)
        raise ValueError(
            f"too short for the encoder, which needs at least {need} samples "
            f"({need / sample_rate * 1000:.1f} ms): {'; '.join(names)}"
        )


@torch.no_grad()
def extract_embeddings(
    model,
    batches: Iterable[dict],
    *,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    total: int | None = None,
) -> EmbeddingTable:
    """Embeds every batch with ``model`` in eval mode; returns one row per distinct id (input order)."""
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    durations: dict[str, float] = {}
    snr: dict[str, float] = {}  # duration-weighted sum of the chunks' SNR estimates (dB)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=total, desc="embedding", unit="batch")
    rate = int(getattr(getattr(model, "config", None), "sampling_rate", None) or 16000)
    for batch in batches:
        _check_lengths(model, batch, rate)
        wav = batch["waveforms"].to(device, non_blocking=True)
        # a batch without padding (equal lengths, e.g. fixed chunks) needs no masks; asked of the host copy
        full = bool(batch["attention_mask"].all())
        mask = None if full else batch["attention_mask"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            emb = model(wav, attention_mask=mask).embeddings
        emb = emb.float().cpu().numpy()
        n_valid = batch["attention_mask"].sum(-1).cpu().numpy().astype(np.float64)
        host = batch["waveforms"].float().cpu().numpy()
        for i, uid in enumerate(batch["ids"]):
            seconds = float(batch["durations"][i])
            db = estimate_snr(host[i, : int(n_valid[i])], rate) * seconds
            if uid in sums:
                sums[uid] += emb[i] * n_valid[i]
                weights[uid] += n_valid[i]
                durations[uid] += seconds  # chunks: the utterance is their sum
                snr[uid] += db
            else:
                sums[uid] = emb[i] * n_valid[i]
                weights[uid] = n_valid[i]
                durations[uid] = seconds
                snr[uid] = db
    model.train(was_training)
    ids = list(sums)
    if not ids:
        return EmbeddingTable(np.array([], dtype=str), np.zeros((0, 0), np.float32), np.zeros(0, np.float32))
    matrix = np.stack([sums[u] / max(weights[u], 1.0) for u in ids]).astype(np.float32)
    # a chunked utterance: its chunks' SNR estimates, weighted by duration (the whole file's estimate is not
    # computed here: its chunks may come in different batches)
    quality = np.array([snr[u] / max(durations[u], 1e-9) for u in ids], dtype=np.float32)
    return EmbeddingTable(np.array(ids), matrix, np.array([durations[u] for u in ids], dtype=np.float32), snr=quality)
