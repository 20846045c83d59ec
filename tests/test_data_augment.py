"""Augmentation: requested SNRs measured, RIR alignment, CPU and batched versions agree, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import tone

from mlsv.config import AugmentConfig
from mlsv.data.augment import AddNoise, Augmenter, BatchAugmenter, NoiseBank, Reverb, RirBank, measured_snr
from mlsv.data.synthetic import make_synthetic_corpus


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Batched ops on a shared 2-core machine run several times faster without thread oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_synthetic_corpus(
        tmp_path_factory.mktemp("syn"),
        n_speakers=2,
        utts_per_speaker=2,
        n_validation_speakers=0,
        n_test_speakers=0,
        bank_files=2,
        bank_seconds=6.0,
        n_rirs=4,
        max_seconds=2.0,
    )


def _cfg(corpus, **kw) -> AugmentConfig:
    return AugmentConfig(noise_manifest=str(corpus.noise), rir_manifest=str(corpus.rirs), **kw)


@pytest.mark.parametrize(
    "category,snr,sources", [("noise", (0, 15), (1, 1)), ("music", (5, 15), (1, 1)), ("speech", (13, 20), (4, 7))]
)
def test_cpu_noise_hits_requested_snr(corpus, category, snr, sources):
    bank = NoiseBank(corpus.noise)
    x = tone(2.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        lo = hi = rng.uniform(*snr)
        y = AddNoise(bank, category, (lo, hi), sources)(x, 16000, rng)
        assert measured_snr(x, y) == pytest.approx(lo, abs=0.01)  # the summed babble, not each source


def test_babble_sources_and_duration_classes_drawn_per_source(corpus, monkeypatch):
    bank = NoiseBank(corpus.noise)
    lengths = []
    real = NoiseBank.segment

    def spy(self, category, n, sample_rate, rng):
        lengths.append(n)
        return real(self, category, n, sample_rate, rng)

    monkeypatch.setattr(NoiseBank, "segment", spy)
    rng = np.random.default_rng(1)
    calls = []
    for _ in range(30):
        before = len(lengths)
        AddNoise(bank, "speech", (13, 20), (4, 7))(tone(2.0), 16000, rng)
        calls.append(lengths[before:])
    assert {len(c) for c in calls} <= {4, 5, 6, 7} and len({len(c) for c in calls}) > 1
    assert any(len({round(n / 32000, 1) for n in c}) > 1 for c in calls)  # classes differ within a call


def test_reverb_is_aligned_and_keeps_level(corpus):
    x = np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32)
    y = Reverb(RirBank(corpus.rirs))(x, 16000, np.random.default_rng(0))
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-4)
    lag = np.argmax(np.correlate(y[:4000], x[:4000], mode="full")) - 3999
    assert lag == 0  # the RIR starts at its direct path: no pre-delay left


def test_augmenter_probability_and_unknown_kind(corpus):
    aug = Augmenter.from_config(_cfg(corpus, probability=0.0))
    x = tone(1.0)
    assert aug(x, 16000, np.random.default_rng(0)) is x
    with pytest.raises(ValueError, match="unknown kind"):
        Augmenter.from_config(_cfg(corpus, kinds=["reverb", "telephone"]))
    with pytest.raises(ValueError, match="rir_manifest is empty"):
        Augmenter.from_config(AugmentConfig(noise_manifest=str(corpus.noise)))


def test_cpu_augmenter_is_seeded(corpus):
    aug = Augmenter.from_config(_cfg(corpus, probability=1.0))
    x = tone(1.0)
    a = [aug(x, 16000, np.random.default_rng(s)) for s in (3, 3, 4)]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(a[0], a[2])


@pytest.mark.parametrize("kind,cfg_snr", [("noise", "noise_snr"), ("music", "music_snr"), ("babble", "babble_snr")])
def test_batched_and_cpu_snr_distributions_agree(corpus, kind, cfg_snr):
    from scipy.stats import ks_2samp

    cfg = _cfg(corpus)
    batch = BatchAugmenter(cfg, sample_rate=16000)
    x = torch.from_numpy(np.stack([tone(1.0, 100 + 10 * i, seed=i) for i in range(128)]))
    y = batch.apply_kind(x, kind, np.random.default_rng(0))
    batched = (10 * torch.log10(x.double().square().sum(1) / (y - x).double().square().sum(1))).numpy()
    lo, hi = getattr(cfg, cfg_snr)
    assert batched.min() >= lo - 0.01 and batched.max() <= hi + 0.01
    cpu = Augmenter.from_config(cfg).transforms[kind]
    rng = np.random.default_rng(0)
    measured = [measured_snr(x[i].numpy(), cpu(x[i].numpy(), 16000, rng)) for i in range(128)]
    assert ks_2samp(batched, measured).pvalue > 0.01


def test_batched_kind_choice_and_reverb(corpus):
    cfg = _cfg(corpus, probability=0.6)
    batch = BatchAugmenter(cfg, sample_rate=16000)
    x = torch.from_numpy(np.stack([tone(0.5, 150, seed=i) for i in range(200)]))
    rng = np.random.default_rng(0)
    y = batch(x, rng)
    changed = (y != x).any(1).float().mean().item()
    assert 0.45 < changed < 0.75
    r = batch.apply_kind(x[:8], "reverb", rng)
    torch.testing.assert_close(r.square().mean(1), x[:8].square().mean(1), rtol=1e-3, atol=1e-7)
    again = batch(x, np.random.default_rng(0))
    torch.testing.assert_close(again, y)


def test_an_undecodable_bank_file_is_dropped_not_blamed_on_the_speech(corpus, tmp_path, caplog):
    """A broken noise or RIR file is logged and left out of the bank (CPU and batched augmenters); the
    speech crop it would have augmented is still augmented, and a group with no readable file is an
    error naming the bank."""
    from mlsv.data.manifest import iter_rows, manifest_root, resolve_path, write_manifest

    (tmp_path / "broken.wav").write_bytes(b"RIFF....garbage")

    def with_broken(manifest, name):
        rows = [{**r, "path": resolve_path(r["path"], manifest_root(manifest))} for _, r in iter_rows(manifest)]
        rows = [{**r, "path": str(tmp_path / "broken.wav")} if i % 2 == 0 else r for i, r in enumerate(rows)]
        return write_manifest(rows, tmp_path / name)

    noise, rirs = with_broken(corpus.noise, "noise.jsonl"), with_broken(corpus.rirs, "rirs.jsonl")
    cfg = AugmentConfig(noise_manifest=str(noise), rir_manifest=str(rirs), probability=1.0)
    aug = Augmenter.from_config(cfg)
    x = tone(1.0)
    for seed in range(12):
        y = aug(x, 16000, np.random.default_rng(seed))
        assert np.isfinite(y).all() and not np.array_equal(y, x)
    assert "broken.wav" in caplog.text
    batched = BatchAugmenter(cfg, sample_rate=16000)
    assert torch.isfinite(batched(torch.from_numpy(np.stack([x, x])), np.random.default_rng(0))).all()
    all_broken = write_manifest(
        [{**r, "path": str(tmp_path / "broken.wav")} for _, r in iter_rows(noise)], tmp_path / "all_broken.jsonl"
    )
    with pytest.raises(ValueError, match="all_broken.jsonl: every file of a group failed to decode"):
        NoiseBank(all_broken).segment("noise", 8000, 16000, np.random.default_rng(0))


def test_band_limits_the_spectrum_keeps_the_level_and_needs_no_bank():
    """The opt-in telephone-like kind: nothing outside the drawn band, the RMS level kept, the CPU and batched
    versions equal for the same draws (one row: both draw the lower edge, then the upper one)."""
    cfg = AugmentConfig(probability=1.0, kinds=["band"], band_low_hz=[300.0, 300.0], band_high_hz=[3400.0, 3400.0])
    rng = np.random.default_rng(0)
    x = rng.standard_normal(32000).astype(np.float32)  # white: energy at every frequency
    y = Augmenter.from_config(cfg)(x, 16000, np.random.default_rng(1))
    power = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / 16000)
    outside = (f < 300) | (f > 3400)
    assert power[outside].sum() < 1e-6 * power.sum()  # float32 round-off only
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-4)
    batched = BatchAugmenter(AugmentConfig(kinds=["band"], band_low_hz=[200.0, 400.0], band_high_hz=[3e3, 4e3]))
    cpu = Augmenter.from_config(AugmentConfig(probability=1.0, kinds=["band"]))
    for seed in (3, 4):
        a = cpu(x, 16000, np.random.default_rng(seed))
        # the CPU augmenter draws "apply?" and the kind first; the batched apply_kind draws only the edges
        r = np.random.default_rng(seed)
        r.random(), r.integers(1)
        b = batched.apply_kind(torch.from_numpy(x)[None], "band", r)[0].numpy()
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(x).max())  # float32 FFTs in numpy vs torch
