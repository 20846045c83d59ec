"""The built-in synthetic corpus: source-filter voices that differ the way people do, recorded in
sessions with their own channel, plus a matching augmentation bank (noise, music, babble, RIRs).

Each speaker is a ``Voice``: F0 range and contour, vocal-tract length (formant scaling) with
individual formant and vowel deviations, spectral tilt, breathiness, jitter/shimmer, speaking rate.
An utterance is a random sequence of phone-like segments (vowels with formant targets, fricatives,
stops, nasals, pauses) rendered with a pulse-train + noise source filtered frame by frame in the STFT
domain. Each utterance belongs to a ``Session`` (channel colouring, background noise, small pitch
shift) and gets a random level, so speaker identity must come from the voice: trial lists exclude
same-session pairs.

``mfcc_baseline_eer`` scores trials with the cosine of plain MFCC means; the corpus is tuned so that
baseline is poor (about 15-35 % EER) while a trained projection (``lda_eer``) does far better.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlsv.data.audio import read_audio, write_audio
from mlsv.data.manifest import iter_rows, resolve_path, write_manifest
from mlsv.data.trials import Trials, make_trials, read_trials, write_trials
from mlsv.extras import needs_extra

SAMPLE_RATE = 16000
N_FFT = 512
HOP = N_FFT // 4  # 8 ms; the synthesis parameters live on this frame grid
FREQS = np.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE)  # (257,)
_WINDOW = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann: squared, it sums to 1.5 at hop N_FFT/4

# Adult male vowel targets F1..F3 (Hz, after Peterson & Barney 1952); F4, F5 are added per speaker.
VOWELS = np.array(
    [
        [270, 2290, 3010],
        [390, 1990, 2550],
        [530, 1840, 2480],
        [660, 1720, 2410],
        [730, 1090, 2440],
        [570, 840, 2410],
        [440, 1020, 2240],
        [300, 870, 2240],
        [640, 1190, 2390],
        [490, 1350, 1690],
    ],
    dtype=np.float64,
)
# Fricatives: (centre Hz, bandwidth Hz, gain, voiced part) for s, sh, f, th, z, v, h-like.
FRICATIVES = np.array(
    [
        [5500, 2500, 0.35, 0.0],
        [3000, 1800, 0.35, 0.0],
        [4000, 6000, 0.08, 0.0],
        [5000, 5000, 0.06, 0.0],
        [5500, 2500, 0.25, 0.35],
        [4000, 6000, 0.06, 0.35],
        [1500, 2500, 0.10, 0.0],
    ]
)
STOP_BURSTS = np.array([800.0, 3800.0, 2000.0])  # p/b, t/d, k/g burst centres (Hz)
TIMBRE_DB = 6.0  # std of a voice's individual spectral peaks and dips (dB)


def _stft(x: np.ndarray) -> np.ndarray:
    """(N,) with N a multiple of HOP -> (N // HOP + 1, N_FFT // 2 + 1) complex, centred frames."""
    xp = np.pad(x, (N_FFT // 2, N_FFT // 2))
    frames = np.lib.stride_tricks.sliding_window_view(xp, N_FFT)[::HOP]
    return np.fft.rfft(frames * _WINDOW, axis=-1)


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
    """Weighted overlap-add inverse of ``_stft``: (T, F) -> (n,)."""
    frames = np.fft.irfft(spec, n=N_FFT, axis=-1) * _WINDOW  # (T, N_FFT)
    t = frames.shape[0]
    blocks = np.zeros((t + 3, HOP))
    parts = frames.reshape(t, 4, HOP)
    for k in range(4):
        blocks[k : k + t] += parts[:, k]
    return blocks.reshape(-1)[N_FFT // 2 : N_FFT // 2 + n] / 1.5


def _resonances(freqs: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Product of 2nd-order resonances, unit gain at DC.

    Args:
        freqs: (T, K) centre frequencies; bands: (T, K) bandwidths (Hz).
    Returns:
        (T, F) magnitude envelope over ``FREQS``.
    """
    f = FREQS.astype(np.float32)[None, None, :]
    c, h2 = freqs.astype(np.float32)[..., None], (bands.astype(np.float32)[..., None] / 2) ** 2
    power = (c**2 + h2) ** 2 / (((f - c) ** 2 + h2) * ((f + c) ** 2 + h2))
    return np.sqrt(power.prod(axis=1))


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average along axis 0 (edge-padded) of (T,) or (T, K)."""
    if width <= 1:
        return x
    pad = [(width // 2, width - 1 - width // 2)] + [(0, 0)] * (x.ndim - 1)
    xp = np.pad(x, pad, mode="edge")
    csum = np.cumsum(np.concatenate([np.zeros((1,) + xp.shape[1:]), xp]), axis=0)
    return (csum[width:] - csum[:-width]) / width


def _coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown): (n,)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1]
    x = np.fft.irfft(spec * f ** (-exponent / 2), n=n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker's voice (all that identifies them)."""

    f0: float  # mean F0 (Hz)
    f0_range: float  # std of the F0 contour (semitones)
    declination: float  # F0 fall over a phrase (semitones)
    vtl: float  # formant scale (shorter vocal tract -> higher formants)
    formant_dev: tuple[float, ...]  # (5,) individual multiplicative deviations of F1..F5
    vowel_dev: tuple[tuple[float, ...], ...]  # (10, 3) per-vowel deviations (accent)
    bandwidth: float  # formant bandwidth scale
    tilt: float  # source spectral slope exponent (larger: darker voice)
    tilt_corner: float  # Hz
    breathiness: float  # aspiration noise relative to the pulses
    jitter: float  # period std / period
    shimmer: float  # pulse amplitude std / amplitude
    rate: float  # phone duration scale (larger: slower)
    nasality: float  # gain of nasal murmurs
    timbre_db: tuple[float, ...]  # (F,) individual voice-quality colouring of voiced sounds, dB over FREQS


def sample_voice(rng: np.random.Generator) -> Voice:
    """Draws a voice: sex sets F0 and vocal-tract length, everything else varies individually."""
    female = rng.random() < 0.5
    f0 = rng.uniform(165, 255) if female else rng.uniform(85, 150)
    vtl = rng.uniform(1.08, 1.25) if female else rng.uniform(0.9, 1.06)
    return Voice(
        f0=float(f0),
        f0_range=float(rng.uniform(0.8, 3.5)),
        declination=float(rng.uniform(0.5, 3.0)),
        vtl=float(vtl),
        formant_dev=tuple(float(v) for v in 1 + rng.normal(0, [0.05, 0.05, 0.04, 0.05, 0.05])),
        vowel_dev=tuple(tuple(float(v) for v in row) for row in 1 + rng.normal(0, 0.05, (len(VOWELS), 3))),
        bandwidth=float(rng.uniform(0.7, 1.6)),
        tilt=float(rng.uniform(0.6, 1.5)),
        tilt_corner=float(rng.uniform(150, 600)),
        breathiness=float(rng.uniform(0.02, 0.35)),
        jitter=float(rng.uniform(0.002, 0.025)),
        shimmer=float(rng.uniform(0.02, 0.15)),
        rate=float(rng.uniform(0.75, 1.35)),
        nasality=float(rng.uniform(0.15, 0.5)),
        timbre_db=tuple(float(v) for v in _random_eq(rng, TIMBRE_DB, (3, 7))),
    )


@dataclass(frozen=True)
class Session:
    """A recording condition shared by some of a speaker's utterances (a 'video')."""

    eq_db: tuple[float, ...]  # (F,) channel colouring in dB over FREQS
    pitch_shift: float  # semitones
    noise_snr: float  # dB, background noise
    noise_colour: float  # spectral exponent of the background noise


def _random_eq(rng: np.random.Generator, db: float, bumps: tuple[int, int]) -> np.ndarray:
    """A smooth random dB curve over FREQS: a few Gaussian peaks/dips (std ``db``) in log frequency."""
    logf = np.log2(np.maximum(FREQS, 20.0))
    eq = np.zeros_like(FREQS)
    for _ in range(rng.integers(*bumps)):
        centre, width = rng.uniform(np.log2(150), np.log2(7000)), rng.uniform(0.2, 1.0)
        eq += rng.normal(0, db) * np.exp(-0.5 * ((logf - centre) / width) ** 2)
    return eq


def sample_session(rng: np.random.Generator, channel_db: float) -> Session:
    """Random channel: a few peaks/dips of about ``channel_db`` dB, band limits, background noise."""
    eq = _random_eq(rng, channel_db, (2, 6))
    high_pass, low_pass = rng.uniform(40, 150), rng.uniform(6500, 7900)
    eq += 10 * np.log10(1 / (1 + (high_pass / np.maximum(FREQS, 1.0)) ** 4) + 1e-6)
    eq += 10 * np.log10(1 / (1 + (FREQS / low_pass) ** rng.uniform(6, 16)) + 1e-6)
    return Session(
        tuple(float(v) for v in eq), float(rng.normal(0, 0.6)), float(rng.uniform(30, 45)), float(rng.uniform(0.8, 1.2))
    )


def _phone_track(voice: Voice, n_frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Frame-level synthesis parameters for a random phone sequence filling ``n_frames``.

    Returns (T,) arrays ``av`` (voiced gain), ``an`` (noise gain), ``noise_centre``, ``noise_band``
    and (T, 5) ``formants`` (log Hz), T = ``n_frames``.
    """
    fdev, vdev = np.asarray(voice.formant_dev), np.asarray(voice.vowel_dev)
    f45 = np.array([3400.0, 4400.0]) * voice.vtl * fdev[3:]
    lengths: list[int] = []
    params: list[tuple[np.ndarray, float, float, float, float]] = []  # formants (5,), av, an, centre, band

    def add(
        seconds: float, formants: np.ndarray, av: float, an: float = 0.0, centre: float = 1000.0, band: float = 1000.0
    ) -> None:
        lengths.append(int(round(seconds * voice.rate * SAMPLE_RATE / HOP)))
        params.append((formants, av, an, centre, band))

    vowel = np.concatenate([VOWELS[4] * voice.vtl * fdev[:3], f45])
    add(rng.uniform(0, 0.1), vowel, 0.0)  # leading silence
    while sum(lengths) < n_frames:
        for _ in range(rng.integers(2, 9)):  # syllables in a phrase
            v = int(rng.integers(len(VOWELS)))
            vowel = np.concatenate([VOWELS[v] * vdev[v] * voice.vtl * fdev[:3], f45])
            if rng.random() < 0.7:  # onset consonant
                kind = rng.random()
                if kind < 0.45:
                    c, b, g, voiced = FRICATIVES[rng.integers(len(FRICATIVES))]
                    add(rng.uniform(0.06, 0.13), vowel, voiced, g, c * voice.vtl**0.5, b)
                elif kind < 0.8:
                    add(rng.uniform(0.03, 0.07), vowel, 0.0)  # stop closure, then its burst
                    add(
                        rng.uniform(0.015, 0.03),
                        vowel,
                        0.0,
                        0.5,
                        STOP_BURSTS[rng.integers(len(STOP_BURSTS))] * voice.vtl**0.5,
                        1500.0,
                    )
                else:
                    add(rng.uniform(0.05, 0.1), np.array([250.0, 1100.0, 2300.0, *f45]) * voice.vtl, voice.nasality)
            add(rng.uniform(0.07, 0.2), vowel, rng.uniform(0.5, 1.0))
            if rng.random() < 0.3:  # coda fricative
                c, b, g, voiced = FRICATIVES[rng.integers(len(FRICATIVES))]
                add(rng.uniform(0.05, 0.11), vowel, voiced, g * 0.8, c * voice.vtl**0.5, b)
        add(rng.uniform(0.08, 0.35), vowel, 0.0)  # pause between phrases
    counts = np.asarray(lengths)

    def track(k: int) -> np.ndarray:
        return np.repeat(np.array([p[k] for p in params], dtype=np.float64), counts, axis=0)[:n_frames]

    return {
        "formants": _smooth(np.log(track(0)), 7),  # coarticulation: 56 ms smoothing in log frequency
        "av": _smooth(track(1), 3),
        "an": _smooth(track(2), 2),
        "noise_centre": track(3),
        "noise_band": track(4),
    }


def synthesize(voice: Voice, session: Session, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Renders one utterance: (round(seconds * 16000 / HOP) * HOP,) float32, peak below 1."""
    n_frames_sig = max(int(round(seconds * SAMPLE_RATE / HOP)), 8)
    n = n_frames_sig * HOP
    t_frames = n // HOP + 1
    track = _phone_track(voice, t_frames, rng)

    # F0 contour: declination per phrase-ish span plus a smooth random walk, in semitones
    walk = _smooth(np.cumsum(rng.normal(0, 1, t_frames)), 25)
    walk = (walk - walk.mean()) / (walk.std() + 1e-9) * voice.f0_range
    decline = np.linspace(voice.declination / 2, -voice.declination / 2, t_frames)
    semis = walk + decline + session.pitch_shift + rng.normal(0, 0.4)
    f0 = voice.f0 * 2 ** (semis / 12)
    f0_samples = np.interp(np.arange(n), np.arange(t_frames) * HOP, f0)
    phase = np.cumsum(f0_samples / SAMPLE_RATE)
    pulses = np.flatnonzero(np.diff(np.floor(phase))) + 1
    period = SAMPLE_RATE / f0_samples[pulses]
    pulses = np.clip(pulses + np.round(rng.normal(0, voice.jitter, len(pulses)) * period).astype(int), 0, n - 1)
    source = np.zeros(n, dtype=np.float32)
    amp = np.sqrt(period) * np.clip(1 + voice.shimmer * rng.normal(size=len(pulses)), 0.2, None)
    np.add.at(source, pulses, amp)
    cycle = 0.4 + 0.3 * (1 + np.cos(2 * np.pi * phase))  # aspiration pulses with the glottal cycle
    source += voice.breathiness * rng.standard_normal(n, dtype=np.float32) * cycle

    formants = np.exp(track["formants"][::2])  # the tracks are smooth: envelopes at 16 ms suffice
    bands = np.array([70.0, 100.0, 140.0, 200.0, 260.0]) * voice.bandwidth * (1 + 0.1 * formants / 1000)
    tract = np.repeat(_resonances(formants, bands), 2, axis=0)[:t_frames]  # (T, F)
    tilt = (1 + (FREQS / voice.tilt_corner) ** 2) ** (-voice.tilt / 2) * (FREQS / 1000 + 0.05)  # + lip radiation
    timbre = 10 ** (np.asarray(voice.timbre_db) / 20)
    env_v = tract * (tilt * timbre).astype(np.float32)[None] * track["av"].astype(np.float32)[:, None]
    fric = _resonances(track["noise_centre"][:, None], track["noise_band"][:, None])
    env_n = fric * track["an"].astype(np.float32)[:, None] * 0.6
    white = _stft(rng.standard_normal(n, dtype=np.float32))
    speech = _stft(source) * env_v + white * env_n
    colour = (np.maximum(FREQS, FREQS[1]) ** (-session.noise_colour / 2)).astype(np.float32)
    background = np.roll(white, t_frames // 2, axis=0) * colour[None]  # the same noise, elsewhere in time
    gain = np.sqrt(np.sum(np.abs(speech) ** 2) / np.sum(np.abs(background) ** 2) * 10 ** (-session.noise_snr / 10))
    channel = (10 ** (np.asarray(session.eq_db) / 20)).astype(np.float32)
    y = _istft((speech + gain * background) * channel[None], n)
    level = 10 ** (rng.uniform(-32, -16) / 20)  # random recording level (dBFS RMS)
    y *= level / (np.sqrt(np.mean(y**2)) + 1e-12)
    peak = np.abs(y).max()
    if peak > 0.98:
        y *= 0.98 / peak
    return y.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# augmentation bank


def _music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Music-like audio: chords and a melody of harmonic notes with decays, some percussion: (n,)."""
    n = int(seconds * SAMPLE_RATE)
    y = np.zeros(n)
    tempo = rng.uniform(0.25, 0.7)  # seconds per beat
    root = rng.uniform(45, 60)  # MIDI note
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    t0 = 0.0
    while t0 < seconds:
        dur = tempo * rng.choice([1, 2, 4])
        notes = root + rng.choice(scale, size=rng.integers(1, 4)) + 12 * rng.integers(0, 2)
        start, length = int(t0 * SAMPLE_RATE), int(min(dur, seconds - t0) * SAMPLE_RATE)
        t = np.arange(length) / SAMPLE_RATE
        decay = np.exp(-t / rng.uniform(0.2, 1.5))
        for note in notes:
            f = 440 * 2 ** ((note - 69) / 12)
            harmonics = np.arange(1, int(min(12, 7000 // f)) + 1)
            weights = harmonics ** -rng.uniform(0.8, 2.0)
            y[start : start + length] += decay * (
                weights[:, None] * np.sin(2 * np.pi * f * harmonics[:, None] * t)
            ).sum(0)
        if rng.random() < 0.5:  # percussion hit
            hit = min(length, 1600)
            y[start : start + hit] += rng.standard_normal(hit) * np.exp(-np.arange(hit) / 200) * 0.5
        t0 += dur
    return y / (np.sqrt(np.mean(y**2)) + 1e-12)


def _noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Coloured noise with slow amplitude modulation, sometimes a mains hum: (n,)."""
    n = int(seconds * SAMPLE_RATE)
    y = _coloured_noise(n, rng.uniform(0, 2), rng)
    mod = _smooth(rng.normal(0, 1, n // 800 + 2), 5)
    y *= np.exp(0.3 * np.interp(np.arange(n), np.arange(len(mod)) * 800, mod))
    if rng.random() < 0.3:
        t = np.arange(n) / SAMPLE_RATE
        hum = rng.choice([50.0, 60.0])
        y += sum(np.sin(2 * np.pi * hum * k * t) / k for k in range(1, 6)) * rng.uniform(0.2, 1.0)
    return y / (np.sqrt(np.mean(y**2)) + 1e-12)


def simulate_rir(rng: np.random.Generator, rt60: float | None = None) -> np.ndarray:
    """An exponentially decaying room response with a delayed direct path and early reflections.

    Returns (R,) float32 with its direct-path peak after a random 0-15 ms pre-delay.
    """
    rt60 = rng.uniform(0.2, 0.9) if rt60 is None else rt60
    n = int(min(rt60 * 1.2, 1.0) * SAMPLE_RATE)
    delay = int(rng.integers(0, int(0.015 * SAMPLE_RATE)))
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: delay + 16] = 0
    tail *= 10 ** (-rng.uniform(0, 10) / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)  # reverberant energy
    rir = tail
    rir[delay] += 1.0
    for _ in range(rng.integers(3, 9)):  # early reflections within 50 ms
        k = delay + int(rng.integers(int(0.002 * SAMPLE_RATE), int(0.05 * SAMPLE_RATE)))
        if k < n:
            rir[k] += rng.uniform(-0.6, 0.6)
    return rir.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# the corpus


@dataclass(frozen=True)
class SyntheticCorpus:
    """Paths of a made corpus (all under ``root``)."""

    root: Path
    train: Path
    validation: Path
    validation_trials: Path
    test: Path
    test_trials: Path
    noise: Path
    rirs: Path


def _corpus_paths(root: Path) -> SyntheticCorpus:
    return SyntheticCorpus(
        root,
        root / "train.jsonl",
        root / "validation.jsonl",
        root / "validation_trials.txt",
        root / "test.jsonl",
        root / "test_trials.txt",
        root / "noise.jsonl",
        root / "rirs.jsonl",
    )


def make_synthetic_corpus(
    out_dir: str | Path,
    n_speakers: int = 40,
    utts_per_speaker: int = 20,
    *,
    n_validation_speakers: int = 8,
    n_test_speakers: int = 16,
    sessions_per_speaker: tuple[int, int] = (3, 5),
    min_seconds: float = 1.0,
    max_seconds: float = 6.0,
    channel_db: float = 2.0,
    trials_per_utterance: int = 6,
    bank_files: int = 6,
    bank_seconds: float = 12.0,
    n_rirs: int = 24,
    audio_format: str = "flac",
    seed: int = 0,
    overwrite: bool = False,
) -> SyntheticCorpus:
    """Makes the synthetic corpus, deterministic for a given ``seed`` (and arguments).

    Layout under ``out_dir``: ``audio/<speaker>/<session>/<utt>.<fmt>`` and ``bank/...``;
    manifests ``train.jsonl`` (``n_speakers`` training speakers), ``validation.jsonl`` +
    ``validation_trials.txt`` and ``test.jsonl`` + ``test_trials.txt`` (disjoint held-out speakers;
    balanced trials, same-session pairs excluded), ``noise.jsonl`` (categories noise, music, speech:
    babble from extra speakers outside the corpus) and ``rirs.jsonl`` (simulated rooms).
    ``corpus.json`` records the arguments; a call with the same arguments on a complete folder
    returns at once unless ``overwrite``.

    Args:
        n_speakers, utts_per_speaker: training speakers and utterances per speaker (all splits).
        min_seconds, max_seconds: utterance durations are uniform in this range.
        channel_db: std of the session channel's peaks and dips (larger: harder for spectral cues).
        bank_files, bank_seconds: files per noise category and their length.
    """
    root = Path(out_dir)
    paths = _corpus_paths(root)
    params = {k: v for k, v in locals().items() if k not in ("out_dir", "root", "paths", "overwrite")}
    params["sessions_per_speaker"] = list(sessions_per_speaker)
    if not overwrite and _is_complete(paths, params):
        return paths
    _check_corpus_arguments(audio_format, min_seconds, max_seconds)
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "corpus.json"
    stamp.unlink(missing_ok=True)
    started = time.time()
    splits = {"train": n_speakers, "validation": n_validation_speakers, "test": n_test_speakers}
    rows = _write_speakers(
        root,
        splits,
        utts_per_speaker,
        sessions_per_speaker=sessions_per_speaker,
        seconds=(min_seconds, max_seconds),
        channel_db=channel_db,
        audio_format=audio_format,
        seed=seed,
    )
    _write_manifests_and_trials(paths, rows, trials_per_utterance, seed)
    bank_rng = np.random.default_rng([seed, 3])  # the noise bank, then the rooms
    write_manifest(
        _write_noise_bank(
            root, bank_rng, bank_files, bank_seconds, channel_db=channel_db, audio_format=audio_format, seed=seed
        ),
        paths.noise,
    )
    write_manifest(_write_rirs(root, bank_rng, n_rirs), paths.rirs)
    stamp.write_text(json.dumps({"params": params, "seconds_to_make": round(time.time() - started, 2)}, indent=1))
    return paths


def _is_complete(paths: SyntheticCorpus, params: dict) -> bool:
    """Whether ``paths.root`` holds a whole corpus made with ``params``: its ``corpus.json`` records them
    and every manifest and trial list is there."""
    stamp = paths.root / "corpus.json"
    return (
        stamp.is_file()
        and json.loads(stamp.read_text()).get("params") == params
        and all(Path(p).is_file() for p in asdict(paths).values() if Path(p).suffix)
    )


def _check_corpus_arguments(audio_format: str, min_seconds: float, max_seconds: float) -> None:
    """Raises ValueError for an audio format other than flac or wav, or an empty duration range."""
    if audio_format not in ("flac", "wav"):
        raise ValueError(f"audio_format must be 'flac' or 'wav', got {audio_format!r}")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")


def _write_clip(
    root: Path, folder: str, uid: str, y: np.ndarray, speaker: str, subtype: str = "PCM_16", **extra
) -> dict:
    """Writes ``root/folder/uid`` atomically (a temporary name, then renamed) and returns its manifest row:
    ``id``, ``path``, ``speaker``, ``duration``, ``sample_rate``, then ``extra``."""
    write_audio(root / folder / uid, y, SAMPLE_RATE, subtype=subtype)
    return {
        "id": uid,
        "path": f"{folder}/{uid}",
        "speaker": speaker,
        "duration": len(y) / SAMPLE_RATE,
        "sample_rate": SAMPLE_RATE,
        **extra,
    }


def _write_speakers(
    root: Path,
    splits: dict[str, int],
    utts_per_speaker: int,
    *,
    sessions_per_speaker: tuple[int, int],
    seconds: tuple[float, float],
    channel_db: float,
    audio_format: str,
    seed: int,
) -> dict[str, list[dict]]:
    """Every split's speakers (``spk0000`` on, numbered across the splits in order) with their utterances
    written under ``audio/``. Returns each split's manifest rows."""
    rows: dict[str, list[dict]] = {k: [] for k in splits}
    spk_index = 0
    for split, count in splits.items():
        for _ in range(count):
            voice, sessions, assign = _speaker_voice(
                spk_index, utts_per_speaker, sessions_per_speaker, channel_db, seed
            )
            rows[split] += _write_utterances(
                root,
                spk_index,
                voice,
                sessions,
                assign,
                utts_per_speaker,
                seconds=seconds,
                audio_format=audio_format,
                seed=seed,
            )
            spk_index += 1
    return rows


def _speaker_voice(
    spk_index: int, n_utts: int, sessions_per_speaker: tuple[int, int], channel_db: float, seed: int
) -> tuple[Voice, list[Session], np.ndarray]:
    """A corpus speaker's voice, recording sessions, and the session of each of ``n_utts`` utterances
    (drawn from the speaker's own random stream)."""
    srng = np.random.default_rng([seed, 1, spk_index])
    voice = sample_voice(srng)
    n_sessions = int(srng.integers(sessions_per_speaker[0], sessions_per_speaker[1] + 1))
    sessions = [sample_session(srng, channel_db) for _ in range(n_sessions)]
    # every session gets at least one utterance, so cross-session trials exist
    assign = np.concatenate([np.arange(n_sessions), srng.integers(0, n_sessions, max(n_utts - n_sessions, 0))])
    return voice, sessions, assign


def _write_utterances(
    root: Path,
    spk_index: int,
    voice: Voice,
    sessions: list[Session],
    assign: np.ndarray,
    n_utts: int,
    *,
    seconds: tuple[float, float],
    audio_format: str,
    seed: int,
) -> list[dict]:
    """Synthesizes a speaker's utterances (each from its own random stream, durations uniform in
    ``seconds``) to ``audio/<speaker>/<session>/<utt>.<fmt>``. Returns their manifest rows."""
    speaker = f"spk{spk_index:04d}"
    rows = []
    for u in range(n_utts):
        s = int(assign[u % len(assign)])
        urng = np.random.default_rng([seed, 2, spk_index, u])
        y = synthesize(voice, sessions[s], urng.uniform(seconds[0], seconds[1]), urng)
        uid = f"{speaker}/s{s:02d}/{u:05d}.{audio_format}"
        rows.append(_write_clip(root, "audio", uid, y, speaker, session=f"{speaker}/s{s:02d}"))
    return rows


def _write_manifests_and_trials(
    paths: SyntheticCorpus, rows: dict[str, list[dict]], trials_per_utterance: int, seed: int
) -> None:
    """Each split's manifest, and the validation and test trial lists (balanced, no same-session pairs)."""
    for split, split_rows in rows.items():
        write_manifest(split_rows, getattr(paths, split))
    for split in ("validation", "test"):
        r = rows[split]
        trials = make_trials(
            [x["id"] for x in r],
            [x["speaker"] for x in r],
            [x["session"] for x in r],
            per_utterance=trials_per_utterance,
            seed=seed,
            name=f"{split}_trials",
        )
        write_trials(trials, getattr(paths, f"{split}_trials"))


def _write_noise_bank(
    root: Path,
    rng: np.random.Generator,
    n_files: int,
    seconds: float,
    *,
    channel_db: float,
    audio_format: str,
    seed: int,
) -> list[dict]:
    """``n_files`` each of noise, music and babble sources under ``bank/``: their manifest rows with a
    ``category`` (noise, music, speech)."""
    bank: list[dict] = []
    for i in range(n_files):
        for category, make in (("noise", _noise), ("music", _music)):
            y = make(seconds, rng) * 0.1
            uid = f"{category}/{category}-{i:03d}.{audio_format}"
            bank.append(_write_clip(root, "bank", uid, y.astype(np.float32), f"{category}-{i:03d}", category=category))
        y = _talker(i, rng, seconds, channel_db, seed)
        uid = f"speech/talker-{i:03d}.{audio_format}"
        bank.append(_write_clip(root, "bank", uid, y, f"talker-{i:03d}", category="speech"))
    return bank


def _talker(i: int, rng: np.random.Generator, seconds: float, channel_db: float, seed: int) -> np.ndarray:
    """A babble source: a speaker outside the corpus, several utterances back to back (``seconds`` or more)."""
    voice = sample_voice(np.random.default_rng([seed, 4, i]))
    session = sample_session(rng, channel_db)
    parts, total = [], 0.0
    while total < seconds:
        parts.append(synthesize(voice, session, rng.uniform(2, 5), rng))
        total += len(parts[-1]) / SAMPLE_RATE
    return np.concatenate(parts)


def _write_rirs(root: Path, rng: np.random.Generator, n_rirs: int) -> list[dict]:
    """``n_rirs`` simulated rooms under ``bank/rirs/``: their manifest rows (``kind`` simulated)."""
    rows = []
    for i in range(n_rirs):
        # WAV float keeps the tail's low-level samples exact
        rows.append(
            _write_clip(
                root,
                "bank",
                f"rirs/room-{i:03d}.wav",
                simulate_rir(rng),
                f"room-{i:03d}",
                subtype="FLOAT",
                kind="simulated",
            )
        )
    return rows


# ----------------------------------------------------------------------------------------------
# the MFCC baseline


def mfcc(x: np.ndarray, sample_rate: int = SAMPLE_RATE, n_mfcc: int = 20, n_mels: int = 40) -> np.ndarray:
    """MFCCs: 25 ms Hamming frames every 10 ms, pre-emphasis 0.97, log mel power, DCT-II (ortho).

    Args:
        x: (S,) waveform.
    Returns:
        (T, n_mfcc) including c0.
    """
    with needs_extra("train", "the synthetic corpus's baselines"):
        from scipy.fft import dct

    win, hop, n_fft = int(0.025 * sample_rate), int(0.010 * sample_rate), 512
    x = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    if len(x) < win:
        x = np.pad(x, (0, win - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * np.hamming(win)
    power = np.abs(np.fft.rfft(frames, n=n_fft)) ** 2
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(20), mel(sample_rate / 2 - 200), n_mels + 2) / 2595) - 1)
    bins = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fbank = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))  # (n_mels, F)
    return dct(np.log(power @ fbank.T + 1e-10), type=2, norm="ortho", axis=-1)[:, :n_mfcc]


def _eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate in percent (ROC point where miss and false-alarm rates cross)."""
    with needs_extra("train", "the synthetic corpus's baselines"):
        from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float(100 * (fpr[i] + fnr[i]) / 2)


def _mfcc_stats(manifest: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, speakers, (N, 38) MFCC means then stds of c1..c19) of a manifest's utterances."""
    root = Path(manifest).resolve().parent
    ids, speakers, feats = [], [], []
    for _, row in iter_rows(manifest):
        x, _ = read_audio(resolve_path(row["path"], root), target_sr=SAMPLE_RATE)
        c = mfcc(x)[:, 1:]  # c0 is the level: the plain baseline leaves it out
        ids.append(row["id"])
        speakers.append(row["speaker"])
        feats.append(np.concatenate([c.mean(0), c.std(0)]))
    return ids, speakers, np.stack(feats)


def _cosine_eer(ids: list[str], feats: np.ndarray, trials: Trials) -> float:
    index = {u: i for i, u in enumerate(ids)}
    e = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    a = np.array([index[u] for u in trials.enroll])
    b = np.array([index[u] for u in trials.test])
    return _eer(np.sum(e[a] * e[b], axis=1), trials.labels)


def mfcc_baseline_eer(manifest: str | Path, trials: str | Path) -> float:
    """EER (%) of cosine scoring between plain MFCC means (c1..c19, no normalisation) on a trial list."""
    ids, _, feats = _mfcc_stats(manifest)
    return _cosine_eer(ids, feats[:, :19], read_trials(trials))


def corpus_baseline(corpus: SyntheticCorpus, out: str | Path | None = None) -> dict:
    """Scores the corpus's test trials with the MFCC-mean cosine baseline and with an LDA projection of
    MFCC means and stds trained on the training speakers (a proof that identity is learnable).

    Returns (and writes to ``out`` as JSON) ``{"mfcc_cosine_eer", "lda_eer", "n_trials", ...}``.
    """
    with needs_extra("train", "the synthetic corpus's baselines"):
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    trials = read_trials(corpus.test_trials)
    test_ids, _, test_feats = _mfcc_stats(corpus.test)
    _, train_spk, train_feats = _mfcc_stats(corpus.train)
    lda = LinearDiscriminantAnalysis(n_components=min(len(set(train_spk)) - 1, train_feats.shape[1]))
    lda.fit(train_feats, train_spk)
    projected = lda.transform(test_feats)
    result = {
        "mfcc_cosine_eer": round(_cosine_eer(test_ids, test_feats[:, :19], trials), 2),
        "lda_eer": round(_cosine_eer(test_ids, projected - projected.mean(0), trials), 2),
        "n_trials": len(trials),
        "test_speakers": len({row["speaker"] for _, row in iter_rows(corpus.test)}),
        "trials": str(corpus.test_trials),
    }
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result
