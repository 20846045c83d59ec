"""The real entry point under real launchers (mlsv.launch): several processes on CPUs share the work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_train_py_quick_under_torchrun_on_cpus_is_one_run_of_two_processes(tmp_path):
    """Under torchrun without a GPU both processes believed they were alone: they both prepared the corpus
    (racing on its files) and overwrote each other's checkpoints."""
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "train.py"),
            "--quick",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    for stage in ("lap_stage1", "lap_stage2", "superb_stage1"):  # each process saw its own share of the data
        audits = sorted(p.name for p in (out / stage / "data_audit").iterdir())
        assert audits == ["process_0.json", "process_1.json"], (stage, audits)
        batches = [json.loads((out / stage / "data_audit" / a).read_text()) for a in audits]
        assert batches[0] != batches[1]
    assert r.stdout.count("MFCC mean") == 1 and r.stdout.count("results: ") == 1  # one table
    assert r.stderr.count("step data (prepare)") == 1
    results = json.loads((out / "results.json").read_text())
    assert set(results["systems"]) == {"LAP", "SUPERB"}
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.integration
@pytest.mark.integration
@pytest.mark.integration
def test_accelerate_launch_that_starts_one_of_several_processes_is_refused(tmp_path):
    """`accelerate launch --num_processes 2` on a machine without GPUs started one process, silently."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "2",
            str(ROOT / "train.py"),
            "--quick",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode != 0
    assert (
        "train.py: error: accelerate launch --num_processes 2 started one process" in r.stderr
        and "accelerate launch --multi_gpu --num_processes 2 train.py" in r.stderr
    ), r.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # nothing done
