"""Preparation (mlsv.data.prepare, `mlsv prepare`) on tiny fake trees: VoxCeleb (wav + m4a + official trial
names), folders (links and file names that are not UTF-8 listed as bad files), MUSAN, RIRs, balanced trial
lists, the synthetic corpus."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import latin1_name, tiny_corpus, tone, write_m4a, write_wav, write_wav_bytes_path

from mlsv.cli import main
from mlsv.data.audio import MissingDependencyError
from mlsv.data.manifest import iter_rows
from mlsv.data.prepare import prepare_folder, prepare_musan, prepare_rirs, prepare_trials, prepare_voxceleb
from mlsv.data.trials import read_trials
from mlsv.data.validate import validate


def _vox_tree(root, speakers, videos=2, utts=2, m4a=False):
    for s in speakers:
        for v in range(videos):
            for u in range(utts):
                x = tone(0.6, 100 + int(s[-2:]) * 7, seed=u)
                stem = root / s / f"vid{v}" / f"{u + 1:05d}"
                write_m4a(stem.with_suffix(".m4a"), x) if m4a else write_wav(stem.with_suffix(".wav"), x)


@pytest.fixture
def vox(tmp_path):
    _vox_tree(tmp_path / "vox1_test" / "wav", ["id10270", "id10271"])
    _vox_tree(tmp_path / "vox1_dev" / "wav", ["id10001", "id10002"])
    _vox_tree(tmp_path / "vox2_dev" / "aac", ["id00012", "id00013", "id00014"], utts=1, m4a=True)
    (tmp_path / "vox1_dev" / "wav" / "id10002" / "vid0" / "00009.wav").write_text("corrupt")
    trials = tmp_path / "meta"
    trials.mkdir()
    (trials / "veri_test2.txt").write_text(
        "1 id10270/vid0/00001.wav id10270/vid1/00001.wav\n0 id10270/vid0/00001.wav id10271/vid0/00002.wav\n"
    )
    (trials / "list_test_hard2.txt").write_text("1 id10001/vid0/00001.wav id10001/vid1/00002.wav\n")
    return tmp_path


def test_prepare_voxceleb(vox):
    out = vox / "out"
    result = prepare_voxceleb(
        out,
        vox1_dev=vox / "vox1_dev/wav",
        vox1_test=vox / "vox1_test/wav",
        vox2_dev=vox / "vox2_dev/aac",
        trials=[vox / "meta/veri_test2.txt", vox / "meta/list_test_hard2.txt"],
        validation_speakers=2,
        convert_dir=vox / "flac",
        progress=False,
    )
    assert len(result.bad) == 1 and "00009.wav" in result.bad[0]
    assert (out / "bad_files.txt").read_text().count("\n") == 1
    train = [r for _, r in iter_rows(out / "train.jsonl")]
    val = [r for _, r in iter_rows(out / "validation.jsonl")]
    assert {r["speaker"] for r in train} | {r["speaker"] for r in val} == {"id00012", "id00013", "id00014"}
    assert all(r["path"].endswith(".flac") for r in train) and train[0]["id"].endswith(".wav")
    assert len({r["speaker"] for r in val}) == 2
    test_ids = {r["id"] for _, r in iter_rows(out / "test.jsonl")}
    assert "id10270/vid0/00001.wav" in test_ids and "id10001/vid0/00001.wav" in test_ids
    assert read_trials(out / "trials/vox1_O.txt").name == "vox1_O" and (out / "trials/vox1_H.txt").is_file()
    assert validate(out / "test.jsonl", [out / "trials/vox1_O.txt", out / "trials/vox1_H.txt"]).ok
    assert validate(out / "validation.jsonl", out / "validation_trials.txt").ok
    again = prepare_voxceleb(out, vox2_dev=vox / "vox2_dev/aac", convert_dir=vox / "flac", progress=False)
    assert again.rows == 6  # resumed: the converted files are reused


def test_voxceleb_trials_need_their_speakers(vox):
    with pytest.raises(KeyError, match="need --vox1-dev"):
        prepare_voxceleb(
            vox / "out", vox1_test=vox / "vox1_test/wav", trials=[vox / "meta/list_test_hard2.txt"], progress=False
        )
    # --vox1-dev given, but it is the training set (no --vox2-dev): Vox1-H would test on training speakers
    with pytest.raises(KeyError) as info:
        prepare_voxceleb(
            vox / "out2",
            vox1_dev=vox / "vox1_dev/wav",
            vox1_test=vox / "vox1_test/wav",
            trials=[vox / "meta/list_test_hard2.txt"],
            progress=False,
        )
    message = str(info.value)
    assert "list_test_hard2.txt" in message and "VoxCeleb1 dev is the training set here" in message
    assert "Give --vox2-dev" in message and "need --vox1-dev" not in message


def test_voxceleb_without_pyav_stops_rather_than_dropping_every_m4a(vox, monkeypatch):
    """Without PyAV every m4a file fails alike: it is not a bad file to leave out of the manifest."""
    monkeypatch.setitem(sys.modules, "av", None)
    for convert_dir in (None, vox / "flac"):
        with pytest.raises(MissingDependencyError, match=r"\.m4a: decoding m4a/AAC needs PyAV"):
            prepare_voxceleb(vox / "out", vox2_dev=vox / "vox2_dev/aac", convert_dir=convert_dir, progress=False)


def test_voxceleb_refuses_one_validation_speaker(vox):
    with pytest.raises(ValueError, match="--validation-speakers must be 0 or at least 2"):
        prepare_voxceleb(vox / "out", vox2_dev=vox / "vox2_dev/aac", validation_speakers=1, progress=False)


def test_prepare_folder_resample_option_and_cli(tmp_path):
    root = tmp_path / "mine"
    write_wav(root / "alice" / "day1" / "a.wav", tone(0.5))
    write_wav(root / "alice" / "b.flac", tone(0.5))
    write_wav(root / "bob" / "c.wav", np.stack([tone(0.5), tone(0.5)], 1))  # stereo
    write_wav(root / "bob" / "d.wav", tone(0.5, sample_rate=8000), 8000)
    result = prepare_folder(root, tmp_path / "m.jsonl", progress=False)
    rows = {r["id"]: r for _, r in iter_rows(tmp_path / "m.jsonl")}
    assert set(rows) == {"alice/day1/a.wav", "alice/b.flac", "bob/c.wav", "bob/d.wav"} and not result.bad
    assert rows["alice/day1/a.wav"]["session"] == "alice/day1" and rows["bob/d.wav"]["sample_rate"] == 8000
    assert (
        main(
            [
                "prepare",
                "folder",
                "--root",
                str(root),
                "--out",
                str(tmp_path / "n.jsonl"),
                "--no-resample",
                "--no-progress",
            ]
        )
        == 0
    )
    kept = {r["id"] for _, r in iter_rows(tmp_path / "n.jsonl")}
    assert "bob/d.wav" not in kept and "d.wav" in (tmp_path / "bad_files.txt").read_text()


def test_prepare_folder_ids_hold_no_whitespace(tmp_path):
    root = tmp_path / "mine"
    for spk, f0 in (("John Smith", 120), ("Ann Lee", 200)):
        for s in range(2):
            write_wav(root / spk / f"sess {s}" / f"utt {s}.wav", tone(0.5, f0, seed=s))
    prepare_folder(root, tmp_path / "m.jsonl", progress=False)
    rows = {r["id"]: r for _, r in iter_rows(tmp_path / "m.jsonl")}
    assert "John_Smith/sess_1/utt_1.wav" in rows and not any(" " in uid for uid in rows)
    assert rows["John_Smith/sess_1/utt_1.wav"]["speaker"] == "John Smith"
    assert rows["John_Smith/sess_1/utt_1.wav"]["session"] == "John Smith/sess 1"
    trials = prepare_trials(tmp_path / "m.jsonl", tmp_path / "t.txt")
    assert len(read_trials(tmp_path / "t.txt")) == len(trials) > 0
    write_wav(root / "Ann Lee" / "sess 0" / "utt_0.wav", tone(0.5))
    with pytest.raises(ValueError, match="utt 0.wav and .*utt_0.wav both get id 'Ann_Lee/sess_0/utt_0.wav'"):
        prepare_folder(root, tmp_path / "n.jsonl", progress=False)


@pytest.mark.parametrize("kind", ["folder", "musan", "rirs"])
def test_prepare_into_a_folder_that_does_not_exist_yet(tmp_path, monkeypatch, kind):
    """The README's commands write to data/...: on a fresh checkout there is no data/ yet, and every file's
    path (relative to the manifest, data/../mine/a.wav) was reported missing."""
    monkeypatch.chdir(tmp_path)
    write_wav(Path("mine/alice/a.wav"), tone(0.5))
    write_wav(Path("musan/noise/sub/n.wav"), tone(0.5))
    write_wav(Path("RIRS_NOISES/simulated_rirs/smallroom/Room001/Room001-00001.wav"), tone(0.2))
    root = {"folder": "mine", "musan": "musan", "rirs": "."}[kind]
    out = Path(f"data/{kind}/{kind}.jsonl")
    assert main(["prepare", kind, "--root", root, "--out", str(out), "--no-progress"]) == 0
    rows = [r for _, r in iter_rows(out)]
    assert len(rows) == 1 and validate(out).ok


def test_prepare_musan_and_rirs(tmp_path):
    musan = tmp_path / "musan"
    for cat in ("noise", "music", "speech"):
        write_wav(musan / cat / "sub" / f"{cat}-1.wav", tone(1.0))
    prepare_musan(musan, tmp_path / "musan.jsonl", progress=False)
    assert {r["category"] for _, r in iter_rows(tmp_path / "musan.jsonl")} == {"noise", "music", "speech"}
    rirs = tmp_path / "RIRS_NOISES"
    write_wav(rirs / "real_rirs_isotropic_noises" / "air_1.wav", np.stack([tone(0.2), tone(0.2)], 1))
    (rirs / "real_rirs_isotropic_noises" / "rir_list").write_text(
        "--rir-id air_1 --room-id air RIRS_NOISES/real_rirs_isotropic_noises/air_1.wav\n"
    )
    write_wav(rirs / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav", tone(0.2))
    prepare_rirs(tmp_path, tmp_path / "rirs.jsonl", progress=False)
    kinds = {r["id"]: r["kind"] for _, r in iter_rows(tmp_path / "rirs.jsonl")}
    assert kinds == {
        "real_rirs_isotropic_noises/air_1.wav": "real",
        "simulated_rirs/smallroom/Room001/Room001-00001.wav": "simulated",
    }
    assert validate(tmp_path / "rirs.jsonl").ok


def test_trials_balanced_cross_session_and_deterministic(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=4, utts=6, sessions=3)
    a = prepare_trials(manifest, tmp_path / "a.txt", per_utterance=3, seed=5)
    b = prepare_trials(manifest, tmp_path / "b.txt", per_utterance=3, seed=5)
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()
    assert int(a.labels.sum()) * 2 == len(a) > 0
    session = {r["id"]: r["session"] for _, r in iter_rows(manifest)}
    speaker = {r["id"]: r["speaker"] for _, r in iter_rows(manifest)}
    for lab, e, t in zip(a.labels, a.enroll, a.test):
        assert session[e] != session[t] and (speaker[e] == speaker[t]) == bool(lab)
    assert len({frozenset(p) for p in zip(a.enroll, a.test)}) == len(a)
    assert len(b) == len(a)


def test_cli_synthetic_and_trials(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["prepare", "synthetic", "--out", str(out), "--speakers", "3", "--utterances", "3"]) == 0
    baseline = json.loads((out / "baseline.json").read_text())
    assert {"mfcc_cosine_eer", "lda_eer", "n_trials"} <= set(baseline)
    assert "MFCC-mean cosine baseline EER" in capsys.readouterr().out
    assert main(["prepare", "trials", "--manifest", str(out / "test.jsonl"), "--out", str(tmp_path / "t.txt")]) == 0
    assert validate(out / "test.jsonl", tmp_path / "t.txt").ok


def test_prepare_voxceleb_refuses_a_trial_list_with_a_truncated_first_line(tmp_path):
    for spk in ("id10270", "id10271"):
        for v in range(2):
            write_wav(tmp_path / "wav" / spk / f"vid{v}" / "00001.wav", tone(0.3, 150 + 40 * v))
    trials = tmp_path / "veri_test2.txt"
    trials.write_text(
        "1 id10270/vid0/00001.wav\n1 id10270/vid0/00001.wav id10270/vid1/00001.wav\n"
        "0 id10270/vid0/00001.wav id10271/vid0/00001.wav\n"
    )
    with pytest.raises(ValueError, match=r"veri_test2\.txt:2: expected 'ENROLL TEST' like line 1"):
        prepare_voxceleb(tmp_path / "out", vox1_test=tmp_path / "wav", trials=[trials], progress=False)


# -- links and file names in `mlsv prepare folder` -----------------------------------------------------------


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
    assert result.bad == [
        f"{root / 'spk1' / 'loop.wav'}: {loop}",
        f"{root / 'spk2' / 'a.wav'}: {loop}",
        f"{root / 'spk2' / 'b.wav'}: {loop}",
        f"{root / 'spk2' / 'dangling.wav'}: dangling link to missing.wav (no such file): remove or fix the link",
    ]
    assert (tmp_path / "out" / "bad_files.txt").read_text().splitlines() == result.bad
    assert main(["prepare", "folder", "--root", str(root), "--out", str(out)]) == 0
    assert f"bad: {root / 'spk2' / 'dangling.wav'}: dangling link to missing.wav" in capsys.readouterr().out


def test_prepare_folder_lists_names_not_utf8_as_bad_files_and_writes_a_utf8_manifest(tmp_path, capsys):
    from mlsv.data.prepare import prepare_folder

    root = tmp_path / "root"
    write_wav(root / "spk1" / "good.wav", tone(0.5))
    write_wav(root / "José" / "good.wav", tone(0.5, 300))  # UTF-8 names are kept as they are
    write_wav_bytes_path(latin1_name(root / "spk1", b"caf\xe9.wav"), tone(0.5))
    write_wav_bytes_path(latin1_name(root, b"Jos\xe9") / "u1.wav", tone(0.5))
    out = tmp_path / "out" / "m.jsonl"
    result = prepare_folder(root, out, progress=False)
    rows = [json.loads(line) for line in out.read_bytes().decode("utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["José/good.wav", "spk1/good.wav"]
    fix = "file name is not valid UTF-8 (a manifest is UTF-8 text): rename it (e.g. convmv -f latin1 -t utf-8)"
    assert result.bad == [f"{root}/Jos\\xe9/u1.wav: {fix}", f"{root}/spk1/caf\\xe9.wav: {fix}"]
    assert (tmp_path / "out" / "bad_files.txt").read_bytes().decode("utf-8").splitlines() == result.bad
    assert main(["prepare", "folder", "--root", str(root), "--out", str(out)]) == 0
    assert f"bad: {root}/spk1/caf\\xe9.wav: {fix}" in capsys.readouterr().out


def test_any_folder_is_an_augmentation_bank(tmp_path, capsys):
    """`mlsv prepare noise --category` and `mlsv prepare rirs` take a plain folder of one's own recordings."""
    from mlsv.config import AugmentConfig
    from mlsv.data.augment import Augmenter

    babble, rooms = tmp_path / "my_babble", tmp_path / "my_rooms"
    for i in range(3):
        write_wav(babble / "cafe" / f"b{i}.wav", tone(2.0, 150 + 30 * i, seed=i))
    for i in range(2):
        rir = np.zeros(1600, np.float32)
        rir[10 * (i + 1)] = 1.0
        rir[200:] = 0.01 * np.random.default_rng(i).standard_normal(1400).astype(np.float32)
        write_wav(rooms / f"room{i}.wav", rir, subtype="FLOAT")
    assert (
        main(
            [
                "prepare",
                "noise",
                "--root",
                str(babble),
                "--category",
                "babble",
                "--out",
                str(tmp_path / "babble.jsonl"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["prepare", "rirs", "--root", str(rooms), "--out", str(tmp_path / "rirs.jsonl"), "--no-progress"]) == 0
    noise_rows = [json.loads(line) for line in (tmp_path / "babble.jsonl").read_text().splitlines()]
    rir_rows = [json.loads(line) for line in (tmp_path / "rirs.jsonl").read_text().splitlines()]
    assert {r["category"] for r in noise_rows} == {"speech"} and len(noise_rows) == 3
    assert {r["kind"] for r in rir_rows} == {"real"} and len(rir_rows) == 2
    # a source's group: its subfolder under the bank, or the category itself for files at the top
    assert {r["speaker"] for r in noise_rows} == {"speech/cafe"} and {r["speaker"] for r in rir_rows} == {"real"}
    cfg = AugmentConfig(
        probability=1.0,
        kinds=["babble", "reverb"],
        noise_manifest=str(tmp_path / "babble.jsonl"),
        rir_manifest=str(tmp_path / "rirs.jsonl"),
        babble_speakers=[2, 3],
    )
    augment = Augmenter.from_config(cfg)
    x = tone(1.0)
    for seed in range(4):
        y = augment(x, 16000, np.random.default_rng(seed))
        assert y.shape == x.shape and np.isfinite(y).all() and not np.allclose(y, x)
    with pytest.raises(SystemExit):  # argparse: an unknown category
        main(["prepare", "noise", "--root", str(babble), "--category", "wind", "--out", str(tmp_path / "w.jsonl")])
