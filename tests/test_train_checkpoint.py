"""Checkpoints (mlsv.train.checkpoint): averaged and pruned; a damaged, crafted or half-written checkpoint is
refused naming it and what to do, never loaded or run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import run_train_py
from safetensors.torch import save_file

from mlsv.train import checkpoint as ckpt


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


# -- a damaged checkpoint, a crafted pickle, a full disk -----------------------------------------------------


def test_a_damaged_checkpoint_is_named_with_what_to_do(tiny_stage_run, tiny_stage, tmp_path, capsys):
    from mlsv.train import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(tiny_stage_run, run)
    (run / "COMPLETE").unlink()
    done = ckpt.checkpoint_dirs(run / "checkpoints")
    newest = done[-1]
    with open(newest / "model.safetensors", "r+b") as f:
        f.truncate(100)
    rc, err = run_train_py(
        ["--config", str(tiny_stage), "--output-dir", str(run), "--set", "stage.keep_best=2"], capsys
    )
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


def test_a_crafted_pickle_in_any_checkpoint_file_is_refused_not_run(tiny_stage_run, tiny_stage, tmp_path, capsys):
    """Resuming unpickled accelerate's custom states (the scheduler, the weight average) with weights_only=False:
    a crafted file in the newest checkpoint ran os.system before mlsv reported anything."""
    import torch

    from mlsv.train import checkpoint as ckpt

    newest = ckpt.checkpoint_dirs(tiny_stage_run / "checkpoints")[-1]
    names = sorted(p.name for p in newest.iterdir() if p.name != ckpt.META) + ["custom_checkpoint_0.pkl"]
    assert {"scheduler.json", "optimizer.bin", "random_states_0.pkl", "model.safetensors"} <= set(names)
    assert not any(n.startswith("custom_checkpoint") for n in sorted(p.name for p in newest.iterdir()))
    for name in names:
        run = tmp_path / name / "run"
        shutil.copytree(tiny_stage_run, run)
        (run / "COMPLETE").unlink()
        marker = tmp_path / name / "ran"
        torch.save(_Payload(marker), run / "checkpoints" / newest.name / name)
        rc, err = run_train_py(
            ["--config", str(tiny_stage), "--output-dir", str(run), "--set", "stage.keep_best=2"], capsys
        )
        assert not marker.exists(), f"{name}: the pickle ran"
        assert rc == 2 and "Traceback" not in err and f"checkpoint {run / 'checkpoints' / newest.name}" in err, (
            name,
            err[-800:],
        )


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_tmp(tiny_stage, tmp_path, capsys, monkeypatch):
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
            raise SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                '"No space left on device" })'
            )
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(accelerate_other, "safe_save_file", full_disk)
    run = tmp_path / "run"
    rc, err = run_train_py(["--config", str(tiny_stage), "--output-dir", str(run)], capsys)
    assert rc == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("train.py: error: cannot write checkpoint ") and "No space left on device" in line
    assert "free space under" in line and "earlier checkpoints are intact" in line
    checkpoints = run / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert len(ckpt.checkpoint_dirs(checkpoints)) == 1  # the first one, intact
    monkeypatch.setattr(accelerate_other, "safe_save_file", real)  # space freed: the run resumes and finishes
    rc, err = run_train_py(["--config", str(tiny_stage), "--output-dir", str(run)], capsys)
    assert rc == 0 and (run / "COMPLETE").is_file(), err
