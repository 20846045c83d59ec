"""``mlsv score`` / ``mlsv calibrate`` (mlsv.commands.score, .calibrate) on tiny npz files, in-process; score
files, metrics, and clear errors naming the cohort, the mean vector or the trial line before anything is
written."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
from conftest import SMALL_DIM, cli_error
from data_helpers import speaker_table

from mlsv.cli import main
from mlsv.commands import calibrate as calibrate_cmd
from mlsv.commands import score as score_cmd
from mlsv.data.trials import Trials, read_trials
from mlsv.scoring.embeddings import EmbeddingTable, save_embeddings
from mlsv.scoring.pipeline import score_trials

DIM = 16


def _mlsv(argv: list[str]) -> int:
    """``mlsv.cli.main``, or the same dispatch over our two commands while other commands are missing."""
    try:
        from mlsv.cli import build_parser

        build_parser()
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("mlsv.commands."):
            raise
    else:
        from mlsv.cli import main

        return main(argv)
    parser = argparse.ArgumentParser(prog="mlsv")
    sub = parser.add_subparsers(dest="command", required=True)
    score_cmd.register(sub)
    calibrate_cmd.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"mlsv {args.command}: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2


def _table(rng, n_spk: int, per_spk: int, prefix: str) -> EmbeddingTable:
    return speaker_table(rng, n_spk, per_spk, prefix, DIM)


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    evl = _table(rng, 6, 4, "id")
    cohort = _table(rng, 30, 3, "co")
    save_embeddings(evl, tmp_path / "eval.npz")
    save_embeddings(cohort, tmp_path / "cohort.npz")
    lines_o, lines_x = [], []
    for i in range(len(evl)):
        for j in range(i + 1, len(evl)):
            line = f"{int(evl.speakers[i] == evl.speakers[j])} {evl.ids[i]} {evl.ids[j]}\n"
            (lines_o if (i + j) % 2 else lines_x).append(line)
    (tmp_path / "listO.txt").write_text("".join(lines_o))
    (tmp_path / "listX.txt").write_text("".join(lines_x))
    (tmp_path / "nolabel.txt").write_text("".join(" ".join(x.split()[1:]) + "\n" for x in lines_o[:5]))
    return tmp_path, evl, cohort


def test_score_cosine_single_list(files):
    d, evl, _ = files
    assert (
        _mlsv(
            [
                "score",
                "--embeddings",
                str(d / "eval.npz"),
                "--trials",
                str(d / "listO.txt"),
                "--out",
                str(d / "s.tsv"),
                "--metrics",
                str(d / "m.json"),
            ]
        )
        == 0
    )
    rows = (d / "s.tsv").read_text().splitlines()
    assert rows[0] == "enroll\ttest\tscore\tlabel"
    trials = read_trials(d / "listO.txt")
    assert len(rows) == len(trials) + 1
    got = np.array([float(r.split("\t")[2]) for r in rows[1:]])
    np.testing.assert_allclose(got, score_trials(evl, trials)["cosine"], atol=1e-6)
    m = json.loads((d / "m.json").read_text())
    assert set(m) == {"listO"}
    assert {"eer", "min_dcf_0.01", "min_dcf_0.05", "n_trials"} <= set(m["listO"])
    assert m["listO"]["n_trials"] == len(trials)


def test_calibrate_then_score_several_lists(files, capsys):
    d, evl, cohort = files
    assert (
        _mlsv(
            [
                "calibrate",
                "--embeddings",
                str(d / "cohort.npz"),
                "--asnorm-top-k",
                "10",
                "--pairs",
                "400",
                "--out",
                str(d / "cal.json"),
            ]
        )
        == 0
    )
    cal = json.loads((d / "cal.json").read_text())
    assert cal["features"][0] == "score" and cal["info"]["top_k"] == 10 and "threshold" in cal
    assert (
        _mlsv(
            [
                "score",
                "--embeddings",
                str(d / "eval.npz"),
                "--trials",
                str(d / "listO.txt"),
                str(d / "listX.txt"),
                str(d / "nolabel.txt"),
                "--cohort",
                str(d / "cohort.npz"),
                "--calibration",
                str(d / "cal.json"),
                "--out",
                str(d / "out" / "scores.tsv"),
                "--metrics",
                str(d / "out" / "m.json"),
            ]
        )
        == 0
    )
    for name in ("listO", "listX", "nolabel"):
        assert (d / "out" / f"scores.{name}.tsv").is_file()
    last = (d / "out" / "scores.nolabel.tsv").read_text().splitlines()[1]
    assert last.endswith("\t")  # unknown label left empty
    m = json.loads((d / "out" / "m.json").read_text())
    assert set(m) == {"listO", "listX"}
    assert {"act_dcf_0.01", "act_dcf_0.05", "cllr"} <= set(m["listO"])
    assert "labels unknown" in capsys.readouterr().err


def test_unknown_trial_id_names_id_and_line(files, capsys):
    d, evl, _ = files
    lines = (d / "listO.txt").read_text().splitlines()
    lines[2] = f"1 {evl.ids[0]} idXXXX/missing/00001.wav"
    (d / "bad.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(KeyError, match=r"bad\.txt:3: id 'idXXXX/missing/00001.wav' not in the embeddings"):
        score_trials(evl, read_trials(d / "bad.txt"))
    assert (
        _mlsv(["score", "--embeddings", str(d / "eval.npz"), "--trials", str(d / "bad.txt"), "--out", str(d / "s.tsv")])
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.txt:3" in err and "idXXXX/missing/00001.wav" in err


def test_score_errors_are_clear(files, capsys):
    d, _, _ = files
    assert (
        _mlsv(
            [
                "score",
                "--embeddings",
                str(d / "eval.npz"),
                "--trials",
                str(d / "listO.txt"),
                "--cohort",
                str(d / "cohort.npz"),
                "--out",
                str(d / "s.tsv"),
            ]
        )
        == 2
    )  # top-k 600 > 30
    assert "--asnorm-top-k" in capsys.readouterr().err
    assert (
        _mlsv(
            ["score", "--embeddings", str(d / "nope.npz"), "--trials", str(d / "listO.txt"), "--out", str(d / "s.tsv")]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert score_cmd.output_paths(d / "a.tsv", ["x"]) == [d / "a.tsv"]
    with pytest.raises(ValueError, match="distinct"):
        score_cmd.output_paths(d / "a.tsv", ["x", "x"])
    with pytest.raises(ValueError, match="cohort"):
        score_trials(
            EmbeddingTable(["a", "b"], np.eye(2, dtype=np.float32), [1, 1]),
            Trials(np.array(["a"], object), np.array(["b"], object), np.array([1], np.int8)),
            calibrator=object(),
        )


def test_score_names_bad_inputs(files, capsys):
    d, evl, _ = files
    args = ["--trials", str(d / "listO.txt"), "--out", str(d / "s.tsv")]
    with pytest.raises(SystemExit) as exit_info:  # was taken as 600; refused by argparse, as every command does
        _mlsv(
            [
                "score",
                "--embeddings",
                str(d / "eval.npz"),
                "--cohort",
                str(d / "cohort.npz"),
                "--asnorm-top-k",
                "0",
                *args,
            ]
        )
    assert exit_info.value.code == 2
    assert "argument --asnorm-top-k: must be at least 2, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        _mlsv(["calibrate", "--embeddings", str(d / "cohort.npz"), "--out", str(d / "c.json"), "--asnorm-top-k", "1"])
    assert exit_info.value.code == 2
    assert "argument --asnorm-top-k: must be at least 2, got 1" in capsys.readouterr().err
    assert _mlsv(["score", "--embeddings", str(d / "listO.txt"), *args]) == 2
    assert f"{d / 'listO.txt'}: not an embeddings .npz file" in capsys.readouterr().err
    emb = evl.embeddings.copy()
    emb[1, 0] = np.inf
    save_embeddings(EmbeddingTable(evl.ids, emb, evl.durations, evl.speakers), d / "inf.npz")
    assert _mlsv(["score", "--embeddings", str(d / "inf.npz"), *args]) == 2
    assert "inf.npz: 1 embeddings are NaN or infinite" in capsys.readouterr().err
    (d / "a").mkdir()
    (d / "a" / "listO.txt").write_text((d / "listO.txt").read_text())
    assert (
        _mlsv(
            [
                "score",
                "--embeddings",
                str(d / "eval.npz"),
                "--trials",
                str(d / "listO.txt"),
                str(d / "a" / "listO.txt"),
                "--out",
                str(d / "s.tsv"),
            ]
        )
        == 2
    )
    assert f"{d / 'a' / 'listO.txt'}" in capsys.readouterr().err


def test_help_has_examples(capsys):
    for mod, name in ((score_cmd, "score"), (calibrate_cmd, "calibrate")):
        parser = argparse.ArgumentParser(prog="mlsv")
        mod.register(parser.add_subparsers(dest="command"))
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--help"])
        assert f"mlsv {name} --embeddings" in capsys.readouterr().out


# -- cohort and mean named, checked before anything is written; unknown ids named by line --------------------


def _score(d, *extra) -> int:
    return main(
        [
            "score",
            "--embeddings",
            str(d / "test.npz"),
            "--trials",
            str(d / "trials.txt"),
            "--out",
            str(d / "s.tsv"),
            *extra,
        ]
    )


def test_cohort_of_another_dimension_is_named(cli_files, capsys):
    dim4 = speaker_table(np.random.default_rng(1), 10, 2, "co", 4, spread=0.5, max_seconds=5.0)
    save_embeddings(dim4, cli_files / "dim4.npz")
    assert _score(cli_files, "--cohort", str(cli_files / "dim4.npz"), "--asnorm-top-k", "2") == 2
    assert (
        f"{cli_files / 'dim4.npz'}: cohort embeddings have 4 dimensions, {cli_files / 'test.npz'} has 8"
        in cli_error(capsys)
    )
    assert not (cli_files / "s.tsv").exists()


def test_bad_mean_vectors_are_named(cli_files, capsys):
    mean = np.zeros(SMALL_DIM, np.float32)
    mean[3] = np.nan
    np.save(cli_files / "mean_nan.npy", mean)
    assert _score(cli_files, "--mean", str(cli_files / "mean_nan.npy")) == 2
    assert f"{cli_files / 'mean_nan.npy'}: NaN" in cli_error(capsys)
    assert not (cli_files / "s.tsv").exists()

    (cli_files / "bad").mkdir()
    (cli_files / "bad" / "good.wav").write_bytes((cli_files / "good.wav").read_bytes())
    assert _score(cli_files, "--mean", str(cli_files / "bad" / "good.wav")) == 2
    assert f"{cli_files / 'bad' / 'good.wav'}: not a .npy mean vector (" in cli_error(capsys)

    np.save(cli_files / "mean4.npy", np.zeros(4, np.float32))
    assert _score(cli_files, "--mean", str(cli_files / "mean4.npy")) == 2
    assert f"{cli_files / 'mean4.npy'}: mean vector has 4 dimensions, {cli_files / 'test.npz'} has 8" in cli_error(
        capsys
    )

    assert (
        main(
            [
                "calibrate",
                "--embeddings",
                str(cli_files / "cohort.npz"),
                "--asnorm-top-k",
                "2",
                "--mean",
                str(cli_files / "mean_nan.npy"),
                "--out",
                str(cli_files / "c.json"),
            ]
        )
        == 2
    )
    assert f"{cli_files / 'mean_nan.npy'}: NaN" in cli_error(capsys)
    assert not (cli_files / "s.tsv").exists() and not (cli_files / "c.json").exists()


def test_a_good_mean_still_scores(cli_files, capsys):
    np.save(cli_files / "mean.npy", np.zeros(SMALL_DIM, np.float32))
    assert _score(cli_files, "--mean", str(cli_files / "mean.npy")) == 0
    assert (cli_files / "s.tsv").is_file()


def test_calibration_cohort_too_small_for_top_k(cli_files, capsys):
    assert (
        main(
            [
                "calibrate",
                "--embeddings",
                str(cli_files / "cohort.npz"),
                "--asnorm-top-k",
                "9",
                "--out",
                str(cli_files / "c.json"),
            ]
        )
        == 2
    )
    err = cli_error(capsys)
    assert "10 cohort speakers are too few for --asnorm-top-k 9" in err
    assert "use --asnorm-top-k 8 or less" in err
    assert (
        main(
            [
                "calibrate",
                "--embeddings",
                str(cli_files / "cohort.npz"),
                "--asnorm-top-k",
                "8",
                "--pairs",
                "200",
                "--out",
                str(cli_files / "c.json"),
            ]
        )
        == 0
    )


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
