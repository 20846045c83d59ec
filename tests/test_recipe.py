"""Recipes (mlsv.recipe): a --quick run has its own folder, and a complete step is reused only when it was
asked the same."""

from __future__ import annotations

import json

import pytest
import yaml

from mlsv.config import ConfigError
from mlsv.recipe import load_recipe, run_recipe

TINY = {"n_speakers": 4, "utts_per_speaker": 2, "n_validation_speakers": 0, "n_test_speakers": 2,
        "max_seconds": 1.0, "seed": 0}


def _recipe(tmp_path, output_dir=None):
    data = {"steps": [{"name": "data", "prepare": "synthetic", "args": TINY,
                       "quick": {"n_speakers": 3}}]}
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
    with pytest.raises(ConfigError, match=rf"step 'data': {out / 'data'} was made with other settings "
                                         r"\(n_speakers=3, now 4\); delete that folder"):
        run_recipe(load_recipe(path, output_dir=out))


def test_a_step_completed_before_steps_were_recorded_is_reused_with_a_warning(tmp_path, caplog):
    path = _recipe(tmp_path)
    out = tmp_path / "run"
    run_recipe(load_recipe(path, output_dir=out))
    (out / "data" / "COMPLETE").write_text(json.dumps({"seconds": 1.0, "finished": "2026-01-01 00:00:00"}))
    with caplog.at_level("WARNING", logger="mlsv.recipe"):
        run_recipe(load_recipe(path, quick=True, output_dir=out))
    assert "completed before mlsv recorded its settings; reused unchecked" in caplog.text
