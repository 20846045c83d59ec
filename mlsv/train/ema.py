"""An exponential moving average of a model's weights, updated without waiting for the device.

``torch.optim.swa_utils.AveragedModel`` keeps its update count in a CPU tensor and copies it to the model's
device at every update: a blocking copy, so on a GPU each training step waits for the queue. ``WeightAverage``
keeps the count on the host, updates every floating parameter and buffer with one ``torch._foreach_lerp_``,
and copies the integer buffers (BatchNorm's batch counts). Its state dict has AveragedModel's keys
(``module.*`` and ``n_averaged``), so checkpoints of either load into it.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


class WeightAverage(nn.Module):
    """``average = decay * average + (1 - decay) * model`` after each update; the first update copies.

    Args:
        model: the model to average (deep-copied; a compiled model's copy runs eagerly).
        decay: the weight of the old average, in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = float(decay)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))
        self._updates = 0  # the host's copy of n_averaged: never read back from a tensor per step

    def _pairs(self, model: nn.Module):
        mine = itertools.chain(self.module.parameters(), self.module.buffers())
        theirs = itertools.chain(model.parameters(), model.buffers())
        return zip(mine, theirs, strict=True)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the average towards ``model``'s current weights (same architecture)."""
        averaged, current = [], []
        for a, m in self._pairs(model):
            if self._updates == 0 or not a.is_floating_point():
                a.copy_(m)
            else:
                averaged.append(a)
                current.append(m.detach())
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        self._updates += 1
        self.n_averaged.add_(1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._updates = int(self.n_averaged)  # once, on resume
        return result

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
