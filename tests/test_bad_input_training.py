"""Bad input to training (train.py, configs, recipes, resumption): one clear error naming the file and
line, the config key or the recipe step, before any work where that is possible, and no traceback."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlsv.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def _train_py(argv: list[str], capsys) -> tuple[int, str]:
    """Runs train.py's main in this process: (exit code, stderr)."""
    spec = importlib.util.spec_from_file_location("mlsv_train_script", ROOT / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    capsys.readouterr()
    rc = script.main(argv)
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from mlsv.data.synthetic import make_synthetic_corpus

    return make_synthetic_corpus(tmp_path_factory.mktemp("corpus"), n_speakers=4, utts_per_speaker=3,
                                 n_validation_speakers=2, n_test_speakers=2, max_seconds=1.5, bank_files=1,
                                 bank_seconds=3.0, n_rirs=2)


@pytest.fixture(scope="module")
def tiny(corpus, tmp_path_factory) -> Path:
    """A stage config: tiny random model, 2 epochs of 2 steps on the synthetic corpus."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"train_manifest": str(corpus.train), "crop_seconds": 0.5, "batch_size": 4, "num_workers": 0,
                 "speed_factors": [1.0]},
        "augment": {"probability": 0},
        "model": {"encoder": "tiny-wavlm", "random_init": True, "lap_heads": 2, "lap_channels": 8,
                  "embedding_size": 8},
        "head": {"sub_centers": 1, "top_k": 0},
        "stage": {"epochs": 2, "steps_per_epoch": 2, "mean_utterances": 4},
        "log": {"progress": False},
    }))
    return path


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    """A completed tiny stage (its checkpoints kept), for the resumption tests to copy and damage."""
    from mlsv.train.loop import run_stage

    out = tmp_path_factory.mktemp("trained") / "run"
    run_stage(load_config(tiny, ["stage.keep_best=2"]), out)
    return out


# -- 1. YAML files -----------------------------------------------------------------------------------------


def test_yaml_mistakes_name_the_file_and_line(tmp_path, tiny, capsys):
    (tmp_path / "syntax.yaml").write_text("data:\n  batch_size: 4\n   bad_indent: [\n")
    with pytest.raises(ConfigError, match=r"syntax\.yaml:3: mapping values are not allowed here"):
        load_config(tmp_path / "syntax.yaml")
    rc, err = _train_py(["--config", str(tmp_path / "syntax.yaml"), "--output-dir", str(tmp_path / "x")], capsys)
    assert rc == 2 and err.startswith(f"train.py: error: {tmp_path / 'syntax.yaml'}:3: ") and "Traceback" not in err
    (tmp_path / "latin1.yaml").write_bytes("stage:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")
    rc, err = _train_py(["--config", str(tmp_path), "--output-dir", str(tmp_path / "x")], capsys)  # a folder
    assert rc == 2 and "is a folder: give the YAML file" in err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "child.yaml").write_text("base: list.yaml\n")
    with pytest.raises(ConfigError, match=r"list\.yaml \(the base of .*child\.yaml\): the top level must be a mapping"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "recipe.yaml").write_text("steps:\n  - {name: a, train: x.yaml\n")
    rc, err = _train_py(["--config", str(tmp_path / "recipe.yaml")], capsys)
    assert rc == 2 and f"{tmp_path / 'recipe.yaml'}:3: " in err


def test_a_damaged_saved_config_is_named(trained, tiny, tmp_path):
    from mlsv.train.loop import check_same_run

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "config.yaml").write_text("data: [1\n")
    with pytest.raises(ConfigError, match=r"run/config\.yaml:2: .*restore it, or delete it"):
        check_same_run(load_config(tiny), run)


# -- 2. the encoder and the crop length ---------------------------------------------------------------------


def test_an_encoder_that_cannot_load_names_model_encoder(tiny, tmp_path, capsys, monkeypatch):
    import mlsv.train.loop
    from mlsv.models import MLSVModel

    def offline(name, **kwargs):  # what transformers raises for an unknown hub id without a connection
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}.\nCheck ...")

    rc, err = _train_py(["--config", str(tiny), "--output-dir", str(tmp_path / "x"),
                         "--set", "model.encoder=nonexistent-encoder"], capsys)  # at once, no hub retries
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("train.py: error: model.encoder 'nonexistent-encoder': model folder not found: "
                          "nonexistent-encoder (a hub model id is namespace/name); give a hub id"), err
    monkeypatch.setattr(mlsv.train.loop, "_model_source", lambda src, *a, **kw: src)  # a hub id the hub then refuses
    monkeypatch.setattr(MLSVModel, "from_encoder", offline)
    rc, err = _train_py(["--config", str(tiny), "--output-dir", str(tmp_path / "y"),
                         "--set", "model.encoder=someone/missing-encoder"], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("train.py: error: model.encoder 'someone/missing-encoder': cannot load it (We couldn't")


def test_a_crop_too_short_for_the_encoder_is_named(tiny, tmp_path, capsys):
    rc, err = _train_py(["--config", str(tiny), "--output-dir", str(tmp_path / "x"),
                         "--set", "data.crop_seconds=0.001"], capsys)
    assert rc == 2 and "data.crop_seconds 0.001 gives 16 samples" in err and "encoder's minimum of" in err, err
    assert not (tmp_path / "x" / "checkpoints").exists()


# -- 3. errors raised in loader workers -----------------------------------------------------------------------


def test_worker_errors_keep_their_own_message():
    from torch.utils.data._utils import ExceptionWrapper

    from mlsv.data.audio import AudioError
    from mlsv.data.loader import unwrap_worker_error

    for error, message in ((AudioError("a.wav: NaN or infinite samples"), "a.wav: NaN or infinite samples"),
                           (KeyError("no such id 'x'"), "no such id 'x'")):
        try:
            try:
                raise error
            except Exception:
                ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0").reraise()
        except Exception as wrapped:
            assert "Original Traceback" in str(wrapped)
            clean = unwrap_worker_error(wrapped)
        assert type(clean) is type(error) and clean.args == (message,)
    plain = ValueError("not from a worker")
    assert unwrap_worker_error(plain) is plain


def test_strict_training_in_a_worker_reports_the_bad_file(tiny, tmp_path, capsys):
    import soundfile as sf

    rows = []
    for i in range(2):
        sf.write(tmp_path / f"nan{i}.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
        rows.append({"id": f"n{i}", "path": f"nan{i}.wav", "speaker": f"s{i}", "duration": 1.0, "sample_rate": 16000})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, err = _train_py(["--config", str(tiny), "--output-dir", str(tmp_path / "x"),
                         "--set", f"data.train_manifest={tmp_path / 'train.jsonl'}", "--set", "data.strict=true",
                         "--set", "data.num_workers=1", "--set", "stage.steps_per_epoch=0",
                         "--set", "data.batch_size=1"], capsys)
    assert rc == 2 and "Caught" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith(".wav: NaN or infinite samples")


# -- 4. recipes ---------------------------------------------------------------------------------------------


def _recipe(tmp_path: Path, tiny: Path, **change) -> Path:
    steps = {
        "data": {"name": "data", "prepare": "synthetic", "args": {"n_speakers": 4}},
        "s1": {"name": "s1", "train": str(tiny)},
        "eval": {"name": "eval", "evaluate": {"model": "s1", "manifest": "m.jsonl", "trials": ["t.txt"]}},
        "report": {"name": "report", "report": {"systems": {"LAP": "eval"}}},
    }
    for name, step in change.items():
        steps[name] = step
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"),
                                    "steps": [s for s in steps.values() if s is not None]}))
    return path


@pytest.mark.parametrize("change,message", [
    ({"data": {"name": "data", "prepare": "synthetic", "args": {"n_speaker": 5}}},
     "step 'data': args: unknown synthetic prepare key 'n_speaker' (did you mean 'n_speakers'?)"),
    ({"data": {"name": "data", "prepare": "synthetic", "quick": {"seed": "x"}}},
     "step 'data': quick: synthetic prepare seed: expected int"),
    ({"eval": {"name": "eval", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"], "top_k": "three"}}},
     "step 'eval': evaluate top_k: expected int, got 'three'"),
    ({"eval": {"name": "eval", "evaluate": {"model": "s1", "manifest": "m", "trials": "t.txt"}}},
     "step 'eval': evaluate trials: expected a list"),
    ({"eval": {"name": "eval", "evaluate": {"model": "s1", "trials": ["t"]}}}, "step 'eval': evaluate needs manifest"),
    ({"eval": {"name": "eval", "evaluate": {"model": "report", "manifest": "m", "trials": ["t"]}}},
     "step 'eval': model 'report' is not an earlier step"),
    ({"eval": {"name": "eval", "evaluate": {"model": "data", "manifest": "m", "trials": ["t"]}}},
     "step 'eval': model 'data' is a prepare step, not a train step"),
    ({"report": {"name": "report", "report": {"systems": {"LAP": "eval"}, "modle": "LAP"}}},
     "step 'report': unknown report key 'modle' (did you mean 'model'?)"),
    ({"report": {"name": "report", "report": {"systems": {"LAP": "eval", "X": "nostep"}}}},
     "step 'report': systems 'X': 'nostep' is not an earlier step"),
    ({"report": {"name": "report", "report": {"systems": {"LAP": "s1"}}}},
     "systems 'LAP': 's1' is a train step, not a evaluate step"),
    ({"report": {"name": "report", "report": {"systems": {"LAP": "eval"}, "model": "SUPERB"}}},
     "step 'report': report model 'SUPERB' is not one of its systems' labels: LAP"),
    ({"s1": {"name": "s1", "train": "x.yaml", "set": "data.train_manifest=x.jsonl"}},
     "step 's1': set must be a list of section.key=value"),
    ({"s1": {"name": "s1", "train": "x.yaml", "quick_set": ["stage.epochs"]}},
     "step 's1': quick_set: override 'stage.epochs' must look like section.key=value"),
    ({"s1": {"name": "s1", "train": "x.yaml", "init_from": "data"}},
     "step 's1': init_from 'data' is a prepare step, not a train step"),
    ({"eval": {"name": "eval", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}, "set": ["a.b=1"]}},
     "step 'eval': set belongs to training steps"),
    ({"data": {"name": "data", "prepare": ["folder", "--rot", "/x", "--out", "x.jsonl"]}},
     "mlsv prepare folder: error: the following arguments are required: --root"),
    ({"data": {"name": "data", "prepare": "synthetc"}}, "prepare must be 'synthetic' or an argument list"),
    ({"eval": {"name": "s1", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}}},
     "step 3: name 's1' is also step 2's; step names must be unique"),
    ({"eval": {"name": "../escape", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}}},
     "step 3: name '../escape' must be a plain folder name"),
    ({"eval": {"name": "model", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}}},
     "step 3: name 'model' is taken by the run's report"),
    ({"eval": {"name": 3, "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}}},
     "step 3: name must be text"),
])
def test_recipe_mistakes_are_caught_when_it_loads(tmp_path, tiny, change, message):
    from mlsv.recipe import load_recipe

    path = _recipe(tmp_path, tiny, **change)
    with pytest.raises(ConfigError) as e:
        load_recipe(path, quick=True)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()


def test_the_shipped_recipes_still_load():
    from mlsv.recipe import load_recipe

    for name in ("default", "voxceleb2_wavlm_base_plus", "voxceleb2_wavlm_large"):
        for quick in (False, True):
            assert load_recipe(ROOT / "configs" / f"{name}.yaml", output_dir="/nonexistent/run", quick=quick).steps


def test_failing_steps_report_one_line(tmp_path, tiny, capsys):
    """A prepare step that fails, and a report whose evaluate step has not run, stop with one line naming the
    step."""
    path = _recipe(tmp_path, tiny, data={"name": "data", "prepare": ["folder", "--root", str(tmp_path / "none"),
                                                                       "--out", str(tmp_path / "x.jsonl")]})
    rc, err = _train_py(["--config", str(path)], capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"train.py: error: step 'data': mlsv prepare folder --root "
                                            f"{tmp_path / 'none'} --out {tmp_path / 'x.jsonl'}: folder not found: "
                                            f"{tmp_path / 'none'}")
    rc, err = _train_py(["--config", str(path), "--steps", "report"], capsys)
    assert rc == 2 and "step 'report' reports system 'LAP' from step 'eval', which has not evaluated yet" in err


# -- 5. config values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    (["augment.noise_snr=[15, 0]"], "augment.noise_snr: [15, 0] must be [low, high] with low <= high"),
    (["augment.noise_snr=[5]"], "augment.noise_snr: [5] must be [low, high] with low <= high"),
    (["augment.music_snr=[20, 5, 1]"], "augment.music_snr: [20, 5, 1] must be [low, high]"),
    (["augment.babble_snr=[20, 13]"], "augment.babble_snr: [20, 13] must be [low, high]"),
    (["augment.babble_speakers=[7, 4]"], "augment.babble_speakers: [7, 4] must be [low, high]"),
    (["augment.babble_speakers=[0, 0]"], "augment.babble_speakers[0]: 0 must be >= 1"),
    (["optim.min_lr=1"], "optim.min_lr 1 is above optim.lr 0.001"),
    (["data.validation_trials=t.txt"], "data.validation_trials is set but data.validation_manifest is not"),
    (["data.validation_manifest=v.jsonl"], "data.validation_manifest is set but data.validation_trials is not"),
    (["head.penalty=-1"], "head.penalty: -1.0 must be >= 0"),
])
def test_config_values_checked_at_load(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)


def test_equal_bounds_and_lrs_are_fine():
    cfg = load_config(None, ["augment.noise_snr=[5, 5]", "optim.lr=1e-4", "optim.min_lr=1e-4", "head.penalty=0"])
    assert cfg.augment.noise_snr == [5.0, 5.0] and cfg.optim.min_lr == cfg.optim.lr


# -- 6 and 7. validation trials naming ids the validation manifest does not list --------------------------


def test_unknown_validation_ids_stop_before_training(corpus, tiny, tmp_path, capsys):
    rc, err = _train_py(["--config", str(tiny), "--output-dir", str(tmp_path / "x"),
                         "--set", f"data.validation_manifest={corpus.validation}",
                         "--set", f"data.validation_trials={corpus.test_trials}"], capsys)
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"train.py: error: data.validation_trials {corpus.test_trials}: ")  # no KeyError quotes
    assert f"ids are not in data.validation_manifest {corpus.validation}, e.g. spk" in line
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_validation_counts_only_skipped_files(corpus, tmp_path, caplog):
    """After an epoch: unknown ids are an error, not counted as trials whose files were skipped."""
    from accelerate import Accelerator
    from conftest import tiny_model

    from mlsv.train.validation import validation_eer

    data = load_config(None).data
    with pytest.raises(KeyError, match="ids are not in data.validation_manifest"):
        validation_eer(tiny_model().eval(), str(corpus.validation), str(corpus.test_trials), Accelerator(cpu=True),
                       data)
    assert "name a skipped file" not in caplog.text


# -- 8. a damaged checkpoint --------------------------------------------------------------------------------


def test_a_damaged_checkpoint_is_named_with_what_to_do(trained, tiny, tmp_path, capsys):
    from mlsv.train import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "COMPLETE").unlink()
    done = ckpt.checkpoint_dirs(run / "checkpoints")
    newest = done[-1]
    with open(newest / "model.safetensors", "r+b") as f:
        f.truncate(100)
    rc, err = _train_py(["--config", str(tiny), "--output-dir", str(run), "--set", "stage.keep_best=2"], capsys)
    assert rc == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert f"checkpoint {newest} cannot be loaded (SafetensorError" in line
    previous = f"resume from the previous checkpoint, {done[-2].name}" if len(done) > 1 else "start the stage again"
    assert previous in line
    assert newest.is_dir()  # nothing deleted behind the user's back
    (newest / ckpt.META).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match=r"step_\d+ is damaged .*mlsv_meta\.json"):
        ckpt.checkpoint_dirs(run / "checkpoints")


class _Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_any_checkpoint_file_is_refused_not_run(trained, tiny, tmp_path, capsys):
    """Resuming unpickled accelerate's custom states (the scheduler, the weight average) with weights_only=False:
    a crafted file in the newest checkpoint ran os.system before mlsv reported anything."""
    import torch

    from mlsv.train import checkpoint as ckpt

    newest = ckpt.checkpoint_dirs(trained / "checkpoints")[-1]
    names = sorted(p.name for p in newest.iterdir() if p.name != ckpt.META) + ["custom_checkpoint_0.pkl"]
    assert {"scheduler.json", "optimizer.bin", "random_states_0.pkl", "model.safetensors"} <= set(names)
    assert not any(n.startswith("custom_checkpoint") for n in sorted(p.name for p in newest.iterdir()))
    for name in names:
        run = tmp_path / name / "run"
        shutil.copytree(trained, run)
        (run / "COMPLETE").unlink()
        marker = tmp_path / name / "ran"
        torch.save(_Payload(marker), run / "checkpoints" / newest.name / name)
        rc, err = _train_py(["--config", str(tiny), "--output-dir", str(run), "--set", "stage.keep_best=2"], capsys)
        assert not marker.exists(), f"{name}: the pickle ran"
        assert rc == 2 and "Traceback" not in err and f"checkpoint {run / 'checkpoints' / newest.name}" in err, (
            name, err[-800:])


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_tmp(tiny, tmp_path, capsys, monkeypatch):
    """A full disk ended in a raw 'SafetensorError: No space left on device' and left a .tmp folder."""
    import accelerate.utils.other as accelerate_other
    from safetensors import SafetensorError

    from mlsv.train import checkpoint as ckpt

    real, calls = accelerate_other.safe_save_file, []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 2:  # the first checkpoint (model and head) fits, the second does not
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)  # half written
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(accelerate_other, "safe_save_file", full_disk)
    run = tmp_path / "run"
    rc, err = _train_py(["--config", str(tiny), "--output-dir", str(run)], capsys)
    assert rc == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("train.py: error: cannot write checkpoint ") and "No space left on device" in line
    assert "free space under" in line and "earlier checkpoints are intact" in line
    checkpoints = run / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert len(ckpt.checkpoint_dirs(checkpoints)) == 1  # the first one, intact
    monkeypatch.setattr(accelerate_other, "safe_save_file", real)  # space freed: the run resumes and finishes
    rc, err = _train_py(["--config", str(tiny), "--output-dir", str(run)], capsys)
    assert rc == 0 and (run / "COMPLETE").is_file(), err


@pytest.mark.integration
def test_two_trainings_on_one_folder_one_is_refused_naming_the_other(tiny, tmp_path):
    """Started 0.3 s apart with different optim.lr, one crashed with a raw traceback, the other finished,
    and config.yaml recorded the other run's learning rate."""
    import subprocess
    import time

    run = tmp_path / "run"

    def start(lr):
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(tiny), "--output-dir",
                                 str(run), "--set", f"optim.lr={lr}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path)

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
    assert "Traceback" not in loser_err and line.startswith(f"train.py: error: {run} is being written by training: "
                                                            f"process {results[winner][2]}"), loser_err[-1500:]
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == winner
    assert (run / "COMPLETE").is_file() and not (run / ".mlsv.lock").exists()
