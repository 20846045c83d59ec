"""Output folders one process writes at a time (mlsv.locks): a second writer is refused naming the first,
a lock left by a dead process is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from mlsv.locks import LOCK_NAME, FolderLock, LockError


def _write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(
        json.dumps(
            {
                "pid": pid,
                "host": host or socket.gethostname(),
                "what": "training",
                "command": "train.py --output-dir x",
                "started": "2026-12-06 10:00:00",
            }
        )
    )


def test_a_folder_held_by_a_running_process_is_refused_naming_it(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "run", other.pid)
        with pytest.raises(
            LockError,
            match=rf"{tmp_path / 'run'} is being written by training: process {other.pid} "
            r"on .* since 2026-12-06 10:00:00 \(train.py --output-dir x\); wait",
        ):
            FolderLock(tmp_path / "run").acquire()
    finally:
        other.kill()
        other.wait()


def test_a_lock_of_a_dead_process_is_taken_over_and_released(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(tmp_path / "run", int(dead.stdout))
    with caplog.at_level("WARNING", logger="mlsv.locks"):
        with FolderLock(tmp_path / "run", "mlsv evaluate") as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
            with FolderLock(tmp_path / "run"):  # the same process may enter again
                pass
            assert lock.path.exists()
    assert "which is no longer running" in caplog.text
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_lock_from_another_host_says_how_to_remove_it(tmp_path):
    _write_lock(tmp_path / "run", 1, host="elsewhere")
    with pytest.raises(LockError, match=rf"if that process is gone, delete {tmp_path / 'run' / LOCK_NAME}"):
        FolderLock(tmp_path / "run").acquire()


def test_mlsv_evaluate_refuses_an_out_folder_being_written(tmp_path, capsys):
    from conftest import saved_tiny_model

    from mlsv.cli import main

    model = saved_tiny_model(tmp_path / "model")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "a", "path": "a.wav", "speaker": "s", "duration": 1.0, "sample_rate": 16000}) + "\n"
    )
    (tmp_path / "t.txt").write_text("1 a a\n")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "ev", other.pid)
        rc = main(
            [
                "evaluate",
                "--model",
                str(model),
                "--manifest",
                str(tmp_path / "m.jsonl"),
                "--trials",
                str(tmp_path / "t.txt"),
                "--out",
                str(tmp_path / "ev"),
            ]
        )
    finally:
        other.kill()
        other.wait()
    err = capsys.readouterr().err.splitlines()[-1]  # after the tiny model's save progress bar
    assert (
        rc == 2
        and err.startswith("mlsv evaluate: error: ")
        and f"being written by training: process {other.pid}" in err
    )
