"""mlsv's public names for using a trained model, in one place.

>>> from mlsv.api import Verifier          # or: from mlsv import Verifier
>>> v = Verifier.from_pretrained("runs/default/model")
>>> v.verify("a.wav", "b.flac")

Each name lives in the layer it belongs to (see ``docs/architecture.md``): audio input in
:mod:`mlsv.data.inputs`, model loading in :mod:`mlsv.models.loading`, the evaluation record in
:mod:`mlsv.scoring.record`, and the Verifier with its embedder and scorer in :mod:`mlsv.inference`.
"""

from __future__ import annotations

from mlsv.data.inputs import (
    AUDIO_SUFFIXES,
    AudioInput,
    Enrolment,
    check_sample_rate,
    find_audio_files,
    load_audio,
)
from mlsv.inference.embedder import Embedder, TorchEmbedder
from mlsv.inference.scorer import Scorer
from mlsv.inference.tracking import OnlineTracker, SpeakerTrack, WindowEmbeddings, WindowScore
from mlsv.inference.verifier import Identification, VerificationResult, Verifier
from mlsv.models.loading import check_device, load_model, min_samples
from mlsv.scoring.record import SCALES, EvaluationRecord, Threshold, record_score_statistics

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
