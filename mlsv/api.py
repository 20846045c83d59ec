"""mlsv's public names for using a trained model, in one place.

>>> from mlsv.api import Verifier          # or: from mlsv import Verifier
>>> v = Verifier.from_pretrained("runs/default/model")
>>> v.verify("a.wav", "b.flac")

Each name lives in the layer it belongs to (see ``docs/architecture.md``): audio input in
:mod:`mlsv.data.inputs`, model loading in :mod:`mlsv.models.loading`, the evaluation record in
:mod:`mlsv.scoring.record`, and the Verifier with its embedder and scorer in :mod:`mlsv.inference`.
The names that need torch (``TorchEmbedder``, ``check_device``, ``load_model``) are imported when first
asked for, so that ``Verifier.from_pretrained(..., runtime="onnx")`` runs where torch is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlsv.data.inputs import (
    AUDIO_SUFFIXES,
    AudioInput,
    Enrolment,
    check_sample_rate,
    find_audio_files,
    load_audio,
)
from mlsv.inference.embedder import Embedder
from mlsv.inference.model_files import min_samples
from mlsv.inference.scorer import Scorer
from mlsv.inference.tracking import OnlineTracker, SpeakerTrack, WindowEmbeddings, WindowScore
from mlsv.inference.verifier import Identification, VerificationResult, Verifier
from mlsv.scoring.record import SCALES, EvaluationRecord, Threshold, record_score_statistics

if TYPE_CHECKING:  # imported when first asked for (__getattr__ below)
    from mlsv.inference.torch_runtime import TorchEmbedder, check_device, load_model

__all__ = [
    "AUDIO_SUFFIXES",
    "SCALES",
    "AudioInput",
    "Embedder",
    "Enrolment",
    "EvaluationRecord",
    "Identification",
    "OnlineTracker",
    "Scorer",
    "SpeakerTrack",
    "Threshold",
    "TorchEmbedder",
    "VerificationResult",
    "Verifier",
    "WindowEmbeddings",
    "WindowScore",
    "check_device",
    "check_sample_rate",
    "find_audio_files",
    "load_audio",
    "load_model",
    "min_samples",
    "record_score_statistics",
]

_TORCH_NAMES = ("TorchEmbedder", "check_device", "load_model")


def __getattr__(name: str):
    """``TorchEmbedder``, ``check_device`` and ``load_model``, imported (with torch) when first asked for."""
    if name in _TORCH_NAMES:
        from mlsv.inference import torch_runtime

        return getattr(torch_runtime, name)
    raise AttributeError(f"module 'mlsv.api' has no attribute {name!r}")
