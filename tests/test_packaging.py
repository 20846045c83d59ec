"""The package as a user installs it: a wheel built from the repository, installed in a fresh virtual
environment outside it. The core alone loads a model, embeds and verifies, and names the extra a missing
feature needs; with the "train" extra, `mlsv train --quick` and `mlsv push --dry-run` run from the wheel's
own configs, and the metric module loads with `evaluate.load` from the installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import saved_tiny_model

ROOT = Path(__file__).resolve().parents[1]
TOP_SKIP = {".git", "build", "dist", "runs", "data"}  # at the top only: mlsv/data is the package's


def skip(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {n for n in names if (top and n in TOP_SKIP) or n == "__pycache__" or n.endswith((".egg-info", "_cache"))}


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"{r.args}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_wheel_in_a_fresh_environment(tmp_path):
    # the wheel, built from a copy (an in-tree build/ folder could hold files of an older tree)
    shutil.copytree(ROOT, tmp_path / "src", ignore=skip)
    src = str(tmp_path / "src")  # a path: pip reads a bare "src" as a package name
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", src, "-w", "dist"]
    ok(run(build, tmp_path))
    (wheel,) = (tmp_path / "dist").glob("mlsv-*.whl")
    venv = tmp_path / "venv"
    ok(run([sys.executable, "-m", "venv", str(venv)], tmp_path))
    py, mlsv = str(venv / "bin" / "python"), str(venv / "bin" / "mlsv")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    import torch

    ok(run([*pip, f"torch=={torch.__version__.split('+')[0]}"], tmp_path))
    ok(run([*pip, str(wheel)], tmp_path))  # the core
    work = tmp_path / "work"  # outside the repository, and not the wheel's source either
    work.mkdir()

    # the core: no training or evaluation packages; load, embed, verify; a missing extra is named
    model = saved_tiny_model(work / "model")
    rng = np.random.default_rng(0)
    for name, rate in (("a", 16000), ("b", 8000)):
        sf.write(work / f"{name}.wav", (0.1 * rng.standard_normal(rate)).astype(np.float32), rate)
    for module in ("accelerate", "datasets", "pyarrow", "sklearn", "scipy", "matplotlib"):
        assert run([py, "-c", f"import {module}"], work).returncode != 0, f"the core installed {module}"
    script = (
        "import json, mlsv\n"
        "v = mlsv.Verifier.from_pretrained('model')\n"
        "r = v.verify('a.wav', 'b.wav', threshold=0.5)\n"
        "print(json.dumps({'shape': list(v.embed(['a.wav', 'b.wav']).shape), 'scale': r.scale,\n"
        "                  'configs': str(mlsv.shipped_path('configs/default.yaml')), 'file': mlsv.__file__}))\n"
    )
    got = json.loads(ok(run([py, "-c", script], work)).strip().splitlines()[-1])
    assert got["shape"] == [2, 16] and got["scale"] == "cosine"
    site = Path(got["file"]).parent
    assert str(venv) in got["file"] and got["configs"] == str(site / "configs" / "default.yaml")
    out = ok(run([mlsv, "verify", "--model", "model", "a.wav", "b.wav", "--threshold", "0.5"], work))
    assert "threshold  0.5000" in out and "decision" in out
    r = run([mlsv, "train", "--quick"], work)
    assert r.returncode == 2 and 'needs the "train" extra: pip install "mlsv[train]"' in r.stderr, r.stderr

    # the train extra (and the metric module's evaluate): the shipped default recipe, then a dry-run push
    ok(run([*pip, f"{wheel}[train,metrics]"], tmp_path))
    ok(run([mlsv, "train", "--quick", "--output-dir", "run"], work, timeout=1200))
    assert (work / "run" / "model" / "config.json").is_file() and (work / "run" / "results.json").is_file()
    out = ok(run([mlsv, "push", "--model", "run/model", "--repo-id", "me/mlsv-test", "--dry-run", "publish"], work))
    assert "nothing uploaded" in out and (work / "publish" / "README.md").is_file()
    script = (
        "import evaluate, mlsv\n"
        "m = evaluate.load(str(mlsv.shipped_path('metrics/mlsv_verification')))\n"
        "print(m.compute(predictions=[0.9, 0.8, 0.3, 0.1], references=[1, 1, 0, 0])['eer'])\n"
    )
    assert float(ok(run([py, "-c", script], work)).strip().splitlines()[-1]) == 0.0
    del model
