"""The `mlsv` command line (mlsv.cli and mlsv.commands): output paths checked before any work, option ranges
named, a model folder named as the other commands name it, an OS error in one line; never a traceback."""

from __future__ import annotations

import pytest
from conftest import cli_error

from mlsv.cli import main

# -- output paths checked before any work --------------------------------------------------------------------


FILE_OUTPUTS = {
    "embed": "embed --model {model} {d}/good.wav --out {d}/somedir",
    "embed-manifest": "embed --model {model} --manifest {d}/m.jsonl --out {d}/somedir",
    "score": "score --embeddings {d}/test.npz --trials {d}/trials.txt --out {d}/somedir",
    "score-metrics": "score --embeddings {d}/test.npz --trials {d}/trials.txt --out {d}/s.tsv --metrics {d}/somedir",
    "calibrate": "calibrate --embeddings {d}/cohort.npz --asnorm-top-k 2 --out {d}/somedir",
    "prepare-trials": "prepare trials --manifest {d}/m.jsonl --out {d}/somedir",
    "prepare-folder": "prepare folder --root {d}/somedir --out {d}/somedir",
    "inspect": "inspect --model {model} {d}/good.wav --out {d}/somedir",
    "inspect-table": "inspect --model {model} {d}/good.wav --out {d}/f.png --table {d}/somedir",
    "export": "export --model {model} --out {d}/somedir",
}


@pytest.mark.parametrize("name", list(FILE_OUTPUTS))
def test_file_output_that_is_a_directory(name, small_model_dir, cli_files, capsys):
    argv = FILE_OUTPUTS[name].format(model=small_model_dir, d=cli_files).split()
    assert main(argv) == 2
    option = "--metrics" if name == "score-metrics" else "--table" if name == "inspect-table" else "--out"
    err = cli_error(capsys)
    assert f"mlsv {argv[0]}: error: {option} {cli_files / 'somedir'} is a directory; give a file name" in err
    assert list((cli_files / "somedir").iterdir()) == []
    assert not list(cli_files.glob("*tmp*")) and not (cli_files / "s.tsv").exists()
    assert not (cli_files / "f.png").exists()


@pytest.mark.parametrize(
    "argv",
    [
        "evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/afile",
        "prepare synthetic --out {d}/afile",
        "prepare shards --manifest {d}/m.jsonl --out {d}/afile",
    ],
)
def test_folder_output_that_is_a_file(argv, small_model_dir, cli_files, capsys):
    argv = argv.format(model=small_model_dir, d=cli_files).split()
    assert main(argv) == 2
    assert f"--out {cli_files / 'afile'} is a file; give a folder" in cli_error(capsys)
    assert (cli_files / "afile").read_text() == "keep me\n"


def test_output_under_a_file(small_model_dir, cli_files, capsys):
    assert (
        main(
            [
                "embed",
                "--model",
                str(small_model_dir),
                str(cli_files / "good.wav"),
                "--out",
                str(cli_files / "afile/x.npz"),
            ]
        )
        == 2
    )
    assert f"{cli_files / 'afile'} is a file, not a folder" in cli_error(capsys)


def test_cli_reports_os_errors(cli_files, capsys, monkeypatch):
    import mlsv.commands.verify as verify

    def refuse(args):
        raise PermissionError(13, "Permission denied", str(args.recordings[0]))

    monkeypatch.setattr(verify, "run", refuse)
    assert main(["verify", "--model", "m", str(cli_files / "good.wav"), str(cli_files / "good.wav")]) == 2
    assert "mlsv verify: error: [Errno 13] Permission denied" in cli_error(capsys)


# -- mlsv export loads the model as the other commands do ----------------------------------------------------


def test_export_names_a_folder_without_a_model(cli_files, capsys):
    (cli_files / "notmodel").mkdir()
    assert main(["export", "--model", str(cli_files / "notmodel"), "--out", str(cli_files / "a.onnx")]) == 2
    assert f"{cli_files / 'notmodel'}" in cli_error(capsys)
    assert main(["export", "--model", "no/such/dir", "--out", str(cli_files / "a.onnx")]) == 2
    assert "no/such/dir" in cli_error(capsys)
    assert not (cli_files / "a.onnx").exists()


# -- the same option ranges everywhere, named ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, option",
    [
        ("embed --model {model} --manifest {d}/m.jsonl --out {d}/e.npz --batch-seconds -5", "--batch-seconds"),
        ("embed --model {model} {d}/good.wav --out {d}/e.npz --batch-seconds 0", "--batch-seconds"),
        ("embed --model {model} {d}/good.wav --out {d}/e.npz --chunk-seconds -1", "--chunk-seconds"),
        ("embed --model {model} --manifest {d}/m.jsonl --out {d}/e.npz --num-workers -1", "--num-workers"),
        (
            "evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/ev --chunk-seconds -1",
            "--chunk-seconds",
        ),
        (
            "evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/ev --batch-seconds 0",
            "--batch-seconds",
        ),
        (
            "evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/ev "
            "--calibration-pairs 0",
            "--calibration-pairs",
        ),
        (
            "evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/ev --asnorm-top-k 1",
            "--asnorm-top-k",
        ),
        ("prepare folder --root {d} --out {d}/x.jsonl --sample-rate 0", "--sample-rate"),
        ("prepare folder --root {d} --out {d}/x.jsonl --workers -1", "--workers"),
        ("prepare synthetic --out {d}/syn --speakers 0", "--speakers"),
        ("calibrate --embeddings {d}/cohort.npz --out {d}/c.json --pairs 0", "--pairs"),
        ("calibrate --embeddings {d}/cohort.npz --out {d}/c.json --target-far 1.5", "--target-far"),
        ("calibrate --embeddings {d}/cohort.npz --out {d}/c.json --regularization 0", "--regularization"),
        ("verify --model {model} {d}/good.wav {d}/good.wav --far 0", "--far"),
        ("export --model {model} --out {d}/a.onnx --opset 0", "--opset"),
    ],
)
def test_out_of_range_options_are_refused_with_their_name(argv, option, small_model_dir, cli_files, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv.format(model=small_model_dir, d=cli_files).split())
    assert e.value.code == 2
    assert f"argument {option}:" in cli_error(capsys)
    assert not (cli_files / "ev").exists() and not (cli_files / "x.jsonl").exists() and not (cli_files / "syn").exists()


def test_version(capsys):
    from mlsv import __version__
    from mlsv.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mlsv {__version__}"
