"""Parquet shards (mlsv.data.shards, `mlsv prepare shards`): the audio inside the rows streams back identical."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from data_helpers import tiny_corpus

from mlsv.cli import main
from mlsv.data.audio import read_audio
from mlsv.data.manifest import iter_rows, load_manifest
from mlsv.data.shards import write_shards
from mlsv.data.validate import validate


def test_shards_stream_back_identical_audio(tmp_path, monkeypatch):
    import datasets

    # datasets pauses 5 s after each pass over interleaved parquet shards (an arrow workaround)
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    manifest = tiny_corpus(tmp_path, speakers=2, utts=3)
    paths, bad = write_shards(manifest, tmp_path / "shards", rows_per_shard=4, progress=False)
    assert len(paths) == 2 and not bad
    originals = {r["id"]: read_audio(tmp_path / r["path"])[0] for _, r in iter_rows(manifest)}
    streamed = list(load_manifest(tmp_path / "shards", streaming=True))
    assert sorted(r["id"] for r in streamed) == sorted(originals)
    for row in streamed:
        np.testing.assert_array_equal(read_audio(row["audio"])[0], originals[row["id"]])
    assert validate(tmp_path / "shards").ok
    from mlsv.config import DataConfig
    from mlsv.data.loader import build_eval_loader, build_train_loader
    from mlsv.data.manifest import speaker_labels

    cfg = DataConfig(batch_size=2, num_workers=2, crop_seconds=0.25, speed_factors=[1.0], streaming=True)
    stream = build_train_loader(tmp_path / "shards", cfg, None, labels=speaker_labels(manifest), epoch=0, seed=0)
    batches = list(itertools.islice(stream, 5))  # the stream repeats: a pass gives 3 batches
    assert len(batches) == 5 and {b["waveforms"].shape for b in batches} == {(2, 4000)}
    for b in build_eval_loader(tmp_path / "shards", batch_seconds=10):
        for uid, wave, mask in zip(b["ids"], b["waveforms"], b["attention_mask"]):
            np.testing.assert_array_equal(wave[mask.bool()].numpy(), originals[uid])


def test_shards_refuse_zero_rows_per_shard(tmp_path, capsys):
    manifest = tiny_corpus(tmp_path, speakers=2, utts=2)
    with pytest.raises(ValueError, match="rows_per_shard must be at least 1, got 0"):
        write_shards(manifest, tmp_path / "shards", rows_per_shard=0, progress=False)
    with pytest.raises(SystemExit):
        main(["prepare", "shards", "--manifest", str(manifest), "--out", str(tmp_path / "s"), "--rows-per-shard", "0"])
    assert "--rows-per-shard: must be at least 1, got 0" in capsys.readouterr().err
