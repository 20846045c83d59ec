"""Schedules (mlsv.train.schedules): the learning rate's warm-up, cosine and restarts; the margin's ramps."""

from __future__ import annotations

import pytest

from mlsv.train.schedules import lr_at, margin_at, ramp_shape


def test_lr_warmup_then_cosine_to_floor():
    lrs = [lr_at(s, 100, peak=1.0, floor=0.01, warmup_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.02
    # restarts: the second cycle warms up again to peak * gamma
    two = [lr_at(s, 100, peak=1.0, floor=0.0, warmup_ratio=0.1, cycles=2, gamma=0.5) for s in range(100)]
    assert max(two[50:]) == pytest.approx(0.5)


@pytest.mark.parametrize("kind,at_half", [("log", 0.87), ("cos", 0.5), ("exp", 0.08), ("linear", 0.5)])
def test_margin_ramp_shapes(kind, at_half):
    assert ramp_shape(kind, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert ramp_shape(kind, 1.0) == pytest.approx(1.0)
    assert ramp_shape(kind, 0.5) == pytest.approx(at_half, abs=0.02)


def test_margin_schedule_start_and_hold():
    assert margin_at(0.5, margin=0.3, start_epoch=1, ramp_epochs=2) == 0.0
    assert margin_at(3.5, margin=0.3, start_epoch=1, ramp_epochs=2) == pytest.approx(0.3)
    assert margin_at(0.0, margin=0.5, kind="constant") == 0.5
