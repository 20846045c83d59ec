"""Audio decoding: soundfile for WAV/FLAC/OGG/MP3 (with seeking), PyAV for m4a/AAC, soxr resampling.

Every reader returns float32 samples in [-1, 1]. Errors are ``AudioError`` naming the file and the
problem, so callers can report and skip bad files; ``MissingDependencyError`` (an ``AudioError``: no
PyAV for an m4a file) is never skipped, since it is the installation, not the file, that is at fault.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import soxr

AudioSource = Union[str, "os.PathLike[str]", bytes]

# Containers soundfile cannot open; decoded whole with PyAV (VoxCeleb2 ships AAC in .m4a).
AV_SUFFIXES = frozenset({".m4a", ".aac", ".mp4"})
#: Peak amplitude below which audio counts as silent (-80 dBFS).
SILENCE_PEAK = 1e-4
#: Sample rates accepted (Hz): below 4 kHz there is no speech band left to speak of (telephone speech is
#: 8 kHz), above 384 kHz no audio interface records; a header outside them is a broken file, and a 1 Hz
#: header once made a 64 KB WAV resample into 3.8 GB.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 384000


def check_rate(sample_rate: int, name: str) -> int:
    """``sample_rate`` when it is within [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]; AudioError naming ``name``."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz: "
            "a broken header, or not audio that mlsv can use"
        )
    return sample_rate


def silent_audio_message(name: str, peak: float) -> str:
    """The error for silent audio, one wording for paths, arrays and manifest rows."""
    return f"{name}: silent audio (peak amplitude {peak:.2e}, below {SILENCE_PEAK:g}); no voice to embed or verify"


class AudioError(ValueError):
    """A file is missing, empty, not decodable audio, or at a refused sample rate."""


class MissingDependencyError(AudioError):
    """A file needs an optional decoder that is not installed (PyAV for m4a/AAC).

    It fails every such file alike, so the readers that skip bad files raise it instead.
    """


def printable(text: str | os.PathLike) -> str:
    """``text`` (a path, or a message naming one) as it can be printed and written as UTF-8: the bytes of a
    file name that is not UTF-8 (which Python holds as surrogates, e.g. a Latin-1 ``caf\\xe9.wav``) are
    written as ``\\xNN``. Other text comes back unchanged."""
    text = os.fspath(text)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that stands for no byte
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _name(source: AudioSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else printable(source)


def _uses_av(source: AudioSource) -> bool:
    if isinstance(source, (bytes, bytearray)):
        # ISO media files carry 'ftyp' at byte 4; everything else goes to soundfile
        return bytes(source[4:8]) == b"ftyp"
    return Path(source).suffix.lower() in AV_SUFFIXES


def _check_exists(source: AudioSource) -> None:
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise AudioError(f"{_name(source)}: empty audio buffer")
        return
    path = Path(source)
    if path.is_dir():
        raise AudioError(f"{_name(path)}: a directory, not an audio file")
    if not path.is_file():
        raise AudioError(f"{_name(path)}: file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{_name(path)}: empty file (0 bytes)")


def _sf_open(source: AudioSource) -> sf.SoundFile:
    target = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    if isinstance(target, str) and os.name != "nt":
        # the name's own bytes: soundfile encodes a str strictly, which fails for a name that is not UTF-8
        target = os.fsencode(target)
    try:
        return sf.SoundFile(target)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{_name(source)}: not decodable audio (corrupt or unsupported format: {e})") from None


def _av_decode(source: AudioSource) -> tuple[np.ndarray, int]:
    """Decodes a whole m4a/AAC file with PyAV. Returns ((S, C) float32, sample rate)."""
    try:
        import av  # lazy: only VoxCeleb2 needs it
    except ImportError:
        raise MissingDependencyError(
            f'{_name(source)}: decoding m4a/AAC needs PyAV, which is not installed: pip install -e ".[m4a]" '
            "(or pip install av); or, to train without it, convert the files to FLAC once with "
            "mlsv prepare voxceleb --convert-dir DIR (where PyAV is installed)"
        ) from None
    target = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    try:
        with av.open(target) as container:
            if not container.streams.audio:
                raise AudioError(f"{_name(source)}: no audio stream")
            stream = container.streams.audio[0]
            sr = int(stream.rate)
            parts = []
            for frame in container.decode(stream):
                a = frame.to_ndarray()
                channels = len(frame.layout.channels)
                # planar: (C, n); packed: (1, n * C) interleaved
                a = a.T if frame.format.is_planar else a.reshape(-1, channels)
                parts.append(a)
    except av.error.FFmpegError as e:
        raise AudioError(f"{_name(source)}: not decodable audio ({e})") from None
    if not parts:
        raise AudioError(f"{_name(source)}: no audio frames")
    x = np.concatenate(parts, axis=0)
    if x.dtype.kind == "i":
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    return x.astype(np.float32, copy=False), sr


def audio_info(source: AudioSource) -> tuple[int, int, int]:
    """Reads a file's header (m4a: decodes it). Returns (frames, sample_rate, channels).

    Raises:
        AudioError: missing, empty or undecodable file, naming it.
    """
    _check_exists(source)
    if _uses_av(source):
        x, sr = _av_decode(source)
        return x.shape[0], check_rate(sr, _name(source)), x.shape[1]
    with _sf_open(source) as f:
        frames, sr, channels = f.frames, f.samplerate, f.channels
    if frames <= 0:
        raise AudioError(f"{_name(source)}: empty audio (0 frames)")
    return frames, check_rate(sr, _name(source)), channels


def resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    """Resamples (S,) or (S, C) float32 audio with soxr (high quality). Returns float32."""
    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out).astype(np.float32, copy=False)


def read_audio(
    source: AudioSource,
    start: int = 0,
    frames: int = -1,
    *,
    target_sr: int | None = None,
    mono: bool = True,
    allow_resample: bool = True,
    expected_sr: int | None = None,
) -> tuple[np.ndarray, int]:
    """Reads ``frames`` samples from ``start`` (in the file's own rate), seeking so a crop reads only itself.

    Args:
        source: a path or the encoded file as bytes.
        start: first frame to read (file rate).
        frames: number of frames to read; -1 reads to the end. Fewer come back near the end.
        target_sr: resample to this rate (soxr) when the file's rate differs.
        mono: average the channels.
        allow_resample: when False a rate other than ``target_sr`` raises instead.
        expected_sr: the file's rate as a manifest gives it; another rate raises (``start`` and
            ``frames`` were computed from it).

    Returns:
        (samples, sample_rate): float32 (S,) when ``mono`` else (S, C), and the rate of the samples.

    Raises:
        AudioError: missing, empty, undecodable, non-finite (NaN or infinite samples) or
            (``allow_resample=False``) mis-sampled, naming the file.
    """
    _check_exists(source)
    if _uses_av(source):
        x, sr = _av_decode(source)
        x = x[start:] if frames < 0 else x[start : start + frames]
    else:
        with _sf_open(source) as f:
            sr = f.samplerate
            if f.frames <= 0:
                raise AudioError(f"{_name(source)}: empty audio (0 frames)")
            try:
                if start:
                    f.seek(min(start, f.frames))
                x = f.read(frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioError(f"{_name(source)}: corrupt audio data ({e})") from None
    check_rate(sr, _name(source))
    if expected_sr is not None and sr != expected_sr:
        raise AudioError(f"{_name(source)}: sample rate {sr} Hz, but the manifest says {expected_sr} Hz")
    if not np.isfinite(x).all():
        raise AudioError(f"{_name(source)}: NaN or infinite samples")
    if mono:
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if target_sr is not None and sr != target_sr:
        if not allow_resample:
            raise AudioError(f"{_name(source)}: sample rate {sr} Hz, expected {target_sr} Hz (resampling refused)")
        x, sr = resample(x, sr, target_sr), target_sr
    return x, sr


def write_audio(path: str | Path, x: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Writes (S,) or (S, C) audio atomically (temporary file, then rename); format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    sf.write(tmp, x, sample_rate, subtype=subtype, format=path.suffix.lstrip(".").upper())
    tmp.replace(path)


def encode_flac(x: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> bytes:
    """Encodes (S,) or (S, C) audio as FLAC bytes (lossless for PCM_16/PCM_24 sources)."""
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, subtype=subtype, format="FLAC")
    return buf.getvalue()


def pcm_subtype(source: AudioSource) -> str:
    """The FLAC subtype that stores ``source`` losslessly: PCM_24 for 24/32-bit and float, else PCM_16."""
    if _uses_av(source):
        return "PCM_16"
    with _sf_open(source) as f:
        return "PCM_24" if f.subtype in ("PCM_24", "PCM_32", "FLOAT", "DOUBLE") else "PCM_16"


#: Range of :func:`estimate_snr` (dB): below -5 dB the estimate is noise, above 60 dB there is no measurable
#: noise (studio or synthetic silence) and the value says only "clean".
SNR_RANGE = (-5.0, 60.0)
SNR_FRAME_SECONDS, SNR_HOP_SECONDS = 0.025, 0.010
#: Percentiles of the frame powers taken as the noise floor and as the speech level.
SNR_NOISE_PERCENTILE, SNR_SPEECH_PERCENTILE = 5.0, 95.0


def estimate_snr(wav: np.ndarray, sample_rate: int) -> float:
    """A blind estimate of a recording's signal-to-noise ratio in dB, from the waveform alone.

    Frame powers (mean square over 25 ms frames every 10 ms); the noise floor is their 5th percentile
    (the pauses of speech, where only noise is left; the 10th read clean 1 s utterances with few pauses as
    15-20 dB), the speech level their 95th percentile (loud speech
    frames, which carry the noise too, so the floor is subtracted); the SNR is
    ``10 log10((speech - noise) / noise)``, clipped to :data:`SNR_RANGE`. It measures the loud speech
    against the pauses, so it reads some dB above the global SNR (mean speech power over noise power) of
    additive noise (on synthetic speech of 1.5-3 s: +3.5 to +8 dB for white noise, +4 to +13 for pink, over
    0-20 dB), and it reads speech without pauses as noisier than it is, and babble (noise with pauses of
    its own) as cleaner: a measure of how clean a recording sounds, not a calibrated SNR. A recording shorter
    than a frame is one frame (its noise floor and speech level are the same power: the bottom of the range).

    Args:
        wav: (S,) samples.
        sample_rate: Hz.

    Returns:
        SNR in dB, a float in :data:`SNR_RANGE`.
    """
    x = np.asarray(wav).reshape(-1)
    frame = max(1, int(round(SNR_FRAME_SECONDS * sample_rate)))
    hop = max(1, int(round(SNR_HOP_SECONDS * sample_rate)))
    if x.size <= frame:
        power = np.array([np.mean(x.astype(np.float64) ** 2)]) if x.size else np.zeros(1)
    else:
        # frame powers from cumulative sums of squares, 1,000 frames at a time: O(S) time, and a long recording
        # never copied whole to float64
        starts = np.arange(0, x.size - frame + 1, hop)
        parts = []
        for i in range(0, len(starts), 1000):
            s = starts[i : i + 1000]
            c = np.concatenate([[0.0], np.cumsum(x[s[0] : s[-1] + frame].astype(np.float64) ** 2)])
            parts.append((c[s - s[0] + frame] - c[s - s[0]]) / frame)
        power = np.concatenate(parts)
    noise = float(np.percentile(power, SNR_NOISE_PERCENTILE))
    speech = float(np.percentile(power, SNR_SPEECH_PERCENTILE))
    low, high = SNR_RANGE
    floor = max(noise, speech * 10 ** (-high / 10), 1e-20)  # digital silence: the top of the range
    snr = 10.0 * np.log10(max(speech - noise, 0.0) / floor + 1e-30)
    return float(np.clip(snr, low, high))
