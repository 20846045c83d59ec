"""Trial lists (mlsv.data.trials): repeated trials and self-pairs counted, warned about and recorded; one form
per list, lines named despite blank ones, UTF-8 and byte-order marks; trials made when speakers are few."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlsv.cli import main
from mlsv.data.manifest import ManifestError, write_manifest
from mlsv.data.prepare import prepare_trials
from mlsv.data.trials import Trials, check_trial_ids, make_trials, read_trials, write_trials
from mlsv.scoring.embeddings import EmbeddingTable
from mlsv.scoring.pipeline import score_trials, trial_metrics


def test_repeated_trials_and_self_pairs_are_counted_warned_and_recorded(tmp_path, caplog):
    path = tmp_path / "odd.txt"
    path.write_text("1 a1 a2\n0 a1 b1\n\n1 a2 a1\n1 b1 b1\n0 a1 b1\n1 b2 b1\n")
    with caplog.at_level("WARNING", logger="mlsv.data.trials"):
        trials = read_trials(path)
    assert trials.repeats() == [(2, 0), (4, 1)]  # a2 a1 repeats a1 a2 (scoring is symmetric); a1 b1 twice
    assert trials.self_pairs().tolist() == [3]
    assert f"{path}: 2 trial(s) repeat an earlier one (line 4 repeats line 1)" in caplog.text
    assert f"{path}: 1 trial(s) pair an utterance with itself (line 5: b1)" in caplog.text
    rng = np.random.default_rng(0)
    table = EmbeddingTable(
        np.array(["a1", "a2", "b1", "b2"]), rng.standard_normal((4, 8)).astype(np.float32), np.ones(4, np.float32)
    )
    metrics = trial_metrics(trials, score_trials(table, trials))
    assert metrics["n_repeated_trials"] == 2 and metrics["n_self_pairs"] == 1 and metrics["n_trials"] == 6


def test_a_clean_list_warns_nothing_and_records_zeros(tmp_path, caplog):
    path = tmp_path / "clean.txt"
    path.write_text("1 a1 a2\n0 a1 b1\n")
    with caplog.at_level("WARNING", logger="mlsv.data.trials"):
        trials = read_trials(path)
    assert not caplog.text and trials.oddities() == {"n_repeated_trials": 0, "n_self_pairs": 0}


# -- reading: one form per list, lines named despite blank ones, UTF-8 ---------------------------------------


LABELLED = ["1 a/1.wav a/2.wav", "0 a/1.wav b/1.wav", "1 b/1.wav b/2.wav"]


def test_trial_list_mixing_labelled_and_unlabelled_lines_is_refused(tmp_path):
    twocol = tmp_path / "twocol.txt"
    twocol.write_text("\n".join([*LABELLED, "a/1.wav b/2.wav"]) + "\n")
    with pytest.raises(
        ValueError,
        match=r"twocol\.txt:4: expected 'LABEL ENROLL TEST' like the other lines, "
        r"got 2 fields",
    ):
        read_trials(twocol)
    first = tmp_path / "first.txt"  # a truncated first line: read alone, it looks like an unlabelled trial
    first.write_text("\n".join(["1 a/1.wav", *LABELLED]) + "\n")
    with pytest.raises(ValueError, match=r"first\.txt:2: expected 'ENROLL TEST' like line 1, got 3 fields"):
        read_trials(first)
    same = tmp_path / "same.txt"  # all one form stays accepted, labelled or not
    same.write_text("a/1.wav a/2.wav\n\nb/1.wav a/2.wav\n")
    assert read_trials(same).labels.tolist() == [-1, -1]


def test_unknown_trial_ids_name_the_file_line_despite_blank_lines(tmp_path):
    path = tmp_path / "lineno2.txt"
    path.write_text("1 a b\n0 a c\n\n\n1 a b\n0 a c\n1 b c\n\n1 zz b\n")
    t = read_trials(path)
    assert t.lines.tolist() == [1, 2, 5, 6, 7, 9] and t.path == str(path)
    with pytest.raises(KeyError) as info:
        check_trial_ids(t, {"a", "b", "c"}, source="embeddings")
    assert info.value.args[0] == f"{path}:9: id 'zz' not in the embeddings"


def test_latin1_trial_list_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("1 a b\n\n0 a Jos\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt:3: not valid UTF-8 \(byte 0xe9 at byte 8 of the line\)"):
        read_trials(path)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("1 a b\n0 a José\n".encode("utf-8-sig"))
    assert read_trials(bom).test.tolist() == ["b", "José"]


def test_read_trials_accepts_a_byte_order_mark_and_refuses_an_empty_list(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("1 a b\n0 a c\n".encode("utf-8-sig"))  # as some Windows editors save it
    t = read_trials(bom)
    assert t.labels.tolist() == [1, 0] and list(t.enroll) == ["a", "a"] and t.has_labels
    for name, text in (("empty.txt", ""), ("blank.txt", "\n  \n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"^empty trial list: {tmp_path / name}$"):
            read_trials(tmp_path / name)


# -- making trial lists --------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_trials_when_other_speakers_have_few_utterances(tmp_path):
    t = make_trials(["a1", "a2", "a3", "b1"], ["A", "A", "A", "B"])  # used to spin forever
    assert list(t.labels) == [1, 1, 1, 0, 0, 0] and set(t.test[3:]) == {"b1"}
    rows = [
        {"id": f"{spk}{u}", "path": "x.wav", "speaker": spk, "duration": 1.0, "sample_rate": 16000}
        for spk, n in (("A", 10), ("B", 2))
        for u in range(n)
    ]
    manifest = write_manifest(rows, tmp_path / "m.jsonl")
    t = prepare_trials(manifest, tmp_path / "t.txt", per_utterance=5)
    assert int(t.labels.sum()) * 2 == len(t) and len({frozenset(p) for p in zip(t.enroll, t.test)}) == len(t)
    with pytest.raises(ValueError, match="one.jsonl: .*no target and non-target trials"):
        prepare_trials(write_manifest(rows[:10], tmp_path / "one.jsonl"), tmp_path / "u.txt")
    bare = [{k: v for k, v in r.items() if k != "speaker"} for r in rows]
    (tmp_path / "bare.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bare))
    with pytest.raises(ManifestError, match=r"bare.jsonl:1: missing \['speaker'\]"):
        prepare_trials(tmp_path / "bare.jsonl", tmp_path / "v.txt")
    assert (
        main(["prepare", "trials", "--manifest", str(tmp_path / "bare.jsonl"), "--out", str(tmp_path / "v.txt")]) == 2
    )
    with pytest.raises(ValueError, match="id 'a b' is empty or holds whitespace"):
        write_trials(
            Trials(np.array(["a b"], object), np.array(["c"], object), np.array([1], np.int8)), tmp_path / "w.txt"
        )
