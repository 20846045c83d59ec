"""Audio input as the user-facing API takes it: a path, or samples as a numpy array or torch tensor.

Any sample rate (resampled with soxr to the model's rate) and up to ``MAX_CHANNELS`` channels
(averaged to mono). Missing, empty, silent, too short, non-finite or undecodable audio raises
:class:`~mlsv.data.audio.AudioError` naming the input.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import soxr

from mlsv.data.audio import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SILENCE_PEAK,
    AudioError,
    audio_info,
    read_audio,
    silent_audio_message,
)

__all__ = [
    "AUDIO_SUFFIXES",
    "MAX_CHANNELS",
    "AudioInput",
    "Enrolment",
    "array_samples",
    "check_sample_rate",
    "estimate_length",
    "find_audio_files",
    "input_name",
    "is_pathlike",
    "load_audio",
]

log = logging.getLogger(__name__)

AudioInput = Union[str, "os.PathLike[str]", np.ndarray, Any]  # Any: a torch.Tensor
#: One speaker's enrolment: a recording, or a list (or tuple) of them.
#: One speaker's enrolment: a recording, or a list (or tuple) of them.
Enrolment = AudioInput | Sequence[AudioInput]
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".aif")
#: Most channels an array may have; a 2-D array with more on both axes is refused.
MAX_CHANNELS = 8


def is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def input_name(x: Any, index: int | None = None) -> str:
    if is_pathlike(x):
        return os.fspath(x)
    kind = type(x).__name__
    return f"input #{index} ({kind})" if index is not None else f"input ({kind})"


def _to_mono(x: np.ndarray, name: str) -> np.ndarray:
    """(S,), (S, C) or (C, S) -> (S,) by averaging channels (C <= MAX_CHANNELS)."""
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioError(
            f"{name}: audio arrays must be (samples,), (samples, channels) or (channels, samples), got shape {x.shape}"
        )
    if x.shape[1] <= MAX_CHANNELS and x.shape[0] >= x.shape[1]:
        return x.mean(axis=1)
    if x.shape[0] <= MAX_CHANNELS:
        return x.mean(axis=0)
    raise AudioError(f"{name}: shape {x.shape} has more than {MAX_CHANNELS} channels on both axes")


def check_sample_rate(sample_rate: Any, what: str = "sample_rate") -> int | None:
    """``sample_rate`` as a positive int (None stays None); ValueError naming ``what`` otherwise.

    Integral floats (``16000.0``) are accepted; 0, negative, fractional, non-finite, boolean and
    non-numeric values (``"16000"``) are refused rather than guessed at, and so are rates outside
    [``MIN_SAMPLE_RATE``, ``MAX_SAMPLE_RATE``] (a 1 Hz rate would resample into gigabytes).
    """
    if sample_rate is None:
        return None
    ok = False
    if isinstance(sample_rate, (bool, np.bool_)):
        pass
    elif isinstance(sample_rate, numbers.Integral):
        ok = True
    elif isinstance(sample_rate, numbers.Real) and math.isfinite(sample_rate):
        ok = float(sample_rate).is_integer()
    if not ok or int(sample_rate) <= 0:
        raise ValueError(
            f"{what} must be a positive integer (samples per second), got {sample_rate!r}"
            + (f" ({type(sample_rate).__name__})" if isinstance(sample_rate, str) else "")
        )
    if not MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE:
        raise ValueError(f"{what} {int(sample_rate)} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    return int(sample_rate)


def load_audio(
    x: AudioInput, sample_rate: int | None, *, target_sr: int, min_length: int = 1, name: str | None = None
) -> np.ndarray:
    """Decodes / converts one input to float32 mono samples at ``target_sr`` and checks them.

    Args:
        x: a path, or samples as a numpy array or torch tensor ((S,), (S, C) or (C, S)); integer arrays
            are scaled to [-1, 1].
        sample_rate: the rate of an array input (default: ``target_sr``); ignored for files.
        target_sr: the model's rate.
        min_length: fewest samples accepted (at ``target_sr``).
        name: how errors name the input.

    Raises:
        AudioError: missing, empty, undecodable, too short, non-finite or silent audio, naming it.
        ValueError: ``sample_rate`` is not a positive integer.
    """
    name = name or input_name(x)
    sample_rate = check_sample_rate(sample_rate)
    if is_pathlike(x):
        samples, _ = read_audio(x, target_sr=target_sr, mono=True)
    else:
        samples = array_samples(x, name)
        sr = target_sr if sample_rate is None else sample_rate
        if sr != target_sr:
            if not np.isfinite(samples).all():
                raise AudioError(f"{name}: audio contains NaN or infinite samples")
            samples = soxr.resample(samples, sr, target_sr).astype(np.float32, copy=False)
    if samples.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if samples.size < min_length:
        raise AudioError(
            f"{name}: too short ({samples.size / target_sr * 1000:.1f} ms); the encoder needs at "
            f"least {min_length / target_sr * 1000:.1f} ms"
        )
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK:
        raise AudioError(silent_audio_message(name, peak))
    return samples


def array_samples(x: Any, name: str, frames_first: bool = False) -> np.ndarray:
    """An array or tensor of samples as float32 mono ((S,)); integer samples scaled to [-1, 1]. A 2-D
    array is (S, C) or (C, S), whichever fits (``_to_mono``), or always (S, C) with ``frames_first``
    (a stream's chunk, which may hold fewer samples than channels)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():  # bf16 / fp16 have no (or a lossy) numpy dtype: samples are float32
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise AudioError(f"{name}: expected numeric audio samples, got dtype {a.dtype}")
    if a.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if a.dtype.kind == "i":
        a = a.astype(np.float64) / (np.iinfo(a.dtype).max + 1.0)
    elif a.dtype.kind == "u":
        half = (np.iinfo(a.dtype).max + 1.0) / 2
        a = (a.astype(np.float64) - half) / half
    a = np.asarray(a, dtype=np.float32)
    if frames_first and a.ndim == 2:
        a = a.mean(axis=1)
    return np.ascontiguousarray(_to_mono(a, name), dtype=np.float32)


def find_audio_files(paths: Sequence[str | os.PathLike], suffixes: Sequence[str] = AUDIO_SUFFIXES) -> list[str]:
    """Expands folders (recursively, sorted) into their audio files; files are kept as given.

    A file named twice (``a.wav a.wav``, ``./a.wav a.wav``, or a file and its folder) is kept once, as
    first named, with a logged warning: its path is its id, and an embeddings table holds one row per id.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no audio file.
    """
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise FileNotFoundError(f"{path}: no audio files ({', '.join(suffixes)}) in this folder")
            out.extend(found)
        elif path.exists():
            out.append(os.fspath(p))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    seen: dict[str, str] = {}
    unique = []
    for f in out:
        key = os.path.normcase(os.path.abspath(f))
        if key in seen:
            log.warning("%s: named more than once; embedded once (id %s)", f, seen[key])
            continue
        seen[key] = f
        unique.append(f)
    return unique


def estimate_length(x: Any, sample_rate: int | None, target_sr: int, name: str) -> int:
    """Samples of ``x`` at ``target_sr``, from a file's header or an array's shape (nothing decoded)."""
    if is_pathlike(x):
        frames, sr, _ = audio_info(x)  # raises AudioError for missing / empty / corrupt files
        return max(1, int(frames * target_sr / sr))
    shape = getattr(x, "shape", None)
    if shape is None:
        raise AudioError(f"{name}: expected a path or an array of samples, got {type(x).__name__}")
    n = max(shape) if len(shape) == 2 else (shape[0] if len(shape) == 1 else 0)
    return max(1, int(n * target_sr / (sample_rate or target_sr)))
