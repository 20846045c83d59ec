"""Trial lists (mlsv.data.trials): repeated trials and self-pairs are counted, warned about and recorded."""

from __future__ import annotations

import numpy as np

from mlsv.data.trials import read_trials
from mlsv.scoring.embeddings import EmbeddingTable
from mlsv.scoring.pipeline import score_trials, trial_metrics


def test_repeated_trials_and_self_pairs_are_counted_warned_and_recorded(tmp_path, caplog):
    path = tmp_path / "odd.txt"
    path.write_text("1 a1 a2\n0 a1 b1\n\n1 a2 a1\n1 b1 b1\n0 a1 b1\n1 b2 b1\n")
    with caplog.at_level("WARNING", logger="mlsv.data.trials"):
        trials = read_trials(path)
    assert trials.repeats() == [(2, 0), (4, 1)]  # a2 a1 repeats a1 a2 (scoring is symmetric); a1 b1 twice
    assert trials.self_pairs().tolist() == [3]
    assert f"{path}: 2 trial(s) repeat an earlier one (line 4 repeats line 1)" in caplog.text
    assert f"{path}: 1 trial(s) pair an utterance with itself (line 5: b1)" in caplog.text
    rng = np.random.default_rng(0)
    table = EmbeddingTable(np.array(["a1", "a2", "b1", "b2"]), rng.standard_normal((4, 8)).astype(np.float32),
                           np.ones(4, np.float32))
    metrics = trial_metrics(trials, score_trials(table, trials))
    assert metrics["n_repeated_trials"] == 2 and metrics["n_self_pairs"] == 1 and metrics["n_trials"] == 6


def test_a_clean_list_warns_nothing_and_records_zeros(tmp_path, caplog):
    path = tmp_path / "clean.txt"
    path.write_text("1 a1 a2\n0 a1 b1\n")
    with caplog.at_level("WARNING", logger="mlsv.data.trials"):
        trials = read_trials(path)
    assert not caplog.text and trials.oddities() == {"n_repeated_trials": 0, "n_self_pairs": 0}
