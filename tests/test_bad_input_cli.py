"""Bad input at the command line (``mlsv`` and ``push_to_hub.py``): one error line, no traceback, nothing lost."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import saved_tiny_model
from data_helpers import speaker_table, tone, write_wav

from mlsv.cli import main
from mlsv.publish import hub
from mlsv.scoring.embeddings import EmbeddingTable, save_embeddings

DIM = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_tiny_model(tmp_path_factory.mktemp("model") / "model", lap_heads=2, lap_channels=16,
                            embedding_size=DIM)


def _table(rng, n_spk: int, per_spk: int, prefix: str, dim: int = DIM) -> EmbeddingTable:
    return speaker_table(rng, n_spk, per_spk, prefix, dim, spread=0.5, max_seconds=5.0)


@pytest.fixture()
def files(tmp_path):
    """test.npz (4 speakers x 3), cohort.npz (10 x 2), a trial list, a manifest, a wav and a folder."""
    rng = np.random.default_rng(0)
    test = _table(rng, 4, 3, "id")
    save_embeddings(test, tmp_path / "test.npz")
    save_embeddings(_table(rng, 10, 2, "co"), tmp_path / "cohort.npz")
    ids = test.ids
    lines = [f"{int(test.speakers[i] == test.speakers[j])} {ids[i]} {ids[j]}"
             for i in range(len(ids)) for j in range(i + 1, len(ids))]
    (tmp_path / "trials.txt").write_text("\n".join(lines) + "\n")
    write_wav(tmp_path / "good.wav", tone(1.0))
    rows = [{"id": f"u{i}", "path": "good.wav", "speaker": f"s{i % 3}", "duration": 1.0} for i in range(6)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "somedir").mkdir()
    (tmp_path / "afile").write_text("keep me\n")
    return tmp_path


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------------------------------
# push_to_hub.py --dry-run never deletes what it did not make


def _dry_run(model, out, repo_id="me/x") -> int:
    return hub.main(["--model", str(model), "--repo-id", repo_id, "--dry-run", str(out)])


def test_dry_run_refuses_a_folder_with_other_files(model_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious\n")
    assert _dry_run(model_dir, out) == 2
    assert "not a publish folder" in _error(capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "precious\n"


def test_dry_run_refuses_a_folder_holding_the_model(model_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "runX"
    shutil.copytree(model_dir, run / "model")
    before = sorted(p.name for p in (run / "model").iterdir())
    assert _dry_run(run / "model", run) == 2
    assert "holds the model folder" in _error(capsys)
    assert _dry_run(run / "model", run / "model") == 2
    assert sorted(p.name for p in (run / "model").iterdir()) == before


def test_dry_run_refuses_the_current_folder(model_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "config.json").write_text("{}")  # a publish-like file: still the folder the user stands in
    monkeypatch.chdir(tmp_path)
    assert _dry_run(model_dir, ".") == 2
    assert "holds the current folder" in _error(capsys)
    assert (tmp_path / "config.json").read_text() == "{}"


def test_dry_run_out_that_is_a_file(model_dir, files, capsys):
    assert _dry_run(model_dir, files / "afile") == 2
    assert "afile is a file, not a folder" in _error(capsys)
    assert _dry_run(model_dir, files / "afile" / "sub") == 2
    assert "afile is a file, not a folder" in _error(capsys)
    assert (files / "afile").read_text() == "keep me\n"


def test_dry_run_rerun_replaces_its_own_output(model_dir, tmp_path, capsys):
    out = tmp_path / "pub"
    assert _dry_run(model_dir, out) == 0
    first = sorted(p.name for p in out.iterdir())
    assert {"config.json", "model.safetensors", "README.md", "modeling_mlsv.py"} <= set(first)
    (out / "README.md").write_text((out / "README.md").read_text() + "\nold edit\n")
    assert _dry_run(model_dir, out, repo_id="me/y") == 0
    assert sorted(p.name for p in out.iterdir()) == first
    assert "me/y" in (out / "README.md").read_text() and "old edit" not in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pub"]  # no temporary folder left beside it


def test_failed_build_keeps_the_previous_output(model_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "pub"
    assert _dry_run(model_dir, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(Exception):  # noqa: B017  (the loader's error; a clear one is api.load_model's business)
        hub.build_publish_folder(bad, out, repo_id="me/x")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "pub"]


@pytest.mark.parametrize("repo_id", ["bad repo id!!", "me/a--b", "me/-a", "me/a.", "x", "a/b/c", "me/" + "a" * 97])
def test_bad_repo_id_is_refused_before_building(model_dir, tmp_path, capsys, repo_id):
    assert _dry_run(model_dir, tmp_path / "p4", repo_id=repo_id) == 2
    assert "--repo-id" in _error(capsys)
    assert not (tmp_path / "p4").exists()
    # and before an upload (nothing is built, nothing reaches the network)
    assert hub.main(["--model", str(model_dir), "--repo-id", repo_id]) == 2
    assert "--repo-id" in _error(capsys)


def test_repo_id_check_accepts_hub_names():
    assert hub.check_repo_id("Me_1/mlsv-wavlm.lap") == "Me_1/mlsv-wavlm.lap"


def test_hub_main_reports_os_errors(model_dir, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "pub"))

    monkeypatch.setattr(hub, "build_publish_folder", refuse)
    assert _dry_run(model_dir, tmp_path / "pub") == 2
    assert "push_to_hub.py: error: [Errno 13] Permission denied" in _error(capsys)


# ------------------------------------------------------------------------------------------------
# mlsv: output paths checked before any work


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
def test_file_output_that_is_a_directory(name, model_dir, files, capsys):
    argv = FILE_OUTPUTS[name].format(model=model_dir, d=files).split()
    assert main(argv) == 2
    option = "--metrics" if name == "score-metrics" else "--table" if name == "inspect-table" else "--out"
    err = _error(capsys)
    assert f"mlsv {argv[0]}: error: {option} {files / 'somedir'} is a directory; give a file name" in err
    assert list((files / "somedir").iterdir()) == []
    assert not list(files.glob("*tmp*")) and not (files / "s.tsv").exists() and not (files / "f.png").exists()


@pytest.mark.parametrize("argv", [
    "evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/afile",
    "prepare synthetic --out {d}/afile",
    "prepare shards --manifest {d}/m.jsonl --out {d}/afile",
])
def test_folder_output_that_is_a_file(argv, model_dir, files, capsys):
    argv = argv.format(model=model_dir, d=files).split()
    assert main(argv) == 2
    assert f"--out {files / 'afile'} is a file; give a folder" in _error(capsys)
    assert (files / "afile").read_text() == "keep me\n"


def test_output_under_a_file(model_dir, files, capsys):
    assert main(["embed", "--model", str(model_dir), str(files / "good.wav"), "--out", str(files / "afile/x.npz")]) == 2
    assert f"{files / 'afile'} is a file, not a folder" in _error(capsys)


def test_cli_reports_os_errors(files, capsys, monkeypatch):
    import mlsv.commands.verify as verify

    def refuse(args):
        raise PermissionError(13, "Permission denied", str(args.recordings[0]))

    monkeypatch.setattr(verify, "run", refuse)
    assert main(["verify", "--model", "m", str(files / "good.wav"), str(files / "good.wav")]) == 2
    assert "mlsv verify: error: [Errno 13] Permission denied" in _error(capsys)


# ------------------------------------------------------------------------------------------------
# mlsv export loads the model as the other commands do


def test_export_names_a_folder_without_a_model(files, capsys):
    (files / "notmodel").mkdir()
    assert main(["export", "--model", str(files / "notmodel"), "--out", str(files / "a.onnx")]) == 2
    assert f"{files / 'notmodel'}" in _error(capsys)
    assert main(["export", "--model", "no/such/dir", "--out", str(files / "a.onnx")]) == 2
    assert "no/such/dir" in _error(capsys)
    assert not (files / "a.onnx").exists()


# ------------------------------------------------------------------------------------------------
# mlsv score / calibrate: cohort and mean named, checked before anything is written


def _score(d, *extra) -> int:
    return main(["score", "--embeddings", str(d / "test.npz"), "--trials", str(d / "trials.txt"),
                 "--out", str(d / "s.tsv"), *extra])


def test_cohort_of_another_dimension_is_named(files, capsys):
    save_embeddings(_table(np.random.default_rng(1), 10, 2, "co", dim=4), files / "dim4.npz")
    assert _score(files, "--cohort", str(files / "dim4.npz"), "--asnorm-top-k", "2") == 2
    assert f"{files / 'dim4.npz'}: cohort embeddings have 4 dimensions, {files / 'test.npz'} has 8" in _error(capsys)
    assert not (files / "s.tsv").exists()


def test_bad_mean_vectors_are_named(files, capsys):
    mean = np.zeros(DIM, np.float32)
    mean[3] = np.nan
    np.save(files / "mean_nan.npy", mean)
    assert _score(files, "--mean", str(files / "mean_nan.npy")) == 2
    assert f"{files / 'mean_nan.npy'}: NaN" in _error(capsys)
    assert not (files / "s.tsv").exists()

    (files / "bad").mkdir()
    (files / "bad" / "good.wav").write_bytes((files / "good.wav").read_bytes())
    assert _score(files, "--mean", str(files / "bad" / "good.wav")) == 2
    assert f"{files / 'bad' / 'good.wav'}: not a .npy mean vector (" in _error(capsys)

    np.save(files / "mean4.npy", np.zeros(4, np.float32))
    assert _score(files, "--mean", str(files / "mean4.npy")) == 2
    assert f"{files / 'mean4.npy'}: mean vector has 4 dimensions, {files / 'test.npz'} has 8" in _error(capsys)

    assert main(["calibrate", "--embeddings", str(files / "cohort.npz"), "--asnorm-top-k", "2",
                 "--mean", str(files / "mean_nan.npy"), "--out", str(files / "c.json")]) == 2
    assert f"{files / 'mean_nan.npy'}: NaN" in _error(capsys)
    assert not (files / "s.tsv").exists() and not (files / "c.json").exists()


def test_a_good_mean_still_scores(files, capsys):
    np.save(files / "mean.npy", np.zeros(DIM, np.float32))
    assert _score(files, "--mean", str(files / "mean.npy")) == 0
    assert (files / "s.tsv").is_file()


# ------------------------------------------------------------------------------------------------
# mlsv inspect


def test_inspect_reports_the_file_it_wrote(model_dir, files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    assert main(["inspect", "--model", str(model_dir), "good.wav", "--out", "exp", "--max-seconds", "0"]) == 0
    assert "wrote exp.png" in capsys.readouterr().out
    assert (files / "exp.png").is_file() and not (files / "exp").exists()


def test_inspect_refuses_bad_figure_names_and_lengths(model_dir, files, capsys):
    assert main(["inspect", "--model", str(model_dir), str(files / "good.wav"), "--out", str(files / "x.xyz")]) == 2
    assert "cannot write .xyz figures" in _error(capsys)
    for value in ("-1", "nan"):
        with pytest.raises(SystemExit) as e:
            main(["inspect", "--model", str(model_dir), str(files / "good.wav"), "--out", str(files / "x.png"),
                  "--max-seconds", value])
        assert e.value.code == 2
        assert "argument --max-seconds:" in _error(capsys)


# ------------------------------------------------------------------------------------------------
# the same option ranges everywhere, named


@pytest.mark.parametrize("argv, option", [
    ("embed --model {model} --manifest {d}/m.jsonl --out {d}/e.npz --batch-seconds -5", "--batch-seconds"),
    ("embed --model {model} {d}/good.wav --out {d}/e.npz --batch-seconds 0", "--batch-seconds"),
    ("embed --model {model} {d}/good.wav --out {d}/e.npz --chunk-seconds -1", "--chunk-seconds"),
    ("embed --model {model} --manifest {d}/m.jsonl --out {d}/e.npz --num-workers -1", "--num-workers"),
    ("evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/ev --chunk-seconds -1",
     "--chunk-seconds"),
    ("evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/ev --batch-seconds 0",
     "--batch-seconds"),
    ("evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/ev --calibration-pairs 0",
     "--calibration-pairs"),
    ("evaluate --model {model} --manifest {d}/m.jsonl --trials {d}/trials.txt --out {d}/ev --asnorm-top-k 1",
     "--asnorm-top-k"),
    ("prepare folder --root {d} --out {d}/x.jsonl --sample-rate 0", "--sample-rate"),
    ("prepare folder --root {d} --out {d}/x.jsonl --workers -1", "--workers"),
    ("prepare synthetic --out {d}/syn --speakers 0", "--speakers"),
    ("calibrate --embeddings {d}/cohort.npz --out {d}/c.json --pairs 0", "--pairs"),
    ("calibrate --embeddings {d}/cohort.npz --out {d}/c.json --target-far 1.5", "--target-far"),
    ("calibrate --embeddings {d}/cohort.npz --out {d}/c.json --regularization 0", "--regularization"),
    ("verify --model {model} {d}/good.wav {d}/good.wav --far 0", "--far"),
    ("export --model {model} --out {d}/a.onnx --opset 0", "--opset"),
])
def test_out_of_range_options_are_refused_with_their_name(argv, option, model_dir, files, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv.format(model=model_dir, d=files).split())
    assert e.value.code == 2
    assert f"argument {option}:" in _error(capsys)
    assert not (files / "ev").exists() and not (files / "x.jsonl").exists() and not (files / "syn").exists()


def test_calibration_cohort_too_small_for_top_k(files, capsys):
    assert main(["calibrate", "--embeddings", str(files / "cohort.npz"), "--asnorm-top-k", "9",
                 "--out", str(files / "c.json")]) == 2
    err = _error(capsys)
    assert "10 cohort speakers are too few for --asnorm-top-k 9" in err
    assert "use --asnorm-top-k 8 or less" in err
    assert main(["calibrate", "--embeddings", str(files / "cohort.npz"), "--asnorm-top-k", "8", "--pairs", "200",
                 "--out", str(files / "c.json")]) == 0


def test_evaluate_checks_the_cohort_size_before_embedding(model_dir, files, capsys):
    assert main(["evaluate", "--model", str(model_dir), "--manifest", str(files / "m.jsonl"),
                 "--trials", str(files / "trials.txt"), "--cohort", str(files / "m.jsonl"),
                 "--out", str(files / "ev")]) == 2
    assert "3 cohort speakers are too few for --asnorm-top-k 600" in _error(capsys)
    assert not (files / "ev").exists()


def test_dry_run_refuses_a_folder_with_publish_file_names_that_it_did_not_build(tmp_path):
    """File names alone do not make a publish folder: a user's README.md and config.json stay."""
    from mlsv.publish.hub import main
    model = saved_tiny_model(tmp_path / "model", lap_heads=2, lap_channels=16, embedding_size=8)
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    (mine / "config.json").write_text('{"mine": 1}')
    assert main(["--model", str(model), "--repo-id", "me/x", "--dry-run", str(mine)]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["README.md", "config.json"]
    assert (mine / "README.md").read_text() == "# my notes\n"
    (mine / "__init__.py").write_text("")
    assert main(["--model", str(model), "--repo-id", "me/x", "--dry-run", str(mine)]) == 2
    assert (mine / "__init__.py").is_file()
    built = tmp_path / "built"  # an earlier dry run's folder is replaced
    assert main(["--model", str(model), "--repo-id", "me/x", "--dry-run", str(built)]) == 0
    assert main(["--model", str(model), "--repo-id", "me/x", "--dry-run", str(built)]) == 0
