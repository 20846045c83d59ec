"""Evaluation (mlsv.inference.evaluation): embedding a manifest, `evaluate_model`'s reuse of its embeddings,
the metrics it stores, and what it checks before embedding anything."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import cli_error, saved_tiny_model
from data_helpers import voice, write_voice_manifest

from mlsv.cli import main
from mlsv.data.audio import AudioError
from mlsv.scoring.embeddings import load_embeddings


def test_silent_file_is_refused_from_a_manifest_as_from_its_path(small_verifier, wavs, tmp_path):
    from mlsv.inference.evaluation import embed_manifest

    rows = [
        {
            "id": name,
            "path": str(wavs / f"{name}.wav"),
            "speaker": "s",
            "duration": sf.info(wavs / f"{name}.wav").duration,
            "sample_rate": 16000,
        }
        for name in ("a", "silent", "late")
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AudioError, match=r"silent\.wav: silent audio"):
        small_verifier.embed(wavs / "silent.wav")
    for chunk_seconds in (0.0, 0.3):
        with pytest.raises(AudioError, match=rf"{wavs / 'silent.wav'} \(manifest id silent\): silent audio"):
            embed_manifest(small_verifier.embedder.backend.model, manifest, progress=False, chunk_seconds=chunk_seconds)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] != "silent"))
    table = embed_manifest(small_verifier.embedder.backend.model, manifest, progress=False, chunk_seconds=0.3)
    assert sorted(table.ids) == ["a", "late"]  # a silent chunk of a voiced file is not a silent file
    np.testing.assert_allclose(
        table.embeddings[list(table.ids).index("late")],
        small_verifier.embed(wavs / "late.wav", chunk_seconds=0.3),
        atol=2e-5,
    )


def test_evaluate_reuses_embeddings_only_when_nothing_changed(model_dir, eval_inputs, tmp_path, monkeypatch, caplog):

    import mlsv.inference.evaluation as evaluation

    other = saved_tiny_model(tmp_path / "other", seed=1)
    manifest, trials = eval_inputs
    calls = []
    embed = evaluation.embed_manifest
    monkeypatch.setattr(evaluation, "embed_manifest", lambda *a, **kw: calls.append(a[1]) or embed(*a, **kw))

    def run(model, **kw):
        evaluation.evaluate_model(
            model,
            manifest=str(manifest),
            trials=[str(trials)],
            out_dir=tmp_path / "ev",
            device="cpu",
            plots=False,
            **kw,
        )
        return load_embeddings(tmp_path / "ev" / "embeddings.npz").embeddings

    first = run(model_dir)
    np.testing.assert_array_equal(run(model_dir), first)  # resumed: nothing embedded again
    assert len(calls) == 1
    caplog.set_level("WARNING", logger="mlsv.inference.evaluation")
    second = run(other)
    assert len(calls) == 2 and "made with another model;" in caplog.text
    assert not np.allclose(second, first)
    caplog.clear()
    run(other, chunk_seconds=0.3)
    assert len(calls) == 3 and "made with another chunk_seconds;" in caplog.text
    caplog.clear()
    manifest.write_text(manifest.read_text() + "\n")  # an edited manifest
    run(other, chunk_seconds=0.3)
    assert len(calls) == 4 and "made with another manifest;" in caplog.text
    run(other, chunk_seconds=0.3)
    assert len(calls) == 4
    caplog.clear()
    wav = manifest.parent / "a1.wav"  # an audio file replaced behind an unchanged manifest
    sf.write(wav, voice(0.6, seed=9), 16000)
    run(other, chunk_seconds=0.3)
    assert len(calls) == 5 and "made with another audio;" in caplog.text


def test_evaluate_stores_every_scale_s_metrics_and_the_card_shows_them_in_order(model_dir, eval_inputs, tmp_path):
    from mlsv.inference.evaluation import evaluate_model
    from mlsv.models import MLSVConfig
    from mlsv.publish.hub import build_publish_folder

    manifest, trials = eval_inputs
    second = tmp_path / "alpha.txt"  # evaluated second, sorted first: the card keeps the order evaluated
    second.write_text("1 a2 a1\n0 b2 a1\n")
    result = evaluate_model(
        model_dir,
        manifest=str(manifest),
        trials=[str(trials), str(second)],
        out_dir=tmp_path / "ev",
        device="cpu",
        plots=False,
    )
    evaluation = MLSVConfig.from_pretrained(result["model"]).evaluation
    assert evaluation["metrics_by_stage"] == json.loads((tmp_path / "ev" / "metrics_by_stage.json").read_text())
    assert evaluation["trial_lists"] == ["list", "alpha"]
    card = (build_publish_folder(result["model"], tmp_path / "pub", repo_id="me/x") / "README.md").read_text()
    rows = [
        line.split(" | ")[0].lstrip("| ")
        for line in card.split("## Evaluation")[1].splitlines()
        if line.startswith("| ") and not line.startswith("| trial list")
    ]
    assert rows == [f"{stage} / {name}" for stage in result["metrics"] for name in ("list", "alpha")]


def test_evaluate_refuses_trial_lists_sharing_a_name(model_dir, eval_inputs, tmp_path):
    from mlsv.inference.evaluation import evaluate_model

    manifest, trials = eval_inputs
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "list.txt").write_text(trials.read_text())
    with pytest.raises(ValueError, match=r"distinct file names.*x/list.txt.*y/list.txt"):
        evaluate_model(
            model_dir,
            manifest=str(manifest),
            trials=[str(tmp_path / "x" / "list.txt"), str(tmp_path / "y" / "list.txt")],
            out_dir=tmp_path / "ev",
            device="cpu",
            plots=False,
        )
    with pytest.raises(ValueError, match="asnorm-top-k"):
        evaluate_model(
            model_dir,
            manifest=str(manifest),
            trials=[str(trials)],
            out_dir=tmp_path / "ev",
            top_k=0,
            device="cpu",
            plots=False,
        )


def test_evaluate_checks_trials_and_cohort_before_embedding_anything(model_dir, eval_inputs, tmp_path, monkeypatch):
    """A cohort of one utterance per speaker embedded everything (minutes) before failing."""
    import mlsv.inference.evaluation as evaluation

    manifest, trials = eval_inputs
    calls = []
    monkeypatch.setattr(evaluation, "embed_manifest", lambda *a, **kw: calls.append(a[1]))

    def run(**kw):
        evaluation.evaluate_model(
            model_dir,
            manifest=str(manifest),
            trials=[str(trials)],
            out_dir=tmp_path / "ev",
            device="cpu",
            plots=False,
            **kw,
        )

    for d in ("c1", "c2"):
        (tmp_path / d).mkdir()
    singles = write_voice_manifest(
        tmp_path / "c1" / "cohort.jsonl", {f"c{i}": (f"s{i}", voice(0.5, seed=20 + i)) for i in range(6)}
    )
    with pytest.raises(
        ValueError,
        match=rf"cohort {singles}: calibration target pairs need a cohort speaker with "
        "at least two utterances",
    ):
        run(cohort=str(singles), top_k=2)
    pairs = write_voice_manifest(
        tmp_path / "c2" / "cohort.jsonl", {f"c{i}": (f"s{i // 2}", voice(0.5, seed=30 + i)) for i in range(6)}
    )
    with pytest.raises(ValueError, match=r"the cohort has 3 speakers, too few for calibration pairs with top_k=2"):
        run(cohort=str(pairs), top_k=2)
    unlabelled = tmp_path / "c3.jsonl"
    unlabelled.write_text(pairs.read_text().replace('"speaker": "s1"', '"speaker": ""'))
    with pytest.raises(ValueError, match=rf"{unlabelled}:3: the cohort manifest needs a speaker on every row"):
        run(cohort=str(unlabelled), top_k=2)
    bad_trials = tmp_path / "bad.txt"
    bad_trials.write_text("1 a1 a2\n0 a1 zz9\n")
    with pytest.raises(KeyError, match=rf"{bad_trials}:2: id 'zz9' not in the manifest {manifest}"):
        evaluation.evaluate_model(
            model_dir,
            manifest=str(manifest),
            trials=[str(bad_trials)],
            out_dir=tmp_path / "ev",
            device="cpu",
            plots=False,
        )
    with pytest.raises(KeyError, match=rf"{bad_trials}:2: id 'zz9' not in the manifest"):
        run(threshold_trials=str(bad_trials))
    assert calls == []  # nothing was embedded


def test_evaluate_checks_the_cohort_size_before_embedding(small_model_dir, cli_files, capsys):
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(small_model_dir),
                "--manifest",
                str(cli_files / "m.jsonl"),
                "--trials",
                str(cli_files / "trials.txt"),
                "--cohort",
                str(cli_files / "m.jsonl"),
                "--out",
                str(cli_files / "ev"),
            ]
        )
        == 2
    )
    assert "3 cohort speakers are too few for --asnorm-top-k 600" in cli_error(capsys)
    assert not (cli_files / "ev").exists()


def test_the_run_table_shows_every_baseline(tmp_path):
    """The table showed only the weak MFCC-mean baseline, though baseline.json also held the LDA's EER."""
    from mlsv.inference.evaluation import write_run_report

    system = tmp_path / "lap_eval"
    (system / "model").mkdir(parents=True)
    metrics = {"eer": 12.5, "min_dcf_0.01": 0.9, "min_dcf_0.05": 0.8}
    (system / "metrics_by_stage.json").write_text(json.dumps({"cosine": {"test_trials": metrics}}))
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"mfcc_cosine_eer": 30.49, "lda_eer": 6.32, "trials": "x/test_trials.txt"}))
    table = write_run_report(tmp_path, {"LAP": system}, baseline=str(baseline))["table"].splitlines()
    assert table[-2].split() == ["MFCC", "mean", "cosine", "test_trials", "30.49"]
    assert table[-1].split() == ["MFCC", "LDA", "cosine", "test_trials", "6.32"]
