"""Recipes (mlsv.recipe) and train.py, which runs them: a --quick run has its own folder, a complete step is
reused only when it was asked the same, mistakes are caught when a recipe loads (evaluations before any
training), a failing step is one line; end to end under train.py and in two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_train_py

from mlsv.config import ConfigError
from mlsv.recipe import load_recipe, run_recipe

TINY = {
    "n_speakers": 4,
    "utts_per_speaker": 2,
    "n_validation_speakers": 0,
    "n_test_speakers": 2,
    "max_seconds": 1.0,
    "seed": 0,
}


def _recipe(tmp_path, output_dir=None):
    data = {"steps": [{"name": "data", "prepare": "synthetic", "args": TINY, "quick": {"n_speakers": 3}}]}
    if output_dir:
        data["output_dir"] = str(output_dir)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_quick_goes_to_its_own_folder_unless_one_is_given(tmp_path):
    path = _recipe(tmp_path, tmp_path / "runs" / "mine")
    assert load_recipe(path).output_dir == tmp_path / "runs" / "mine"
    assert load_recipe(path, quick=True).output_dir == tmp_path / "runs" / "mine-quick"
    assert load_recipe(path, quick=True, output_dir=tmp_path / "x").output_dir == tmp_path / "x"


def test_a_quick_corpus_does_not_feed_a_full_run(tmp_path):
    """A prepare step skipped whenever its folder held COMPLETE: a --quick corpus then fed a full run."""
    path = _recipe(tmp_path)
    out = tmp_path / "run"
    run_recipe(load_recipe(path, quick=True, output_dir=out))
    done = json.loads((out / "data" / "COMPLETE").read_text())
    assert done["step"] == {"kind": "prepare", "spec": "synthetic", "args": {**TINY, "n_speakers": 3}}
    run_recipe(load_recipe(path, quick=True, output_dir=out))  # asked the same: reused
    with pytest.raises(
        ConfigError,
        match=rf"step 'data': {out / 'data'} was made with other settings "
        r"\(n_speakers=3, now 4\); delete that folder",
    ):
        run_recipe(load_recipe(path, output_dir=out))


def test_a_step_completed_before_steps_were_recorded_is_reused_with_a_warning(tmp_path, caplog):
    path = _recipe(tmp_path)
    out = tmp_path / "run"
    run_recipe(load_recipe(path, output_dir=out))
    (out / "data" / "COMPLETE").write_text(json.dumps({"seconds": 1.0, "finished": "2026-01-01 00:00:00"}))
    with caplog.at_level("WARNING", logger="mlsv.recipe"):
        run_recipe(load_recipe(path, quick=True, output_dir=out))
    assert "completed before mlsv recorded its settings; reused unchecked" in caplog.text


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
        steps.append(
            {"name": "eval", "evaluate": {"model": "stage1", "manifest": str(tmp_path / "m.jsonl"), **evaluate}}
        )
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


# -- recipe mistakes caught when it loads; failing steps in one line -----------------------------------------


def _checked_recipe(tmp_path: Path, tiny_stage: Path, **change) -> Path:
    steps = {
        "data": {"name": "data", "prepare": "synthetic", "args": {"n_speakers": 4}},
        "s1": {"name": "s1", "train": str(tiny_stage)},
        "eval": {"name": "eval", "evaluate": {"model": "s1", "manifest": "m.jsonl", "trials": ["t.txt"]}},
        "report": {"name": "report", "report": {"systems": {"LAP": "eval"}}},
    }
    for name, step in change.items():
        steps[name] = step
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump({"output_dir": str(tmp_path / "run"), "steps": [s for s in steps.values() if s is not None]})
    )
    return path


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"data": {"name": "data", "prepare": "synthetic", "args": {"n_speaker": 5}}},
            "step 'data': args: unknown synthetic prepare key 'n_speaker' (did you mean 'n_speakers'?)",
        ),
        (
            {"data": {"name": "data", "prepare": "synthetic", "quick": {"seed": "x"}}},
            "step 'data': quick: synthetic prepare seed: expected int",
        ),
        (
            {"eval": {"name": "eval", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"], "top_k": "three"}}},
            "step 'eval': evaluate top_k: expected int, got 'three'",
        ),
        (
            {"eval": {"name": "eval", "evaluate": {"model": "s1", "manifest": "m", "trials": "t.txt"}}},
            "step 'eval': evaluate trials: expected a list",
        ),
        (
            {"eval": {"name": "eval", "evaluate": {"model": "s1", "trials": ["t"]}}},
            "step 'eval': evaluate needs manifest",
        ),
        (
            {"eval": {"name": "eval", "evaluate": {"model": "report", "manifest": "m", "trials": ["t"]}}},
            "step 'eval': model 'report' is not an earlier step",
        ),
        (
            {"eval": {"name": "eval", "evaluate": {"model": "data", "manifest": "m", "trials": ["t"]}}},
            "step 'eval': model 'data' is a prepare step, not a train step",
        ),
        (
            {"report": {"name": "report", "report": {"systems": {"LAP": "eval"}, "modle": "LAP"}}},
            "step 'report': unknown report key 'modle' (did you mean 'model'?)",
        ),
        (
            {"report": {"name": "report", "report": {"systems": {"LAP": "eval", "X": "nostep"}}}},
            "step 'report': systems 'X': 'nostep' is not an earlier step",
        ),
        (
            {"report": {"name": "report", "report": {"systems": {"LAP": "s1"}}}},
            "systems 'LAP': 's1' is a train step, not a evaluate step",
        ),
        (
            {"report": {"name": "report", "report": {"systems": {"LAP": "eval"}, "model": "SUPERB"}}},
            "step 'report': report model 'SUPERB' is not one of its systems' labels: LAP",
        ),
        (
            {"s1": {"name": "s1", "train": "x.yaml", "set": "data.train_manifest=x.jsonl"}},
            "step 's1': set must be a list of section.key=value",
        ),
        (
            {"s1": {"name": "s1", "train": "x.yaml", "quick_set": ["stage.epochs"]}},
            "step 's1': quick_set: override 'stage.epochs' must look like section.key=value",
        ),
        (
            {"s1": {"name": "s1", "train": "x.yaml", "init_from": "data"}},
            "step 's1': init_from 'data' is a prepare step, not a train step",
        ),
        (
            {"eval": {"name": "eval", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}, "set": ["a.b=1"]}},
            "step 'eval': set belongs to training steps",
        ),
        (
            {"data": {"name": "data", "prepare": ["folder", "--rot", "/x", "--out", "x.jsonl"]}},
            "mlsv prepare folder: error: the following arguments are required: --root",
        ),
        ({"data": {"name": "data", "prepare": "synthetc"}}, "prepare must be 'synthetic' or an argument list"),
        (
            {"eval": {"name": "s1", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}}},
            "step 3: name 's1' is also step 2's; step names must be unique",
        ),
        (
            {"eval": {"name": "../escape", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}}},
            "step 3: name '../escape' must be a plain folder name",
        ),
        (
            {"eval": {"name": "model", "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}}},
            "step 3: name 'model' is taken by the run's report",
        ),
        (
            {"eval": {"name": 3, "evaluate": {"model": "s1", "manifest": "m", "trials": ["t"]}}},
            "step 3: name must be text",
        ),
    ],
)
def test_recipe_mistakes_are_caught_when_it_loads(tmp_path, tiny_stage, change, message):
    from mlsv.recipe import load_recipe

    path = _checked_recipe(tmp_path, tiny_stage, **change)
    with pytest.raises(ConfigError) as e:
        load_recipe(path, quick=True)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()


def test_the_shipped_recipes_still_load():
    from mlsv.recipe import load_recipe

    for name in ("default", "voxceleb2_wavlm_base_plus", "voxceleb2_wavlm_large"):
        for quick in (False, True):
            assert load_recipe(ROOT / "configs" / f"{name}.yaml", output_dir="/nonexistent/run", quick=quick).steps


def test_failing_steps_report_one_line(tmp_path, tiny_stage, capsys):
    """A prepare step that fails, and a report whose evaluate step has not run, stop with one line naming the
    step."""
    path = _checked_recipe(
        tmp_path,
        tiny_stage,
        data={
            "name": "data",
            "prepare": ["folder", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "x.jsonl")],
        },
    )
    rc, err = run_train_py(["--config", str(path)], capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"train.py: error: step 'data': mlsv prepare folder --root "
        f"{tmp_path / 'none'} --out {tmp_path / 'x.jsonl'}: folder not found: "
        f"{tmp_path / 'none'}"
    )
    rc, err = run_train_py(["--config", str(path), "--steps", "report"], capsys)
    assert rc == 2 and "step 'report' reports system 'LAP' from step 'eval', which has not evaluated yet" in err


# -- train.py and several processes, end to end --------------------------------------------------------------


@pytest.mark.integration
def test_two_processes_run_a_recipes_evaluation_and_report_once(train_corpus, tmp_path):
    """Under a multi-process launch the evaluate and report steps write shared files: the main process runs
    them while the others wait (each process redoing them raced on their files and crashed)."""
    from conftest import tiny_model

    tiny_model().save_pretrained(tmp_path / "model")
    evaluate = {
        "model": str(tmp_path / "model"),
        "manifest": str(train_corpus.test),
        "trials": [str(train_corpus.test_trials)],
        "cohort": str(train_corpus.train),
        "top_k": 5,
        "calibration_pairs": 200,
        "plots": False,
    }
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "steps": [{"name": "eval", "evaluate": evaluate}, {"name": "report", "report": {"systems": {"LAP": "eval"}}}],
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    script = tmp_path / "run.py"
    script.write_text(
        "from accelerate import PartialState\nfrom mlsv.recipe import load_recipe, run_recipe\n"
        "PartialState(cpu=True)\n"
        f"run_recipe(load_recipe({str(tmp_path / 'recipe.yaml')!r}))\n"
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
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "LAP" in results["systems"] and (tmp_path / "run" / "model" / "config.json").is_file()
    assert (tmp_path / "run" / "eval" / "COMPLETE").is_file()


@pytest.mark.integration
def test_train_py_quick_end_to_end_and_model_loads(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--quick", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "EER" in r.stdout and "MFCC" in r.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["systems"]) == {"LAP", "SUPERB"}
    assert {"cosine", "asnorm", "calibrated"} <= set(results["systems"]["LAP"])
    assert (out / "report.md").is_file()
    code = (
        "import mlsv.models, torch\nfrom transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(out / 'model')!r}).eval()\n"
        "e = m(torch.randn(1, 16000)).embeddings\n"
        "assert m.config.calibration and m.config.threshold is not None and m.config.cohort_size > 0\n"
        "print(tuple(e.shape))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # rerunning skips every completed step
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--quick", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and time.time() - t0 < 60
    # ...but not a step made with other settings, and a step name that does not exist is an error
    for extra, message in (
        (["--set", "stage.seed=7"], "stage.seed: 42 -> 7"),
        (["--steps", "lap_stage9"], "no step named 'lap_stage9'"),
    ):
        r = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), "--quick", "--output-dir", str(out), *extra],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
