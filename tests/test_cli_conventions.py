"""One command-line and API convention: ``--device auto`` everywhere, ``--cohort`` a manifest or an embeddings table
in every command, one ``--asnorm-top-k`` default, ``mlsv score --model``, ``--quiet``, ``Verifier.embed(folder)``,
``Verifier.verify_pairs`` and ``mlsv verify --pairs``."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SMALL_DIM, run_cli
from data_helpers import speaker_table, voice, write_voice_manifest

from mlsv.api import Verifier
from mlsv.cli import build_parser, main
from mlsv.scoring.backend import ASNORM_TOP_K
from mlsv.scoring.embeddings import EmbeddingTable, load_embeddings, save_embeddings

SR = 16000


def subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)


def option(parser, dest: str):
    return next((a for a in parser._actions if a.dest == dest), None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Four recordings of three voices in a folder (one in a subfolder)."""
    d = tmp_path_factory.mktemp("recordings")
    (d / "sub").mkdir()
    sf.write(d / "a1.wav", voice(0.6, seed=1), SR, subtype="FLOAT")
    sf.write(d / "a2.wav", voice(0.5, seed=2), SR, subtype="FLOAT")
    sf.write(d / "b1.wav", voice(0.7, f0=210, seed=3), SR, subtype="FLOAT")
    sf.write(d / "sub" / "c1.flac", voice(0.45, f0=180, seed=4), SR)
    return d


@pytest.fixture(scope="module")
def cohort_manifest(tmp_path_factory):
    """A cohort manifest of 6 speakers x 2 recordings, the recordings beside it."""
    d = tmp_path_factory.mktemp("cohort")
    audio = {
        f"s{s}u{u}": (f"s{s}", voice(0.4 + 0.1 * u, f0=110 + 25 * s, seed=10 * s + u))
        for s in range(6)
        for u in range(2)
    }
    return write_voice_manifest(d / "cohort.jsonl", audio)


@pytest.fixture(scope="module")
def calibrated_model(model_dir, tmp_path_factory):
    """``model_dir``'s model as ``mlsv evaluate`` leaves one: a QMF calibration, the AS-norm cohort stored
    (speaker means), the threshold on the calibrated scale."""
    from mlsv.models import MLSVModel
    from mlsv.scoring.backend import cohort_from_table
    from mlsv.scoring.calibration import fit_calibration

    rng = np.random.default_rng(1)
    centers = rng.standard_normal((12, 16))
    emb = np.concatenate([c + 0.5 * rng.standard_normal((6, 16)) for c in centers]).astype(np.float32)
    cohort = EmbeddingTable(
        np.array([f"u{i}" for i in range(len(emb))]), emb, rng.uniform(0.25, 5, len(emb)), np.repeat(range(12), 6)
    )
    model = MLSVModel.from_pretrained(model_dir)
    mean = np.asarray(model.config.training_mean, np.float32)
    cal = fit_calibration(cohort, mean=mean, top_k=5, n_pairs=400)
    model.config.calibration = cal.to_dict()
    model.config.threshold = float(cal.threshold_)
    model.config.evaluation = {"threshold_scale": "calibrated_llr", "top_k": 5}
    model.set_cohort(torch.from_numpy(cohort_from_table(cohort, mean).vectors))
    out = tmp_path_factory.mktemp("calibrated") / "model"
    model.save_pretrained(out)
    return out


# -- --device auto ---------------------------------------------------------------------------------------


def test_device_auto_is_every_command_s_default_and_means_cuda_when_present(model_dir):
    from mlsv.inference.onnx_runtime import check_onnx_device
    from mlsv.models.loading import check_device

    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert check_device("auto") == expected
    with_device = {name: option(p, "device") for name, p in subcommands().items() if option(p, "device")}
    assert set(with_device) >= {"embed", "score", "calibrate", "evaluate", "verify", "identify", "inspect", "demo"}
    assert {name: a.default for name, a in with_device.items()} == dict.fromkeys(with_device, "auto")
    assert all("cuda when present" in a.help for a in with_device.values())
    v = Verifier.from_pretrained(model_dir, device="auto")
    assert v.device == expected
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert check_onnx_device("auto") == ("cuda" if cuda else "cpu")


# -- one --asnorm-top-k default --------------------------------------------------------------------------


def test_one_asnorm_top_k_default(small_model_dir, cli_files, capsys):
    commands = {name: option(p, "asnorm_top_k") for name, p in subcommands().items() if option(p, "asnorm_top_k")}
    assert set(commands) == {"score", "calibrate", "evaluate", "verify", "identify", "demo"}
    assert {a.default for a in commands.values()} == {None}  # resolved by one rule, where the calibration is known
    assert all("600" in a.help for a in commands.values()) and ASNORM_TOP_K == 600
    # a cohort of 700 speakers: the default is 600 in score, in the Verifier, and in calibrate's check
    big = speaker_table(np.random.default_rng(3), 700, 1, "big", SMALL_DIM)
    save_embeddings(big, cli_files / "big.npz")
    scores = {}
    for k in (None, 600, 599):
        out = cli_files / f"s{k}.tsv"
        argv = ["score", "--embeddings", str(cli_files / "test.npz"), "--trials", str(cli_files / "trials.txt")]
        argv += ["--cohort", str(cli_files / "big.npz"), "--out", str(out)]
        assert main(argv + ([] if k is None else ["--asnorm-top-k", str(k)])) == 0
        scores[k] = [row["score"] for row in csv.DictReader(open(out), delimiter="\t")]
    assert scores[None] == scores[600] != scores[599]
    assert Verifier.from_pretrained(small_model_dir, cohort=big).top_k == 600
    rc, err = run_cli(
        ["calibrate", "--embeddings", str(cli_files / "cohort.npz"), "--out", str(cli_files / "c.json")], capsys
    )
    assert rc == 2 and "too few for --asnorm-top-k 600" in err


# -- --cohort: a manifest or an embeddings table ----------------------------------------------------------


def test_cohort_is_a_manifest_or_a_table_in_every_command(
    model_dir, cohort_manifest, eval_inputs, folder, tmp_path, capsys
):
    manifest, trials = eval_inputs
    table = tmp_path / "cohort.npz"
    assert main(["embed", "--model", str(model_dir), "--manifest", str(cohort_manifest), "--out", str(table)]) == 0
    a, b = str(folder / "a1.wav"), str(folder / "b1.wav")
    results = {}
    for cohort in (cohort_manifest, table):
        capsys.readouterr()
        argv = ["verify", "--model", str(model_dir), a, b, "--cohort", str(cohort), "--threshold", "0", "--json"]
        assert main(argv) == 0
        verified = json.loads(capsys.readouterr().out)
        argv = ["identify", "--model", str(model_dir), "--speaker", f"a={a}", "--speaker", f"b={b}"]
        assert main([*argv, str(folder / "a2.wav"), "--cohort", str(cohort), "--threshold", "0", "--json"]) == 0
        identified = json.loads(capsys.readouterr().out)[0]
        emb = tmp_path / "emb.npz"
        if not emb.exists():
            assert main(["embed", "--model", str(model_dir), "--manifest", str(manifest), "--out", str(emb)]) == 0
        out = tmp_path / f"scores_{cohort.suffix[1:]}.tsv"
        argv = ["score", "--model", str(model_dir), "--embeddings", str(emb), "--trials", str(trials)]
        assert main([*argv, "--cohort", str(cohort), "--out", str(out)]) == 0
        scored = [float(r["score"]) for r in csv.DictReader(open(out), delimiter="\t")]
        ev = tmp_path / f"ev_{cohort.suffix[1:]}"
        argv = ["evaluate", "--model", str(model_dir), "--manifest", str(manifest), "--trials", str(trials)]
        argv += ["--cohort", str(cohort), "--asnorm-top-k", "3", "--calibration-pairs", "40", "--out", str(ev)]
        assert main(argv) == 0
        metrics = json.loads((ev / "metrics_by_stage.json").read_text())
        results[cohort.suffix] = (verified, identified, scored, metrics)
    (v1, i1, s1, m1), (v2, i2, s2, m2) = results[".jsonl"], results[".npz"]
    assert v1["scale"] == v2["scale"] == "asnorm" and v1["score"] == pytest.approx(v2["score"], abs=1e-4)
    assert i1["speaker"] == i2["speaker"] and i1["score"] == pytest.approx(i2["score"], abs=1e-4)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    assert set(m1) == set(m2) == {"cosine", "asnorm", "calibrated"}
    assert m1["asnorm"]["list"]["eer"] == pytest.approx(m2["asnorm"]["list"]["eer"])
    # a manifest needs a model to embed it; a table without speakers is refused, naming it
    rc, err = run_cli(["score", "--embeddings", str(emb), "--trials", str(trials), "--cohort", str(cohort_manifest),
                       "--out", str(tmp_path / "x.tsv")], capsys)  # fmt: skip
    assert rc == 2 and "a cohort manifest is embedded with the model: give --model" in err
    t = load_embeddings(emb)
    save_embeddings(EmbeddingTable(t.ids, t.embeddings, t.durations), tmp_path / "nospk.npz")
    rc, err = run_cli(["verify", "--model", str(model_dir), a, b, "--cohort", str(tmp_path / "nospk.npz")], capsys)
    assert rc == 2 and "nospk.npz: the AS-norm cohort needs speaker labels" in err


# -- score --model, verify_pairs, verify --pairs ----------------------------------------------------------


def test_score_with_the_model_and_pairs_in_one_pass_equal_verify(calibrated_model, folder, tmp_path, capsys):
    v = Verifier.from_pretrained(calibrated_model)
    assert v.score_scale == "calibrated"
    files = [str(folder / n) for n in ("a1.wav", "a2.wav", "b1.wav", "sub/c1.flac")]
    pairs = [(files[i], files[j]) for i in range(4) for j in range(i + 1, 4)]
    one_by_one = [v.verify(a, b) for a, b in pairs]
    # verify_pairs: every recording read once, one batched pass, the same results
    loads = []
    load = v.embedder.load
    v.embedder.load = lambda x, *a, **k: loads.append(os.fspath(x)) or load(x, *a, **k)
    try:
        batched = v.verify_pairs([*pairs, ([files[0], files[1]], files[2])])
    finally:
        v.embedder.load = load
    assert sorted(loads) == sorted(files)
    for r, s in zip(batched, one_by_one):
        assert (r.scale, r.threshold, r.decision) == (s.scale, s.threshold, s.decision)
        assert r.score == pytest.approx(s.score, abs=1e-4) and r.cosine == pytest.approx(s.cosine, abs=1e-5)
    assert batched[-1].score == pytest.approx(v.verify([files[0], files[1]], files[2]).score, abs=1e-4)
    with pytest.raises(ValueError, match="item #1 is not an"):
        v.verify_pairs([(files[0], files[1]), files[2]])
    # mlsv score --model: the model's mean, stored cohort, top-k and calibration, as verify applies them
    emb, trials, out = tmp_path / "emb.npz", tmp_path / "trials.txt", tmp_path / "scores.tsv"
    assert main(["embed", "--model", str(calibrated_model), str(folder), "--out", str(emb)]) == 0
    trials.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    argv = ["score", "--model", str(calibrated_model), "--embeddings", str(emb), "--trials", str(trials)]
    assert main([*argv, "--out", str(out)]) == 0
    scored = [float(r["score"]) for r in csv.DictReader(open(out), delimiter="\t")]
    np.testing.assert_allclose(scored, [r.score for r in one_by_one], atol=1e-4)
    plain = tmp_path / "plain.tsv"  # without --model: cosine, no mean, another scale
    assert main(["score", "--embeddings", str(emb), "--trials", str(trials), "--out", str(plain)]) == 0
    cosine = [float(r["score"]) for r in csv.DictReader(open(plain), delimiter="\t")]
    assert not np.allclose(cosine, scored, atol=1e-2)
    # mlsv verify --pairs FILE: relative paths from FILE's folder, labels kept, the same results
    listed = folder / "pairs.txt"
    listed.write_text("".join(f"{i % 2} {os.path.relpath(a, folder)} {os.path.relpath(b, folder)}\n"
                              for i, (a, b) in enumerate(pairs)))  # fmt: skip
    capsys.readouterr()
    assert main(["verify", "--model", str(calibrated_model), "--pairs", str(listed), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["enroll"] for r in rows] == [os.path.relpath(a, folder) for a, _ in pairs]
    assert [r["trial_label"] for r in rows] == [i % 2 for i in range(len(pairs))]
    np.testing.assert_allclose([r["score"] for r in rows], [r.score for r in one_by_one], atol=1e-4)
    assert [r["decision"] for r in rows] == [r.decision for r in one_by_one]
    assert main(["verify", "--model", str(calibrated_model), "--pairs", str(listed)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("threshold") and len(text) == 2 + len(pairs)
    (folder / "bad.txt").write_text("a1.wav a2.wav\na1.wav missing.wav\n")
    rc, err = run_cli(["verify", "--model", str(calibrated_model), "--pairs", str(folder / "bad.txt")], capsys)
    assert rc == 2 and "bad.txt:2: no such recording: missing.wav" in err
    rc, err = run_cli(["verify", "--model", str(calibrated_model), "--pairs", str(listed), files[0]], capsys)
    assert rc == 2 and "give no recordings" in err


# -- --quiet -----------------------------------------------------------------------------------------------


@pytest.fixture()
def restore_progress_bars():
    import logging

    import transformers.utils.logging as tl
    from huggingface_hub.utils import enable_progress_bars

    env = {
        k: os.environ.get(k)
        for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
    }
    verbosity, level = tl.get_verbosity(), logging.getLogger("mlsv").level
    yield
    for k, value in env.items():
        if value is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = value
    tl.enable_progress_bar()
    tl.set_verbosity(verbosity)
    enable_progress_bars()
    logging.getLogger("mlsv").setLevel(level)


def test_quiet_silences_the_progress_bars(model_dir, folder, capsys, restore_progress_bars):
    argv = ["verify", "--model", str(model_dir), str(folder / "a1.wav"), str(folder / "b1.wav"), "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    loud = capsys.readouterr()
    assert "Loading weights" in loud.err
    for quiet in ([*argv, "--quiet"], ["-q", *argv]):
        assert main(quiet) == 0
        out = capsys.readouterr()
        assert out.err == "" and json.loads(out.out)["score"] == json.loads(loud.out)["score"]


def test_quiet_after_a_sub_command(folder, tmp_path, capsys, restore_progress_bars):
    """``mlsv prepare noise ... -q``: a command's own sub-commands take ``--quiet`` after them too."""
    capsys.readouterr()
    argv = ["prepare", "noise", "--root", str(folder), "--category", "babble", "--out", str(tmp_path / "b.jsonl")]
    assert main(argv) == 0
    assert "\r" in capsys.readouterr().err  # the scan's progress bar
    for quiet in ([*argv, "--quiet"], [*argv, "-q"]):
        assert main(quiet) == 0
        assert capsys.readouterr().err == ""
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 4


# -- Verifier.embed(folder) ---------------------------------------------------------------------------------


def test_embed_a_folder(model_dir, folder, tmp_path):
    from mlsv.data.inputs import find_audio_files

    v = Verifier.from_pretrained(model_dir)
    files = find_audio_files([folder])
    assert [os.path.relpath(f, folder) for f in files] == ["a1.wav", "a2.wav", "b1.wav", "sub/c1.flac"]
    each = np.stack([v.embed(f) for f in files])
    np.testing.assert_allclose(v.embed(folder), each, atol=1e-5)
    np.testing.assert_allclose(v.embed(str(folder)), each, atol=1e-5)
    mixed = v.embed([voice(0.5, seed=9), folder / "sub", files[0]])  # a folder in a list: its files in its place
    assert mixed.shape == (3, each.shape[1])
    np.testing.assert_allclose(mixed[1:], each[[3, 0]], atol=1e-5)
    table = v.embed_table(folder)
    assert table.ids.tolist() == files
    with pytest.raises(FileNotFoundError, match="no audio files"):
        v.embed(tmp_path)
