"""The training loop (mlsv.train.loop): the three stages, resume after a kill, fine-tuning, two processes,
epochs and accumulation, bad files skipped, and bad input (a saved config, the encoder, the crop length, a
worker's error, a second training on one folder) stopped with one clear line."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import metrics_rows, run_train_py, stage_overrides
from safetensors.torch import load_file

from mlsv.config import ConfigError, load_config
from mlsv.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


def _train(train_corpus, out, **extra):
    from mlsv.train.loop import run_stage

    return run_stage(load_config(None, stage_overrides(train_corpus, **extra)), out)


@pytest.mark.integration
def test_three_stages_loss_falls_and_validation_beats_chance(train_corpus, tmp_path):
    # a constant margin in stage 1 here, so that the loss curve is comparable from the first epoch on
    s1 = _train(
        train_corpus,
        tmp_path / "s1",
        **{
            "stage.epochs": 4,
            "stage.frontend_trainable": "none",
            "head.margin": 0.2,
            "head.margin_schedule": "constant",
            "log.trackers": "[csv,tensorboard]",
        },
    )
    assert list(s1.rglob("events.out.tfevents*")), "the TensorBoard tracker wrote no events"
    s2 = _train(
        train_corpus,
        tmp_path / "s2",
        **{
            "stage.epochs": 2,
            "stage.init_from": s1,
            "stage.frontend_trainable": "transformer",
            "data.speed_factors": "[1.0]",
            "head.margin_schedule": "constant",
            "optim.lr": 0.001,
        },
    )
    s3 = _train(
        train_corpus,
        tmp_path / "s3",
        **{
            "stage.epochs": 1,
            "stage.init_from": s2,
            "data.crop_seconds": 2.0,
            "data.speed_factors": "[1.0]",
            "stage.grad_accum": 2,
            "stage.frontend_trainable": "transformer",
            "head.margin": 0.5,
            "head.top_k": 0,
            "head.margin_schedule": "constant",
        },
    )
    rows = metrics_rows(s1)
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert all(float(r["validation_eer"]) < 50.0 for r in metrics_rows(s3))
    # the head keeps stage 1's speed-perturbed classes in every later stage
    assert json.loads((s3 / "head.json").read_text())["num_classes"] == 3 * 8
    from transformers import AutoModel

    import mlsv.models  # noqa: F401

    model = AutoModel.from_pretrained(s3 / "model")
    assert len(model.config.training_mean) == 16


@pytest.mark.integration
def test_resume_after_kill_gives_the_same_weights(train_corpus, tmp_path):
    """Killed mid-epoch and rerun: the same weights, metrics and data audit as a run never interrupted, with
    device augmentation (drawn per batch) and files that fail to decode before and after the kill."""
    from mlsv.data.loader import TrainCrops
    from mlsv.data.manifest import iter_rows, load_manifest, speaker_labels, write_manifest

    rows = [{**r, "path": str(train_corpus.root / r["path"])} for _, r in iter_rows(train_corpus.train)]
    labels = speaker_labels(train_corpus.train)
    cfg = load_config(None, stage_overrides(train_corpus))
    for epoch in (0, 1):  # a file in each epoch's first batch fails (before any checkpoint), one in its last
        crops = TrainCrops(
            load_manifest(train_corpus.train), labels, cfg.data, epoch=epoch, seed=cfg.stage.seed, batch_size=8
        )
        for i in crops.worker_items(0, 1)[[0, -1]]:
            (tmp_path / f"broken{i}.wav").write_bytes(b"RIFF....garbage")
            rows[i] = {**rows[i], "path": str(tmp_path / f"broken{i}.wav")}
    manifest = write_manifest(rows, tmp_path / "train.jsonl")
    extra = {
        "stage.epochs": 2,
        "stage.checkpoint_every_steps": 1,
        "augment.where": "device",
        "augment.probability": 1.0,
        "data.train_manifest": manifest,
    }
    ref = _train(train_corpus, tmp_path / "ref", **extra)
    # the same stage in a subprocess, killed (SIGKILL) once its first checkpoint exists, then rerun
    out = tmp_path / "killed"
    sets = stage_overrides(train_corpus, **extra)
    # the same thread count as this process: the runs are compared to 1e-6, and float sums split over
    # other thread counts round differently (a test that changed this process's count once broke it)
    code = (
        "import sys, torch\nfrom mlsv.config import load_config\nfrom mlsv.train.loop import run_stage\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        f"run_stage(load_config(None, {sets!r}), {str(out)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and not ckpt.checkpoint_dirs(out / "checkpoints"):
        time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "COMPLETE").exists()
    _train(train_corpus, out, **extra)
    a = load_file(str(ref / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    torch.testing.assert_close(
        load_file(str(ref / "head.safetensors"))["weight"],
        load_file(str(out / "head.safetensors"))["weight"],
        rtol=0,
        atol=1e-6,
    )
    # the resumed epoch's metrics and data audit cover the whole epoch, the batches before the kill too
    for r, o in zip(metrics_rows(ref), metrics_rows(out), strict=True):
        assert (r["epoch"], r["step"]) == (o["epoch"], o["step"])
        assert float(o["loss"]) == pytest.approx(float(r["loss"]), rel=1e-5)
        assert float(o["accuracy"]) == pytest.approx(float(r["accuracy"]), rel=1e-5)
        assert int(o["skipped_files"]) == int(r["skipped_files"]) > 0
    audit = "data_audit/process_0.json"
    assert json.loads((out / audit).read_text()) == json.loads((ref / audit).read_text())


def test_a_trained_model_is_fine_tuned_on_other_speakers_with_a_new_head(train_corpus, tmp_path):
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
    extra = {
        "stage.epochs": 1,
        "stage.init_model": tmp_path / "source",
        "data.train_manifest": train_corpus.validation,
        "augment.probability": 0.0,
        "data.validation_manifest": "",
        "data.validation_trials": "",
    }
    warm = _train(train_corpus, tmp_path / "warm", **extra, **{"optim.backend_lr_scale": 0.0})
    labels = json.loads((warm / "labels.json").read_text())
    assert sorted(labels) == sorted(speaker_labels(train_corpus.validation)) and len(labels) == 4
    assert json.loads((warm / "head.json").read_text())["num_classes"] == 4 * 3  # speed-perturbed classes
    tuned = MLSVModel.from_pretrained(warm / "model")
    c = tuned.config
    assert (c.threshold, c.calibration, c.evaluation, c.cohort_size) == (None, None, None, 0)
    assert len(c.training_mean) == 16 and c.training_mean != [0.5] * 16  # this data's mean
    before, after = dict(source.named_parameters()), dict(tuned.named_parameters())
    assert before.keys() == after.keys()
    for name, p in after.items():  # nothing but the head learnt
        torch.testing.assert_close(p, before[name], rtol=0, atol=0, msg=name)
    full = MLSVModel.from_pretrained(_train(train_corpus, tmp_path / "full", **extra) / "model")
    assert not torch.equal(full.aggregation.excite_bias, source.aggregation.excite_bias)

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"stage.init_model: .*empty is not a model folder"):
        _train(train_corpus, tmp_path / "bad", **{**extra, "stage.init_model": tmp_path / "empty"})
    with pytest.raises(ConfigError, match="stage.init_from .* and stage.init_model .* set one"):
        load_config(None, stage_overrides(train_corpus, **{**extra, "stage.init_from": warm}))


@pytest.mark.integration
def test_two_processes_train_on_different_data_and_agree(train_corpus, tmp_path):
    """Stage 2 (the encoder trained, with LayerDrop and SpecAugment) on two DDP processes: DDP needs a
    gradient for every trainable parameter in every step, which a skipped layer does not get."""
    out = tmp_path / "ddp"
    script = tmp_path / "run.py"
    stage2 = {
        "stage.epochs": 1,
        "stage.frontend_trainable": "transformer",
        "stage.layerdrop": 0.5,
        "stage.mask_time_prob": 0.2,
        "data.speed_factors": "[1.0]",
    }
    script.write_text(
        "import os\nfrom accelerate import Accelerator\nfrom mlsv.config import load_config\n"
        "from mlsv.train.loop import run_stage\n"
        f"cfg = load_config(None, {stage_overrides(train_corpus, **stage2)!r})\n"
        f"run_stage(cfg, {str(out)!r}, accelerator=Accelerator(cpu=True))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
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


def test_unknown_init_from_fails_clearly(train_corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a completed stage"):
        _train(train_corpus, tmp_path / "x", **{"stage.init_from": tmp_path / "nowhere"})


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


def test_bad_files_are_skipped_in_training_validation_and_the_training_mean(train_corpus, tmp_path, caplog):
    """Undecodable or NaN files are skipped and counted in the epochs, and skipped again when the
    validation set and the training mean are embedded (validation trials naming them are left out), as
    are validation files too short for the encoder."""
    train = _broken_copy(train_corpus.train, tmp_path, "train.jsonl")
    validation = _broken_copy(
        train_corpus.validation, tmp_path, "validation.jsonl", every=7, kinds=("nan.wav", "broken.wav", "short.wav")
    )
    out = _train(
        train_corpus,
        tmp_path / "run",
        **{
            "stage.epochs": 1,
            "data.train_manifest": train,
            "data.validation_manifest": validation,
            "stage.mean_utterances": 0,
        },
    )
    row = metrics_rows(out)[0]
    assert int(row["skipped_files"]) > 0 and float(row["validation_eer"]) >= 0
    assert "trials name a skipped file and are left out" in caplog.text
    assert "short.wav: too short: 20 samples, the encoder needs at least" in caplog.text
    from mlsv.models import MLSVModel

    mean = MLSVModel.from_pretrained(out / "model").config.training_mean
    assert len(mean) == 16 and all(math.isfinite(v) for v in mean) and any(v != 0 for v in mean)


@pytest.mark.integration
def test_a_stage_trains_from_streamed_shards_to_the_end(train_corpus, tmp_path):
    """Shards (audio inside the rows) stream through the epochs, validation and the training mean, whose
    subset of the shards stays parquet, read a shard at a time."""
    from mlsv.config import ConfigError
    from mlsv.data.manifest import iter_rows
    from mlsv.data.shards import write_shards
    from mlsv.models import MLSVModel

    write_shards(train_corpus.train, tmp_path / "shards", rows_per_shard=16, progress=False)
    with pytest.raises(ConfigError, match=r"data.streaming=true needs stage.steps_per_epoch > 0"):
        _train(
            train_corpus, tmp_path / "nosteps", **{"data.train_manifest": tmp_path / "shards", "data.streaming": True}
        )
    out = _train(
        train_corpus,
        tmp_path / "run",
        **{
            "data.train_manifest": tmp_path / "shards",
            "data.streaming": True,
            "stage.steps_per_epoch": 2,
            "stage.epochs": 1,
            "stage.mean_utterances": 10,
        },
    )
    subset = out / "mean_utterances.parquet"
    assert len([row for _, row in iter_rows(subset)]) == 10 and all(row["audio"] for _, row in iter_rows(subset))
    mean = MLSVModel.from_pretrained(out / "model").config.training_mean
    assert len(mean) == 16 and all(math.isfinite(v) for v in mean)


def test_a_run_that_stopped_before_its_first_checkpoint_can_be_rerun_with_other_settings(train_corpus, tmp_path):
    """A mistyped path stops a run before it trains: its folder holds no results, so the corrected run may
    use it (a folder with a checkpoint or a finished stage stays bound to its config)."""
    with pytest.raises(FileNotFoundError, match="trian.jsonl"):
        _train(train_corpus, tmp_path / "run", **{"data.train_manifest": tmp_path / "trian.jsonl"})
    out = _train(train_corpus, tmp_path / "run", **{"stage.epochs": 1})
    assert (out / "COMPLETE").exists()


def test_an_epoch_without_a_full_batch_is_an_error(train_corpus, tmp_path):
    with pytest.raises(ValueError, match="no full batch in an epoch: .* 48 utterances, fewer than a batch of 64"):
        _train(train_corpus, tmp_path / "run", **{"data.batch_size": 64})
    assert not (tmp_path / "run" / "COMPLETE").exists()


def test_an_output_folder_belongs_to_one_config(train_corpus, tmp_path):
    """A run (finished or killed) is neither resumed nor skipped under other settings: its checkpoints and
    results were made with the old ones. How it is watched and run may change."""
    from mlsv.config import ConfigError

    out = _train(train_corpus, tmp_path / "run", **{"stage.epochs": 1})
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"holds a run made with other settings \(data.batch_size: 8 -> 4\)"):
        _train(train_corpus, out, **{"stage.epochs": 1, "data.batch_size": 4})
    assert (out / "config.yaml").read_text() == saved
    _train(train_corpus, out, **{"stage.epochs": 1, "log.progress": True, "data.num_workers": 1})  # skipped: complete


def test_an_epoch_holds_whole_gradient_accumulation_cycles(train_corpus, tmp_path):
    """3 batches per epoch with stage.grad_accum 2: each epoch trains 2 (one optimiser step) and drops the
    third, instead of carrying half an accumulated gradient into the next epoch, which a checkpoint does
    not hold; more accumulation than an epoch has batches is an error, not epochs without a step."""
    out = _train(train_corpus, tmp_path / "run", **{"stage.epochs": 2, "data.batch_size": 16, "stage.grad_accum": 2})
    assert [(r["epoch"], r["step"]) for r in metrics_rows(out)] == [("1", "1"), ("2", "2")]
    audit = json.loads((out / "data_audit" / "process_0.json").read_text())
    assert [audit[e]["batches"] for e in ("1", "2")] == [2, 2]
    with pytest.raises(ValueError, match="stage.grad_accum 16 needs 16 batches per optimiser step, but .* gives 6"):
        _train(train_corpus, tmp_path / "run16", **{"stage.grad_accum": 16})


@pytest.mark.integration
def test_average_best_keeps_and_averages_as_many_checkpoints_as_asked(train_corpus, tmp_path, caplog):
    """stage.average_best 3 with stage.keep_best 1: pruning keeps the 3 best for the average (it kept 1,
    and the average silently had one member); EMA together with averaging is refused."""
    from mlsv.config import ConfigError

    caplog.set_level("INFO", logger="mlsv.train")
    out = _train(train_corpus, tmp_path / "run", **{"stage.epochs": 3, "stage.keep_best": 1, "stage.average_best": 3})
    kept = ckpt.checkpoint_dirs(out / "checkpoints")
    assert len(kept) == 3 and "averaged 3 best checkpoints" in caplog.text
    mean = ckpt.average_checkpoints(kept, "model.safetensors")
    final = load_file(str(out / "model" / "model.safetensors"))
    for k, v in mean.items():
        torch.testing.assert_close(final[k], v, msg=k)
    with pytest.raises(ConfigError, match="optim.ema_decay and stage.average_best 3 both choose the final weights"):
        load_config(None, stage_overrides(train_corpus, **{"optim.ema_decay": 0.9, "stage.average_best": 3}))


def test_more_steps_per_epoch_than_batches_is_an_error(train_corpus, tmp_path):
    with pytest.raises(ValueError, match="stage.steps_per_epoch 50 needs 50 batches per epoch, but .* gives 6"):
        _train(train_corpus, tmp_path / "run", **{"stage.steps_per_epoch": 50})


# -- bad input: a damaged saved config, the encoder, the crop length, errors in loader workers ---------------


def test_a_damaged_saved_config_is_named(tiny_stage_run, tiny_stage, tmp_path):
    from mlsv.train.loop import check_same_run

    run = tmp_path / "run"
    shutil.copytree(tiny_stage_run, run)
    (run / "config.yaml").write_text("data: [1\n")
    with pytest.raises(ConfigError, match=r"run/config\.yaml:2: .*restore it, or delete it"):
        check_same_run(load_config(tiny_stage), run)


def test_an_encoder_that_cannot_load_names_model_encoder(tiny_stage, tmp_path, capsys, monkeypatch):
    import mlsv.train.loop
    from mlsv.models import MLSVModel

    def offline(name, **kwargs):  # what transformers raises for an unknown hub id without a connection
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}.\nCheck ...")

    rc, err = run_train_py(
        [
            "--config",
            str(tiny_stage),
            "--output-dir",
            str(tmp_path / "x"),
            "--set",
            "model.encoder=nonexistent-encoder",
        ],
        capsys,
    )  # at once, no hub retries
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(
        "train.py: error: model.encoder 'nonexistent-encoder': model folder not found: "
        "nonexistent-encoder (a hub model id is namespace/name); give a hub id"
    ), err
    monkeypatch.setattr(mlsv.train.loop, "_model_source", lambda src, *a, **kw: src)  # a hub id the hub then refuses
    monkeypatch.setattr(MLSVModel, "from_encoder", offline)
    rc, err = run_train_py(
        [
            "--config",
            str(tiny_stage),
            "--output-dir",
            str(tmp_path / "y"),
            "--set",
            "model.encoder=someone/missing-encoder",
        ],
        capsys,
    )
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("train.py: error: model.encoder 'someone/missing-encoder': cannot load it (We couldn't")


def test_a_crop_too_short_for_the_encoder_is_named(tiny_stage, tmp_path, capsys):
    rc, err = run_train_py(
        ["--config", str(tiny_stage), "--output-dir", str(tmp_path / "x"), "--set", "data.crop_seconds=0.001"], capsys
    )
    assert rc == 2 and "data.crop_seconds 0.001 gives 16 samples" in err and "encoder's minimum of" in err, err
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_strict_training_in_a_worker_reports_the_bad_file(tiny_stage, tmp_path, capsys):
    import soundfile as sf

    rows = []
    for i in range(2):
        sf.write(tmp_path / f"nan{i}.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
        rows.append({"id": f"n{i}", "path": f"nan{i}.wav", "speaker": f"s{i}", "duration": 1.0, "sample_rate": 16000})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, err = run_train_py(
        [
            "--config",
            str(tiny_stage),
            "--output-dir",
            str(tmp_path / "x"),
            "--set",
            f"data.train_manifest={tmp_path / 'train.jsonl'}",
            "--set",
            "data.strict=true",
            "--set",
            "data.num_workers=1",
            "--set",
            "stage.steps_per_epoch=0",
            "--set",
            "data.batch_size=1",
        ],
        capsys,
    )
    assert rc == 2 and "Caught" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith(".wav: NaN or infinite samples")


@pytest.mark.integration
def test_two_trainings_on_one_folder_one_is_refused_naming_the_other(tiny_stage, tmp_path):
    """Started 0.3 s apart with different optim.lr, one crashed with a raw traceback, the other finished,
    and config.yaml recorded the other run's learning rate."""
    import subprocess
    import time

    run = tmp_path / "run"

    def start(lr):
        return subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "--config",
                str(tiny_stage),
                "--output-dir",
                str(run),
                "--set",
                f"optim.lr={lr}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )

    first = start(0.001)
    time.sleep(0.3)
    second = start(0.002)
    results = {}
    for lr, proc in ((0.001, first), (0.002, second)):
        out, err = proc.communicate(timeout=600)
        results[lr] = (proc.returncode, err, proc.pid)
    codes = sorted(rc for rc, _, _ in results.values())
    assert codes == [0, 2], {lr: (rc, err[-1500:]) for lr, (rc, err, _) in results.items()}
    winner = next(lr for lr, (rc, _, _) in results.items() if rc == 0)
    loser_err = next(err for rc, err, _ in results.values() if rc == 2)
    line = loser_err.strip().splitlines()[-1]
    assert "Traceback" not in loser_err and line.startswith(
        f"train.py: error: {run} is being written by training: process {results[winner][2]}"
    ), loser_err[-1500:]
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == winner
    assert (run / "COMPLETE").is_file() and not (run / ".mlsv.lock").exists()


def test_a_trained_model_records_its_crop_length(train_corpus, tmp_path):
    """A model trained on short crops said nothing of it; embedding whole utterances then fed it a context it
    never saw, silently (issue 17's first finding)."""
    from mlsv.models import MLSVConfig

    out = _train(train_corpus, tmp_path / "run", **{"stage.epochs": 1, "data.crop_seconds": 0.7})
    assert MLSVConfig.from_pretrained(out / "model").train_crop_seconds == 0.7
    assert MLSVConfig().train_crop_seconds is None  # a model not trained by mlsv says so
