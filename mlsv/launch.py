"""How training processes start: one process, or several under ``torchrun`` / ``accelerate launch``.

On GPUs accelerate sees a multi-process launch by itself. On a machine without one it does not: under
``torchrun`` (or ``accelerate launch --multi_gpu``, which runs torchrun) every process would believe it is
alone, prepare the same data and overwrite the others' checkpoints. :func:`set_up_processes` therefore
starts accelerate's shared state for CPU processes (gloo) when the launcher started several, before
anything else asks accelerate about processes. ``accelerate launch --num_processes N`` without
``--multi_gpu`` starts a single process on such a machine; that is refused with the command that works.
"""

from __future__ import annotations

import os
import re

import torch

from mlsv.extras import needs_extra

with needs_extra("train", "training"):
    import psutil
    from accelerate import PartialState

__all__ = ["LaunchError", "set_up_processes"]


class LaunchError(ValueError):
    """The launcher started fewer processes than it was asked for."""


def _launcher_processes() -> int | None:
    """The ``--num_processes`` of an ``accelerate launch`` that started this process, if one did."""
    try:
        cmdline = psutil.Process().parent().cmdline()
    except (psutil.Error, AttributeError):  # no parent, or not allowed to look
        return None
    text = " ".join(cmdline)
    # `accelerate launch`, `accelerate-launch` or `python -m accelerate.commands.launch`
    if not re.search(r"accelerate(?:\.commands\.launch|-launch|\S*\s+launch)\b", text):
        return None
    found = re.search(r"--num[_-]processes[= ](\d+)", text)
    return int(found.group(1)) if found else None


def set_up_processes() -> PartialState:
    """accelerate's shared process state, started for CPU processes (gloo) when a launcher started several
    and there is no GPU; call it first thing in an entry point.

    Raises:
        LaunchError: ``accelerate launch --num_processes N`` (N > 1) started one process, naming the fix.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        return PartialState(cpu=not torch.cuda.is_available())
    asked = _launcher_processes()
    if asked is not None and asked > 1:
        raise LaunchError(
            f"accelerate launch --num_processes {asked} started one process: on a machine without "
            f"{asked} GPUs accelerate starts several only with --multi_gpu (on CPUs they then train with gloo): "
            f"accelerate launch --multi_gpu --num_processes {asked} train.py ..., or "
            f"torchrun --standalone --nproc_per_node {asked} train.py ..."
        )
    return PartialState()
