"""Shared fixtures: tiny random-initialised models and generated audio. Nothing downloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

TINY_FAMILIES = ["tiny-wavlm", "tiny-hubert", "tiny-wav2vec2", "tiny-data2vec", "tiny-whisper"]
TINY_SETTINGS = dict(lap_heads=4, lap_channels=32, embedding_size=16)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for model tests (cpu or cuda)")


@pytest.fixture
def device(request):
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def tiny_model(encoder: str = "tiny-wavlm", **settings):
    from mlsv.models import MLSVModel

    return MLSVModel.from_encoder(encoder, **{**TINY_SETTINGS, **settings})


def saved_tiny_model(folder, *, seed: int = 0, encoder: str = "tiny-wavlm", config: dict | None = None,
                     **settings):
    """``tiny_model(encoder, **settings)`` from ``seed``, with ``config`` fields set, saved to ``folder``."""
    torch.manual_seed(seed)
    model = tiny_model(encoder, **settings)
    for key, value in (config or {}).items():
        setattr(model.config, key, value)
    model.save_pretrained(folder)
    return folder


def padded_batch(lengths, seed=0):
    """Random waveforms (B, max) zero-padded, with their (B, max) attention mask."""
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    wav = torch.zeros(len(lengths), S)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for i, n in enumerate(lengths):
        wav[i, :n] = torch.randn(n, generator=g) * 0.1
        mask[i, :n] = 1
    return wav, mask
