"""Where a stage's metrics go: ``metrics.csv`` always; TensorBoard / W&B / Neptune when ``log.trackers``
names them."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mlsv.config import TrainConfig, to_dict


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


class Trackers:
    """metrics.csv always; TensorBoard / W&B / Neptune through accelerate's trackers when asked."""

    def __init__(self, accelerator, cfg: TrainConfig, output_dir: Path):
        self.acc, self.path = accelerator, output_dir / "metrics.csv"
        self.neptune = None
        if not accelerator.is_main_process:
            return
        names = [t for t in cfg.log.trackers if t not in ("csv", "neptune")]
        if names:
            if cfg.log.offline:
                os.environ.setdefault("WANDB_MODE", "offline")
            accelerator.init_trackers(cfg.log.project, config=public_config(cfg))
        if "neptune" in cfg.log.trackers:
            import neptune  # lazy: optional dependency

            mode = "offline" if cfg.log.offline else "async"
            self.neptune = neptune.init_run(project=cfg.log.project, mode=mode)  # token from NEPTUNE_API_TOKEN
            self.neptune["parameters"] = public_config(cfg)

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
        if self.neptune is not None:
            for k, v in numeric.items():
                self.neptune[f"train/{k}"].append(v, step=step)

    def close(self):
        # the trackers only: accelerate's end_training() would also tear down the process group, which
        # the recipe's later steps still use
        if self.acc.is_main_process:
            for tracker in self.acc.trackers:
                tracker.finish()
            if self.neptune is not None:
                self.neptune.stop()
