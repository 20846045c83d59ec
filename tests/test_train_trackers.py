"""Trackers (mlsv.train.trackers): metrics.csv keeps one row per epoch."""

from __future__ import annotations

from conftest import metrics_rows

from mlsv.config import load_config


def test_an_epoch_logged_again_replaces_its_row(tmp_path):
    """A run killed after logging an epoch but before checkpointing it trains and logs that epoch again:
    metrics.csv keeps one row per epoch, the last."""
    from accelerate import Accelerator

    from mlsv.train.trackers import Trackers

    trackers = Trackers(Accelerator(cpu=True), load_config(None, {}), tmp_path)
    for epoch, loss in ((1, 3.0), (2, 2.0), (2, 1.5), (3, 1.0)):
        trackers.log({"epoch": epoch, "step": 10 * epoch, "loss": loss, "validation_eer": None}, step=10 * epoch)
    rows = metrics_rows(tmp_path)
    assert [(r["epoch"], r["loss"]) for r in rows] == [("1", "3.0"), ("2", "1.5"), ("3", "1.0")]
    assert rows[0]["validation_eer"] == ""
