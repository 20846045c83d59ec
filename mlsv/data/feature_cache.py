"""A frozen encoder's hidden states of every training context, computed once and stored as float16.

With a frozen encoder and no waveform augmentation (or a fixed number of augmented copies), the encoder gives
the same states for a context every epoch: ``data.feature_cache`` computes them once
(``mlsv.train.feature_cache.build_feature_cache``) and training reads its crops from here, memory-mapped,
without running the encoder. A cache folder holds:

    index.json     what it was computed from (``key``: the encoder's weights, the manifest's rows, the context
                   settings, the augmentation, the seed), the shape of a frame (L, D), the crop length in
                   frames, and where each context lies: ``entries[id][factor][copy] = [first frame, frames]``
    states.f16     float16 (frames, L, D), every context one after another

A cache whose key differs from the run's is rebuilt, never read: a changed encoder, manifest or setting
cannot train on stale states.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mlsv.data.audio import AudioError

CACHE_VERSION = 1
INDEX = "index.json"
STATES = "states.f16"


def factor_key(factor: float) -> str:
    """A speed factor as the index names it."""
    return f"{float(factor):g}"


class FeatureCache:
    """A cache folder, opened for reading: ``crops(id, factor, copy, positions)`` -> (k, n, L, D) float16."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index_file = self.folder / INDEX
        if not index_file.is_file():
            raise FileNotFoundError(f"data.feature_cache: {self.folder} holds no feature cache ({INDEX} missing)")
        index = json.loads(index_file.read_text())
        self.key: dict[str, Any] = index["key"]
        self.frame_shape: tuple[int, int] = tuple(index["frame_shape"])  # type: ignore[assignment]
        self.crop_frames: int = int(index["crop_frames"])
        self.copies: int = int(index["copies"])
        self.entries: dict[str, dict[str, list[list[int]]]] = index["entries"]
        self.failed: dict[str, str] = index.get("failed", {})
        total = int(index["frames"])
        self.states = np.memmap(self.folder / STATES, dtype=np.float16, mode="r", shape=(total, *self.frame_shape))

    def context(self, uid: str, factor: float, copy: int) -> np.ndarray:
        """One context's states (T, L, D) float16, memory-mapped."""
        if uid in self.failed:
            raise AudioError(self.failed[uid])
        try:
            start, frames = self.entries[uid][factor_key(factor)][copy]
        except (KeyError, IndexError, TypeError):
            raise KeyError(
                f"data.feature_cache {self.folder}: no context for utterance {uid!r} at speed factor {factor:g}, "
                f"copy {copy}: the cache was built for other data; delete it to rebuild"
            ) from None
        return self.states[start : start + frames]

    def crops(self, uid: str, factor: float, copy: int, positions: np.ndarray) -> np.ndarray:
        """The crops at ``positions`` (k,) of a context: (k, crop_frames, L, D) float16. The start rule is
        ``loader.crop_starts``'s, in float32 as it runs on the device, so a crop equals the live path's."""
        states = self.context(uid, factor, copy)
        n = self.crop_frames
        room = max(len(states) - n + 1, 1)
        starts = np.minimum((positions.astype(np.float32) * np.float32(room)).astype(np.int64), room - 1)
        return np.stack([states[s : s + n] for s in starts])


class FeatureCacheWriter:
    """Writes a cache into a temporary folder beside ``folder``; ``close()`` moves it into place (a cache
    is complete or absent, never half-written)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        key: dict[str, Any],
        *,
        frames: int,
        frame_shape: tuple[int, int],
        crop_frames: int,
        copies: int,
    ):
        self.folder = Path(folder)
        self.tmp = self.folder.with_name(self.folder.name + ".partial")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.index: dict[str, Any] = {
            "version": CACHE_VERSION,
            "key": key,
            "frame_shape": list(frame_shape),
            "crop_frames": crop_frames,
            "copies": copies,
            "frames": frames,
            "entries": {},
            "failed": {},
        }
        self.copies = copies
        self.states = np.memmap(self.tmp / STATES, dtype=np.float16, mode="w+", shape=(frames, *frame_shape))
        self.used = 0

    def put(self, uid: str, factor: float, copy: int, states: np.ndarray) -> None:
        """Appends one context's states (T, L, D) as copy ``copy`` of (uid, factor)."""
        frames = len(states)
        if self.used + frames > len(self.states):
            raise ValueError(f"feature cache: more frames than the {len(self.states)} planned")
        self.states[self.used : self.used + frames] = states
        copies = self.index["entries"].setdefault(uid, {}).setdefault(factor_key(factor), [None] * self.copies)
        copies[copy] = [self.used, frames]
        self.used += frames

    def fail(self, uid: str, error: str) -> None:
        """Records an utterance whose audio failed to decode: training skips it as the live path does."""
        self.index.setdefault("failed", {})[uid] = error

    def close(self) -> None:
        """Writes the index (the frames written: fewer than planned when files failed) and moves it into place."""
        self.index["frames"] = self.used
        self.states.flush()
        del self.states
        (self.tmp / INDEX).write_text(json.dumps(self.index))
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.tmp.replace(self.folder)


def cache_matches(folder: str | os.PathLike, key: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a complete cache computed from ``key``."""
    index_file = Path(folder) / INDEX
    if not index_file.is_file():
        return False
    try:
        index = json.loads(index_file.read_text())
    except ValueError:
        return False
    return index.get("version") == CACHE_VERSION and index.get("key") == key
