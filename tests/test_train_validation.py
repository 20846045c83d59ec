"""Validation and the training mean (mlsv.train.validation): chunked embeddings split over processes, unknown
ids, skipped files and non-finite embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_train_py, stage_overrides

from mlsv.config import load_config


def test_chunked_validation_split_over_processes_equals_one_process(train_corpus):
    """With data.eval_chunk_seconds an utterance's chunks can land in both processes' shares: the gathered
    parts are merged into one row per utterance, equal to what one process embeds (they stayed two rows,
    the last one winning)."""
    from conftest import tiny_model

    from mlsv.data.loader import build_eval_loader
    from mlsv.scoring.extract import extract_embeddings
    from mlsv.train.validation import merge_parts

    model = tiny_model().eval()

    def table(process: int, processes: int):
        loader = build_eval_loader(
            train_corpus.validation,
            batch_seconds=2.0,
            chunk_seconds=0.5,
            process_index=process,
            num_processes=processes,
        )
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


def test_a_non_finite_training_mean_names_the_utterances(train_corpus, tmp_path):
    """A model giving NaN embeddings (a diverged run) stops the stage's last step with the ids, instead of
    storing a zero mean that would silently switch off mean subtraction."""
    from accelerate import Accelerator
    from conftest import tiny_model

    from mlsv.train.validation import training_mean

    model = tiny_model().eval()
    with torch.no_grad():
        model.backend.embedding.bias.fill_(float("nan"))
    cfg = load_config(None, stage_overrides(train_corpus))
    with pytest.raises(ValueError, match=r"non-finite embeddings \(has training diverged\?\), e.g. for \["):
        training_mean(model, train_corpus.validation, Accelerator(cpu=True), cfg.data, 0, tmp_path)


def test_unknown_validation_ids_stop_before_training(small_corpus, tiny_stage, tmp_path, capsys):
    rc, err = run_train_py(
        [
            "--config",
            str(tiny_stage),
            "--output-dir",
            str(tmp_path / "x"),
            "--set",
            f"data.validation_manifest={small_corpus.validation}",
            "--set",
            f"data.validation_trials={small_corpus.test_trials}",
        ],
        capsys,
    )
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    # no KeyError quotes
    assert line.startswith(f"train.py: error: data.validation_trials {small_corpus.test_trials}: ")
    assert f"ids are not in data.validation_manifest {small_corpus.validation}, e.g. spk" in line
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_validation_counts_only_skipped_files(small_corpus, tmp_path, caplog):
    """After an epoch: unknown ids are an error, not counted as trials whose files were skipped."""
    from accelerate import Accelerator
    from conftest import tiny_model

    from mlsv.train.validation import validation_eer

    data = load_config(None).data
    with pytest.raises(KeyError, match="ids are not in data.validation_manifest"):
        validation_eer(
            tiny_model().eval(),
            str(small_corpus.validation),
            str(small_corpus.test_trials),
            Accelerator(cpu=True),
            data,
        )
    assert "name a skipped file" not in caplog.text
