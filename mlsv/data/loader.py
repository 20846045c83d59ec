"""The training crop stream and the evaluation utterance stream.

Training: random fixed-length crops that read only the samples they need (soundfile seeks), short files
wrap-padded, speed perturbation as new speakers (``speed_perturb_classes``/``label_offset`` are the only
places that know about it), optional CPU augmentation in the workers, a different shuffle every epoch and a
disjoint share per process. Every crop's random draws are seeded by (seed, epoch, process, its place in the
share), so the stream does not depend on the number of loader workers, and a resumed epoch starts at its next
batch without decoding the ones before it. A streaming manifest repeats (a new shuffle each pass), so the loop
bounds its epochs by steps.

Evaluation: whole utterances (optionally cut into overlapping windows of the chunk length, ``chunk_spans``:
the one rule the verification API uses too) in length-sorted, zero-padded batches bounded by a total number of
seconds, dealt round-robin to processes.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from mlsv.config import AugmentConfig, DataConfig
from mlsv.data.audio import (
    SILENCE_PEAK,
    AudioError,
    MissingDependencyError,
    read_audio,
    resample,
    silent_audio_message,
)
from mlsv.data.augment import Augmenter
from mlsv.data.batching import chunk_shares, chunk_spans, pack_batches
from mlsv.data.feature_cache import FeatureCache
from mlsv.data.manifest import load_manifest

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# speed perturbation as new speakers (docs/method.md#speed-perturbation-as-new-speakers), with a deterministic
# factor order


def _factor_order(factors: Sequence[float]) -> list[float]:
    unique = sorted({float(f) for f in factors})
    if 1.0 in unique:
        unique.remove(1.0)
        return [1.0, *unique]
    return unique


def speed_perturb_classes(n_speakers: int, factors: Sequence[float]) -> int:
    """Number of classes when every distinct speed factor makes new speakers.

    ``[1.0, 1.0, 1.0, 0.9, 1.1]`` (duplicates are sampling weights) gives ``3 * n_speakers``.
    """
    return n_speakers * max(len(_factor_order(factors)), 1)


def label_offset(factor: float, factors: Sequence[float]) -> int:
    """Index of ``factor`` among the distinct factors ordered [1.0, then the others ascending].

    A crop of speaker label y at this factor gets label ``y + n_speakers * label_offset(factor, factors)``.
    """
    order = _factor_order(factors)
    try:
        return order.index(float(factor))
    except ValueError:
        raise ValueError(f"speed factor {factor} is not among {order}") from None


# ----------------------------------------------------------------------------------------------
# crops

#: Rows in the shuffle buffer of a streaming training manifest (``datasets.IterableDataset.shuffle``).
STREAM_SHUFFLE_BUFFER = 10_000


def read_crop(
    source: str | bytes,
    total_frames: int,
    file_rate: int,
    crop_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
    factor: float = 1.0,
) -> np.ndarray:
    """A random crop of ``crop_samples`` at ``sample_rate``, reading only the samples it needs.

    Speed factor f reads ``crop_samples * f`` samples (file rate adjusted) and resamples them to
    ``crop_samples`` (f > 1 faster and higher, f < 1 slower and lower). Files shorter than that are
    read whole and wrap-padded (the signal repeats).

    Returns:
        (crop_samples,) float32.
    """
    need = int(math.ceil(crop_samples * factor * file_rate / sample_rate))
    if total_frames > need:
        x, _ = read_audio(source, int(rng.integers(0, total_frames - need + 1)), need, expected_sr=file_rate)
    else:
        x, _ = read_audio(source, expected_sr=file_rate)
    if len(x) == 0:
        raise AudioError(f"{source if isinstance(source, str) else '<bytes>'}: no samples read")
    if factor != 1.0 or file_rate != sample_rate:
        x = resample(x, file_rate * factor, sample_rate)
    if len(x) < crop_samples:
        x = np.pad(x, (0, crop_samples - len(x)), mode="wrap")
    return x[:crop_samples]


def _source(row: dict[str, Any]) -> str | bytes:
    return row["audio"] if row.get("audio") else row["path"]


class TrainCrops(IterableDataset):
    """Yields (crop (S,) float32, label, names of files that failed since the last item).

    Map-style manifests: every epoch a permutation seeded by (seed, epoch) is dealt to processes
    (``perm[process_index::num_processes]``, cut to equal lengths) and cut into whole batches, which are
    dealt round-robin to the loader workers (the order the DataLoader collects them in). The crop at
    place k of the share draws (speed factor, offset, augmentation) from its own generator, seeded by
    (seed, epoch, process, k): the stream is the same for any number of workers, and ``start_batch``
    starts the epoch at a later batch without reading or decoding the earlier ones (a resumed run). A
    file that fails to decode is counted, logged and its slot refilled with another utterance of the
    share, drawn by the same generator, so every process yields the same number of crops (``strict``
    raises instead).
    Streaming manifests (``datasets.IterableDataset``, already split per process): workers take whole
    shards (``datasets``' rule), each with a generator seeded by (seed, epoch, process, worker); a
    failing file is skipped. The stream repeats: pass p of epoch e is shuffled with a buffer (``seed``)
    and ``set_epoch(stream_epoch(e, p))``, so runs are reproducible, a resumed run sees the same data
    and a process whose share is short never runs dry (the training loop bounds a streaming epoch by
    steps; with several processes a dry one would leave the others waiting in their all-reduce). A pass
    that yields no crop at all raises rather than looping for ever. A stream cannot skip without
    reading: ``TrainLoader`` reads a streaming epoch's first ``start_batch`` batches and drops them.
    """

    def __init__(
        self,
        rows,
        labels: dict[str, int],
        data_cfg: DataConfig,
        augmenter=None,
        *,
        epoch: int = 0,
        seed: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        batch_size: int = 1,
        start_batch: int = 0,
    ):
        super().__init__()
        self.rows, self.labels, self.cfg, self.augmenter = rows, labels, data_cfg, augmenter
        self.batch_size, self.start_batch = batch_size, start_batch
        self.epoch, self.seed = epoch, seed
        self.process_index, self.num_processes = process_index, num_processes
        self.crop_samples = int(round(data_cfg.crop_seconds * data_cfg.sample_rate))
        # context crops: each item is a context of up to this many samples, and crops_per_context positions
        self.context_samples = int(round(data_cfg.context_seconds * data_cfg.sample_rate))
        self.crops_per_context = data_cfg.crops_per_context if self.context_samples else 1
        self.factors = [float(f) for f in data_cfg.speed_factors] or [1.0]
        self.streaming = not hasattr(rows, "__len__")
        if not self.streaming:
            unknown = sorted({str(s) for s in rows["speaker"]} - set(labels))
            if unknown:
                raise KeyError(f"speaker(s) {unknown[:5]} of the manifest are missing from the label map")

    def _share(self) -> np.ndarray:
        n = len(self.rows)
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        per_process = n // self.num_processes
        return perm[self.process_index :: self.num_processes][:per_process]

    def num_batches(self) -> int:
        """Whole batches in this process's share of an epoch (map-style only; a partial last batch is
        dropped, never decoded)."""
        return len(self.rows) // self.num_processes // self.batch_size

    def worker_batches(self, worker_id: int, num_workers: int) -> range:
        """The epoch's batches (numbered from 0) worker ``worker_id`` reads: from ``start_batch`` on,
        round-robin."""
        return range(self.start_batch + worker_id, self.num_batches(), num_workers)

    def worker_items(self, worker_id: int, num_workers: int) -> np.ndarray:
        """Row indices of the first choice of each crop worker ``worker_id`` reads (map-style only)."""
        share, b = self._share(), self.batch_size
        places = [np.arange(k * b, (k + 1) * b) for k in self.worker_batches(worker_id, num_workers)]
        return share[np.concatenate(places)] if places else share[:0]

    def _crop(self, row: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, int, np.ndarray | None]:
        """(waveform, label, crop positions or None): a crop of ``crop_seconds``; with context crops the
        context (the utterance, speed-perturbed, up to ``context_seconds``; at least a crop, wrap-padded) and
        where its crops start, as fractions in [0, 1) of the room the context leaves (``crop_starts``)."""
        factor = float(self.factors[int(rng.integers(len(self.factors)))])
        rate = int(row["sample_rate"])
        total = int(round(float(row["duration"]) * rate))
        samples = self.crop_samples
        if self.context_samples:
            samples = context_length(total, rate, factor, self.cfg.sample_rate, self.crop_samples, self.context_samples)
        x = read_crop(_source(row), total, rate, samples, self.cfg.sample_rate, rng, factor)
        if self.augmenter is not None:
            x = self.augmenter(x, self.cfg.sample_rate, rng)
        positions = rng.random(self.crops_per_context) if self.context_samples else None
        label = self.labels[str(row["speaker"])] + len(self.labels) * label_offset(factor, self.factors)
        return np.asarray(x, dtype=np.float32), label, positions

    def _failed(self, row: dict[str, Any], error: AudioError, bad: list[str]) -> None:
        if self.cfg.strict or isinstance(error, MissingDependencyError):  # a missing decoder fails every file
            raise error
        logger.warning("skipping undecodable training file: %s", error)
        bad.append(str(row.get("path") or row.get("id")))

    def __iter__(self) -> Iterator[tuple[np.ndarray, int, np.ndarray | None, list[str]]]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.streaming:
            rng = np.random.default_rng([self.seed, self.epoch, self.process_index, worker_id])
            yield from self._stream(rng, worker_id, num_workers)
            return
        share = self._share()
        bad: list[str] = []
        failed: set[int] = set()  # only to notice a share that fails throughout: every failure is decoded
        for k in self.worker_batches(worker_id, num_workers):
            for place in range(k * self.batch_size, (k + 1) * self.batch_size):
                rng = np.random.default_rng([self.seed, self.epoch, self.process_index, place])
                index = int(share[place])
                while True:
                    row = self.rows[index]
                    try:
                        item = self._crop(row, rng)
                        break
                    except AudioError as e:
                        self._failed(row, e, bad)
                        failed.add(index)
                        if len(failed) >= len(share):
                            raise AudioError(f"every file of this process's share failed to decode; last: {e}") from e
                        index = int(share[rng.integers(len(share))])  # a known bad file again is decoded again
                yield (*item, bad)
                bad = []

    def _stream(
        self, rng: np.random.Generator, worker_id: int, num_workers: int
    ) -> Iterator[tuple[np.ndarray, int, np.ndarray | None, list[str]]]:
        """Pass after pass over this worker's rows (streaming), each with its own deterministic shuffle."""
        bad: list[str] = []
        for pass_index in itertools.count():
            # a new dataset object each pass: set_epoch writes to memory datasets shares with the other
            # loader workers, and self.rows stays as it was (a second iteration starts over)
            rows = self.rows.shuffle(seed=self.seed, buffer_size=STREAM_SHUFFLE_BUFFER)
            rows.set_epoch(stream_epoch(self.epoch, pass_index))
            read, crops, error = 0, 0, None
            for row in rows:
                read += 1
                try:
                    item = self._crop(row, rng)
                except AudioError as e:
                    self._failed(row, e, bad)
                    error = e
                    continue
                crops += 1
                yield (*item, bad)
                bad = []
            if crops == 0:
                where = f"process {self.process_index}"
                if num_workers > 1:
                    where += f", loader worker {worker_id}"
                if read == 0:
                    raise ValueError(
                        f"the training stream of {where} holds no rows (each loader worker reads "
                        "whole shards, and each process its own share: lower data.num_workers, "
                        "or write the shards with fewer rows each so that every worker gets some)"
                    )
                raise AudioError(
                    f"every file of the training stream of {where} failed to decode ({read} rows); last: {error}"
                ) from error


class CachedCrops(TrainCrops):
    """``TrainCrops`` read from a feature cache (``data.feature_cache``): each item is the crops (k, n, L, D)
    float16 of a cached context, with the crop positions; the same shares, batches, seeds and labels. A
    place draws its speed factor and crop positions as the live path does, then one of the cached copies."""

    def __init__(self, rows, labels: dict[str, int], data_cfg: DataConfig, augmenter=None, **kwargs: Any):
        super().__init__(rows, labels, data_cfg, None, **kwargs)  # the cache holds the augmented copies
        if self.streaming:
            raise ValueError("data.feature_cache needs a map-style manifest (data.streaming=false)")
        self.cache = FeatureCache(data_cfg.feature_cache)

    def _crop(self, row: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, int, np.ndarray | None]:
        factor = float(self.factors[int(rng.integers(len(self.factors)))])
        positions = rng.random(self.crops_per_context)
        copy = int(rng.integers(self.cache.copies)) if self.cache.copies > 1 else 0
        crops = self.cache.crops(str(row["id"]), factor, copy, positions)
        label = self.labels[str(row["speaker"])] + len(self.labels) * label_offset(factor, self.factors)
        return crops, label, positions


def stream_epoch(epoch: int, pass_index: int) -> int:
    """The ``datasets`` epoch (``IterableDataset.set_epoch``) of pass ``pass_index`` over a streaming
    manifest in training epoch ``epoch``: the first pass uses the epoch itself, later passes values that
    no other (epoch, pass) of a run below 2**20 epochs gets, so every pass is shuffled differently."""
    return epoch + pass_index * 2**20


def _collate_train(items: list[tuple[np.ndarray, int, np.ndarray | None, list[str]]]) -> dict[str, Any]:
    """Fixed crops -> ``{"waveforms" (B, S), "labels" (B,)}``. Contexts (with crop positions) -> also
    ``"lengths"`` (B',) of the zero-padded ``"waveforms"`` (B', S_max) and ``"positions"`` (B', k); the
    labels are per crop (B' * k,), each context's label repeated k times. Cached states (``CachedCrops``:
    (k, n, L, D) float16 per item) -> ``"states"`` (B', k, n, L, D) and the labels per crop."""
    names = [name for *_, more in items for name in more]
    labels = torch.tensor([y for _, y, _, _ in items], dtype=torch.long)
    xs = [x for x, _, _, _ in items]
    if items[0][2] is None:
        return {"waveforms": torch.from_numpy(np.stack(xs)), "labels": labels, "bad_files": names}
    positions = torch.from_numpy(np.stack([p for _, _, p, _ in items]).astype(np.float32))
    labels = labels.repeat_interleave(positions.shape[1])
    if xs[0].ndim == 4:
        return {"states": torch.from_numpy(np.stack(xs)), "labels": labels, "bad_files": names}
    lengths = torch.tensor([len(x) for x in xs], dtype=torch.long)
    waveforms = torch.zeros(len(xs), int(lengths.max()))
    for i, x in enumerate(xs):
        waveforms[i, : len(x)] = torch.from_numpy(x)
    return {"waveforms": waveforms, "lengths": lengths, "positions": positions, "labels": labels, "bad_files": names}


def context_length(total: int, rate: int, factor: float, sample_rate: int, crop_samples: int, context_samples: int):
    """Samples of a training context: the utterance of ``total`` samples at ``rate``, speed-perturbed by
    ``factor`` and resampled to ``sample_rate``, cut to ``context_samples``, and at least ``crop_samples``
    (``read_crop`` wrap-pads a shorter one)."""
    available = int(total * sample_rate / (rate * factor))
    return min(context_samples, max(available, crop_samples))


def crop_starts(positions: torch.Tensor, frames: torch.Tensor, crop_frames: int) -> torch.Tensor:
    """First frames of the crops: ``positions`` (B, k) in [0, 1) spread over the room of contexts of
    ``frames`` (B,) valid frames, ``floor(p * (frames - crop_frames + 1))``; a context shorter than a crop
    starts at 0. Tensor arithmetic only: nothing waits for the device."""
    room = (frames - crop_frames + 1).clamp_min(1).to(positions.dtype)
    return torch.minimum((positions * room[:, None]).long(), (room.long() - 1)[:, None])


def unwrap_worker_error(e: BaseException) -> BaseException:
    """An exception re-raised by a DataLoader from one of its workers carries the worker's whole traceback in
    its message ("Caught AudioError in DataLoader worker process 0. Original Traceback ..."): the same
    exception type with the original message, or ``e`` itself when it is not such an exception."""
    text = str(e.args[0]) if e.args else ""
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return e
    kind = type(e)
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        at = text.rfind("\n" + prefix)
        if at >= 0:
            message = text[at + 1 + len(prefix) :].rstrip("\n")
            if kind is KeyError and message[:1] in "'\"":
                with contextlib.suppress(ValueError, SyntaxError):
                    message = ast.literal_eval(message)
            try:
                return kind(message)
            except Exception:  # a type that needs other arguments: keep torch's message
                return e
    return e


class TrainLoader(DataLoader):
    """A DataLoader of ``{"waveforms": (B, S) float32, "labels": (B,) int64}`` batches.

    ``bad_files`` lists the files skipped so far, each once (``num_bad_files`` counts them);
    ``len()`` is the exact number of batches of a map-style epoch from ``start_batch`` on. A streaming
    one has no length and never ends.
    """

    def __init__(self, dataset: TrainCrops, **kwargs: Any):
        super().__init__(dataset, collate_fn=_collate_train, drop_last=True, **kwargs)
        self.bad_files: list[str] = []
        self._bad: set[str] = set()

    def note_bad_files(self, names: Sequence[str]) -> None:
        """Adds files to ``bad_files`` unless listed already (a resumed epoch's files before its start)."""
        for name in names:
            if name not in self._bad:
                self._bad.add(name)
                self.bad_files.append(name)

    @property
    def num_bad_files(self) -> int:
        return len(self.bad_files)

    def __len__(self) -> int:
        ds: TrainCrops = self.dataset  # type: ignore[assignment]
        if ds.streaming:
            raise TypeError("a streaming training loader has no length; bound the epoch by steps")
        return max(ds.num_batches() - ds.start_batch, 0)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        ds: TrainCrops = self.dataset  # type: ignore[assignment]
        batches = super().__iter__()
        try:
            if ds.streaming and ds.start_batch:  # a stream cannot skip without reading (nor count those files)
                for _ in itertools.islice(batches, ds.start_batch):
                    pass
            for batch in batches:
                self.note_bad_files(batch.pop("bad_files"))
                yield batch
        except Exception as e:  # a worker's error (data.strict, a share that fails throughout): its own message
            clean = unwrap_worker_error(e)
            if clean is e:
                raise
            raise clean from None


def build_train_loader(
    manifest_path: str | Path,
    data_cfg: DataConfig,
    augment_cfg: AugmentConfig | None,
    *,
    labels: dict[str, int],
    epoch: int,
    seed: int,
    process_index: int = 0,
    num_processes: int = 1,
    start_batch: int = 0,
) -> TrainLoader:
    """The training stream of one process for one epoch.

    Args:
        manifest_path: JSONL/parquet manifest or a folder of parquet shards.
        data_cfg: crop length, rate, per-step global batch, workers, speed factors, streaming, strict.
            ``max_utterances`` keeps a random subset of the manifest's rows, drawn with ``seed`` (the
            same rows in every epoch and process); with ``streaming`` each process keeps instead the
            first ``max_utterances // num_processes`` rows of its share, in shard order (the same rows
            every pass: a stream cannot be sampled without reading it through).
        augment_cfg: CPU augmentation in the workers when ``where == "cpu"`` and ``probability > 0``;
            with ``where == "device"`` the crops come out clean and the training loop applies
            ``BatchAugmenter``. None: no augmentation.
        labels: speaker -> index (``speaker_labels``); speed perturbation adds ``len(labels)`` per factor.
        epoch, seed: the shuffle and every random draw derive from (seed, epoch, process, place in the
            share); streaming: (seed, epoch, process, loader worker).
        process_index, num_processes: this process's disjoint share (accelerate's numbering).
        start_batch: the epoch's first batch (a resumed epoch); map-style, the ones before it are
            neither read nor decoded.

    Returns:
        ``TrainLoader`` yielding ``{"waveforms": (B, S), "labels": (B,)}`` with
        B = data_cfg.batch_size // num_processes and S = round(crop_seconds * sample_rate). A
        streaming loader never ends (its manifest repeats, shuffled anew each pass): bound the epoch by
        steps.
    """

    batch = data_cfg.batch_size // num_processes
    if batch < 1:
        raise ValueError(f"data.batch_size {data_cfg.batch_size} is smaller than the {num_processes} processes")
    if data_cfg.context_seconds > 0:  # a batch of whole contexts
        if batch % data_cfg.crops_per_context:
            raise ValueError(
                f"data.batch_size {data_cfg.batch_size} gives each of the {num_processes} processes {batch} "
                f"crops, not a multiple of data.crops_per_context {data_cfg.crops_per_context}"
            )
        batch //= data_cfg.crops_per_context
    if data_cfg.streaming:  # TrainCrops shuffles it, pass after pass
        rows = load_manifest(manifest_path, streaming=True, process_index=process_index, num_processes=num_processes)
        if data_cfg.max_utterances:  # a stream cannot be sampled without reading it: its first rows
            rows = rows.take(data_cfg.max_utterances // num_processes)
    else:
        rows = load_manifest(manifest_path)
        if data_cfg.max_utterances and data_cfg.max_utterances < len(rows):
            rows = rows.select(utterance_subset(len(rows), data_cfg.max_utterances, seed))
    augmenter = None
    if augment_cfg is not None and augment_cfg.where == "cpu" and augment_cfg.probability > 0 and augment_cfg.kinds:
        augmenter = Augmenter.from_config(augment_cfg)
    elif augment_cfg is not None and augment_cfg.where not in ("cpu", "device"):
        raise ValueError(f"augment.where must be 'cpu' or 'device', got {augment_cfg.where!r}")
    dataset = (CachedCrops if data_cfg.feature_cache else TrainCrops)(
        rows,
        labels,
        data_cfg,
        augmenter,
        epoch=epoch,
        seed=seed,
        process_index=process_index,
        num_processes=num_processes,
        batch_size=batch,
        start_batch=start_batch,
    )
    workers = data_cfg.num_workers
    if data_cfg.streaming:
        workers = min(workers, rows.num_shards)  # datasets gives each worker whole shards
    # a private generator: creating the iterator must not draw from torch's global RNG, or a resumed run's
    # dropout masks would drift from an uninterrupted run's (the data order is seeded in TrainCrops)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return TrainLoader(
        dataset, batch_size=batch, num_workers=workers, pin_memory=torch.cuda.is_available(), generator=generator
    )


def utterance_subset(n_rows: int, size: int, seed: int) -> np.ndarray:
    """Row indices of ``data.max_utterances``: ``size`` of ``n_rows`` drawn at random (seeded by ``seed``
    alone, so every epoch and process keeps the same rows), in manifest order. Prepared manifests are
    sorted by speaker, so their first rows would hold only a few speakers."""
    # its own spawn key: a stream independent of the per-epoch shuffles (seeded by [seed, epoch])
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return np.sort(rng.choice(n_rows, size=min(size, n_rows), replace=False))


# ----------------------------------------------------------------------------------------------
# evaluation


class EvalBatches(Dataset):
    """Planned evaluation batches over ``rows``; item i decodes batch i into padded tensors."""

    def __init__(
        self,
        rows,
        batches: list[list[tuple[str, int, int, float, int, int]]],
        sample_rate: int,
        skip_bad: bool = False,
        min_samples: int = 0,
    ):
        self.rows, self.batches, self.sample_rate, self.skip_bad = rows, batches, sample_rate, skip_bad
        self.min_samples = min_samples

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        items, waves, bad, why = [], [], [], []
        for item in self.batches[i]:
            _, chunk, index, _, start, frames = item
            row = self.rows[index]
            try:
                wave = read_audio(
                    _source(row), start, frames, target_sr=self.sample_rate, expected_sr=int(row["sample_rate"])
                )[0]
                if start == 0 and frames == int(round(float(row["duration"]) * int(row["sample_rate"]))):
                    # a whole file (the evaluation pipeline judges chunked ones over all their chunks)
                    peak = float(np.abs(wave).max()) if len(wave) else 0.0
                    if peak < SILENCE_PEAK:
                        name = (
                            f"{row['path']} (manifest id {row['id']})"
                            if row.get("path")
                            else f"manifest id {row['id']}"
                        )
                        raise AudioError(silent_audio_message(name, peak))
                if len(wave) < self.min_samples:
                    raise AudioError(
                        f"{row.get('path') or row.get('id')}: too short"
                        f"{f' (chunk {chunk})' if chunk else ''}: {len(wave)} samples, the encoder "
                        f"needs at least {self.min_samples} ({self.min_samples / self.sample_rate * 1000:.1f} ms)"
                    )
                waves.append(wave)
                items.append(item)
            except AudioError as e:  # reported by EvalLoader in the main process, not as a worker traceback
                if not self.skip_bad or isinstance(e, MissingDependencyError):  # not a bad file: never skipped
                    return {"error": str(e)}
                bad.append(str(row.get("path") or row.get("id")))
                why.append(str(e))
        if not items:
            return {"ids": [], "bad_files": bad, "bad_reasons": why}
        longest = max(len(w) for w in waves)
        out = torch.zeros(len(waves), longest)
        mask = torch.zeros(len(waves), longest, dtype=torch.long)
        for j, w in enumerate(waves):
            out[j, : len(w)] = torch.from_numpy(w)
            mask[j, : len(w)] = 1
        return {
            "waveforms": out,
            "attention_mask": mask,
            "ids": [uid for uid, *_ in items],
            "chunks": torch.tensor([c for _, c, *_ in items], dtype=torch.long),
            # the seconds each row counts towards its utterance (all of its own unless windows overlap)
            "durations": torch.tensor(
                [len(w) / self.sample_rate * item[3] for w, item in zip(waves, items)], dtype=torch.float32
            ),
            "bad_files": bad,
            "bad_reasons": why,
        }


class EvalLoader(DataLoader):
    """``EvalBatches`` through a DataLoader: an undecodable file stops it with an ``AudioError`` naming the
    file, raised here rather than as a worker's traceback; with ``skip_bad`` such files are left out
    instead, listed in ``bad_files`` and logged with the reasons. Batches come without these lists."""

    def __init__(self, dataset: EvalBatches, **kwargs: Any):
        super().__init__(dataset, batch_size=None, shuffle=False, **kwargs)
        self.bad_files: list[str] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in super().__iter__():
            if "error" in batch:
                raise AudioError(batch["error"])
            bad, why = batch.pop("bad_files"), batch.pop("bad_reasons")
            if bad:
                logger.warning("skipping %d files: %s", len(bad), "; ".join(why))
                self.bad_files.extend(bad)
            if batch["ids"]:
                yield batch


def plan_eval_batches(
    ids: Sequence[str],
    durations: Sequence[float],
    *,
    batch_seconds: float,
    chunk_seconds: float = 0.0,
    sample_rates: Sequence[int] | None = None,
):
    """Length-sorted (longest first) batches whose padded size stays within ``batch_seconds``.

    Chunking: an utterance longer than ``chunk_seconds`` (> 0) is cut into overlapping windows of that
    length (``chunk_spans``); each keeps the utterance id and gets its chunk index, so the embedder can
    average chunk embeddings per id, and the fraction of its seconds that counts towards the utterance's
    duration (``chunk_shares``: overlapping windows share their overlap).

    Args:
        ids, durations: (N,) utterance ids and seconds; sample_rates: (N,) file rates (default 16 kHz).
    Returns:
        list of batches of (id, chunk, row index, counted fraction, start frame, frames) in file-rate frames;
        a batch holds one item when that item alone exceeds ``batch_seconds``.
    """
    items = []
    for index, (uid, seconds) in enumerate(zip(ids, durations)):
        rate = int(sample_rates[index]) if sample_rates is not None else 16000
        frames = int(round(float(seconds) * rate))
        spans = chunk_spans(frames, rate, chunk_seconds)
        for c, ((a, b), share) in enumerate(zip(spans, chunk_shares(spans))):
            items.append((str(uid), c, index, float(share), int(a), int(b - a), rate))
    items.sort(key=lambda it: (-it[5] / it[6], it[0], it[1]))
    return [[items[i][:6] for i in b] for b in pack_batches([it[5] / it[6] for it in items], batch_seconds)]


def build_eval_loader(
    manifest_path: str | Path,
    *,
    batch_seconds: float,
    chunk_seconds: float = 0.0,
    sample_rate: int = 16000,
    process_index: int = 0,
    num_processes: int = 1,
    num_workers: int = 0,
    skip_bad: bool = False,
    min_samples: int = 0,
) -> EvalLoader:
    """Whole utterances (or chunks) of a manifest in padded, length-sorted batches.

    Batches are dealt round-robin to processes (batch k goes to process k % num_processes): shares
    are disjoint and nothing is duplicated, so they may differ by one batch.

    Yields:
        ``{"waveforms": (B, S) float32 zero-padded, "attention_mask": (B, S) int64 (1 = real sample),
        "ids": list[str] (B), "chunks": (B,) int64 chunk index, "durations": (B,) float32 seconds of
        that row's audio that count towards its utterance}``; an utterance's duration is the sum over its
        chunks (overlapping windows count their overlap once). An undecodable file
        raises ``AudioError`` naming it, or with ``skip_bad`` is left out and listed in the loader's
        ``bad_files`` (an utterance with a chunk left out keeps its other chunks). So is an utterance
        (or chunk) shorter than ``min_samples`` at ``sample_rate`` (too short to give the encoder a frame).
    """

    rows = load_manifest(manifest_path)
    batches = plan_eval_batches(
        rows["id"],
        rows["duration"],
        batch_seconds=batch_seconds,
        chunk_seconds=chunk_seconds,
        sample_rates=rows["sample_rate"],
    )
    mine = batches[process_index::num_processes]
    return EvalLoader(
        EvalBatches(rows, mine, sample_rate, skip_bad, min_samples),
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )
