"""Manifests (mlsv.data.manifest, checked by mlsv.data.validate): round trips, errors naming the file, line
and field (files not UTF-8, corrupt parquet, bad numbers and ids), labels, process shares."""

from __future__ import annotations

import json

import pytest
from data_helpers import tiny_corpus, tone, write_wav

from mlsv.cli import main
from mlsv.data.manifest import (
    ManifestError,
    iter_rows,
    load_labels,
    load_manifest,
    sample_manifest,
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
            load_manifest(_jsonl(tmp_path / f"{name}.jsonl", *rows), streaming=streaming, cache_dir=str(tmp_path))
    shards = tmp_path / "shards"
    shards.mkdir()
    write_manifest([row("a"), row("b")], shards / "shard-0.parquet")
    write_manifest([row("b")], shards / "shard-1.parquet")
    with pytest.raises(ManifestError, match=r"shards:3: duplicate id 'b' \(first on line 2\)"):
        load_manifest(shards, streaming=streaming, cache_dir=str(tmp_path))
    with pytest.raises(ManifestError, match="ids must be strings"):
        load_manifest(
            write_manifest([row(1), row(2)], tmp_path / "num.parquet"), streaming=streaming, cache_dir=str(tmp_path)
        )
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
    shares = [
        {r["id"] for r in load_manifest(manifest, streaming=streaming, process_index=i, num_processes=2)}
        for i in range(2)
    ]
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == {r["id"] for _, r in iter_rows(manifest)}


# -- the trial lists validate checks: lines named despite blank ones -----------------------------------------


def test_validate_names_the_trial_file_line_despite_blank_lines(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=2, utts=2)
    ids = [row["id"] for _, row in iter_rows(manifest)]
    trials = tmp_path / "t.txt"
    trials.write_text(f"1 {ids[0]} {ids[1]}\n\n0 {ids[0]} nope\n")
    report = validate(manifest, trials, check_audio=False, raise_on_error=False)
    assert report.errors == [f"{trials}:3: id 'nope' not in {manifest}"]


# -- files that are not UTF-8, corrupt parquet ---------------------------------------------------------------


def _rows(n: int = 3) -> list[dict]:
    return [
        {"id": f"u{i}", "path": f"u{i}.wav", "speaker": f"s{i % 2}", "duration": 1.0, "sample_rate": 16000}
        for i in range(n)
    ]


def _latin1_manifest(path):
    """A JSONL manifest whose last (third) line holds speaker 'José' in Latin-1."""
    rows = _rows()
    rows[-1]["speaker"] = "Jos\xe9"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1"))
    return path


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


def test_embed_cli_reports_a_latin1_manifest_without_a_traceback(tmp_path, capsys):
    from conftest import tiny_model

    tiny_model(lap_heads=2, lap_channels=16, embedding_size=8).save_pretrained(tmp_path / "model")
    path = _latin1_manifest(tmp_path / "latin1.jsonl")
    for row in _rows():  # real audio: the rows load, and only the bad bytes are to blame
        write_wav(tmp_path / row["path"], tone(1.0))
    assert (
        main(
            [
                "embed",
                "--model",
                str(tmp_path / "model"),
                "--manifest",
                str(path),
                "--out",
                str(tmp_path / "o.npz"),
                "--num-workers",
                "0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mlsv embed: error: {path}:3: not valid UTF-8 (byte 0xe9")


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


# -- manifest numbers and ids are checked where manifests are loaded -----------------------------------------


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
    assert (
        main(
            ["embed", "--model", model, "--manifest", str(path), "--out", str(tmp_path / "o.npz"), "--num-workers", "0"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mlsv embed: error: {path}:3: duration nan is not a finite number of seconds")
