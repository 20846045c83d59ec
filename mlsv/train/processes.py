"""A stage's processes: accelerate's settings taken as the stage's, and threads that fit the machine.

* ``stage.mixed_precision`` ("auto") and ``stage.grad_accum`` (null) default to what accelerate is
  configured with (``accelerate config``, or the environment ``accelerate launch`` sets); an explicit
  stage value that disagrees with accelerate's is an error naming both. The effective values are what
  the run's ``config.yaml`` records. Before, a stage value overrode bf16 chosen in ``accelerate config``
  without a word, and ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS=4`` made a 2-batch epoch take no step.
* Intra-op threads per process come from the cores this process may use, the processes on this machine
  and the loader workers each process starts: torch's default (every core in every process, beside the
  workers) oversubscribes the cores.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

from mlsv.config import ConfigError, TrainConfig

log = logging.getLogger("mlsv.train")

__all__ = ["accelerate_settings", "check_accelerator", "choose_threads"]


def accelerate_settings(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``stage.mixed_precision`` and ``stage.grad_accum`` as they will run.

    Raises:
        ConfigError: an explicit stage value and accelerate's configuration disagree, naming both. An
            accelerate mixed precision of "no" (also its unconfigured default) gives way to the stage's.
    """
    st = cfg.stage
    env_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower() or None
    env_ga = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").strip() or None
    mixed = st.mixed_precision
    if mixed == "auto":
        mixed = env_mp or "no"
    elif env_mp not in (None, "no", mixed):
        raise ConfigError(
            f"stage.mixed_precision is {mixed!r} but accelerate is configured with {env_mp!r} "
            "(accelerate config / ACCELERATE_MIXED_PRECISION): set one of them, or "
            "stage.mixed_precision=auto to use accelerate's"
        )
    accum = st.grad_accum
    if env_ga is not None:
        try:
            env_accum = int(env_ga)
        except ValueError:
            raise ConfigError(f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS={env_ga!r} is not a whole number") from None
        if accum is None:
            accum = env_accum
        elif accum != env_accum:
            raise ConfigError(
                f"stage.grad_accum is {accum} but accelerate is configured with {env_accum} "
                "(ACCELERATE_GRADIENT_ACCUMULATION_STEPS): set one of them, or stage.grad_accum=null "
                "to use accelerate's"
            )
    accum = 1 if accum is None else accum
    if accum < 1:
        raise ConfigError(f"gradient accumulation must be at least 1, accelerate is configured with {accum}")
    return dataclasses.replace(cfg, stage=dataclasses.replace(st, mixed_precision=mixed, grad_accum=accum))


def check_accelerator(acc, cfg: TrainConfig) -> None:
    """The accelerator runs the stage's settings (one made elsewhere, or by a plugin, may not): a
    ConfigError naming both values otherwise."""
    st = cfg.stage
    have = (str(acc.mixed_precision), int(acc.gradient_accumulation_steps))
    if have != (st.mixed_precision, st.grad_accum):
        raise ConfigError(
            f"the accelerator runs mixed_precision={have[0]!r}, gradient accumulation {have[1]}, "
            f"but the stage asks for {st.mixed_precision!r}, {st.grad_accum}: make them agree"
        )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (cgroups, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(cfg: TrainConfig, local_processes: int) -> str:
    """Sets torch's intra-op threads for this process (unless OMP_NUM_THREADS chooses them) and returns the
    sentence the stage logs about it."""
    cores, workers = _cores(), cfg.data.num_workers
    if os.environ.get("OMP_NUM_THREADS"):
        return (
            f"{torch.get_num_threads()} threads per process (OMP_NUM_THREADS); {cores} cores, "
            f"{local_processes} process(es), {workers} loader worker(s) each"
        )
    threads = max(1, cores // max(local_processes, 1) - workers)
    torch.set_num_threads(threads)
    return (
        f"{threads} thread(s) per process: {cores} cores, {local_processes} process(es) on this machine, "
        f"{workers} loader worker(s) each"
    )
