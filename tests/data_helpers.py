"""Small generated audio, manifests and embedding tables for the tests (nothing is committed: everything goes
to tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from mlsv.data.manifest import write_manifest


def tone(seconds: float, f0: float = 220.0, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a little noise: (round(seconds * sample_rate),) float32 in [-0.5, 0.5]."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5)) * 0.2
    x = x + np.random.default_rng(seed).normal(0, 0.01, len(t))
    return x.astype(np.float32)


def write_wav(path: Path, x: np.ndarray, sample_rate: int = 16000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sample_rate, subtype=subtype)
    return path


def write_m4a(path: Path, x: np.ndarray, sample_rate: int = 16000) -> Path:
    """AAC in an MP4 container via PyAV (like VoxCeleb2)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="ipod") as c:
        stream = c.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return path


def tiny_corpus(
    root: Path, speakers: int = 4, utts: int = 3, seconds: tuple[float, float] = (0.5, 1.5), sessions: int = 2
) -> Path:
    """WAV files spk*/s*/u*.wav with a per-speaker pitch and a train.jsonl manifest (relative paths)."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(speakers):
        for u in range(utts):
            dur = float(np.round(rng.uniform(*seconds), 3))
            uid = f"spk{s}/s{u % sessions}/u{u}.wav"
            write_wav(root / "audio" / uid, tone(dur, 120 + 40 * s, seed=s * 100 + u))
            rows.append(
                {
                    "id": uid,
                    "path": f"audio/{uid}",
                    "speaker": f"spk{s}",
                    "duration": dur,
                    "sample_rate": 16000,
                    "session": f"spk{s}/s{u % sessions}",
                }
            )
    return write_manifest(rows, root / "train.jsonl")


def speaker_table(
    rng: np.random.Generator,
    n_spk: int,
    per_spk: int,
    prefix: str,
    dim: int,
    *,
    spread: float = 0.6,
    max_seconds: float = 10.0,
):
    """An ``EmbeddingTable`` of ``n_spk`` speakers x ``per_spk`` utterances around random speaker centres
    (ids ``{prefix}{speaker}/v/{i}.wav``, durations uniform in [1, max_seconds], speakers ``{prefix}{s}``)."""
    from mlsv.scoring.embeddings import EmbeddingTable

    centres = rng.standard_normal((n_spk, dim))
    spk = np.repeat(np.arange(n_spk), per_spk)
    emb = (centres[spk] + spread * rng.standard_normal((len(spk), dim))).astype(np.float32)
    return EmbeddingTable(
        np.array([f"{prefix}{s}/v/{i}.wav" for i, s in enumerate(spk)]),
        emb,
        rng.uniform(1, max_seconds, len(spk)).astype(np.float32),
        np.array([f"{prefix}{s}" for s in spk]),
    )


def voice(seconds: float, sr: int = 16000, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a harmonic tone with a syllable-rate envelope plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    return (0.2 * x * env + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def sine_voice(seconds: float = 0.5, f0: float = 150.0, seed: int = 0) -> np.ndarray:
    """A plainer test signal at 16 kHz: one sine plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_voice_manifest(path: Path, audio: dict[str, tuple[str, np.ndarray]]) -> Path:
    """A JSONL manifest of ``{id: (speaker, samples at 16 kHz)}``, each written as a WAV beside it."""
    import json

    rows = []
    for uid, (speaker, x) in audio.items():
        wav = path.parent / f"{uid}.wav"
        sf.write(wav, x, 16000, subtype="FLOAT")
        rows.append({"id": uid, "path": str(wav), "speaker": speaker, "duration": len(x) / 16000, "sample_rate": 16000})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def latin1_name(folder: Path, name: bytes) -> Path:
    """``folder / name`` for a name in Latin-1 (not UTF-8), as Python holds it: surrogate-escaped."""
    import os

    return folder / os.fsdecode(name)


def write_wav_bytes_path(path: Path, x: np.ndarray) -> Path:
    """A WAV at ``path`` even when its name is not UTF-8 (soundfile refuses such a str, not its bytes)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fsencode(path), x, 16000, subtype="PCM_16")
    return path
