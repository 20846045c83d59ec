"""Where a speaker speaks: an enrolment scored against a recording's sliding windows.

* ``WindowEmbeddings``: ``Verifier.embed_windows``, a recording's windows and their embeddings.
* ``SpeakerTrack``: ``Verifier.track``, the enrolment's score and decision for each window of a
  recording, and the spans of accepted windows.
* ``OnlineTracker``: ``Verifier.online``, the same windows and scores for a live stream, each window
  scored as soon as its last sample arrives.

Windows of ``window`` samples start every ``hop`` samples; one more window ends exactly at the end when
the last one stops short of it, so all windows have the same length and (with ``hop <= window``) every
sample is covered; a recording shorter than a window is one window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import soxr

from mlsv.data.audio import AudioError
from mlsv.data.inputs import MAX_CHANNELS, array_samples


def window_starts(length: int, window: int, hop: int) -> np.ndarray:
    """First samples of the windows of a recording of ``length`` samples (``window`` <= ``length``)."""
    last = length - window
    starts = np.arange(0, last + 1, hop, dtype=np.int64)
    return starts if starts[-1] == last else np.append(starts, last)


@dataclass(frozen=True, eq=False)
class WindowEmbeddings:
    """A recording's sliding windows: ``starts`` and ``ends`` (N,) in seconds, ``embeddings`` (N, E)."""

    starts: np.ndarray
    ends: np.ndarray
    embeddings: np.ndarray


@dataclass(frozen=True, eq=False)
class SpeakerTrack:
    """An enrolled speaker scored against each window of a recording (``Verifier.track``).

    Attributes:
        starts, ends: (N,) window bounds in seconds.
        scores: (N,) scores on ``scale``.
        threshold, scale, threshold_source: as in :class:`VerificationResult`.
    """

    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    threshold: float
    scale: str
    threshold_source: str

    @property
    def decisions(self) -> np.ndarray:
        """(N,) bool: ``score >= threshold`` (the enrolled speaker)."""
        return self.scores >= self.threshold

    def segments(self) -> list[tuple[float, float]]:
        """The spans (start, end) in seconds covered by accepted windows, overlapping or touching ones
        merged."""
        spans: list[tuple[float, float]] = []
        for a, b in zip(self.starts[self.decisions].tolist(), self.ends[self.decisions].tolist()):
            if spans and a <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], b))
            else:
                spans.append((a, b))
        return spans

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "windows": [
                {"start": round(a, 4), "end": round(b, 4), "score": s, "decision": bool(s >= self.threshold)}
                for a, b, s in zip(self.starts.tolist(), self.ends.tolist(), self.scores.tolist())
            ],
            "segments": [[round(a, 4), round(b, 4)] for a, b in self.segments()],
        }


class WindowScore(NamedTuple):
    """One window of a stream: its bounds in seconds, its score and decision."""

    start: float
    end: float
    score: float
    decision: bool


class OnlineTracker:
    """Scores an enrolment against a live stream's windows as its samples arrive (``Verifier.online``).

    ``push(samples)`` returns the windows its samples complete, each scored and decided; ``flush()`` at
    the end of the stream returns the last window, the one that ends at the end, when the others stop
    short of it. Together they give the windows and scores ``Verifier.track`` gives for the whole
    recording (to rounding, when the stream is resampled). A window costs its own forward pass as soon
    as its last sample arrives, so the delay of a decision is the window's length plus that pass; only
    the samples of unfinished windows are kept.

    Windows are not checked for silence: a pause in a stream is normal, and its windows are scored like
    any other.
    """

    def __init__(
        self,
        verifier: Any,
        enrolment: np.ndarray,
        enrolment_seconds: float,
        window: int,
        hop: int,
        threshold: Any,
        sample_rate: int,
    ):
        self.verifier, self.enrolment, self.enrolment_seconds = verifier, enrolment, enrolment_seconds
        self.window, self.hop, self.threshold = window, hop, threshold
        self.rate = verifier.sampling_rate
        self._resampler = None
        if sample_rate != self.rate:
            self._resampler = soxr.ResampleStream(sample_rate, self.rate, 1, dtype="float32")
        self._buffer = np.zeros(0, np.float32)
        self._offset = 0  # the stream position of the buffer's first sample
        self._total = 0  # samples received (at the model's rate)
        self._next = 0  # where the next window starts
        self._covered = 0  # the end of the last window scored
        self._chunks = 0
        self._channels: int | None = None  # fixed by the first chunk
        self._closed = False

    @property
    def seconds(self) -> float:
        """Seconds of the stream received so far (after resampling, which holds back a few ms)."""
        return self._total / self.rate

    def push(self, samples: Any) -> list[WindowScore]:
        """Adds a chunk of samples at the tracker's sample rate, (S,) or (S, C) (channels averaged; every
        chunk of a stream has the same channels); returns the windows it completes, in order."""
        if self._closed:
            raise ValueError("this stream has been flushed: start another with Verifier.online")
        name = f"stream chunk {self._chunks}"
        self._chunks += 1
        shape = tuple(getattr(samples, "shape", np.shape(samples)))
        if 0 in shape:
            return []  # a callback with nothing new
        if len(shape) > 2:
            raise AudioError(f"{name}: a stream's chunks are (samples,) or (samples, channels), got shape {shape}")
        channels = shape[1] if len(shape) == 2 else 1
        if channels > MAX_CHANNELS:
            raise AudioError(
                f"{name}: shape {shape} has {channels} channels; a stream's chunks are (samples,) or "
                f"(samples, channels) with at most {MAX_CHANNELS} channels"
            )
        if self._channels is not None and channels != self._channels:
            raise AudioError(
                f"{name}: {channels} channel(s), where the stream's first chunk had {self._channels} "
                "(chunks are (samples,) or (samples, channels))"
            )
        x = array_samples(samples, name, frames_first=True)
        self._channels = channels
        if not np.isfinite(x).all():
            raise AudioError(f"{name}: audio contains NaN or infinite samples")
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        return self._add(x)

    def flush(self) -> list[WindowScore]:
        """Ends the stream: the last window (ending at the end) if the windows so far stop short of it.

        Raises:
            AudioError: the stream is empty, or shorter than the encoder's minimum.
        """
        if self._closed:
            return []
        out = (
            self._add(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            if self._resampler is not None
            else []
        )
        self._closed = True
        if self._total == 0:
            raise AudioError("the stream is empty: no samples were pushed")
        if self._covered >= self._total:
            return out
        if self._total < self.verifier.embedder.min_samples:
            raise AudioError(
                f"the stream is too short ({self.seconds * 1000:.1f} ms); the encoder needs at least "
                f"{self.verifier.embedder.min_samples / self.rate * 1000:.1f} ms"
            )
        size = min(self.window, self._total)
        return out + self._score([self._total - size], size)

    def _add(self, x: np.ndarray) -> list[WindowScore]:
        self._buffer = np.concatenate([self._buffer, x])
        self._total += x.size
        starts = list(range(self._next, self._total - self.window + 1, self.hop))
        out = self._score(starts, self.window)  # if it fails, the next push scores these windows again
        if starts:
            self._next = starts[-1] + self.hop
        keep = max(0, min(self._next, self._total - self.window))  # the last window of flush may need them
        self._buffer = self._buffer[keep - self._offset :]
        self._offset = keep
        return out

    def _score(self, starts: list[int], size: int) -> list[WindowScore]:
        if not starts:
            return []
        at = np.asarray(starts, np.int64) - self._offset
        embeddings = self.verifier.embedder.embed_windows_at(
            np.lib.stride_tricks.sliding_window_view(self._buffer, size), at
        )
        scores = self.verifier.scorer.scores_against(
            self.enrolment, embeddings, (self.enrolment_seconds, [size / self.rate] * len(starts))
        )
        self._covered = starts[-1] + size
        value = self.threshold.value
        return [
            WindowScore(a / self.rate, (a + size) / self.rate, float(s), bool(s >= value))
            for a, s in zip(starts, scores[self.threshold.scale].tolist())
        ]
