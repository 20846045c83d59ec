"""Manifests: round trips, validation errors naming culprits, labels, audio reading."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
from data_helpers import tiny_corpus, tone, write_m4a, write_wav

from mlsv.data.audio import AudioError, MissingDependencyError, audio_info, read_audio
from mlsv.data.manifest import (
    ManifestError,
    iter_rows,
    load_labels,
    load_manifest,
    save_labels,
    speaker_labels,
    write_manifest,
)
from mlsv.data.validate import validate


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_resolves_relative_paths(tmp_path, suffix):
    manifest = tiny_corpus(tmp_path)
    rows = [r for _, r in iter_rows(manifest)]
    out = write_manifest(rows, tmp_path / f"copy{suffix}")
    ds = load_manifest(out)
    assert len(ds) == len(rows)
    assert ds[0]["id"] == rows[0]["id"] and ds[0]["session"] == rows[0]["session"]
    assert ds[0]["path"] == str(tmp_path / rows[0]["path"])
    streamed = list(load_manifest(out, streaming=True))
    assert [r["id"] for r in streamed] == [r["id"] for r in rows]
    assert validate(out).ok


def test_write_rejects_missing_column(tmp_path):
    with pytest.raises(ManifestError, match="row 0 .* lacks column"):
        write_manifest([{"id": "a", "path": "a.wav"}], tmp_path / "m.jsonl")


def test_validate_names_each_culprit(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=2, utts=2)
    rows = [r for _, r in iter_rows(manifest)]
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio at all")
    write_wav(tmp_path / "rate.wav", tone(0.5, sample_rate=8000), 8000)
    bad = [
        {**rows[0], "id": "missing", "path": "nope.wav"},
        {**rows[0], "id": "empty", "path": "empty.wav"},
        {**rows[0], "id": "text", "path": "text.wav"},
        {**rows[0], "id": "rate", "path": "rate.wav", "duration": 0.5},
        dict(rows[1]),  # duplicate id
        {**rows[0], "id": "zero", "duration": 0.0},
    ]
    path = write_manifest(rows + bad, tmp_path / "bad.jsonl")
    trials = tmp_path / "t.txt"
    trials.write_text(f"1 {rows[0]['id']} {rows[1]['id']}\n0 {rows[0]['id']} ghost\n")
    report = validate(path, trials, raise_on_error=False)
    text = "\n".join(report.errors)
    assert f"{path}:5: missing: " in text and "nope.wav: file not found" in text
    assert f"{path}:6: empty: " in text and "empty file" in text
    assert f"{path}:7: text: " in text and "not decodable audio" in text
    assert f"{path}:8: rate: file is 8000 Hz but the row says 16000 Hz" in text
    assert f"{path}:9: duplicate id {rows[1]['id']!r} (first on line 2)" in text
    assert f"{path}:10: zero: zero or negative duration" in text
    assert f"{trials}:2: id 'ghost' not in" in text
    with pytest.raises(ManifestError, match="error"):
        validate(path)


def _jsonl(path, *rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("streaming", [False, True])
def test_load_manifest_names_the_bad_line(tmp_path, streaming):
    def row(uid, **kw):
        return {"id": uid, "path": f"{uid}.wav", "speaker": "s", "duration": 1.0, "sample_rate": 16000, **kw}

    no_duration = {k: v for k, v in row("c").items() if k != "duration"}
    cases = {
        "empty": ([], "empty.jsonl: manifest has no rows"),
        "json": ([row("a"), '{"id": oops'], "json.jsonl:2: not valid JSON"),
        "nodur": ([row("a"), "", no_duration], r"nodur.jsonl:3: missing \['duration'\]"),
        "dup": ([row("a"), row("b"), row("a")], r"dup.jsonl:3: duplicate id 'a' \(first on line 1\)"),
        "numid": ([row("a"), row(7)], "numid.jsonl:2: id 7 is not a string"),
        "strdur": ([row("a"), row("b", duration="1.0")], "strdur.jsonl:2: duration '1.0' is not a number"),
    }
    for name, (rows, message) in cases.items():
        with pytest.raises(ManifestError, match=message):
            load_manifest(_jsonl(tmp_path / f"{name}.jsonl", *rows), streaming=streaming,
                          cache_dir=str(tmp_path))
    shards = tmp_path / "shards"
    shards.mkdir()
    write_manifest([row("a"), row("b")], shards / "shard-0.parquet")
    write_manifest([row("b")], shards / "shard-1.parquet")
    with pytest.raises(ManifestError, match=r"shards:3: duplicate id 'b' \(first on line 2\)"):
        load_manifest(shards, streaming=streaming, cache_dir=str(tmp_path))
    with pytest.raises(ManifestError, match="ids must be strings"):
        load_manifest(write_manifest([row(1), row(2)], tmp_path / "num.parquet"), streaming=streaming,
                      cache_dir=str(tmp_path))
    report = validate(tmp_path / "numid.jsonl", check_audio=False, raise_on_error=False)
    assert f"{tmp_path / 'numid.jsonl'}:2: id 7 is not a string" in report.errors[0]


def test_labels_sorted_and_saved(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=3)
    labels = speaker_labels(manifest)
    assert labels == {"spk0": 0, "spk1": 1, "spk2": 2}
    assert speaker_labels(load_manifest(manifest)) == labels
    save_labels(labels, tmp_path / "labels.json")
    assert load_labels(tmp_path / "labels.json") == labels
    (tmp_path / "gap.json").write_text(json.dumps({"a": 0, "b": 2}))
    with pytest.raises(ManifestError, match="without gaps"):
        load_labels(tmp_path / "gap.json")


@pytest.mark.parametrize("streaming", [False, True])
def test_two_process_manifest_split_is_disjoint_and_complete(tmp_path, streaming):
    manifest = tiny_corpus(tmp_path, speakers=3, utts=3)
    shares = [{r["id"] for r in load_manifest(manifest, streaming=streaming, process_index=i, num_processes=2)}
              for i in range(2)]
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == {r["id"] for _, r in iter_rows(manifest)}


# ----------------------------------------------------------------------------------------------
# audio


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
