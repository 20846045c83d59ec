"""Small generated audio for the data tests (nothing is committed: everything goes to tmp_path)."""

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


def tiny_corpus(root: Path, speakers: int = 4, utts: int = 3, seconds: tuple[float, float] = (0.5, 1.5),
                sessions: int = 2) -> Path:
    """WAV files spk*/s*/u*.wav with a per-speaker pitch and a train.jsonl manifest (relative paths)."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(speakers):
        for u in range(utts):
            dur = float(np.round(rng.uniform(*seconds), 3))
            uid = f"spk{s}/s{u % sessions}/u{u}.wav"
            write_wav(root / "audio" / uid, tone(dur, 120 + 40 * s, seed=s * 100 + u))
            rows.append({"id": uid, "path": f"audio/{uid}", "speaker": f"spk{s}", "duration": dur,
                         "sample_rate": 16000, "session": f"spk{s}/s{u % sessions}"})
    return write_manifest(rows, root / "train.jsonl")


def speaker_table(rng: np.random.Generator, n_spk: int, per_spk: int, prefix: str, dim: int, *,
                  spread: float = 0.6, max_seconds: float = 10.0):
    """An ``EmbeddingTable`` of ``n_spk`` speakers x ``per_spk`` utterances around random speaker centres
    (ids ``{prefix}{speaker}/v/{i}.wav``, durations uniform in [1, max_seconds], speakers ``{prefix}{s}``)."""
    from mlsv.scoring.embeddings import EmbeddingTable

    centres = rng.standard_normal((n_spk, dim))
    spk = np.repeat(np.arange(n_spk), per_spk)
    emb = (centres[spk] + spread * rng.standard_normal((len(spk), dim))).astype(np.float32)
    return EmbeddingTable(np.array([f"{prefix}{s}/v/{i}.wav" for i, s in enumerate(spk)]), emb,
                          rng.uniform(1, max_seconds, len(spk)).astype(np.float32),
                          np.array([f"{prefix}{s}" for s in spk]))
