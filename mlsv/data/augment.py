"""Noise, music, babble, TV and reverberation augmentation (docs/method.md#augmentation).

The reference's defect D18 is fixed (docs/method.md#d18-augmentation).

Two implementations with the same distribution:

* CPU callables (``Reverb``, ``AddNoise``, ``TV``, ``Augmenter``) for loader workers: each is
  ``__call__(wav (S,), sample_rate, rng: np.random.Generator) -> (S,)`` and reads noise sources at
  random offsets of long files (partial reads, no pre-splitting).
* ``BatchAugmenter`` for a (B, S) tensor on any device (the training loop applies it when
  ``AugmentConfig.where == "device"``): the banks are loaded once as tensors, noise is mixed at
  per-row SNRs and reverberation is an FFT convolution (``torch.fft``).

The recipe, and where it differs from the reference:

* With probability ``p`` one kind is drawn uniformly from ``kinds`` (reverb, noise, music, babble, tv).
* noise: 1 source, SNR ~ U(noise_snr); music: 1 source, SNR ~ U(music_snr); babble: n ~ U{babble_speakers}
  speech sources whose **sum** is at SNR ~ U(babble_snr) (the reference set each source at that SNR).
* Each source's duration class (full, 0.4-0.6, 0.2-0.4 of the crop) is drawn **per source** and the
  segment placed at a uniform random offset (zero elsewhere). SNR is measured over the whole crop:
  ``10 log10(sum(x**2) / sum(n**2))`` with n the total added signal, so it holds exactly.
* tv: one full-length speech source at U(babble_snr) plus one full-length music source at
  U(music_snr), **both relative to the clean crop** (the reference scaled music against the babbled one).
* band (not in the reference; opt-in): a telephone-like channel, every frequency outside
  [U(band_low_hz), U(band_high_hz)] removed (an FFT mask over the crop), the output rescaled to the
  input's RMS level. It needs no bank.
* reverb: the RIR (random channel) is cut to start at its direct-path peak (so the output is not
  delayed), scaled to unit energy, convolved, truncated to the crop, and the output is rescaled to the
  input's RMS level. When the bank holds several ``kind`` values (real, simulated) a kind is drawn
  uniformly first, so the ~300 real RIRs are not drowned by ~60k simulated ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mlsv.config import AugmentConfig
from mlsv.data.audio import AudioError, MissingDependencyError, read_audio, resample
from mlsv.data.manifest import iter_rows, manifest_root, resolve_path
from mlsv.extras import needs_extra

logger = logging.getLogger(__name__)

KINDS = ("reverb", "noise", "music", "babble", "tv", "band")
# which noise-manifest category each kind draws from
KIND_CATEGORIES = {"noise": ("noise",), "music": ("music",), "babble": ("speech",), "tv": ("speech", "music")}
# duration classes as fractions of the crop: full, about a half, about a third
DURATION_CLASSES = ((1.0, 1.0), (0.4, 0.6), (0.2, 0.4))


def measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR in dB of ``noisy`` against ``clean`` over the whole signal: (S,) arrays."""
    noise = noisy - clean
    return float(10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2)))


def align_rir(rir: np.ndarray) -> np.ndarray:
    """(R,) RIR cut to start at its direct-path (largest) peak and scaled to unit energy: (R',) float32."""
    rir = rir[int(np.argmax(np.abs(rir))) :].astype(np.float32)
    return rir / max(float(np.linalg.norm(rir)), 1e-8)


def host_to_device(data, device: str | torch.device) -> torch.Tensor:
    """Host data (a numpy array or CPU tensor) on ``device`` without waiting for the device's queue.

    A plain ``.to("cuda")`` of pageable memory waits for every queued kernel; here a GPU copy goes
    through pinned memory with ``non_blocking=True`` (the caching host allocator keeps the buffer alive
    until the copy is done). On CPU it is the same tensor.
    """
    t = torch.as_tensor(data)
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclass
class _Entry:
    source: str | bytes
    frames: int
    sample_rate: int
    group: str  # category (noise bank) or kind (RIR bank)


def _load_entries(manifest: str | Path, column: str, default: str) -> list[_Entry]:
    root = manifest_root(manifest)
    entries = []
    for lineno, row in iter_rows(manifest):
        group = str(row.get(column) or default)
        source = row["audio"] if row.get("audio") else resolve_path(row["path"], root)
        sr = int(row["sample_rate"])
        entries.append(_Entry(source, int(round(float(row["duration"]) * sr)), sr, group))
        if entries[-1].frames <= 0:
            raise ValueError(f"{manifest}:{lineno}: {row['id']}: zero duration")
    if not entries:
        raise ValueError(f"{manifest}: empty manifest")
    return entries


def _read_bank_file(bank: str, files: list[_Entry], e: _Entry, **kwargs) -> tuple[np.ndarray, int] | None:
    """``read_audio`` for an augmentation file: an undecodable one is logged, dropped from ``files`` (this
    process's copy of the bank) and None is returned, so that the speech it would have augmented is not
    blamed for it; a bank left with no files is an error naming it."""
    try:
        return read_audio(e.source, **kwargs)
    except MissingDependencyError:  # not a bad file: every such file fails
        raise
    except AudioError as error:
        logger.warning("dropping an undecodable file of the augmentation bank %s: %s", bank, error)
        files.remove(e)
        if not files:
            raise ValueError(
                f"augmentation bank {bank}: every file of a group failed to decode; last: {error}"
            ) from None
        return None


class NoiseBank:
    """Noise sources grouped by category, read at random offsets (only the segment needed is read).

    Args:
        manifest: rows with a ``category`` column (noise, music, speech); rows without one count as noise.
    """

    def __init__(self, manifest: str | Path):
        self.manifest = str(manifest)
        self.entries: dict[str, list[_Entry]] = {}
        for e in _load_entries(manifest, "category", "noise"):
            self.entries.setdefault(e.group, []).append(e)

    @property
    def categories(self) -> list[str]:
        return sorted(self.entries)

    def segment(self, category: str, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        """A random ``n``-sample stretch of a random file of ``category`` (wrap-padded if shorter): (n,)."""
        files = self.entries.get(category)
        if not files:
            raise KeyError(f"noise bank {self.manifest} has no {category!r} rows (has {self.categories})")
        while True:
            e = files[int(rng.integers(len(files)))]
            need = int(np.ceil(n * e.sample_rate / sample_rate))
            start = int(rng.integers(0, max(e.frames - need, 0) + 1))
            read = _read_bank_file(self.manifest, files, e, start=start, frames=need)
            if read is not None:
                break
        x = read[0]
        if e.sample_rate != sample_rate:
            x = resample(x, e.sample_rate, sample_rate)
        if len(x) == 0:
            return np.zeros(n, dtype=np.float32)
        return np.pad(x, (0, max(n - len(x), 0)), mode="wrap")[:n]


class RirBank:
    """Room impulse responses grouped by ``kind`` (real, simulated); a kind is drawn uniformly first."""

    def __init__(self, manifest: str | Path):
        self.manifest = str(manifest)
        self.entries: dict[str, list[_Entry]] = {}
        for e in _load_entries(manifest, "kind", "simulated"):
            self.entries.setdefault(e.group, []).append(e)
        self.kinds = sorted(self.entries)

    def draw(self, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        """A random aligned, unit-energy RIR (a random channel of multi-channel files): (R,) float32."""
        files = self.entries[self.kinds[int(rng.integers(len(self.kinds)))]]
        while (read := _read_bank_file(self.manifest, files, files[int(rng.integers(len(files)))], mono=False)) is None:
            pass
        x, sr = read
        x = x[:, int(rng.integers(x.shape[1]))]
        return align_rir(resample(x, sr, sample_rate))


@dataclass
class Reverb:
    """Convolves with a random RIR from ``bank``; output keeps the input's RMS level."""

    bank: RirBank

    def __call__(self, wav: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        with needs_extra("train", "reverberation (augment.rir_manifest)"):
            from scipy.signal import fftconvolve

        rir = self.bank.draw(sample_rate, rng)
        y = fftconvolve(wav, rir)[: len(wav)].astype(np.float32)
        return y * (_rms(wav) / max(_rms(y), 1e-8))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@dataclass
class AddNoise:
    """Adds ``sources`` segments of ``category`` whose sum is at SNR ~ U(``snr``) over the crop.

    Args:
        bank: the noise sources.
        category: noise, music or speech.
        snr: (low, high) dB.
        sources: (low, high) inclusive number of sources.
        full_duration: every source spans the crop (else a duration class is drawn per source).
    """

    bank: NoiseBank
    category: str
    snr: tuple[float, float]
    sources: tuple[int, int] = (1, 1)
    full_duration: bool = False

    def noise(self, wav: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        """The scaled additive signal for ``wav`` (S,): ``wav + noise`` is at the drawn SNR."""
        n = len(wav)
        total = np.zeros(n, dtype=np.float32)
        for _ in range(int(rng.integers(self.sources[0], self.sources[1] + 1))):
            lo, hi = DURATION_CLASSES[0 if self.full_duration else int(rng.integers(len(DURATION_CLASSES)))]
            length = max(1, min(n, int(round(rng.uniform(lo, hi) * n))))
            seg = self.bank.segment(self.category, length, sample_rate, rng)
            offset = int(rng.integers(0, n - length + 1))
            total[offset : offset + length] += seg / max(_rms(seg), 1e-8)  # sources at equal power
        p_noise = float(np.sum(np.square(total, dtype=np.float64)))
        p_clean = float(np.sum(np.square(wav, dtype=np.float64)))
        snr = rng.uniform(*self.snr)
        if p_noise <= 0 or p_clean <= 0:
            return np.zeros_like(total)
        return total * np.float32(np.sqrt(p_clean / (p_noise * 10 ** (snr / 10))))

    def __call__(self, wav: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        return wav + self.noise(wav, sample_rate, rng)


@dataclass
class TV:
    """Television: full-length speech and music, each at its own SNR against the clean crop."""

    speech: AddNoise
    music: AddNoise

    def __call__(self, wav: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        return wav + self.speech.noise(wav, sample_rate, rng) + self.music.noise(wav, sample_rate, rng)


@dataclass
class Band:
    """A telephone-like band limit: frequencies outside [U(low), U(high)] Hz removed, the RMS level kept."""

    low: tuple[float, float]
    high: tuple[float, float]

    def __call__(self, wav: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = rng.uniform(*self.low), rng.uniform(*self.high)
        spectrum = np.fft.rfft(wav)
        f = np.fft.rfftfreq(len(wav), 1.0 / sample_rate)
        y = np.fft.irfft(spectrum * ((f >= lo) & (f <= hi)), len(wav)).astype(wav.dtype)
        return y * np.asarray(_rms(wav) / max(_rms(y), 1e-8), dtype=wav.dtype)


Transform = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclass
class Augmenter:
    """With probability ``p`` applies one transform drawn uniformly from ``transforms``.

    Build it from a config with ``Augmenter.from_config``.
    """

    transforms: dict[str, Transform]
    p: float = 0.6
    kinds: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.kinds = list(self.transforms)

    @classmethod
    def from_config(
        cls, cfg: AugmentConfig, noise_manifest: str | Path | None = None, rir_manifest: str | Path | None = None
    ) -> Augmenter:
        """Builds the CPU augmenter (manifests default to the config's).

        Raises:
            ValueError: an unknown kind, or a kind whose bank (or category) is missing, named.
        """
        kinds = _check_kinds(cfg)
        noise_manifest = noise_manifest or cfg.noise_manifest
        rir_manifest = rir_manifest or cfg.rir_manifest
        noise = NoiseBank(noise_manifest) if noise_manifest and set(kinds) - {"reverb", "band"} else None
        _check_banks(kinds, noise.categories if noise else None, bool(rir_manifest))
        transforms: dict[str, Transform] = {}
        for kind in kinds:
            if kind == "reverb":
                transforms[kind] = Reverb(RirBank(rir_manifest))
            elif kind == "band":
                transforms[kind] = Band(tuple(cfg.band_low_hz), tuple(cfg.band_high_hz))
            elif kind == "noise":
                transforms[kind] = AddNoise(noise, "noise", tuple(cfg.noise_snr))
            elif kind == "music":
                transforms[kind] = AddNoise(noise, "music", tuple(cfg.music_snr))
            elif kind == "babble":
                transforms[kind] = AddNoise(noise, "speech", tuple(cfg.babble_snr), tuple(cfg.babble_speakers))
            else:
                transforms[kind] = TV(
                    AddNoise(noise, "speech", tuple(cfg.babble_snr), full_duration=True),
                    AddNoise(noise, "music", tuple(cfg.music_snr), full_duration=True),
                )
        return cls(transforms, cfg.probability)

    def __call__(self, wav: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        if not self.kinds or rng.random() >= self.p:
            return wav
        return self.transforms[self.kinds[int(rng.integers(len(self.kinds)))]](wav, sample_rate, rng)


def _check_kinds(cfg: AugmentConfig) -> list[str]:
    unknown = [k for k in cfg.kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"augment.kinds: unknown kind(s) {unknown}; choose from {list(KINDS)}")
    return list(dict.fromkeys(cfg.kinds))


def _check_banks(kinds: list[str], categories: list[str] | None, have_rirs: bool) -> None:
    for kind in kinds:
        if kind == "band":
            continue
        if kind == "reverb":
            if not have_rirs:
                raise ValueError("augment.kinds has 'reverb' but augment.rir_manifest is empty")
            continue
        if categories is None:
            raise ValueError(f"augment.kinds has {kind!r} but augment.noise_manifest is empty")
        missing = [c for c in KIND_CATEGORIES[kind] if c not in categories]
        if missing:
            raise ValueError(
                f"augment kind {kind!r} needs noise-manifest category {missing} (the manifest has {categories})"
            )


def _numpy_rng(rng) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"BatchAugmenter draws on the host: give a numpy Generator "
            f"(np.random.default_rng(seed)), not {type(rng).__name__}"
        )
    return rng


# ----------------------------------------------------------------------------------------------
# batched tensor version


class BatchAugmenter:
    """The same recipe on a (B, S) tensor batch, on any device.

    Noise banks are loaded once: per category, the files (up to ``max_bank_seconds`` of audio in all,
    a seeded random subset beyond that) are concatenated into one tensor and segments are gathered at
    random offsets within a file (wrapping inside the file). RIRs (up to ``max_rirs``, a seeded subset)
    are aligned, unit-energy and zero-padded into an (N, R) tensor.

    Args:
        cfg: probability, kinds, SNR ranges, babble source counts, manifests.
        sample_rate: rate of the batches.
        device: where the banks live and the work happens.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        noise_manifest: str | Path | None = None,
        rir_manifest: str | Path | None = None,
        *,
        sample_rate: int = 16000,
        device="cpu",
        max_bank_seconds: float = 1800.0,
        max_rirs: int = 2000,
        bank_seed: int = 0,
    ):
        self.cfg, self.sample_rate, self.device = cfg, sample_rate, torch.device(device)
        self.kinds = _check_kinds(cfg)
        noise_manifest = noise_manifest or cfg.noise_manifest
        rir_manifest = rir_manifest or cfg.rir_manifest
        rng = np.random.default_rng(bank_seed)
        self.banks: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if noise_manifest and set(self.kinds) - {"reverb", "band"}:
            groups: dict[str, list[_Entry]] = {}
            for e in _load_entries(noise_manifest, "category", "noise"):
                groups.setdefault(e.group, []).append(e)
            for category, entries in groups.items():
                self.banks[category] = self._load_noise(str(noise_manifest), entries, max_bank_seconds, rng)
        _check_banks(self.kinds, sorted(self.banks) if noise_manifest else None, bool(rir_manifest))
        if "reverb" in self.kinds:
            self.rirs, self.rir_kind_start, self.rir_kind_count = self._load_rirs(rir_manifest, max_rirs, rng)

    def _load_noise(self, manifest: str, entries: list[_Entry], max_seconds: float, rng: np.random.Generator):
        order = rng.permutation(len(entries))
        parts, budget = [], max_seconds * self.sample_rate
        pool = list(entries)
        for i in order:
            read = _read_bank_file(manifest, pool, entries[i], target_sr=self.sample_rate)
            if read is None or len(read[0]) == 0:
                continue
            x = read[0]
            parts.append(x)
            budget -= len(x)
            if budget <= 0:
                break
        lengths = torch.tensor([len(p) for p in parts], dtype=torch.long)
        starts = torch.cumsum(lengths, 0) - lengths
        data = torch.from_numpy(np.concatenate(parts))
        return data.to(self.device), starts.to(self.device), lengths.to(self.device)

    def _load_rirs(self, manifest: str | Path, max_rirs: int, rng: np.random.Generator):
        by_kind: dict[str, list[_Entry]] = {}
        for e in _load_entries(manifest, "kind", "simulated"):
            by_kind.setdefault(e.group, []).append(e)
        per_kind = max(1, max_rirs // len(by_kind))
        rirs, counts = [], []
        for kind in sorted(by_kind):
            entries = by_kind[kind]
            before, pool, files = len(rirs), list(entries), 0
            for i in rng.permutation(len(entries)):  # the first per_kind files that decode
                if files == per_kind:
                    break
                read = _read_bank_file(str(manifest), pool, entries[i], mono=False)
                if read is None:
                    continue
                files += 1
                x = resample(read[0], read[1], self.sample_rate)
                rirs.extend(align_rir(x[:, c]) for c in range(x.shape[1]))
            counts.append(len(rirs) - before)
        length = max(len(r) for r in rirs)
        bank = torch.zeros(len(rirs), length)
        for i, r in enumerate(rirs):
            bank[i, : len(r)] = torch.from_numpy(r)
        count = np.asarray(counts, dtype=np.int64)  # per room kind, on the host: the draws are made there
        return bank.to(self.device), np.cumsum(count) - count, count

    # ------------------------------------------------------------------------------------------
    # Every random draw is per row, so it is made on the host with numpy and copied to the device in one
    # non-blocking transfer per call: the augmenter never waits for the device (no ``nonzero`` or
    # ``.item()``), so a training step that uses it is queued while the previous one runs, and a seed gives
    # the same draws on every device.

    def _on_device(self, draws: np.ndarray):
        return host_to_device(draws, self.device)

    def _segments(self, category: str, n: int, files, offsets):
        """(b, n) stretches of the ``category`` files ``files`` (b,) starting at fractions ``offsets`` (b,)
        of the room left in each file (a file shorter than n wraps around: its start is 0)."""
        data, starts, lengths = self.banks[category]
        length = lengths[files]
        offset = (offsets * (length - n + 1).clamp_min(1)).long()
        # identity for files that hold the stretch (offset + n <= length), wrap-around for shorter ones
        positions = (offset[:, None] + torch.arange(n, device=self.device)[None]) % length[:, None]
        return data[starts[files][:, None] + positions]

    def _noise(self, x, category: str, snr: tuple[float, float], sources: tuple[int, int], full: bool, rng):
        """The scaled additive signal for x (B, S): x + result is at per-row SNR ~ U(snr)."""
        b, n = x.shape
        n_files = len(self.banks[category][2])
        # host draws, per row: source count, target SNR; per source: file, offset in the file, and the
        # noise's share of the crop (a duration class, then a length and a start within the crop)
        count = rng.integers(sources[0], sources[1] + 1, size=b)
        target = rng.uniform(*snr, size=b)
        per_source = np.empty((sources[1], 4, b))
        classes = np.asarray(DURATION_CLASSES)  # (3, 2): low and high share of the crop
        for k in range(sources[1]):
            files, offsets = rng.integers(n_files, size=b), rng.random(b)
            if full:
                frac, start = np.ones(b), np.zeros(b)
            else:
                lo, hi = classes[rng.integers(len(classes), size=b)].T
                frac = lo + (hi - lo) * rng.random(b)
                start = rng.random(b)
            per_source[k] = files, offsets, np.where(k < count, frac, 0.0), start
        d = self._on_device(np.concatenate([per_source.reshape(-1, b), target[None]]))  # float64 (4K+1, b)
        total = torch.zeros_like(x)
        positions = torch.arange(n, device=self.device)[None]
        for k in range(sources[1]):
            files, offsets, frac, start = d[4 * k : 4 * k + 4]
            seg = self._segments(category, n, files.long(), offsets).to(x.dtype)
            length = torch.where(frac > 0, torch.clamp(torch.round(frac * n), 1, n), 0)  # 0: no k-th source
            offset = torch.floor(start * (n - length + 1))
            keep = ((positions >= offset[:, None]) & (positions < (offset + length)[:, None])).to(x.dtype)
            seg_power = torch.sum(seg.square() * keep, 1, dtype=torch.float64) / keep.sum(1).clamp_min(1)
            total += seg * (keep * seg_power.clamp_min(1e-16).rsqrt().to(x.dtype)[:, None])
        p_noise = torch.sum(total.square(), 1, dtype=torch.float64)
        p_clean = torch.sum(x.square(), 1, dtype=torch.float64)
        scale = torch.where(
            p_noise > 0,
            torch.sqrt(p_clean / (p_noise.clamp_min(1e-30) * 10 ** (d[-1] / 10))),
            torch.zeros_like(p_noise),
        )
        return total * scale.to(x.dtype)[:, None]

    def _reverb(self, x, rng):
        b, n = x.shape
        kind = rng.integers(len(self.rir_kind_count), size=b)
        idx = self.rir_kind_start[kind] + (rng.random(b) * self.rir_kind_count[kind]).astype(np.int64)
        rir = self.rirs[self._on_device(idx)].to(x.dtype)  # (b, R)
        size = n + rir.shape[1] - 1
        y = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(rir, size), size)[:, :n]
        gain = x.square().mean(1).sqrt() / y.square().mean(1).sqrt().clamp_min(1e-8)
        return y * gain[:, None]

    def _band(self, x, rng):
        b, n = x.shape
        low, high = rng.uniform(*self.cfg.band_low_hz, size=b), rng.uniform(*self.cfg.band_high_hz, size=b)
        edges = self._on_device(np.stack([low, high]))
        f = torch.fft.rfftfreq(n, 1.0 / self.sample_rate, device=x.device, dtype=torch.float64)[None]
        keep = ((f >= edges[0][:, None]) & (f <= edges[1][:, None])).to(x.dtype)
        y = torch.fft.irfft(torch.fft.rfft(x) * keep, n)
        gain = x.square().mean(1).sqrt() / y.square().mean(1).sqrt().clamp_min(1e-8)
        return y * gain[:, None]

    def apply_kind(self, x, kind: str, rng: np.random.Generator | None = None):
        """Applies ``kind`` to every row of x (B, S): (B, S). ``rng`` makes the draws (None: a fresh one)."""
        c = self.cfg
        rng = _numpy_rng(rng)
        if kind == "reverb":
            return self._reverb(x, rng)
        if kind == "band":
            return self._band(x, rng)
        if kind == "noise":
            return x + self._noise(x, "noise", tuple(c.noise_snr), (1, 1), False, rng)
        if kind == "music":
            return x + self._noise(x, "music", tuple(c.music_snr), (1, 1), False, rng)
        if kind == "babble":
            return x + self._noise(x, "speech", tuple(c.babble_snr), tuple(c.babble_speakers), False, rng)
        if kind == "tv":
            return (
                x
                + self._noise(x, "speech", tuple(c.babble_snr), (1, 1), True, rng)
                + self._noise(x, "music", tuple(c.music_snr), (1, 1), True, rng)
            )
        raise ValueError(f"unknown augmentation kind {kind!r}; choose from {list(KINDS)}")

    def __call__(self, waveforms, rng: np.random.Generator | None = None):
        """Augments a batch: each row with probability ``p``, by one kind drawn uniformly.

        Args:
            waveforms: (B, S) float tensor on ``device``.
            rng: a numpy ``Generator`` for the draws (None: a fresh, unseeded one). The draws are made on
                the host, so the call never waits for the device.
        Returns:
            (B, S) tensor, a new one (the input is not modified).
        """
        b = waveforms.shape[0]
        out = waveforms.clone()
        if not self.kinds:
            return out
        rng = _numpy_rng(rng)
        apply = rng.random(b) < self.cfg.probability
        kind = rng.integers(len(self.kinds), size=b)
        for k, name in enumerate(self.kinds):
            rows = np.flatnonzero(apply & (kind == k))
            if len(rows):
                index = self._on_device(rows)
                out.index_copy_(0, index, self.apply_kind(waveforms.index_select(0, index), name, rng))
        return out
