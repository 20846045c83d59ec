"""Reading audio files (mlsv.data.audio): crops, downmixing, resampling, bytes, m4a, and bad files named."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
from data_helpers import tone, write_m4a, write_wav

from mlsv.cli import main
from mlsv.data.audio import AudioError, MissingDependencyError, audio_info, read_audio
from mlsv.data.trials import read_trials


def test_read_audio_seeks_and_reads_only_the_crop(tmp_path, monkeypatch):
    x = tone(10.0)
    path = write_wav(tmp_path / "long.flac", x)
    requested = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    crop, sr = read_audio(path, 48000, 32000)
    assert requested == [32000] and sr == 16000
    np.testing.assert_allclose(crop, x[48000:80000], atol=1 / 32768)


def test_read_audio_downmixes_resamples_and_decodes_bytes(tmp_path):
    stereo = np.stack([tone(1.0), np.zeros(16000, np.float32)], 1)
    path = write_wav(tmp_path / "st.wav", stereo, 16000)
    mono, _ = read_audio(path)
    np.testing.assert_allclose(mono, stereo.mean(1), atol=1e-4)
    y, sr = read_audio(path, target_sr=8000)
    assert sr == 8000 and abs(len(y) - 8000) <= 1
    from_bytes, _ = read_audio(path.read_bytes())
    np.testing.assert_array_equal(from_bytes, mono)
    assert audio_info(path) == (16000, 16000, 2)
    with pytest.raises(AudioError, match="st.wav: sample rate 16000 Hz, expected 8000 Hz"):
        read_audio(path, target_sr=8000, allow_resample=False)


def test_audio_errors_name_the_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.flac").write_bytes(b"\x00" * 500)
    with pytest.raises(AudioError, match="missing.wav: file not found"):
        read_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="empty.wav: empty file"):
        audio_info(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="junk.flac: not decodable audio"):
        read_audio(tmp_path / "junk.flac")


def test_m4a_decodes_with_pyav(tmp_path):
    x = tone(1.0)
    path = write_m4a(tmp_path / "a.m4a", x)
    y, sr = read_audio(path)
    frames, rate, channels = audio_info(path)
    assert sr == rate == 16000 and channels == 1 and abs(frames - 16000) < 2048
    y2, _ = read_audio(path.read_bytes())
    np.testing.assert_array_equal(y, y2)


def test_m4a_without_pyav_names_the_file_and_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "id1/vid/00001.m4a"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(64))
    monkeypatch.setitem(sys.modules, "av", None)  # import av fails as when PyAV is not installed
    fix = r"needs PyAV, which is not installed: pip install -e \"\.\[m4a\]\".*--convert-dir"
    for read in (read_audio, audio_info):
        with pytest.raises(MissingDependencyError, match=f"{path}: decoding m4a/AAC {fix}"):
            read(path)
    with pytest.raises(AudioError, match=fix):  # an AudioError: callers that report those name the file
        read_audio(path.read_bytes())


def test_a_folder_given_as_audio_or_trial_list_is_named_as_such(tmp_path):
    folder = tmp_path / "dir.wav"
    folder.mkdir()
    for reader in (read_audio, audio_info):
        with pytest.raises(AudioError, match=f"^{folder}: a directory, not an audio file$"):
            reader(folder)
    with pytest.raises(ValueError, match=f"^{tmp_path}: a directory, not a trial list$"):
        read_trials(tmp_path)
    with pytest.raises(AudioError, match="file not found"):
        read_audio(tmp_path / "missing.wav")


def test_a_header_sample_rate_outside_audio_rates_is_a_bad_file(tmp_path, capsys):
    """A 64 KB WAV whose header says 1 Hz was resampled 16,000x (3.8 GB) and listed as 32,000 s long."""
    import soundfile as sf

    folder = tmp_path / "spk1"
    folder.mkdir()
    bad = folder / "sr1.wav"
    sf.write(bad, 0.3 * np.random.default_rng(0).standard_normal(32000), 1, subtype="PCM_16")
    write_wav(folder / "good.wav", tone(1.0))
    message = rf"{bad}: sample rate 1 Hz is outside 4000-384000 Hz"
    with pytest.raises(AudioError, match=message):
        audio_info(bad)
    with pytest.raises(AudioError, match=message):
        read_audio(bad, target_sr=16000)
    out = tmp_path / "mine.jsonl"
    assert main(["prepare", "folder", "--root", str(folder.parent), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["spk1/good.wav"]
    assert "sample rate 1 Hz" in capsys.readouterr().out
