"""Bad input to the data layer: mixed trial forms, blank lines in trial lists, files not UTF-8, corrupt
parquet, folders given for files. Each gives one error line naming the file (and line)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import tiny_corpus, tone, write_wav

from mlsv.cli import main
from mlsv.data.audio import AudioError, audio_info, read_audio
from mlsv.data.manifest import (
    ManifestError,
    iter_rows,
    load_manifest,
    sample_manifest,
    write_manifest,
)
from mlsv.data.prepare import prepare_voxceleb
from mlsv.data.trials import check_trial_ids, read_trials
from mlsv.data.validate import validate
from mlsv.scoring.embeddings import EmbeddingTable, save_embeddings

LABELLED = ["1 a/1.wav a/2.wav", "0 a/1.wav b/1.wav", "1 b/1.wav b/2.wav"]


def _rows(n: int = 3) -> list[dict]:
    return [{"id": f"u{i}", "path": f"u{i}.wav", "speaker": f"s{i % 2}", "duration": 1.0, "sample_rate": 16000}
            for i in range(n)]


def _latin1_manifest(path):
    """A JSONL manifest whose last (third) line holds speaker 'José' in Latin-1."""
    rows = _rows()
    rows[-1]["speaker"] = "Jos\xe9"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1"))
    return path


# ---------------------------------------------------------------------------------------------------------
# 1. every trial line has as many fields as the first


def test_trial_list_mixing_labelled_and_unlabelled_lines_is_refused(tmp_path):
    twocol = tmp_path / "twocol.txt"
    twocol.write_text("\n".join([*LABELLED, "a/1.wav b/2.wav"]) + "\n")
    with pytest.raises(ValueError, match=r"twocol\.txt:4: expected 'LABEL ENROLL TEST' like the other lines, "
                                         r"got 2 fields"):
        read_trials(twocol)
    first = tmp_path / "first.txt"  # a truncated first line: read alone, it looks like an unlabelled trial
    first.write_text("\n".join(["1 a/1.wav", *LABELLED]) + "\n")
    with pytest.raises(ValueError, match=r"first\.txt:2: expected 'ENROLL TEST' like line 1, got 3 fields"):
        read_trials(first)
    same = tmp_path / "same.txt"  # all one form stays accepted, labelled or not
    same.write_text("a/1.wav a/2.wav\n\nb/1.wav a/2.wav\n")
    assert read_trials(same).labels.tolist() == [-1, -1]


def test_prepare_voxceleb_refuses_a_trial_list_with_a_truncated_first_line(tmp_path):
    for spk in ("id10270", "id10271"):
        for v in range(2):
            write_wav(tmp_path / "wav" / spk / f"vid{v}" / "00001.wav", tone(0.3, 150 + 40 * v))
    trials = tmp_path / "veri_test2.txt"
    trials.write_text("1 id10270/vid0/00001.wav\n1 id10270/vid0/00001.wav id10270/vid1/00001.wav\n"
                      "0 id10270/vid0/00001.wav id10271/vid0/00001.wav\n")
    with pytest.raises(ValueError, match=r"veri_test2\.txt:2: expected 'ENROLL TEST' like line 1"):
        prepare_voxceleb(tmp_path / "out", vox1_test=tmp_path / "wav", trials=[trials], progress=False)


# ---------------------------------------------------------------------------------------------------------
# 2. unknown ids name the file and its real line


def test_unknown_trial_ids_name_the_file_line_despite_blank_lines(tmp_path):
    path = tmp_path / "lineno2.txt"
    path.write_text("1 a b\n0 a c\n\n\n1 a b\n0 a c\n1 b c\n\n1 zz b\n")
    t = read_trials(path)
    assert t.lines.tolist() == [1, 2, 5, 6, 7, 9] and t.path == str(path)
    with pytest.raises(KeyError) as info:
        check_trial_ids(t, {"a", "b", "c"}, source="embeddings")
    assert info.value.args[0] == f"{path}:9: id 'zz' not in the embeddings"


def test_score_cli_names_the_line_of_an_unknown_id_and_a_mixed_list(tmp_path, capsys):
    emb = tmp_path / "e.npz"
    save_embeddings(EmbeddingTable(np.array(["a", "b", "c"]), np.eye(3, dtype=np.float32), np.ones(3)), emb)
    path = tmp_path / "lineno2.txt"
    path.write_text("1 a b\n\n\n0 a c\n1 b zz\n")
    assert main(["score", "--embeddings", str(emb), "--trials", str(path), "--out", str(tmp_path / "s.tsv")]) == 2
    assert capsys.readouterr().err.strip() == f"mlsv score: error: {path}:5: id 'zz' not in the embeddings"
    path.write_text("1 a b\n0 a c\nb c\n")
    assert main(["score", "--embeddings", str(emb), "--trials", str(path), "--out", str(tmp_path / "s.tsv")]) == 2
    assert f"{path}:3: expected 'LABEL ENROLL TEST'" in capsys.readouterr().err


def test_validate_names_the_trial_file_line_despite_blank_lines(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=2, utts=2)
    ids = [row["id"] for _, row in iter_rows(manifest)]
    trials = tmp_path / "t.txt"
    trials.write_text(f"1 {ids[0]} {ids[1]}\n\n0 {ids[0]} nope\n")
    report = validate(manifest, trials, check_audio=False, raise_on_error=False)
    assert report.errors == [f"{trials}:3: id 'nope' not in {manifest}"]


# ---------------------------------------------------------------------------------------------------------
# 3. files that are not UTF-8


def test_latin1_manifest_is_refused_at_load_naming_the_line(tmp_path):
    from mlsv.data.manifest import _scan_utf8

    path = _latin1_manifest(tmp_path / "latin1.jsonl")
    message = r"latin1\.jsonl:3: not valid UTF-8 \(byte 0xe9 at byte \d+ of the line\)"
    for streaming in (False, True):
        with pytest.raises(ManifestError, match=message):
            load_manifest(path, streaming=streaming)
    with pytest.raises(ManifestError, match=message):
        list(iter_rows(path))
    with pytest.raises(ManifestError, match=message):
        _scan_utf8(path, block=7)  # lines counted right across blocks
    with pytest.raises(ManifestError, match=message):
        validate(path, check_audio=False)


def test_a_manifest_is_read_for_utf8_once_until_it_changes(tmp_path, monkeypatch):
    """The training loop loads its manifest every epoch: an unchanged file is not decoded again, and a
    file edited since (here to Latin-1) is checked again."""
    from mlsv.data import manifest as module

    path = tmp_path / "m.jsonl"
    path.write_text(_latin1_manifest(tmp_path / "latin1.jsonl").read_bytes().decode("latin-1"), encoding="utf-8")
    scans = []
    monkeypatch.setattr(module, "_scan_utf8", lambda p, real=module._scan_utf8: (scans.append(p), real(p)))
    load_manifest(path)
    load_manifest(path, streaming=True)
    assert len(scans) == 1
    path.write_bytes(path.read_bytes().replace("é".encode(), b"\xe9"))
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: not valid UTF-8"):
        load_manifest(path)
    assert len(scans) == 2


def test_latin1_trial_list_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("1 a b\n\n0 a Jos\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt:3: not valid UTF-8 \(byte 0xe9 at byte 8 of the line\)"):
        read_trials(path)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("1 a b\n0 a José\n".encode("utf-8-sig"))
    assert read_trials(bom).test.tolist() == ["b", "José"]


def test_embed_cli_reports_a_latin1_manifest_without_a_traceback(tmp_path, capsys):
    from conftest import tiny_model

    tiny_model(lap_heads=2, lap_channels=16, embedding_size=8).save_pretrained(tmp_path / "model")
    path = _latin1_manifest(tmp_path / "latin1.jsonl")
    for row in _rows():  # real audio: the rows load, and only the bad bytes are to blame
        write_wav(tmp_path / row["path"], tone(1.0))
    assert main(["embed", "--model", str(tmp_path / "model"), "--manifest", str(path),
                 "--out", str(tmp_path / "o.npz"), "--num-workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mlsv embed: error: {path}:3: not valid UTF-8 (byte 0xe9")


# ---------------------------------------------------------------------------------------------------------
# 4. corrupt parquet


def test_corrupt_parquet_manifest_names_the_file(tmp_path):
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"PAR1garbage")
    shards = tmp_path / "shards"
    write_manifest(_rows(), shards / "a.parquet")
    (shards / "b.parquet").write_bytes(b"PAR1garbage")
    for manifest, culprit in ((bad, bad), (shards, shards / "b.parquet")):
        message = f"^{culprit}: not a readable parquet file \\("
        for streaming in (False, True):
            with pytest.raises(ManifestError, match=message):
                load_manifest(manifest, streaming=streaming)
        with pytest.raises(ManifestError, match=message):
            list(iter_rows(manifest))
        with pytest.raises(ManifestError, match=message):
            sample_manifest(manifest, 1, tmp_path / "sample.parquet")


# ---------------------------------------------------------------------------------------------------------
# 5. a folder where a file is expected


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


# ---------------------------------------------------------------------------------------------------------
# 10. links and file names in `mlsv prepare folder`; a file name that is not UTF-8 in `mlsv verify`


def _latin1_name(folder, name: bytes):
    """``folder / name`` for a name in Latin-1 (not UTF-8), as Python holds it: surrogate-escaped."""
    import os

    return folder / os.fsdecode(name)


def _write_wav_bytes_path(path, x):
    """A WAV at ``path`` even when its name is not UTF-8 (soundfile refuses such a str, not its bytes)."""
    import os

    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fsencode(path), x, 16000, subtype="PCM_16")
    return path


def test_prepare_folder_lists_link_loops_and_dangling_links_and_goes_on(tmp_path, capsys):
    import os

    from mlsv.data.prepare import prepare_folder

    root = tmp_path / "root"
    write_wav(root / "spk1" / "good.wav", tone(0.5))
    write_wav(root / "spk2" / "good.wav", tone(0.5, 300))
    os.symlink("loop.wav", root / "spk1" / "loop.wav")  # a link to itself
    os.symlink("b.wav", root / "spk2" / "a.wav")  # two links to each other
    os.symlink("a.wav", root / "spk2" / "b.wav")
    os.symlink("missing.wav", root / "spk2" / "dangling.wav")
    out = tmp_path / "out" / "m.jsonl"
    result = prepare_folder(root, out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["spk1/good.wav", "spk2/good.wav"]
    loop = "symbolic link loop (a link that leads back to itself): remove or fix the link"
    assert result.bad == [f"{root / 'spk1' / 'loop.wav'}: {loop}", f"{root / 'spk2' / 'a.wav'}: {loop}",
                          f"{root / 'spk2' / 'b.wav'}: {loop}",
                          f"{root / 'spk2' / 'dangling.wav'}: dangling link to missing.wav (no such file): "
                          "remove or fix the link"]
    assert (tmp_path / "out" / "bad_files.txt").read_text().splitlines() == result.bad
    assert main(["prepare", "folder", "--root", str(root), "--out", str(out)]) == 0
    assert f"bad: {root / 'spk2' / 'dangling.wav'}: dangling link to missing.wav" in capsys.readouterr().out


def test_prepare_folder_lists_names_not_utf8_as_bad_files_and_writes_a_utf8_manifest(tmp_path, capsys):
    from mlsv.data.prepare import prepare_folder

    root = tmp_path / "root"
    write_wav(root / "spk1" / "good.wav", tone(0.5))
    write_wav(root / "José" / "good.wav", tone(0.5, 300))  # UTF-8 names are kept as they are
    _write_wav_bytes_path(_latin1_name(root / "spk1", b"caf\xe9.wav"), tone(0.5))
    _write_wav_bytes_path(_latin1_name(root, b"Jos\xe9") / "u1.wav", tone(0.5))
    out = tmp_path / "out" / "m.jsonl"
    result = prepare_folder(root, out, progress=False)
    rows = [json.loads(line) for line in out.read_bytes().decode("utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["José/good.wav", "spk1/good.wav"]
    fix = ("file name is not valid UTF-8 (a manifest is UTF-8 text): rename it "
           "(e.g. convmv -f latin1 -t utf-8)")
    assert result.bad == [f"{root}/Jos\\xe9/u1.wav: {fix}", f"{root}/spk1/caf\\xe9.wav: {fix}"]
    assert (tmp_path / "out" / "bad_files.txt").read_bytes().decode("utf-8").splitlines() == result.bad
    assert main(["prepare", "folder", "--root", str(root), "--out", str(out)]) == 0
    assert f"bad: {root}/spk1/caf\\xe9.wav: {fix}" in capsys.readouterr().out


def test_verify_cli_reads_a_file_named_in_latin1_and_names_it_readably(tmp_path, capsys):
    from conftest import saved_tiny_model

    model = str(saved_tiny_model(tmp_path / "model"))
    a = write_wav(tmp_path / "a.wav", tone(1.0))
    b = _write_wav_bytes_path(_latin1_name(tmp_path, b"caf\xe9.wav"), tone(1.0, 300))
    readable = f"{tmp_path}/caf\\xe9.wav"
    capsys.readouterr()
    assert main(["verify", "--model", model, str(a), str(b), "--threshold", "0.5"]) == 0
    assert "decision" in capsys.readouterr().out
    assert main(["verify", "--model", model, str(a), str(b), "--threshold", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["b"] == readable
    assert main(["verify", "--model", model, str(a), str(b), "--threshold", "0.5", "--window", "0.5"]) == 0
    assert "speaks in caf\\xe9.wav: " in capsys.readouterr().out
    bad = _latin1_name(tmp_path, b"d\xe9j\xe0.wav")  # not audio: the error names it, readably, on one line
    bad.write_bytes(b"not audio at all")
    assert main(["verify", "--model", model, str(a), str(bad), "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mlsv verify: error: {tmp_path}/d\\xe9j\\xe0.wav: not decodable audio")


# ---------------------------------------------------------------------------------------------------------
# 11. manifest numbers and ids are checked where manifests are loaded


BAD_VALUES = [
    ("sample_rate", 0, "sample_rate 0 Hz is outside 4000-384000 Hz"),
    ("sample_rate", 1_000_000, "sample_rate 1000000 Hz is outside 4000-384000 Hz"),
    ("sample_rate", 16000.5, "sample_rate 16000.5 is not a whole number of Hz"),
    ("duration", 1e308, r"duration 1e\+308 s is over 24 hours \(86400 s\): not one utterance"),
    ("duration", float("nan"), "duration nan is not a finite number of seconds"),
    ("duration", float("inf"), "duration inf is not a finite number of seconds"),
    ("duration", -1.0, r"zero or negative duration -1\.0"),
    ("duration", 0, "zero or negative duration 0"),
    ("id", "a b", "id 'a b' holds whitespace"),
    ("id", "a\tb", r"id 'a\\tb' holds whitespace"),
]


@pytest.mark.parametrize("field, value, message", BAD_VALUES)
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_bad_manifest_numbers_and_ids_name_the_line_and_field(tmp_path, field, value, message, suffix):
    from mlsv.data.loader import build_eval_loader

    rows = _rows()
    for row in rows:
        write_wav(tmp_path / row["path"], tone(1.0))
    rows[1][field] = value
    path = write_manifest(rows, tmp_path / f"m{suffix}")
    where = f"^{path}:2: {message}"
    for streaming in (False, True):
        with pytest.raises(ManifestError, match=where):
            load_manifest(path, streaming=streaming, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ManifestError, match=where):
        build_eval_loader(path, batch_seconds=10.0)
    with pytest.raises(ManifestError, match=f"{path}:2: (u1: )?{message}"):
        validate(path)


def test_good_manifest_numbers_still_load(tmp_path):
    rows = _rows()
    rows[0].update(sample_rate=16000.0, duration=86400)  # a whole-number float rate; exactly 24 hours
    rows[1].update(sample_rate=4000, id="u1-ü")
    rows[2].update(sample_rate=384000, duration=1e-3)
    for suffix in (".jsonl", ".parquet"):
        path = write_manifest(rows, tmp_path / f"m{suffix}")
        assert load_manifest(path, cache_dir=str(tmp_path / "cache"))["id"] == ["u0", "u1-ü", "u2"]


def test_embed_cli_names_the_line_of_a_nan_duration(tmp_path, capsys):
    from conftest import saved_tiny_model

    model = str(saved_tiny_model(tmp_path / "model"))
    rows = _rows()
    for row in rows:
        write_wav(tmp_path / row["path"], tone(1.0))
    rows[2]["duration"] = float("nan")
    path = write_manifest(rows, tmp_path / "nan.jsonl")
    assert main(["embed", "--model", model, "--manifest", str(path), "--out", str(tmp_path / "o.npz"),
                 "--num-workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mlsv embed: error: {path}:3: duration nan is not a finite number of seconds")
