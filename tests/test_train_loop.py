"""Training: schedules, checkpoints, the three stages, resume after a kill, two processes, train.py."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from mlsv.config import load_config
from mlsv.train import checkpoint as ckpt
from mlsv.train.schedules import lr_at, margin_at, ramp_shape

ROOT = Path(__file__).resolve().parents[1]


def test_lr_warmup_then_cosine_to_floor():
    lrs = [lr_at(s, 100, peak=1.0, floor=0.01, warmup_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.02
    # restarts: the second cycle warms up again to peak * gamma
    two = [lr_at(s, 100, peak=1.0, floor=0.0, warmup_ratio=0.1, cycles=2, gamma=0.5) for s in range(100)]
    assert max(two[50:]) == pytest.approx(0.5)


@pytest.mark.parametrize("kind,at_half", [("log", 0.87), ("cos", 0.5), ("exp", 0.08), ("linear", 0.5)])
def test_margin_ramp_shapes(kind, at_half):
    assert ramp_shape(kind, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert ramp_shape(kind, 1.0) == pytest.approx(1.0)
    assert ramp_shape(kind, 0.5) == pytest.approx(at_half, abs=0.02)


def test_margin_schedule_start_and_hold():
    assert margin_at(0.5, margin=0.3, start_epoch=1, ramp_epochs=2) == 0.0
    assert margin_at(3.5, margin=0.3, start_epoch=1, ramp_epochs=2) == pytest.approx(0.3)
    assert margin_at(0.0, margin=0.5, kind="constant") == 0.5


def test_average_checkpoints(tmp_path):
    for i, v in enumerate((1.0, 3.0)):
        (tmp_path / f"c{i}").mkdir()
        save_file({"w": torch.full((2,), v), "n": torch.tensor(7)}, str(tmp_path / f"c{i}" / "model.safetensors"))
    avg = ckpt.average_checkpoints([tmp_path / "c0", tmp_path / "c1"])
    assert torch.equal(avg["w"], torch.full((2,), 2.0)) and int(avg["n"]) == 7


def test_prune_keeps_best_and_latest(tmp_path):
    for step, eer in ((1, 30.0), (2, 10.0), (3, 20.0), (4, 40.0)):
        d = tmp_path / f"step_{step}"
        d.mkdir()
        (d / ckpt.META).write_text(json.dumps({"global_step": step, "validation_eer": eer}))
    (tmp_path / "step_5.tmp").mkdir()  # a half-written checkpoint is never picked up
    best = ckpt.prune_checkpoints(tmp_path, keep_best=2)
    assert [p.name for p in best] == ["step_2", "step_3"]
    assert sorted(p.name for p in ckpt.checkpoint_dirs(tmp_path)) == ["step_2", "step_3", "step_4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from mlsv.data.synthetic import make_synthetic_corpus

    return make_synthetic_corpus(tmp_path_factory.mktemp("corpus"), n_speakers=8, utts_per_speaker=6,
                                 n_validation_speakers=4, n_test_speakers=4, max_seconds=2.5, seed=1)


def _stage_overrides(corpus, **extra):
    sets = {
        "data.train_manifest": corpus.train, "data.validation_manifest": corpus.validation,
        "data.validation_trials": corpus.validation_trials, "data.batch_size": 8, "data.crop_seconds": 1.0,
        "data.num_workers": 0, "augment.noise_manifest": corpus.noise, "augment.rir_manifest": corpus.rirs,
        "model.encoder": "tiny-wavlm", "model.random_init": True, "model.lap_heads": 4,
        "model.lap_channels": 32, "model.embedding_size": 16, "stage.mean_utterances": 16,
        "log.progress": False, "optim.lr": 0.01, "optim.min_lr": 0.001,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def _train(corpus, out, **extra):
    from mlsv.train.loop import run_stage

    return run_stage(load_config(None, _stage_overrides(corpus, **extra)), out)


def _rows(out):
    import csv

    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_three_stages_loss_falls_and_validation_beats_chance(corpus, tmp_path):
    # a constant margin in stage 1 here, so that the loss curve is comparable from the first epoch on
    s1 = _train(corpus, tmp_path / "s1", **{"stage.epochs": 4, "stage.frontend_trainable": "none",
                                            "head.margin": 0.2, "head.margin_schedule": "constant",
                                            "log.trackers": "[csv,tensorboard]"})
    assert list(s1.rglob("events.out.tfevents*")), "the TensorBoard tracker wrote no events"
    s2 = _train(corpus, tmp_path / "s2", **{"stage.epochs": 2, "stage.init_from": s1,
                                            "stage.frontend_trainable": "transformer", "data.speed_factors": "[1.0]",
                                            "head.margin_schedule": "constant", "optim.lr": 0.001})
    s3 = _train(corpus, tmp_path / "s3", **{"stage.epochs": 1, "stage.init_from": s2, "data.crop_seconds": 2.0,
                                            "data.speed_factors": "[1.0]", "stage.grad_accum": 2,
                                            "stage.frontend_trainable": "transformer", "head.margin": 0.5,
                                            "head.top_k": 0, "head.margin_schedule": "constant"})
    rows = _rows(s1)
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert all(float(r["validation_eer"]) < 50.0 for r in _rows(s3))
    # the head keeps stage 1's speed-perturbed classes in every later stage
    assert json.loads((s3 / "head.json").read_text())["num_classes"] == 3 * 8
    from transformers import AutoModel

    import mlsv.models  # noqa: F401

    model = AutoModel.from_pretrained(s3 / "model")
    assert len(model.config.training_mean) == 16


def test_resume_after_kill_gives_the_same_weights(corpus, tmp_path):
    """Killed mid-epoch and rerun: the same weights, metrics and data audit as a run never interrupted, with
    device augmentation (drawn per batch) and files that fail to decode before and after the kill."""
    from mlsv.data.loader import TrainCrops
    from mlsv.data.manifest import iter_rows, load_manifest, speaker_labels, write_manifest

    rows = [{**r, "path": str(corpus.root / r["path"])} for _, r in iter_rows(corpus.train)]
    labels = speaker_labels(corpus.train)
    cfg = load_config(None, _stage_overrides(corpus))
    for epoch in (0, 1):  # a file in each epoch's first batch fails (before any checkpoint), one in its last
        crops = TrainCrops(load_manifest(corpus.train), labels, cfg.data, epoch=epoch, seed=cfg.stage.seed,
                           batch_size=8)
        for i in crops.worker_items(0, 1)[[0, -1]]:
            (tmp_path / f"broken{i}.wav").write_bytes(b"RIFF....garbage")
            rows[i] = {**rows[i], "path": str(tmp_path / f"broken{i}.wav")}
    manifest = write_manifest(rows, tmp_path / "train.jsonl")
    extra = {"stage.epochs": 2, "stage.checkpoint_every_steps": 1, "augment.where": "device",
             "augment.probability": 1.0, "data.train_manifest": manifest}
    ref = _train(corpus, tmp_path / "ref", **extra)
    # the same stage in a subprocess, killed (SIGKILL) once its first checkpoint exists, then rerun
    out = tmp_path / "killed"
    sets = _stage_overrides(corpus, **extra)
    # the same thread count as this process: the runs are compared to 1e-6, and float sums split over
    # other thread counts round differently (a test that changed this process's count once broke it)
    code = ("import sys, torch\nfrom mlsv.config import load_config\nfrom mlsv.train.loop import run_stage\n"
            f"torch.set_num_threads({torch.get_num_threads()})\n"
            f"run_stage(load_config(None, {sets!r}), {str(out)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.checkpoint_dirs(out / "checkpoints"):
        time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "COMPLETE").exists()
    _train(corpus, out, **extra)
    a = load_file(str(ref / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    torch.testing.assert_close(load_file(str(ref / "head.safetensors"))["weight"],
                               load_file(str(out / "head.safetensors"))["weight"], rtol=0, atol=1e-6)
    # the resumed epoch's metrics and data audit cover the whole epoch, the batches before the kill too
    for r, o in zip(_rows(ref), _rows(out), strict=True):
        assert (r["epoch"], r["step"]) == (o["epoch"], o["step"])
        assert float(o["loss"]) == pytest.approx(float(r["loss"]), rel=1e-5)
        assert float(o["accuracy"]) == pytest.approx(float(r["accuracy"]), rel=1e-5)
        assert int(o["skipped_files"]) == int(r["skipped_files"]) > 0
    audit = "data_audit/process_0.json"
    assert json.loads((out / audit).read_text()) == json.loads((ref / audit).read_text())


def test_a_trained_model_is_fine_tuned_on_other_speakers_with_a_new_head(corpus, tmp_path):
    """``stage.init_model``: a model folder's weights, a new head on the training data's speakers; what the
    source's evaluation stored (mean, cohort, calibration, thresholds, metrics) is dropped. With
    ``optim.backend_lr_scale=0`` and a frozen frontend only the head learns (a head warm-up)."""
    from mlsv.config import ConfigError
    from mlsv.data.manifest import speaker_labels
    from mlsv.models import MLSVModel

    torch.manual_seed(3)
    source = MLSVModel.from_encoder("tiny-wavlm", random_init=True, lap_heads=4, lap_channels=32, embedding_size=16)
    source.config.training_mean, source.config.threshold = [0.5] * 16, 0.7
    source.config.evaluation = {"final_stage": "cosine", "metrics": {"list": {"eer": 1.0}}}
    source.set_cohort(torch.randn(5, 16))
    source.save_pretrained(tmp_path / "source")
    extra = {"stage.epochs": 1, "stage.init_model": tmp_path / "source", "data.train_manifest": corpus.validation,
             "augment.probability": 0.0, "data.validation_manifest": "", "data.validation_trials": ""}
    warm = _train(corpus, tmp_path / "warm", **extra, **{"optim.backend_lr_scale": 0.0})
    labels = json.loads((warm / "labels.json").read_text())
    assert sorted(labels) == sorted(speaker_labels(corpus.validation)) and len(labels) == 4
    assert json.loads((warm / "head.json").read_text())["num_classes"] == 4 * 3  # speed-perturbed classes
    tuned = MLSVModel.from_pretrained(warm / "model")
    c = tuned.config
    assert (c.threshold, c.calibration, c.evaluation, c.cohort_size) == (None, None, None, 0)
    assert len(c.training_mean) == 16 and c.training_mean != [0.5] * 16  # this data's mean
    before, after = dict(source.named_parameters()), dict(tuned.named_parameters())
    assert before.keys() == after.keys()
    for name, p in after.items():  # nothing but the head learnt
        torch.testing.assert_close(p, before[name], rtol=0, atol=0, msg=name)
    full = MLSVModel.from_pretrained(_train(corpus, tmp_path / "full", **extra) / "model")
    assert not torch.equal(full.aggregation.excite_bias, source.aggregation.excite_bias)

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"stage.init_model: .*empty is not a model folder"):
        _train(corpus, tmp_path / "bad", **{**extra, "stage.init_model": tmp_path / "empty"})
    with pytest.raises(ConfigError, match="stage.init_from .* and stage.init_model .* set one"):
        load_config(None, _stage_overrides(corpus, **{**extra, "stage.init_from": warm}))


def test_an_epoch_logged_again_replaces_its_row(tmp_path):
    """A run killed after logging an epoch but before checkpointing it trains and logs that epoch again:
    metrics.csv keeps one row per epoch, the last."""
    from accelerate import Accelerator

    from mlsv.train.trackers import Trackers

    trackers = Trackers(Accelerator(cpu=True), load_config(None, {}), tmp_path)
    for epoch, loss in ((1, 3.0), (2, 2.0), (2, 1.5), (3, 1.0)):
        trackers.log({"epoch": epoch, "step": 10 * epoch, "loss": loss, "validation_eer": None}, step=10 * epoch)
    rows = _rows(tmp_path)
    assert [(r["epoch"], r["loss"]) for r in rows] == [("1", "3.0"), ("2", "1.5"), ("3", "1.0")]
    assert rows[0]["validation_eer"] == ""


def test_two_processes_train_on_different_data_and_agree(corpus, tmp_path):
    """Stage 2 (the encoder trained, with LayerDrop and SpecAugment) on two DDP processes: DDP needs a
    gradient for every trainable parameter in every step, which a skipped layer does not get."""
    out = tmp_path / "ddp"
    script = tmp_path / "run.py"
    stage2 = {"stage.epochs": 1, "stage.frontend_trainable": "transformer", "stage.layerdrop": 0.5,
              "stage.mask_time_prob": 0.2, "data.speed_factors": "[1.0]"}
    script.write_text(
        "import os\nfrom accelerate import Accelerator\nfrom mlsv.config import load_config\n"
        "from mlsv.train.loop import run_stage\n"
        f"cfg = load_config(None, {_stage_overrides(corpus, **stage2)!r})\n"
        f"run_stage(cfg, {str(out)!r}, accelerator=Accelerator(cpu=True))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    a0 = json.loads((out / "data_audit" / "process_0.json").read_text())["1"]
    a1 = json.loads((out / "data_audit" / "process_1.json").read_text())["1"]
    assert a0["batches"] > 0 and a0["batches"] == a1["batches"]
    assert a0["labels_sha1"] != a1["labels_sha1"]  # each process trained on its own share
    last = ckpt.checkpoint_dirs(out / "checkpoints")[-1]
    assert (last / "random_states_0.pkl").is_file() and (last / "random_states_1.pkl").is_file()
    assert (out / "COMPLETE").is_file()
    # one consistent final model: DDP kept the replicas equal, so the saved weights are the checkpoint's
    final = load_file(str(out / "model" / "model.safetensors"))
    saved = load_file(str(last / "model.safetensors"))
    for k in saved:
        torch.testing.assert_close(final[k], saved[k], msg=k)


def test_two_processes_run_a_recipes_evaluation_and_report_once(corpus, tmp_path):
    """Under a multi-process launch the evaluate and report steps write shared files: the main process runs
    them while the others wait (each process redoing them raced on their files and crashed)."""
    from conftest import tiny_model

    tiny_model().save_pretrained(tmp_path / "model")
    evaluate = {"model": str(tmp_path / "model"), "manifest": str(corpus.test), "trials": [str(corpus.test_trials)],
                "cohort": str(corpus.train), "top_k": 5, "calibration_pairs": 200, "plots": False}
    recipe = {"output_dir": str(tmp_path / "run"), "steps": [
        {"name": "eval", "evaluate": evaluate}, {"name": "report", "report": {"systems": {"LAP": "eval"}}}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    script = tmp_path / "run.py"
    script.write_text("from accelerate import PartialState\nfrom mlsv.recipe import load_recipe, run_recipe\n"
                      "PartialState(cpu=True)\n"
                      f"run_recipe(load_recipe({str(tmp_path / 'recipe.yaml')!r}))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "LAP" in results["systems"] and (tmp_path / "run" / "model" / "config.json").is_file()
    assert (tmp_path / "run" / "eval" / "COMPLETE").is_file()


def test_train_py_quick_end_to_end_and_model_loads(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--quick", "--output-dir", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "EER" in r.stdout and "MFCC" in r.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["systems"]) == {"LAP", "SUPERB"}
    assert {"cosine", "asnorm", "calibrated"} <= set(results["systems"]["LAP"])
    assert (out / "report.md").is_file()
    code = ("import mlsv.models, torch\nfrom transformers import AutoModel\n"
            f"m = AutoModel.from_pretrained({str(out / 'model')!r}).eval()\n"
            "e = m(torch.randn(1, 16000)).embeddings\n"
            "assert m.config.calibration and m.config.threshold is not None and m.config.cohort_size > 0\n"
            "print(tuple(e.shape))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # rerunning skips every completed step
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--quick", "--output-dir", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and time.time() - t0 < 60
    # ...but not a step made with other settings, and a step name that does not exist is an error
    for extra, message in ((["--set", "stage.seed=7"], "stage.seed: 42 -> 7"), (["--steps", "lap_stage9"],
                                                                                "no step named 'lap_stage9'")):
        r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--quick", "--output-dir", str(out), *extra],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]


def test_bad_config_key_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--quick", "--output-dir", str(tmp_path),
                        "--set", "optim.lrr=1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "did you mean 'lr'" in r.stderr


def test_unknown_init_from_fails_clearly(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a completed stage"):
        _train(corpus, tmp_path / "x", **{"stage.init_from": tmp_path / "nowhere"})


def test_a_recipe_checks_its_evaluations_before_training(tmp_path):
    """A missing trial list or a mistyped evaluate key stops a recipe before its training steps run, not
    after them; files a later prepare step will make are not asked for."""
    from mlsv.config import ConfigError
    from mlsv.recipe import check_evaluations, load_recipe, run_recipe

    (tmp_path / "m.jsonl").write_text("")
    recipe_file = tmp_path / "recipe.yaml"

    def recipe(evaluate: dict, prepare_after: bool = False):
        steps = [{"name": "stage1", "train": "missing_stage.yaml"}]
        if prepare_after:
            steps.append({"name": "more", "prepare": "synthetic"})
        steps.append({"name": "eval", "evaluate": {"model": "stage1", "manifest": str(tmp_path / "m.jsonl"),
                                                   **evaluate}})
        recipe_file.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "steps": steps}))
        return load_recipe(recipe_file)

    with pytest.raises(ConfigError, match=r"step 'eval': trials .*vox1_O.txt not found \(checked before training"):
        run_recipe(recipe({"trials": [str(tmp_path / "vox1_O.txt")]}))
    assert not (tmp_path / "run" / "stage1").exists()  # nothing trained
    with pytest.raises(ConfigError, match=r"unknown evaluate key 'trails' \(did you mean 'trials'\?\)"):
        run_recipe(recipe({"trails": [str(tmp_path / "m.jsonl")]}))
    (tmp_path / "vox1_O.txt").write_text("1 a b\n")
    check_evaluations(recipe({"trials": [str(tmp_path / "vox1_O.txt")]}), 0)
    check_evaluations(recipe({"trials": [str(tmp_path / "later.txt")]}, prepare_after=True), 0)
    with pytest.raises(ConfigError, match=r"step 'eval' evaluates the model of step 'stage1', which has not made"):
        run_recipe(recipe({"trials": [str(tmp_path / "vox1_O.txt")]}), only=["eval"])  # not a hub id
    recipe_file.write_text(yaml.safe_dump({"steps": [{"name": "s", "train": "x.yaml", "args": {"epochs": 1}}]}))
    with pytest.raises(ConfigError, match="step 's': a training step takes set / quick_set"):
        load_recipe(recipe_file)


def test_numpy_is_seeded():  # the suite's fixture seeds numpy; guards against accidental global RNG use
    assert np.random.rand() == pytest.approx(0.5488135)


def _broken_copy(manifest, tmp_path, name: str, every: int = 5, kinds=("nan.wav", "broken.wav")) -> str:
    """``manifest`` with absolute paths, every ``every``-th row pointing in turn at one of ``kinds``: a NaN
    file, a corrupt one, or one too short for the encoder (``short.wav``, 20 samples)."""
    import soundfile as sf

    from mlsv.data.manifest import iter_rows, manifest_root, resolve_path, write_manifest

    (tmp_path / "broken.wav").write_bytes(b"RIFF....garbage")
    sf.write(tmp_path / "nan.wav", np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", np.full(20, 0.1, dtype=np.float32), 16000, subtype="FLOAT")
    rows = [{**r, "path": resolve_path(r["path"], manifest_root(manifest))} for _, r in iter_rows(manifest)]
    for k, i in enumerate(range(0, len(rows), every)):
        rows[i]["path"] = str(tmp_path / kinds[k % len(kinds)])
    return str(write_manifest(rows, tmp_path / name))


def test_bad_files_are_skipped_in_training_validation_and_the_training_mean(corpus, tmp_path, caplog):
    """Undecodable or NaN files are skipped and counted in the epochs, and skipped again when the
    validation set and the training mean are embedded (validation trials naming them are left out), as
    are validation files too short for the encoder."""
    train = _broken_copy(corpus.train, tmp_path, "train.jsonl")
    validation = _broken_copy(corpus.validation, tmp_path, "validation.jsonl", every=7,
                              kinds=("nan.wav", "broken.wav", "short.wav"))
    out = _train(corpus, tmp_path / "run", **{"stage.epochs": 1, "data.train_manifest": train,
                                              "data.validation_manifest": validation, "stage.mean_utterances": 0})
    row = _rows(out)[0]
    assert int(row["skipped_files"]) > 0 and float(row["validation_eer"]) >= 0
    assert "trials name a skipped file and are left out" in caplog.text
    assert "short.wav: too short: 20 samples, the encoder needs at least" in caplog.text
    from mlsv.models import MLSVModel

    mean = MLSVModel.from_pretrained(out / "model").config.training_mean
    assert len(mean) == 16 and all(math.isfinite(v) for v in mean) and any(v != 0 for v in mean)


def test_a_stage_trains_from_streamed_shards_to_the_end(corpus, tmp_path):
    """Shards (audio inside the rows) stream through the epochs, validation and the training mean, whose
    subset of the shards stays parquet, read a shard at a time."""
    from mlsv.config import ConfigError
    from mlsv.data.manifest import iter_rows
    from mlsv.data.shards import write_shards
    from mlsv.models import MLSVModel

    write_shards(corpus.train, tmp_path / "shards", rows_per_shard=16, progress=False)
    with pytest.raises(ConfigError, match=r"data.streaming=true needs stage.steps_per_epoch > 0"):
        _train(corpus, tmp_path / "nosteps", **{"data.train_manifest": tmp_path / "shards", "data.streaming": True})
    out = _train(corpus, tmp_path / "run", **{"data.train_manifest": tmp_path / "shards", "data.streaming": True,
                                              "stage.steps_per_epoch": 2, "stage.epochs": 1,
                                              "stage.mean_utterances": 10})
    subset = out / "mean_utterances.parquet"
    assert len([row for _, row in iter_rows(subset)]) == 10 and all(row["audio"] for _, row in iter_rows(subset))
    mean = MLSVModel.from_pretrained(out / "model").config.training_mean
    assert len(mean) == 16 and all(math.isfinite(v) for v in mean)


def test_a_run_that_stopped_before_its_first_checkpoint_can_be_rerun_with_other_settings(corpus, tmp_path):
    """A mistyped path stops a run before it trains: its folder holds no results, so the corrected run may
    use it (a folder with a checkpoint or a finished stage stays bound to its config)."""
    with pytest.raises(FileNotFoundError, match="trian.jsonl"):
        _train(corpus, tmp_path / "run", **{"data.train_manifest": tmp_path / "trian.jsonl"})
    out = _train(corpus, tmp_path / "run", **{"stage.epochs": 1})
    assert (out / "COMPLETE").exists()


def test_an_epoch_without_a_full_batch_is_an_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="no full batch in an epoch: .* 48 utterances, fewer than a batch of 64"):
        _train(corpus, tmp_path / "run", **{"data.batch_size": 64})
    assert not (tmp_path / "run" / "COMPLETE").exists()


def test_an_output_folder_belongs_to_one_config(corpus, tmp_path):
    """A run (finished or killed) is neither resumed nor skipped under other settings: its checkpoints and
    results were made with the old ones. How it is watched and run may change."""
    from mlsv.config import ConfigError

    out = _train(corpus, tmp_path / "run", **{"stage.epochs": 1})
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"holds a run made with other settings \(data.batch_size: 8 -> 4\)"):
        _train(corpus, out, **{"stage.epochs": 1, "data.batch_size": 4})
    assert (out / "config.yaml").read_text() == saved
    _train(corpus, out, **{"stage.epochs": 1, "log.progress": True, "data.num_workers": 1})  # skipped: complete


def test_an_epoch_holds_whole_gradient_accumulation_cycles(corpus, tmp_path):
    """3 batches per epoch with stage.grad_accum 2: each epoch trains 2 (one optimiser step) and drops the
    third, instead of carrying half an accumulated gradient into the next epoch, which a checkpoint does
    not hold; more accumulation than an epoch has batches is an error, not epochs without a step."""
    out = _train(corpus, tmp_path / "run", **{"stage.epochs": 2, "data.batch_size": 16, "stage.grad_accum": 2})
    assert [(r["epoch"], r["step"]) for r in _rows(out)] == [("1", "1"), ("2", "2")]
    audit = json.loads((out / "data_audit" / "process_0.json").read_text())
    assert [audit[e]["batches"] for e in ("1", "2")] == [2, 2]
    with pytest.raises(ValueError, match="stage.grad_accum 16 needs 16 batches per optimiser step, but .* gives 6"):
        _train(corpus, tmp_path / "run16", **{"stage.grad_accum": 16})


def test_average_best_keeps_and_averages_as_many_checkpoints_as_asked(corpus, tmp_path, caplog):
    """stage.average_best 3 with stage.keep_best 1: pruning keeps the 3 best for the average (it kept 1,
    and the average silently had one member); EMA together with averaging is refused."""
    from mlsv.config import ConfigError

    caplog.set_level("INFO", logger="mlsv.train")
    out = _train(corpus, tmp_path / "run", **{"stage.epochs": 3, "stage.keep_best": 1, "stage.average_best": 3})
    kept = ckpt.checkpoint_dirs(out / "checkpoints")
    assert len(kept) == 3 and "averaged 3 best checkpoints" in caplog.text
    mean = ckpt.average_checkpoints(kept, "model.safetensors")
    final = load_file(str(out / "model" / "model.safetensors"))
    for k, v in mean.items():
        torch.testing.assert_close(final[k], v, msg=k)
    with pytest.raises(ConfigError, match="optim.ema_decay and stage.average_best 3 both choose the final weights"):
        load_config(None, _stage_overrides(corpus, **{"optim.ema_decay": 0.9, "stage.average_best": 3}))


def test_more_steps_per_epoch_than_batches_is_an_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="stage.steps_per_epoch 50 needs 50 batches per epoch, but .* gives 6"):
        _train(corpus, tmp_path / "run", **{"stage.steps_per_epoch": 50})


def test_chunked_validation_split_over_processes_equals_one_process(corpus):
    """With data.eval_chunk_seconds an utterance's chunks can land in both processes' shares: the gathered
    parts are merged into one row per utterance, equal to what one process embeds (they stayed two rows,
    the last one winning)."""
    from conftest import tiny_model

    from mlsv.data.loader import build_eval_loader
    from mlsv.scoring.extract import extract_embeddings
    from mlsv.train.validation import merge_parts

    model = tiny_model().eval()

    def table(process: int, processes: int):
        loader = build_eval_loader(corpus.validation, batch_seconds=2.0, chunk_seconds=0.5, process_index=process,
                                   num_processes=processes)
        t = extract_embeddings(model, loader)
        return t.ids.tolist(), t.embeddings, t.durations

    one = merge_parts([table(0, 1)])
    parts = [table(0, 2), table(1, 2)]
    assert len(set(parts[0][0]) & set(parts[1][0])) > 0  # shared utterances: the case being tested
    two = merge_parts(parts)
    assert sorted(two.ids.tolist()) == sorted(one.ids.tolist())
    order = [two.ids.tolist().index(u) for u in one.ids]
    np.testing.assert_allclose(two.embeddings[order], one.embeddings, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two.durations[order], one.durations, rtol=1e-5)


def test_a_non_finite_training_mean_names_the_utterances(corpus, tmp_path):
    """A model giving NaN embeddings (a diverged run) stops the stage's last step with the ids, instead of
    storing a zero mean that would silently switch off mean subtraction."""
    from accelerate import Accelerator
    from conftest import tiny_model

    from mlsv.train.validation import training_mean

    model = tiny_model().eval()
    with torch.no_grad():
        model.backend.embedding.bias.fill_(float("nan"))
    cfg = load_config(None, _stage_overrides(corpus))
    with pytest.raises(ValueError, match=r"non-finite embeddings \(has training diverged\?\), e.g. for \["):
        training_mean(model, corpus.validation, Accelerator(cpu=True), cfg.data, 0, tmp_path)
