"""Embedding audio with a trained model: inputs batched by length, long inputs in chunks, sliding windows.

:class:`Embedder` turns audio inputs (paths or sample arrays, see :mod:`mlsv.data.inputs`) into
embeddings through a *backend*: :class:`mlsv.inference.torch_runtime.TorchEmbedder` (an ``MLSVModel``)
or :class:`mlsv.inference.onnx_runtime.OnnxEmbedder` (ONNX Runtime, without torch), both ``(input_values (B, S),
attention_mask (B, S)) -> (B, E)`` numpy. Inputs are read lazily and packed longest first into
batches of ``batch_seconds`` of padded audio (:func:`mlsv.data.batching.pack_batches`, the rule of
evaluation's batches too); padding never changes an embedding, so an input gets the same embedding
alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # the progress bar; the ONNX runtime runs without it (numpy, soundfile, soxr, onnxruntime)
    from tqdm.auto import tqdm
except ImportError:
    tqdm = None

from mlsv.data.audio import estimate_snr
from mlsv.data.batching import chunk_spans, pack_batches
from mlsv.data.inputs import AudioInput, check_sample_rate, estimate_length, input_name, load_audio
from mlsv.inference.model_files import min_samples
from mlsv.inference.tracking import window_starts
from mlsv.scoring.embeddings import EmbeddingTable

__all__ = ["Embedder", "finite"]

Backend = Callable[[np.ndarray, np.ndarray], np.ndarray]


def finite(x: Any, what: str) -> float:
    """``x`` as a finite float; ValueError naming ``what`` for NaN, infinities, booleans and non-numbers."""
    try:
        if isinstance(x, (bool, np.bool_)):
            raise TypeError
        value = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {x!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}")
    return value


@dataclass
class _Item:
    index: int
    source: Any
    name: str
    length: int  # estimated samples at the model rate (exact for arrays)


class Embedder:
    """Embeds audio inputs with a backend (see the module docstring).

    Args:
        backend: a ``TorchEmbedder``, an ``OnnxEmbedder``, or any callable with a ``config``.
        batch_seconds: padded audio per batch (batch size x longest item), in seconds.
    """

    def __init__(self, backend: Backend, *, batch_seconds: float = 60.0):
        if batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be positive, got {batch_seconds}")
        self.backend = backend
        self.config = backend.config  # type: ignore[attr-defined]
        self.batch_seconds = float(batch_seconds)
        self.sampling_rate = int(getattr(self.config, "sampling_rate", 16000) or 16000)
        self.min_samples = min_samples(self.config)

    @property
    def runtime(self) -> str:
        return getattr(self.backend, "runtime", type(self.backend).__name__)

    @property
    def embedding_size(self) -> int:
        return int(self.config.embedding_size)

    @property
    def stored_chunk_seconds(self) -> float:
        """The embedding window the model stores (``embedding_chunk_seconds``; 0, whole inputs, when none)."""
        return stored_chunk_seconds(self.config)

    def load(self, x: AudioInput, sample_rate: int | None = None, name: str | None = None) -> np.ndarray:
        """One input as checked float32 mono samples at the model's rate (see :func:`load_audio`)."""
        return load_audio(x, sample_rate, target_sr=self.sampling_rate, min_length=self.min_samples, name=name)

    # -- whole inputs -----------------------------------------------------------------------------
    def embed_many(
        self,
        inputs: list[AudioInput],
        sample_rate: int | None = None,
        chunk_seconds: float | None = None,
        progress: bool | None = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, E) float32 embeddings and (N,) float32 seconds of ``inputs``, in their order
        (:meth:`embed_measured` also gives each input's SNR estimate).

        ``chunk_seconds > 0`` cuts an input longer than that into overlapping windows of that length
        (evaluation's rule, :func:`mlsv.data.batching.chunk_spans`) and averages their embeddings; 0 embeds
        whole inputs; None: the model's stored window (``stored_chunk_seconds``).
        ``progress`` (None: when more than 16 inputs) shows a progress bar.
        """
        matrix, durations, _ = self.embed_measured(inputs, sample_rate, chunk_seconds, progress)
        return matrix, durations

    def embed_measured(
        self,
        inputs: list[AudioInput],
        sample_rate: int | None = None,
        chunk_seconds: float | None = None,
        progress: bool | None = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`embed_many` plus (N,) float32 blind SNR estimates in dB of the inputs
        (:func:`mlsv.data.audio.estimate_snr`, at the model's rate; an input embedded in windows gets the mean of
        its windows' estimates, as a manifest's does), the quality measures a calibration uses."""
        if not inputs:
            raise ValueError("nothing to embed: no inputs given")
        sample_rate = check_sample_rate(sample_rate)
        if chunk_seconds is None:
            chunk_seconds = self.stored_chunk_seconds
        if chunk_seconds < 0:
            raise ValueError(f"chunk_seconds must be >= 0, got {chunk_seconds}")
        chunk = int(chunk_seconds * self.sampling_rate)
        if chunk_seconds > 0 and chunk < self.min_samples:
            raise ValueError(
                f"chunk_seconds={chunk_seconds:g} gives chunks of {chunk} samples; the encoder needs at "
                f"least {self.min_samples} ({self.min_samples / self.sampling_rate:.4f} s)"
            )
        items = [_Item(i, x, input_name(x, i), 0) for i, x in enumerate(inputs)]
        for it in items:
            it.length = estimate_length(it.source, sample_rate, self.sampling_rate, it.name)
        budget = int(self.batch_seconds * self.sampling_rate)
        batches = [[items[i] for i in b] for b in pack_batches([it.length for it in items], budget)]
        sums = np.zeros((len(inputs), self.embedding_size), dtype=np.float64)
        weights = np.zeros(len(inputs), dtype=np.float64)
        durations = np.zeros(len(inputs), dtype=np.float32)
        snr = np.zeros(len(inputs), dtype=np.float32)
        show = progress if progress is not None else len(inputs) > 16
        iterator: Iterable[list[_Item]] = tqdm(batches, desc="embedding", unit="batch") if show and tqdm else batches
        for batch in iterator:
            pieces: list[tuple[int, np.ndarray]] = []
            for it in batch:
                wav = self.load(it.source, sample_rate, it.name)
                durations[it.index] = wav.size / self.sampling_rate
                parts = self.chunks(wav, chunk_seconds, it.name)
                # in windows: their estimates' mean, as evaluation's loader computes it (equal windows)
                snr[it.index] = np.average(
                    [estimate_snr(p, self.sampling_rate) for p in parts], weights=[p.size for p in parts]
                )
                pieces.extend((it.index, p) for p in parts)
            # the batch's estimate can be off (resampling, chunks): packed again on the real lengths
            for group in pack_batches([p.size for _, p in pieces], budget):
                part = [pieces[i] for i in group]
                for (idx, p), e in zip(part, self.run([p for _, p in part])):
                    sums[idx] += e.astype(np.float64) * p.size
                    weights[idx] += p.size
        return (sums / weights[:, None]).astype(np.float32), durations, snr

    def embed_table(
        self,
        inputs: Sequence[AudioInput],
        ids: Sequence[str] | None = None,
        *,
        sample_rate: int | None = None,
        chunk_seconds: float | None = None,
        progress: bool | None = None,
    ) -> EmbeddingTable:
        """Embeds ``inputs`` into an ``EmbeddingTable`` (ids default to the paths, or ``input #i``).

        Raises:
            ValueError: an id repeats (a table holds one row per id: give each input once), naming it,
                before anything is embedded.
        """
        inputs = list(inputs)
        if ids is None:
            ids = [input_name(x, i) for i, x in enumerate(inputs)]
        ids = [str(u) for u in ids]
        if len(ids) != len(inputs):
            raise ValueError(f"{len(ids)} ids for {len(inputs)} inputs")
        first: dict[str, int] = {}
        for i, u in enumerate(ids):
            if u in first:
                raise ValueError(
                    f"id {u!r} is given twice (inputs #{first[u]} and #{i}); an embeddings table has "
                    "one row per id: give each input once"
                )
            first[u] = i
        matrix, durations, snr = self.embed_measured(inputs, sample_rate, chunk_seconds, progress)
        return EmbeddingTable(np.asarray(ids), matrix, durations, snr=snr)

    def chunks(self, wav: np.ndarray, chunk_seconds: float, name: str) -> list[np.ndarray]:
        """``wav`` cut into evaluation's windows (one piece when ``chunk_seconds`` is 0 or longer)."""
        spans = chunk_spans(wav.size, self.sampling_rate, chunk_seconds)
        shortest = int((spans[:, 1] - spans[:, 0]).min())
        if shortest < self.min_samples:
            raise ValueError(
                f"{name}: chunk_seconds={chunk_seconds:g} cuts it into {len(spans)} chunks of "
                f"{shortest}+ samples; the encoder needs at least {self.min_samples} "
                f"({self.min_samples / self.sampling_rate:.4f} s)"
            )
        return [wav[a:b] for a, b in spans]

    def run(self, waves: list[np.ndarray]) -> np.ndarray:
        """(B, E) embeddings of ``waves`` padded into one batch."""
        n = max(w.size for w in waves)
        x = np.zeros((len(waves), n), dtype=np.float32)
        m = np.zeros((len(waves), n), dtype=np.int64)
        for i, w in enumerate(waves):
            x[i, : w.size] = w
            m[i, : w.size] = 1
        return np.asarray(self.backend(x, m), dtype=np.float32)

    # -- sliding windows --------------------------------------------------------------------------
    def window_sizes(self, window: Any, hop: Any) -> tuple[int, int]:
        """(window, hop) in samples, checked: a window the encoder can embed, a positive hop (default half
        a window)."""
        size = self._window_samples(window, "window")
        return size, self._window_samples(finite(window, "window") / 2 if hop is None else hop, "hop", minimum=1)

    def _window_samples(self, seconds: Any, what: str, minimum: int | None = None) -> int:
        value = finite(seconds, what)
        samples = int(round(value * self.sampling_rate))
        least = self.min_samples if minimum is None else minimum
        if value <= 0 or samples < least:
            raise ValueError(
                f"{what} must be at least {least / self.sampling_rate:.4g} s"
                f"{' (the encoder needs ' + str(least) + ' samples)' if minimum is None else ''}, "
                f"got {seconds}"
            )
        return samples

    def windows(
        self, x: AudioInput, size: int, step: int, sample_rate: int | None, progress: bool | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts (N,) s, ends (N,) s, embeddings (N, E)) of ``x``'s windows of ``size`` samples every ``step``:
        see ``Verifier.embed_windows``."""
        wav = self.load(x, sample_rate, input_name(x))
        size = min(size, wav.size)
        starts = window_starts(wav.size, size, step)
        embeddings = self.embed_windows_at(np.lib.stride_tricks.sliding_window_view(wav, size), starts, progress)
        rate = float(self.sampling_rate)
        return starts / rate, (starts + size) / rate, embeddings

    def embed_windows_at(self, frames: np.ndarray, starts: np.ndarray, progress: bool | None = False) -> np.ndarray:
        """(N, E) embeddings of the windows ``frames[starts]`` (``frames``: a (S - W + 1, W) sliding view),
        cut and embedded in batches of ``batch_seconds``, so only one batch is ever copied."""
        per = max(1, int(self.batch_seconds * self.sampling_rate) // frames.shape[1])
        groups: Iterable[int] = range(0, len(starts), per)
        if tqdm is not None and (progress if progress is not None else len(starts) > 16 * per):
            groups = tqdm(groups, desc="windows", unit="batch", total=-(-len(starts) // per))
        parts = []
        for i in groups:
            part = np.ascontiguousarray(frames[starts[i : i + per]], dtype=np.float32)
            parts.append(np.asarray(self.backend(part, np.ones(part.shape, np.int64)), dtype=np.float32))
        return np.concatenate(parts)


def stored_chunk_seconds(config) -> float:
    """A model config's ``embedding_chunk_seconds`` (an object or the JSON dict), 0.0 when none is stored."""
    value = (
        config.get("embedding_chunk_seconds")
        if isinstance(config, dict)
        else getattr(config, "embedding_chunk_seconds", None)
    )
    return float(value) if value else 0.0
