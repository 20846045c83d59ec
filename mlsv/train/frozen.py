"""Training with a frozen encoder: context crops and the feature cache (docs/training.md#context-crops).

A model trained on isolated crops sees only the first positions of an encoder with absolute positions, and
only a crop's worth of context; embedding a whole utterance then feeds it states it never saw. With
``data.context_seconds`` the encoder runs over a longer context of each utterance (the whole utterance up to
that length, speed-perturbed and augmented as a whole) and the training crops are cut from its hidden
states, so a crop carries the context it will have at test time; ``data.crops_per_context`` crops come from
each context, so the encoder runs once per context rather than once per crop.

With ``data.feature_cache`` the contexts' states are computed once (``build_feature_cache``) and read back
memory-mapped (``mlsv.data.feature_cache``): the encoder does not run during training at all.

Only the aggregation and backend train (``MLSVModel.trained_part``): they are what the optimiser, the
checkpoints and the weight average hold; the encoder stays outside, on the device, in eval mode.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsv.config import AugmentConfig, DataConfig, to_dict
from mlsv.data.audio import AudioError
from mlsv.data.augment import Augmenter
from mlsv.data.batching import pack_batches
from mlsv.data.feature_cache import FeatureCacheWriter, cache_matches
from mlsv.data.loader import context_length, crop_starts, read_crop
from mlsv.models import MLSVModel
from mlsv.models.loading import weights_fingerprint

log = logging.getLogger("mlsv.train")


def cut_crops(states: torch.Tensor, frames: torch.Tensor, positions: torch.Tensor, crop_frames: int) -> torch.Tensor:
    """Crops of ``crop_frames`` frames from contexts' states (L, B, T, D) with ``frames`` (B,) valid frames, at
    ``positions`` (B, k) (``crop_starts``) -> (L, B * k, crop_frames, D), context by context. Indexing only:
    nothing waits for the device."""
    starts = crop_starts(positions, frames, crop_frames)  # (B, k)
    index = starts[..., None] + torch.arange(crop_frames, device=states.device)  # (B, k, n)
    batch = torch.arange(states.shape[1], device=states.device)[:, None, None]
    return states[:, batch, index].flatten(1, 2)


def with_trained(full: MLSVModel, trained: torch.nn.Module) -> MLSVModel:
    """``full`` with the aggregation and backend of ``trained`` (a ``PooledEmbedder``, e.g. the weight
    average's copy): a shallow copy sharing the encoder. An ``MLSVModel`` is returned as it is."""
    if isinstance(trained, MLSVModel):
        return trained
    model = copy.copy(full)
    model._modules = {**full._modules, "aggregation": trained.aggregation, "backend": trained.backend}
    return model


def load_trained(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Loads a checkpoint's model weights: the whole model's, or only the trained part's (a frozen encoder's
    stage), whose keys are the model's own; anything else missing or unexpected is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = [k for k in missing if k.startswith("frontend.") or k == "cohort_embeddings"]
    if unexpected or len(frozen) != len(missing) or (missing and any(k.startswith("frontend.") for k in state)):
        raise RuntimeError(
            f"checkpoint weights do not fit the model: missing {sorted(set(missing) - set(frozen))[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


# -- the feature cache --------------------------------------------------------------------------------------


def _manifest_digest(rows) -> str:
    h = hashlib.sha1()
    for row in rows:
        fields = [str(row["id"]), str(row["path"]), float(row["duration"]), int(row["sample_rate"])]
        h.update(json.dumps(fields).encode())
    return h.hexdigest()


def cache_key(frontend, rows, data: DataConfig, augment: AugmentConfig | None, seed: int) -> dict[str, Any]:
    """What a cache's states depend on: the encoder's weights, the rows, the context settings, the
    augmentation of its copies and the seed (JSON values, compared as stored)."""
    key = {
        "encoder": weights_fingerprint(frontend),
        "layers": list(frontend.layers or []),
        "normalize_input": bool(frontend.normalize_input),
        "rows": _manifest_digest(rows),
        "sample_rate": data.sample_rate,
        "crop_seconds": data.crop_seconds,
        "context_seconds": data.context_seconds,
        "speed_factors": sorted({float(f) for f in data.speed_factors} or {1.0}),
        "copies": data.feature_copies,
        "augment": _augment_key(augment),
        "seed": seed,
    }
    return json.loads(json.dumps(key))


def _augment_key(augment: AugmentConfig | None) -> dict | None:
    if augment is None or augment.probability == 0 or not augment.kinds:
        return None
    return to_dict(augment)


def build_feature_cache(
    frontend,
    rows,
    data: DataConfig,
    augment: AugmentConfig | None,
    *,
    seed: int,
    device: torch.device,
    folder: str | Path,
) -> bool:
    """Computes the cache in ``folder`` unless it already holds one of the same key; returns whether it built.

    Every (utterance, distinct speed factor, copy) gets a context drawn as the live path draws one (the
    utterance speed-perturbed, up to ``data.context_seconds``, a random window of a longer one, augmented
    with ``augment`` on the CPU), from a generator seeded by (seed, utterance, factor, copy); contexts are
    encoded in length-sorted batches of up to ``data.eval_batch_seconds`` of audio, in float32, and stored
    as float16. An utterance that fails to decode is recorded and skipped by training.
    """
    key = cache_key(frontend, rows, data, augment, seed)
    if cache_matches(folder, key):
        log.info("feature cache %s is up to date", folder)
        return False
    factors = key["speed_factors"]
    sr, crop = data.sample_rate, int(round(data.crop_seconds * data.sample_rate))
    context = int(round(data.context_seconds * sr))
    augmenter = Augmenter.from_config(augment) if key["augment"] is not None else None
    items = []  # (row index, factor index, copy, samples)
    for i in range(len(rows)):
        row = rows[i]
        total = int(round(float(row["duration"]) * int(row["sample_rate"])))
        for f, factor in enumerate(factors):
            samples = context_length(total, int(row["sample_rate"]), factor, sr, crop, context)
            items += [(i, f, c, samples) for c in range(data.feature_copies)]
    planned = sum(int(frontend.frame_lengths(s)) for *_, s in items)
    writer = FeatureCacheWriter(
        folder,
        key,
        frames=planned,
        frame_shape=(frontend.num_states, frontend.hidden_size),
        crop_frames=int(frontend.frame_lengths(crop)),
        copies=data.feature_copies,
    )
    seconds = sum(s for *_, s in items) / sr
    log.info("feature cache: encoding %d contexts (%.0f s of audio) into %s", len(items), seconds, folder)
    frontend.eval()
    for batch in pack_batches([s for *_, s in items], data.eval_batch_seconds * sr):
        waves, done = [], []
        for j in batch:
            i, f, c, samples = items[j]
            row = rows[i]
            rng = np.random.default_rng([seed, 7919, i, f, c])
            rate = int(row["sample_rate"])
            try:
                x = read_crop(
                    row["audio"] if row.get("audio") else row["path"],
                    int(round(float(row["duration"]) * rate)),
                    rate,
                    samples,
                    sr,
                    rng,
                    factors[f],
                )
            except AudioError as e:
                log.warning("feature cache: skipping undecodable file: %s", e)
                writer.fail(str(row["id"]), str(e))
                continue
            if augmenter is not None:
                x = augmenter(x, sr, rng)
            waves.append(np.asarray(x, dtype=np.float32))
            done.append(items[j])
        if not waves:
            continue
        lengths = torch.tensor([len(x) for x in waves], device=device)
        padded = torch.zeros(len(waves), int(lengths.max()), device=device)
        for b, x in enumerate(waves):
            padded[b, : len(x)] = torch.from_numpy(x)
        with torch.no_grad():
            states, frames = frontend(padded, lengths)
        states = states.to(torch.float16).permute(1, 2, 0, 3).cpu().numpy()  # (B, T, L, D)
        for b, (i, f, c, _) in enumerate(done):
            writer.put(str(rows[i]["id"]), factors[f], c, states[b, : int(frames[b])])
    writer.close()
    return True
