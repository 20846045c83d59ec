"""Embedding during training: the validation EER after an epoch, the training mean of the final model,
and the check, before training, that the validation trials fit the validation manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mlsv.data.loader import build_eval_loader
from mlsv.data.manifest import iter_rows, sample_manifest
from mlsv.data.sources import is_source
from mlsv.data.trials import read_trials
from mlsv.extras import needs_extra
from mlsv.models.loading import min_samples
from mlsv.scoring.backend import cosine_scores
from mlsv.scoring.embeddings import EmbeddingTable, pool_rows
from mlsv.scoring.extract import extract_embeddings
from mlsv.scoring.metrics import eer

log = logging.getLogger("mlsv.train")


def _embed_manifest(model, manifest: str, acc, data):
    """Embeds a manifest split across processes; every process gets the whole table back. Undecodable
    files and files too short for the encoder are skipped and logged, as in training (a trial that
    names one is then left out); with ``data.strict`` they stop the run, naming the file."""
    with needs_extra("train", "training"):
        from accelerate.utils import gather_object

    loader = build_eval_loader(
        manifest,
        batch_seconds=data.eval_batch_seconds,
        chunk_seconds=data.eval_chunk_seconds,
        sample_rate=data.sample_rate,
        process_index=acc.process_index,
        num_processes=acc.num_processes,
        skip_bad=not data.strict,
        min_samples=min_samples(model.config),
    )
    table = extract_embeddings(model, loader, device=acc.device)
    parts = (
        gather_object([(table.ids.tolist(), table.embeddings, table.durations, table.snr)])
        if acc.num_processes > 1
        else [(table.ids.tolist(), table.embeddings, table.durations, table.snr)]
    )
    return merge_parts(parts)


def merge_parts(parts: list[tuple]):
    """Per-process (ids, embeddings, durations[, snr]) -> one table. An utterance cut into chunks may have been
    embedded in parts by several processes (evaluation batches are dealt by chunk): its rows become their
    duration-weighted mean (the weights the embedder uses within a process) with the summed duration, and
    the duration-weighted SNR (unknown where a part has none)."""

    ids = [u for p in parts for u in p[0]]
    if not ids:
        return EmbeddingTable(np.array([], dtype=str), np.zeros((0, 0), np.float32), np.zeros(0, np.float32))
    emb = np.concatenate([p[1] for p in parts if len(p[0])])
    dur = np.concatenate([p[2] for p in parts if len(p[0])])
    snr = np.concatenate([p[3] if len(p) > 3 else np.full(len(p[0]), np.nan) for p in parts if len(p[0])])
    if len(set(ids)) < len(ids):
        return pool_rows(ids, emb, dur, snr)
    return EmbeddingTable(np.array(ids), emb, np.asarray(dur, np.float32), snr=snr)


def _subset_manifest(manifest: str, limit: int, out: Path, acc, seed: int = 0) -> str:
    """A seeded random subset of at most ``limit`` rows (``sample_manifest``), written by the main process
    while the others wait; every process gets its path."""
    with needs_extra("train", "training"):
        from accelerate.utils import broadcast_object_list

    chosen = [str(sample_manifest(manifest, limit, out, seed)) if acc.is_main_process else None]
    if acc.num_processes > 1:
        broadcast_object_list(chosen)
    acc.wait_for_everyone()
    return chosen[0]


def _check_trial_ids(trials, listed: set[str], manifest: str, trials_path: str) -> None:
    """Raises KeyError when trials name ids that ``manifest`` does not list (another corpus's trial list)."""
    unknown = list(dict.fromkeys(u for u in [*trials.enroll, *trials.test] if u not in listed))
    if unknown:
        raise KeyError(
            f"data.validation_trials {trials_path}: {len(unknown)} ids are not in data.validation_manifest "
            f"{manifest}, e.g. {', '.join(map(str, unknown[:5]))}: give the trial list made for that "
            "manifest"
        )


def check_validation_trials(manifest: str, trials_path: str) -> None:
    """Before training: the validation trial list reads and names only utterances of the validation manifest
    (checked again after each epoch's embedding, which would otherwise find out after the first epoch)."""

    if not is_source(manifest) and not Path(manifest).is_file() and not Path(manifest).is_dir():
        raise FileNotFoundError(f"data.validation_manifest: {manifest} not found")
    _check_trial_ids(
        read_trials(trials_path), {str(row["id"]) for _, row in iter_rows(manifest)}, manifest, trials_path
    )


def validation_eer(model, manifest: str, trials_path: str, acc, data) -> float:
    """EER (%) of mean-subtracted cosine scores on the validation trials (never a test list)."""

    table = _embed_manifest(model, manifest, acc, data)
    trials = read_trials(trials_path)
    known = set(table.ids.tolist())
    keep = np.array([e in known and t in known for e, t in zip(trials.enroll, trials.test)], dtype=bool)
    if not keep.all():  # their files failed to decode or were too short (skipped above), or are not listed
        _check_trial_ids(trials, {str(row["id"]) for _, row in iter_rows(manifest)}, manifest, trials_path)
        log.warning("validation: %d of %d trials name a skipped file and are left out", (~keep).sum(), len(keep))
    x = table.embeddings - table.embeddings.mean(0, keepdims=True)
    scores = cosine_scores(x[table.lookup(trials.enroll[keep])], x[table.lookup(trials.test[keep])])
    return float(eer(scores, trials.labels[keep])[0])


def training_mean(model, manifest: str, acc, data, limit: int, output_dir: Path) -> list[float]:
    """Mean embedding of up to ``limit`` training utterances (full length, eval mode; 0: all)."""
    if limit:
        manifest = _subset_manifest(manifest, limit, output_dir / "mean_utterances.jsonl", acc)
    table = _embed_manifest(model, manifest, acc, data)
    if not len(table):
        return [0.0] * model.config.embedding_size
    mean = table.embeddings.mean(0)
    if not np.isfinite(mean).all():
        bad = table.ids[~np.isfinite(table.embeddings).all(1)].tolist()
        raise ValueError(f"the model gives non-finite embeddings (has training diverged?), e.g. for {bad[:5]}")
    return [float(v) for v in mean]
