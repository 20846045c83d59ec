"""Pure schedules: learning rate per optimiser step, AAM margin per training progress."""

from __future__ import annotations

import math


def lr_at(
    step: int,
    total_steps: int,
    *,
    peak: float,
    floor: float,
    warmup_ratio: float = 0.1,
    cycles: int = 1,
    gamma: float = 1.0,
) -> float:
    """Cosine annealing with linear warm-up and restarts (docs/method.md#learning-rate-schedule), stepped per
    optimiser step.

    Each of ``cycles`` equal cycles warms up linearly from ``floor`` to ``peak * gamma**cycle`` over
    ``warmup_ratio`` of the cycle, then follows a half cosine back down to ``floor``.
    """
    total_steps = max(int(total_steps), 1)
    cycles = max(int(cycles), 1)
    cycle_len = max(total_steps // cycles, 1)
    c = min(step // cycle_len, cycles - 1)
    t = step - c * cycle_len
    top = peak * gamma**c
    warm = int(cycle_len * warmup_ratio)
    if t < warm:
        return floor + (top - floor) * t / warm
    span = max(cycle_len - warm, 1)
    return floor + (top - floor) * (1 + math.cos(math.pi * min(t - warm, span) / span)) / 2


MARGIN_SHAPES = ("log", "cos", "exp", "linear", "constant")


def ramp_shape(kind: str, tau: float) -> float:
    """The normalised ramp in [0, 1] at progress tau in [0, 1] (docs/method.md#margin-schedule)."""
    tau = min(max(tau, 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return tau
    if kind == "log":
        lo = math.log(0.005)
        return (math.log(0.005 + tau * (1 - 0.005)) - lo) / -lo
    if kind == "cos":
        return (1 - math.cos(math.pi * tau)) / 2
    if kind == "exp":
        return (math.exp(0.1 + 4.9 * tau) - math.exp(0.1)) / (math.exp(5.0) - math.exp(0.1))
    raise ValueError(f"unknown margin schedule {kind!r}; choose one of {', '.join(MARGIN_SHAPES)}")


def margin_at(
    epoch_progress: float, *, margin: float, kind: str = "log", start_epoch: float = 0.0, ramp_epochs: float = 20.0
) -> float:
    """The margin after ``epoch_progress`` epochs: 0 until ``start_epoch``, then the ramp to ``margin``
    over ``ramp_epochs``, then ``margin``."""
    if kind == "constant" or ramp_epochs <= 0:
        return margin if epoch_progress >= start_epoch or kind == "constant" else 0.0
    if epoch_progress < start_epoch:
        return 0.0
    return margin * ramp_shape(kind, (epoch_progress - start_epoch) / ramp_epochs)
