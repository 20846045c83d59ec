"""Trackers (mlsv.train.trackers): metrics.csv keeps one row per epoch; accelerate's trackers by name (MLflow and
TensorBoard read back), Neptune offline."""

from __future__ import annotations

import os

import pytest
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


def test_the_tracker_names_are_accelerate_s():
    """log.trackers accepts every tracker accelerate runs by name (and csv, neptune), no other."""
    from accelerate.utils import LoggerType

    from mlsv.config import ACCELERATE_TRACKERS, ConfigError

    assert set(ACCELERATE_TRACKERS) == {str(t) for t in LoggerType} - {"all"}
    names = ["csv", "neptune", *ACCELERATE_TRACKERS]
    assert load_config(None, [f"log.trackers=[{','.join(names)}]"]).log.trackers == names
    with pytest.raises(ConfigError, match="'mlflw' is not one of csv, tensorboard, wandb, neptune, mlflow"):
        load_config(None, ["log.trackers=[mlflw]"])


def test_a_tracker_that_is_not_installed_is_named_with_what_to_install():
    """accelerate leaves out a tracker whose package is missing without a word; mlsv refuses the stage."""
    import importlib.util

    from mlsv.config import ACCELERATE_TRACKERS
    from mlsv.train.trackers import INSTALL, accelerate_trackers

    packages = {"comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}
    missing = [t for t, package in packages.items() if importlib.util.find_spec(package) is None]
    if not missing:
        pytest.skip("every tracker package is installed here")
    assert set(packages) <= set(ACCELERATE_TRACKERS)
    expected = f"log.trackers: {missing[0]} is not installed: pip install {INSTALL[missing[0]]}"
    with pytest.raises(ValueError, match=expected):
        accelerate_trackers(load_config(None, [f"log.trackers=[csv,{missing[0]}]"]))


def test_neptune_needs_a_workspace_and_project(monkeypatch):
    pytest.importorskip("neptune_scale")
    from mlsv.train.trackers import accelerate_trackers

    monkeypatch.delenv("NEPTUNE_PROJECT", raising=False)
    with pytest.raises(ValueError, match="log.project 'mlsv': Neptune needs its project as WORKSPACE/PROJECT"):
        accelerate_trackers(load_config(None, ["log.trackers=[csv,neptune]"]))
    monkeypatch.setenv("NEPTUNE_PROJECT", "ws/p")
    assert accelerate_trackers(load_config(None, ["log.trackers=[csv,neptune]"])) == ["neptune"]


@pytest.fixture(scope="module")
def tracked_run(tiny_stage, tmp_path_factory):
    """The tiny stage (2 epochs) logged to TensorBoard, MLflow (a local file store, ``file://`` under the
    test's folder) and Neptune (offline: the run stays in its local operation log)."""
    pytest.importorskip("mlflow")
    pytest.importorskip("neptune_scale")
    from mlsv.train.loop import run_stage

    out = tmp_path_factory.mktemp("tracked") / "run"
    store = (out.parent / "mlruns").as_uri()
    env = {"MLFLOW_TRACKING_URI": store, "MLFLOW_ALLOW_FILE_STORE": "true"}  # MLflow 3 asks to allow file stores
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        sets = ["log.trackers=[csv,tensorboard,mlflow,neptune]", "log.offline=true", "log.project=mlsv-ws/speakers"]
        run_stage(load_config(tiny_stage, sets), out)
        yield out, metrics_rows(out), store
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_mlflow_holds_the_run_s_metrics_and_config(tracked_run):
    from mlflow.tracking import MlflowClient

    out, rows, store = tracked_run
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("mlsv-ws/speakers")
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(int(r["step"]), float(r["loss"])) for r in rows]
    assert run.data.params["stage/epochs"] == "2" and run.data.params["log/trackers"] == str(
        ["csv", "tensorboard", "mlflow", "neptune"]
    )
    assert run.info.status == "FINISHED"


def test_tensorboard_events_hold_the_run_s_metrics(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, rows, _ = tracked_run
    (events,) = {f.parent for f in out.rglob("events.out.tfevents*") if "loss" in _scalar_tags(f.parent)}
    acc = EventAccumulator(str(events))
    acc.Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert losses == [(int(r["step"]), pytest.approx(float(r["loss"]), rel=1e-6)) for r in rows]


def _scalar_tags(folder) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc.Tags()["scalars"]


def test_neptune_keeps_the_offline_run_for_neptune_sync(tracked_run):
    """Neptune's servers cannot be reached here: the offline run's operation log (what ``neptune sync``
    uploads) holds the project, the config and every epoch's loss."""
    import sqlite3
    import struct

    out, rows, _ = tracked_run
    (db,) = (out / "neptune").glob("*/run_operations.sqlite3")
    with sqlite3.connect(db) as c:
        assert c.execute("select project from metadata").fetchone()[0] == "mlsv-ws/speakers"
        operations = [bytes(op) for (op,) in c.execute("select operation from run_operations")]
    assert any(b"stage/epochs" in op for op in operations)
    for r in rows:  # each loss as the double the client encodes, in an operation naming "loss"
        value = struct.pack("<d", float(r["loss"]))
        assert any(b"loss" in op and value in op for op in operations), r
