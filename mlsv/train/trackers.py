"""Where a stage's metrics go: ``metrics.csv`` always; the trackers ``log.trackers`` names through accelerate.

Every tracker accelerate knows by name (``ACCELERATE_TRACKERS``: TensorBoard, W&B, MLflow, Comet, Aim,
ClearML, DVCLive, SwanLab, Trackio) is handed to ``Accelerator(log_with=..., project_dir=STAGE)``; Neptune
is ``NeptuneTracker``, an accelerate tracker on Neptune's current client (``neptune-scale``), registered
with accelerate under the name ``neptune``. A tracker whose package is missing is an error naming what to
install (accelerate itself would leave it out silently).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process

from mlsv.config import ACCELERATE_TRACKERS, TrainConfig, to_dict

#: What to install for a tracker (``pip install ...``).
INSTALL = {
    "tensorboard": '"mlsv[tracking]"',
    "wandb": '"mlsv[wandb]"',
    "mlflow": '"mlsv[mlflow]"',
    "neptune": '"mlsv[neptune]"',
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}


def flat_keys(d: dict, prefix: str = "") -> dict:
    """A nested dict as one level: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        out.update(flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def public_config(cfg: TrainConfig) -> dict:
    """The config as logged: flat ``section/key`` values (no secrets live in configs)."""
    return {
        key.replace(".", "/"): v if isinstance(v, (int, float, str, bool)) else str(v)
        for key, v in flat_keys(to_dict(cfg)).items()
    }


def _neptune_project(project_name: str) -> str:
    """Neptune's ``WORKSPACE/PROJECT``: ``log.project`` when it has that form, else ``NEPTUNE_PROJECT``."""
    project = project_name if "/" in project_name else os.environ.get("NEPTUNE_PROJECT")
    if not project:
        raise ValueError(
            f"log.project {project_name!r}: Neptune needs its project as WORKSPACE/PROJECT (or set NEPTUNE_PROJECT)"
        )
    return project


class NeptuneTracker(GeneralTracker):
    """Neptune as an accelerate tracker, on Neptune's current client ``neptune-scale`` (``neptune_scale.Run``).

    Args:
        project_name: the Neptune project, ``WORKSPACE/PROJECT`` (``log.project``); a name without a ``/``
            defers to the ``NEPTUNE_PROJECT`` environment variable.
        logging_dir: where the client keeps its local operation log (``LOGGING_DIR/neptune``); in offline
            mode the run stays there until ``neptune sync`` uploads it.
        mode: ``async`` (send while training), ``offline`` (``log.offline``) or ``disabled``.
        experiment_name: the run's experiment (the stage name): Neptune groups a stage's resumed runs by it.
        **kwargs: more ``neptune_scale.Run`` arguments. The API token comes from ``NEPTUNE_API_TOKEN``
            and is never written.
    """

    name = "neptune"
    requires_logging_directory = True

    def __init__(
        self,
        project_name: str,
        logging_dir: str | os.PathLike,
        *,
        mode: str = "async",
        experiment_name: str | None = None,
        **kwargs,
    ):
        super().__init__()
        self.project, self.mode, self.experiment_name = _neptune_project(project_name), mode, experiment_name
        self.log_directory = Path(logging_dir) / "neptune"
        self.kwargs = kwargs
        self.run = None

    @on_main_process
    def start(self):
        from neptune_scale import Run

        self.run = Run(
            project=self.project,
            mode=self.mode,
            experiment_name=self.experiment_name,
            log_directory=self.log_directory,
            **self.kwargs,
        )

    @property
    def tracker(self):
        return self.run

    @on_main_process
    def store_init_configuration(self, values: dict):
        self.run.log_configs({k: v for k, v in values.items() if v is not None}, flatten=True, cast_unsupported=True)

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self.run.log_metrics(data=numbers, step=step if step is not None else 0, **kwargs)

    @on_main_process
    def finish(self):
        if self.run is not None:
            self.run.close()


def _available(name: str) -> bool:
    if name == "neptune":
        return importlib.util.find_spec("neptune_scale") is not None
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    return LoggerType(name) in get_available_trackers()


def accelerate_trackers(cfg: TrainConfig) -> list[str]:
    """The trackers of ``log.trackers`` to hand to ``Accelerator(log_with=...)`` (all but csv), with Neptune's
    class registered with accelerate when named.

    Raises:
        ValueError: a named tracker's package is not installed, naming what to install; Neptune without a
            ``WORKSPACE/PROJECT`` (``log.project`` or ``NEPTUNE_PROJECT``).
    """
    names = [t for t in dict.fromkeys(cfg.log.trackers) if t != "csv"]
    for name in names:
        if name not in ACCELERATE_TRACKERS and name != "neptune":
            raise ValueError(f"log.trackers: unknown tracker {name!r}")
        if not _available(name):
            raise ValueError(f"log.trackers: {name} is not installed: pip install {INSTALL[name]}")
    if "neptune" in names:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, register_tracker_class

        _neptune_project(cfg.log.project)  # before training, not when the trackers start
        if LOGGER_TYPE_TO_CLASS.get("neptune") is not NeptuneTracker:  # once (accelerate warns on a second time)
            register_tracker_class(NeptuneTracker)
    return names


def tracker_settings(cfg: TrainConfig) -> dict:
    """``init_kwargs`` for ``Accelerator.init_trackers``: run names (the stage's) and offline modes. MLflow's
    store is MLflow's to choose (``MLFLOW_TRACKING_URI``; by default ``sqlite:///mlflow.db`` in the working
    folder); TensorBoard's events go under the stage folder (accelerate's ``project_dir``)."""
    stage, offline = cfg.stage.name, cfg.log.offline
    kwargs: dict[str, dict] = {}
    if "wandb" in cfg.log.trackers:
        if offline:
            os.environ.setdefault("WANDB_MODE", "offline")
        kwargs["wandb"] = {"name": stage}
    if "mlflow" in cfg.log.trackers:
        kwargs["mlflow"] = {"run_name": stage}
    if "neptune" in cfg.log.trackers:
        kwargs["neptune"] = {"mode": "offline" if offline else "async", "experiment_name": stage}
    return kwargs


class Trackers:
    """metrics.csv always; the trackers of ``log.trackers`` through the accelerator's."""

    def __init__(self, accelerator, cfg: TrainConfig, output_dir: Path):
        self.acc, self.path = accelerator, output_dir / "metrics.csv"
        if not accelerator.is_main_process:
            return
        if any(t != "csv" for t in cfg.log.trackers):
            accelerator.init_trackers(cfg.log.project, config=public_config(cfg), init_kwargs=tracker_settings(cfg))

    def log(self, row: dict, step: int) -> None:
        if not self.acc.is_main_process:
            return
        kept = []
        if self.path.exists():  # a run killed after logging an epoch but before its checkpoint redoes it
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["epoch"]) < row["epoch"]]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerows([*kept, row])
        os.replace(tmp, self.path)
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}
        if self.acc.trackers:
            self.acc.log(numeric, step=step)

    def close(self):
        # the trackers only: accelerate's end_training() would also tear down the process group, which
        # the recipe's later steps still use
        if self.acc.is_main_process:
            for tracker in self.acc.trackers:
                tracker.finish()
