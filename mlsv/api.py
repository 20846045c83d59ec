"""Use a trained model: embed audio, score two utterances, decide same/different speaker.

>>> from mlsv.api import Verifier
>>> v = Verifier.from_pretrained("runs/default/model")          # a folder or a hub id
>>> v.verify("a.wav", "b.flac")
VerificationResult(score=0.71, threshold=0.43, decision=True, scale='cosine', ...)

Audio: a path (WAV/FLAC/OGG/MP3 through soundfile, m4a through PyAV), or a numpy array / torch tensor
of samples, (S,), (S, C) or (C, S) with C <= 8 channels. Any sample rate (resampled with soxr to the
model's rate) and any channel count (averaged to mono). Missing, empty, silent, too short, non-finite
or undecodable audio raises :class:`~mlsv.data.audio.AudioError` naming the input.

Score scales (``Verifier.score_scale``), the last one whose inputs are available:

* ``"cosine"``: cosine similarity after subtracting the model's ``training_mean``, in [-1, 1].
* ``"asnorm"``: adaptive symmetric score normalisation against a cohort: the speaker means stored in
  the model (``cohort_embeddings``, written by ``mlsv evaluate``) or one the caller gives (``cohort=``:
  an embedding ``.npz`` with ``speakers``). Two utterances alone have nothing to normalise against.
* ``"calibrated"``: the QMF calibration stored with the model, a natural-log likelihood ratio. The
  calibration was fitted on **AS-norm scores** plus quality measures (log durations, L1/L2 norms and
  std of the raw embeddings), so it is applied only with a cohort; without one the Verifier scores
  with cosine and asks for a cosine threshold.

Thresholds always live on the scale being scored (:meth:`Verifier.threshold`):

* default: the EER-point threshold stored with the model for that scale
  (``config.evaluation["score_statistics"][scale]``, written by :func:`record_score_statistics`), or
  ``config.threshold`` when its scale (``config.evaluation["threshold_scale"]``, by default
  ``"calibrated"`` when the model carries a calibration, else ``"cosine"``) is the one in use, or, on
  the calibrated scale, the calibration's own threshold;
* ``far=``: a target false-accept rate. Needs the stored non-target score distribution of that scale
  (the tail table :func:`record_score_statistics` writes; the threshold picked keeps the measured FAR
  at or below the target), or, on the calibrated scale, uses ``log(1 / far)``: for calibrated LLRs
  ``P(LR >= 1/far | non-target) <= far`` (Markov's inequality, since ``E[LR | non-target] = 1``), an
  upper bound on the FAR, so the real FAR is usually lower. A model that stores only a threshold
  cannot answer a FAR question: the error says so and what to do.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from mlsv.data.audio import SILENCE_PEAK, AudioError, read_audio, silent_audio_message
from mlsv.scoring.embeddings import EmbeddingTable, check_finite, load_embeddings, pool_rows
from mlsv.tracking import OnlineTracker, SpeakerTrack, WindowEmbeddings, WindowScore, window_starts

__all__ = [
    "AUDIO_SUFFIXES",
    "AudioInput",
    "Enrolment",
    "Identification",
    "OnlineTracker",
    "SpeakerTrack",
    "Threshold",
    "VerificationResult",
    "Verifier",
    "WindowEmbeddings",
    "WindowScore",
    "check_device",
    "check_sample_rate",
    "find_audio_files",
    "load_model",
    "record_score_statistics",
]

AudioInput = Union[str, "os.PathLike[str]", np.ndarray, Any]  # Any: a torch.Tensor
#: One speaker's enrolment: a recording, or a list (or tuple) of them.
Enrolment = AudioInput | Sequence[AudioInput]
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".aif")
SCALES = ("cosine", "asnorm", "calibrated")
#: Most channels an array may have; a 2-D array with more on both axes is refused.
MAX_CHANNELS = 8
#: FAR levels tabulated by :func:`record_score_statistics`.
_FAR_GRID = tuple(float(x) for x in np.geomspace(1e-5, 0.5, 48))

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Threshold:
    """A decision threshold: accept (same speaker) when ``score >= value``.

    Attributes:
        value: the threshold.
        scale: the score scale it applies to (``cosine``, ``asnorm`` or ``calibrated``).
        source: where it came from, in words.
    """

    value: float
    scale: str
    source: str


@dataclass(frozen=True)
class Identification:
    """An open-set identification (``Verifier.identify``).

    Attributes:
        speaker: the best-scoring enrolled speaker when its score reaches the threshold, else None.
        score: the best score (on ``scale``).
        threshold, scale, threshold_source: as in :class:`VerificationResult`.
        ranking: every enrolled speaker with its score, best first.
    """

    speaker: str | None
    score: float
    threshold: float
    scale: str
    threshold_source: str
    ranking: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ranking": [{"speaker": n, "score": v} for n, v in self.ranking]}

    def __str__(self) -> str:
        if self.speaker is None:
            return (f"unknown speaker (best: {self.ranking[0][0]}, score {self.score:.4f} < threshold "
                    f"{self.threshold:.4f}, {self.scale})")
        return f"{self.speaker} (score {self.score:.4f} >= threshold {self.threshold:.4f}, {self.scale})"


@dataclass(frozen=True)
class VerificationResult:
    """One verification decision.

    Attributes:
        score: the trial score on ``scale``.
        threshold: the threshold in use (same scale).
        decision: True when ``score >= threshold`` (same speaker).
        scale: ``cosine``, ``asnorm`` or ``calibrated`` (an LLR).
        threshold_source: where the threshold came from.
        cosine: the cosine score (after mean subtraction), whatever the scale.
    """

    score: float
    threshold: float
    decision: bool
    scale: str
    threshold_source: str
    cosine: float

    @property
    def label(self) -> str:
        return "same speaker" if self.decision else "different speakers"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}

    def __str__(self) -> str:
        op = ">=" if self.decision else "<"
        return f"{self.label} (score {self.score:.4f} {op} threshold {self.threshold:.4f}, {self.scale})"


# ------------------------------------------------------------------------------------------------
# audio


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _input_name(x: Any, index: int | None = None) -> str:
    if _is_pathlike(x):
        return os.fspath(x)
    kind = type(x).__name__
    return f"input #{index} ({kind})" if index is not None else f"input ({kind})"


def _to_mono(x: np.ndarray, name: str) -> np.ndarray:
    """(S,), (S, C) or (C, S) -> (S,) by averaging channels (C <= MAX_CHANNELS)."""
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioError(f"{name}: audio arrays must be (samples,), (samples, channels) or (channels, samples), "
                         f"got shape {x.shape}")
    if x.shape[1] <= MAX_CHANNELS and x.shape[0] >= x.shape[1]:
        return x.mean(axis=1)
    if x.shape[0] <= MAX_CHANNELS:
        return x.mean(axis=0)
    raise AudioError(f"{name}: shape {x.shape} has more than {MAX_CHANNELS} channels on both axes")


def min_samples(config) -> int:
    """Fewest samples (at the model's rate) that give the encoder one output frame."""
    enc = dict(getattr(config, "encoder_config", None) or {})
    if enc.get("model_type") == "whisper":
        return 400  # one 25 ms STFT window
    kernels = enc.get("conv_kernel") or (10, 3, 3, 3, 3, 2, 2)
    strides = enc.get("conv_stride") or (5, 2, 2, 2, 2, 2, 2)
    n = 1
    for k, s in zip(reversed(list(kernels)), reversed(list(strides))):
        n = (n - 1) * s + k
    return int(n)


def check_sample_rate(sample_rate: Any, what: str = "sample_rate") -> int | None:
    """``sample_rate`` as a positive int (None stays None); ValueError naming ``what`` otherwise.

    Integral floats (``16000.0``) are accepted; 0, negative, fractional, non-finite, boolean and
    non-numeric values (``"16000"``) are refused rather than guessed at.
    """
    if sample_rate is None:
        return None
    ok = False
    if isinstance(sample_rate, (bool, np.bool_)):
        pass
    elif isinstance(sample_rate, numbers.Integral):
        ok = True
    elif isinstance(sample_rate, numbers.Real) and math.isfinite(sample_rate):
        ok = float(sample_rate).is_integer()
    if not ok or int(sample_rate) <= 0:
        raise ValueError(f"{what} must be a positive integer (samples per second), got {sample_rate!r}"
                         + (f" ({type(sample_rate).__name__})" if isinstance(sample_rate, str) else ""))
    return int(sample_rate)


def load_audio(x: AudioInput, sample_rate: int | None, *, target_sr: int, min_length: int = 1,
               name: str | None = None) -> np.ndarray:
    """Decodes / converts one input to float32 mono samples at ``target_sr`` and checks them.

    Args:
        x: a path, or samples as a numpy array or torch tensor ((S,), (S, C) or (C, S)); integer arrays
            are scaled to [-1, 1].
        sample_rate: the rate of an array input (default: ``target_sr``); ignored for files.
        target_sr: the model's rate.
        min_length: fewest samples accepted (at ``target_sr``).
        name: how errors name the input.

    Raises:
        AudioError: missing, empty, undecodable, too short, non-finite or silent audio, naming it.
        ValueError: ``sample_rate`` is not a positive integer.
    """
    name = name or _input_name(x)
    sample_rate = check_sample_rate(sample_rate)
    if _is_pathlike(x):
        samples, _ = read_audio(x, target_sr=target_sr, mono=True)
    else:
        samples = _array_samples(x, name)
        sr = target_sr if sample_rate is None else sample_rate
        if sr != target_sr:
            if not np.isfinite(samples).all():
                raise AudioError(f"{name}: audio contains NaN or infinite samples")
            import soxr

            samples = soxr.resample(samples, sr, target_sr).astype(np.float32, copy=False)
    if samples.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if samples.size < min_length:
        raise AudioError(f"{name}: too short ({samples.size / target_sr * 1000:.1f} ms); the encoder needs at "
                         f"least {min_length / target_sr * 1000:.1f} ms")
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK:
        raise AudioError(silent_audio_message(name, peak))
    return samples


def _array_samples(x: Any, name: str, frames_first: bool = False) -> np.ndarray:
    """An array or tensor of samples as float32 mono ((S,)); integer samples scaled to [-1, 1]. A 2-D
    array is (S, C) or (C, S), whichever fits (``_to_mono``), or always (S, C) with ``frames_first``
    (a stream's chunk, which may hold fewer samples than channels)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():  # bf16 / fp16 have no (or a lossy) numpy dtype: samples are float32
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise AudioError(f"{name}: expected numeric audio samples, got dtype {a.dtype}")
    if a.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if a.dtype.kind == "i":
        a = a.astype(np.float64) / (np.iinfo(a.dtype).max + 1.0)
    elif a.dtype.kind == "u":
        half = (np.iinfo(a.dtype).max + 1.0) / 2
        a = (a.astype(np.float64) - half) / half
    a = np.asarray(a, dtype=np.float32)
    if frames_first and a.ndim == 2:
        a = a.mean(axis=1)
    return np.ascontiguousarray(_to_mono(a, name), dtype=np.float32)


def find_audio_files(paths: Sequence[str | os.PathLike], suffixes: Sequence[str] = AUDIO_SUFFIXES) -> list[str]:
    """Expands folders (recursively, sorted) into their audio files; files are kept as given.

    A file named twice (``a.wav a.wav``, ``./a.wav a.wav``, or a file and its folder) is kept once, as
    first named, with a logged warning: its path is its id, and an embeddings table holds one row per id.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no audio file.
    """
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise FileNotFoundError(f"{path}: no audio files ({', '.join(suffixes)}) in this folder")
            out.extend(found)
        elif path.exists():
            out.append(os.fspath(p))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    seen: dict[str, str] = {}
    unique = []
    for f in out:
        key = os.path.normcase(os.path.abspath(f))
        if key in seen:
            log.warning("%s: named more than once; embedded once (id %s)", f, seen[key])
            continue
        seen[key] = f
        unique.append(f)
    return unique


# ------------------------------------------------------------------------------------------------
# runtimes


def check_device(device: Any):
    """``device`` as a ``torch.device`` this torch can run on; ValueError naming it otherwise.

    The one check of every device string that enters the API (``TorchEmbedder``,
    ``Verifier.from_pretrained``, ``load_model``, the evaluation functions): a misspelt device
    (``gpu``) or one this machine lacks (``cuda`` on a CPU-only torch, ``cuda:3`` with 2 GPUs, ``mps``
    off a Mac) is refused before any model is loaded, instead of failing deep inside torch.
    """
    import torch

    name = str(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {name!r} is not a torch device (cpu, cuda, cuda:0, mps, ...)") from None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(f"device {name!r}: this torch build has no CUDA (use cpu)")
        n = torch.cuda.device_count()
        if n == 0:
            raise ValueError(f"device {name!r}: no CUDA GPU is visible to this torch (use cpu)")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {name!r}: this machine has {n} CUDA device{'s' * (n > 1)} "
                             f"(cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r}: MPS is not available on this machine (use cpu)")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(f"device {name!r}: this torch cannot run a model there (use cpu or cuda)")
    return dev


def _check_onnx_device(device: Any) -> str:
    """``cpu`` or ``cuda[:N]`` for ONNX Runtime; ValueError when it is neither or has no CUDA provider."""
    import torch

    name = str(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not a device for ONNX Runtime (cpu or cuda)")
    if dev.type == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(f"device {name!r}: this onnxruntime has no CUDA provider (install onnxruntime-gpu, "
                             "or use cpu)")
    return name


class TorchEmbedder:
    """Runs an ``MLSVModel`` (eval mode, no grad) on numpy batches. (B, S), (B, S) -> (B, E)."""

    runtime = "torch"

    def __init__(self, model, device: str = "cpu"):
        self.device = check_device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config

    def __call__(self, input_values: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(input_values).to(self.device)
            m = torch.from_numpy(attention_mask).to(self.device)
            return self.model(x, attention_mask=m).embeddings.float().cpu().numpy()


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, read when asked (not at import)."""
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (a TCP connection to its endpoint within ``timeout`` s), or None.

    A quick check before looking a model up on the hub: offline, huggingface_hub retries for about
    half a minute before failing. Behind a proxy (``HTTPS_PROXY``, ``ALL_PROXY``) nothing is checked:
    the proxy, not this machine, reaches the hub.
    """
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    if not url.hostname:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {constants.ENDPOINT}: {e.strerror or e}"
    return None


def _model_source(src: str, revision: str | None = None, probe_hub: bool = True) -> str:
    """``src`` when it is a local path or a hub id worth asking the hub for; else FileNotFoundError at once.

    Only ``namespace/name`` is looked up on the hub, and only when it is in the local hub cache or
    (``probe_hub``) the hub can be reached; with HF_HUB_OFFLINE set only from the cache. A mistyped
    folder name fails now, not after the hub client's retries.
    """
    if os.path.exists(src):
        return src
    if src.startswith((".", "/", "~")) or src.count("/") > 1 or "\\" in src or src.endswith(".onnx"):
        raise FileNotFoundError(f"model folder not found: {src}")
    if "/" not in src or not all(src.split("/")):
        raise FileNotFoundError(f"model folder not found: {src} (a hub model id is namespace/name)")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(src, "config.json", revision=revision), str)
    except ValueError:  # not a valid repo id
        raise FileNotFoundError(f"model folder not found: {src} (nor a valid hub model id)") from None
    if cached:
        return src
    if _hub_offline():
        raise FileNotFoundError(f"model folder not found: {src} (nor in the local hub cache; HF_HUB_OFFLINE "
                                "is set, so the hub is not asked)")
    why = _hub_unreachable() if probe_hub else None
    if why:
        raise FileNotFoundError(f"model folder not found: {src} (nor in the local hub cache, and the hub "
                                f"cannot be asked: {why})")
    return src


def _config_where(src: str) -> str:
    return os.path.join(src, "config.json") if os.path.isdir(src) else f"{src} (config.json)"


def _check_model_folder(src: str) -> None:
    """FileNotFoundError for a local folder without a config.json (a run's or a training stage's folder
    gets the path of its model/ folder)."""
    if os.path.isdir(src) and not os.path.isfile(os.path.join(src, "config.json")):
        inner = os.path.join(src, "model")
        hint = (f"; a run's or training stage's model is in its model/ folder: {inner}"
                if os.path.isfile(os.path.join(inner, "config.json")) else "")
        raise FileNotFoundError(f"{src}: not a model folder (no config.json){hint}")


def _check_model_config(src: str, revision: str | None = None) -> None:
    """ValueError when ``src``'s config.json is not an mlsv model's, naming the file and what it is.

    OSError (missing or unreadable config.json, hub errors) is left to the caller, who checks a local
    folder first (``_check_model_folder``: transformers reads a folder without one as an empty config).
    """
    from transformers import CONFIG_MAPPING, PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(src, revision=revision)
    model_type = config.get("model_type")
    if model_type != "mlsv":
        what = f"a {model_type!r} model" if model_type else "a config.json without a model_type"
        raise ValueError(f"{src}: {what}, not an mlsv model")
    encoder = config.get("encoder_config")
    if not isinstance(encoder, dict) or not encoder:
        raise ValueError(f"{_config_where(src)}: no encoder_config (not a complete mlsv model config)")
    if not encoder.get("model_type"):
        raise ValueError(f"{_config_where(src)}: encoder_config has no model_type (which encoder family: wavlm, "
                         "hubert, ...)")
    if encoder.get("model_type") not in CONFIG_MAPPING:
        raise ValueError(f"{_config_where(src)}: encoder_config has an unknown model_type "
                         f"{encoder.get('model_type')!r} (not one this transformers version knows)")


def _weights_where(src: str) -> str:
    if os.path.isdir(src):
        for name in ("model.safetensors", "model.safetensors.index.json"):
            if os.path.isfile(os.path.join(src, name)):
                return os.path.join(src, name) if name == "model.safetensors" else f"{src} (a weights shard)"
    return f"{src} (model.safetensors)"


def load_model(src: str | os.PathLike, revision: str | None = None, *, device: str | Any | None = None):
    """An ``MLSVModel`` from a model folder or hub id, on ``device`` when given (see :func:`check_device`).

    Raises:
        FileNotFoundError: ``src`` is neither a model folder nor a model on the hub, naming it.
        ValueError: a model of another type, an incomplete config.json, corrupt or truncated weights,
            or a bad ``device``, naming the file (or the device).
    """
    from safetensors import SafetensorError

    import mlsv.models  # noqa: F401  (registers the Auto classes)
    from mlsv.models import MLSVModel

    dev = check_device(device) if device is not None else None
    src = _model_source(os.fspath(src), revision)
    _check_model_folder(src)
    try:
        _check_model_config(src, revision)
        model = MLSVModel.from_pretrained(src, revision=revision)
    except SafetensorError as e:
        raise ValueError(f"{_weights_where(src)}: corrupt or truncated weights file ({e}); copy or save the "
                         "model again") from None
    except OSError as e:
        what = "not a model folder" if os.path.isdir(src) else "no such model folder, nor a model on the hub"
        raise FileNotFoundError(f"{src}: {what} ({e})") from None
    return model if dev is None else model.to(dev)


def _resolve_file(model: str, filename: str, revision: str | None) -> str:
    """A file of a local model folder or, for a hub id, downloaded with huggingface_hub."""
    # no connection probe: this path leaves reaching the hub to hf_hub_download (retrying ~25 s offline)
    model = _model_source(model, revision, probe_hub=False)
    if os.path.isdir(model):
        path = os.path.join(model, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found" + (
                "; export it first: mlsv export --model MODEL --out MODEL/model.onnx" if filename.endswith(".onnx")
                else ""))
        return path
    from huggingface_hub import hf_hub_download

    return hf_hub_download(model, filename, revision=revision)


# ------------------------------------------------------------------------------------------------
# the verifier


@dataclass
class _Item:
    index: int
    source: Any
    name: str
    length: int  # estimated samples at the model rate (exact for arrays)


class Verifier:
    """Embeds, scores and verifies with a trained mlsv model (PyTorch or ONNX Runtime).

    Args:
        model: an ``MLSVModel``, or an embedder with ``config`` and ``__call__(input_values, attention_mask)``
            returning (B, E) numpy (``TorchEmbedder``, :class:`mlsv.export.OnnxEmbedder`).
        device: torch device for an ``MLSVModel``.
        cohort: AS-norm cohort: an embedding ``.npz`` path or ``EmbeddingTable`` with ``speakers``, made
            with this model. Default: the cohort stored in the model (``cohort_embeddings``, speaker
            means written by ``mlsv evaluate``), if any. Enables the ``asnorm`` and (with a calibration)
            ``calibrated`` scales.
        asnorm_top_k: AS-norm cohort size (default: the evaluation's, else the calibration's, else 600;
            capped at the cohort size).
        batch_seconds: padded audio per batch (batch size x longest item), in seconds.
        use_stored_cohort: False scores a model that stores a cohort without it (cosine scale).
    """

    def __init__(self, model, *, device: str = "cpu", cohort: str | os.PathLike | EmbeddingTable | None = None,
                 asnorm_top_k: int | None = None, batch_seconds: float = 60.0, use_stored_cohort: bool = True):
        self.embedder: Callable[[np.ndarray, np.ndarray], np.ndarray]
        if hasattr(model, "frontend") and hasattr(model, "forward"):
            self.embedder = TorchEmbedder(model, device)
        elif callable(model) and hasattr(model, "config"):
            self.embedder = model
        else:
            raise TypeError(f"model must be an MLSVModel or an embedder with .config, got {type(model).__name__}")
        self.config = self.embedder.config
        if batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be positive, got {batch_seconds}")
        self.batch_seconds = float(batch_seconds)
        self.sampling_rate = int(getattr(self.config, "sampling_rate", 16000) or 16000)
        self.min_samples = min_samples(self.config)
        self.calibrator = self._load_calibrator()
        mean = getattr(self.config, "training_mean", None)
        if mean is None and self.calibrator is not None and self.calibrator.info.get("mean") is not None:
            mean = self.calibrator.info["mean"]
        self.cohort = None
        self.top_k = 0
        table = None
        if asnorm_top_k is not None and asnorm_top_k < 2:
            raise ValueError(f"asnorm_top_k (--asnorm-top-k) must be at least 2, got {asnorm_top_k}")
        if cohort is not None:
            table = cohort if isinstance(cohort, EmbeddingTable) else load_embeddings(cohort)
            if isinstance(cohort, EmbeddingTable):
                check_finite(table, "the AS-norm cohort")
            if table.speakers is None:
                raise ValueError("the AS-norm cohort needs speaker labels ('speakers' in the .npz); "
                                 "embed it with mlsv embed --manifest")
        stored = _stored_cohort(model if table is None and use_stored_cohort else None, self.embedder)
        if table is not None or stored is not None:
            from mlsv.scoring.backend import Cohort, cohort_from_table, embedding_mean

            if table is not None:
                if mean is None:
                    mean = embedding_mean(table.embeddings)
                self.cohort = cohort_from_table(table, np.asarray(mean, np.float32))
            else:  # speaker means, already mean-subtracted by the evaluation that stored them
                self.cohort = Cohort(np.arange(len(stored)).astype(str), stored,
                                     np.zeros(stored.shape[1], np.float32) if mean is None
                                     else np.asarray(mean, np.float32))
            ev = getattr(self.config, "evaluation", None) or {}
            k = int(asnorm_top_k or ev.get("top_k") or (self.calibrator.info.get("top_k") if self.calibrator
                                                         else None) or 600)
            if k > len(self.cohort):
                if asnorm_top_k:
                    warnings.warn(f"AS-norm top_k={k} exceeds the cohort's {len(self.cohort)} speakers; using "
                                  f"{len(self.cohort)}", stacklevel=2)
                k = len(self.cohort)
            if k < 2:
                raise ValueError("the AS-norm cohort needs at least 2 speakers")
            self.top_k = k
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32).reshape(-1)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir_or_id: str | os.PathLike, device: str = "cpu", runtime: str = "torch", *,
                        onnx_path: str | os.PathLike | None = None, revision: str | None = None,
                        **kwargs) -> Verifier:
        """Loads a model folder (``save_pretrained``), a hub id, or (``runtime="onnx"``) an ONNX export.

        Args:
            model_dir_or_id: the model folder or hub id; with ``runtime="onnx"`` also a ``.onnx`` file
                with ``config.json`` beside it.
            device: torch device (``runtime="torch"``); ``"cuda"`` picks the CUDA provider for ONNX.
            runtime: ``"torch"`` or ``"onnx"`` (runs ``model.onnx`` of the folder with onnxruntime).
            onnx_path: the ONNX file when it is not ``model.onnx`` in the folder.
            revision: hub revision.
            kwargs: :class:`Verifier` options (``cohort``, ``asnorm_top_k``, ``batch_seconds``).

        Raises:
            mlsv.export.StaleExportError: (``runtime="onnx"``) the export's report (``<onnx>.json``)
                records other weights than the model's ``model.safetensors``: re-export it. Without
                weights to compare with, or a report without the fingerprint, it warns and loads.
        """
        src = os.fspath(model_dir_or_id)
        if runtime == "torch":
            if src.endswith(".onnx"):
                raise ValueError(f"{src} is an ONNX file; use runtime='onnx'")
            return cls(load_model(src, revision, device=device), device=device, **kwargs)
        if runtime == "onnx":
            from mlsv.export import OnnxEmbedder

            device = _check_onnx_device(device)

            if src.endswith(".onnx"):
                if not os.path.isfile(src):
                    raise FileNotFoundError(f"ONNX file not found: {src}")
                onnx_file, config_src = src, os.path.dirname(os.path.abspath(src))
                if not os.path.isfile(os.path.join(config_src, "config.json")):
                    raise FileNotFoundError(f"no config.json beside {src}; give the model folder and "
                                            "onnx_path=... (or put the file in the model folder)")
            else:
                _check_model_folder(src)
                onnx_file = os.fspath(onnx_path) if onnx_path else _resolve_file(src, "model.onnx", revision)
                config_src = src
            config = _load_config(config_src, revision)
            cohort = _read_stored_cohort(config_src, config, revision)
            embedder = _onnx_embedder(OnnxEmbedder, onnx_file, config_src, config, device)
            _check_onnx_weights(onnx_file, config_src, revision, explicit=onnx_path is not None)
            embedder.cohort_embeddings = cohort
            return cls(embedder, **kwargs)
        raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")

    def _load_calibrator(self):
        cal = getattr(self.config, "calibration", None)
        if not cal:
            return None
        from mlsv.scoring.calibration import QualityCalibrator

        return QualityCalibrator.from_dict(cal)

    # -- embedding --------------------------------------------------------------------------------
    @property
    def embedding_size(self) -> int:
        return int(self.config.embedding_size)

    def load(self, x: AudioInput, sample_rate: int | None = None, name: str | None = None) -> np.ndarray:
        """One input as checked float32 mono samples at the model's rate (see :func:`load_audio`)."""
        return load_audio(x, sample_rate, target_sr=self.sampling_rate, min_length=self.min_samples, name=name)

    def embed(self, inputs: AudioInput | Sequence[AudioInput], sample_rate: int | None = None, *,
              chunk_seconds: float = 0.0, progress: bool | None = None) -> np.ndarray:
        """Embeddings of one input (E,) or of a list of inputs (N, E), float32.

        Inputs are read lazily, sorted by length and batched (``batch_seconds`` of padded audio per
        batch); padding never changes an embedding, so an input gives the same embedding alone or in
        a batch. ``chunk_seconds > 0`` cuts an input longer than that into equal chunks (the rule of
        evaluation, :func:`mlsv.data.loader.chunk_bounds`, so a file gets the embedding a manifest gives
        it) and averages their embeddings (weighted by length). ``progress`` (default: when more than 16
        inputs) shows a progress bar.
        """
        single = not isinstance(inputs, (list, tuple))
        matrix, _ = self._embed([inputs] if single else list(inputs), sample_rate, chunk_seconds, progress)
        return matrix[0] if single else matrix

    def embed_table(self, inputs: Sequence[AudioInput], ids: Sequence[str] | None = None, *,
                    sample_rate: int | None = None, chunk_seconds: float = 0.0,
                    progress: bool | None = None) -> EmbeddingTable:
        """Embeds ``inputs`` into an ``EmbeddingTable`` (ids default to the paths, or ``input #i``).

        Raises:
            ValueError: an id repeats (a table holds one row per id: give each input once), naming it,
                before anything is embedded.
        """
        inputs = list(inputs)
        if ids is None:
            ids = [_input_name(x, i) for i, x in enumerate(inputs)]
        ids = [str(u) for u in ids]
        if len(ids) != len(inputs):
            raise ValueError(f"{len(ids)} ids for {len(inputs)} inputs")
        first: dict[str, int] = {}
        for i, u in enumerate(ids):
            if u in first:
                raise ValueError(f"id {u!r} is given twice (inputs #{first[u]} and #{i}); an embeddings table has "
                                 "one row per id: give each input once")
            first[u] = i
        matrix, durations = self._embed(inputs, sample_rate, chunk_seconds, progress)
        return EmbeddingTable(np.asarray(ids), matrix, durations)

    def _embed(self, inputs: list[AudioInput], sample_rate: int | None, chunk_seconds: float,
               progress: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """(N, E) float32 embeddings and (N,) float32 seconds of ``inputs``, in their order."""
        if not inputs:
            raise ValueError("nothing to embed: no inputs given")
        sample_rate = check_sample_rate(sample_rate)
        if chunk_seconds < 0:
            raise ValueError(f"chunk_seconds must be >= 0, got {chunk_seconds}")
        chunk = int(chunk_seconds * self.sampling_rate)
        if chunk_seconds > 0 and chunk < self.min_samples:
            raise ValueError(f"chunk_seconds={chunk_seconds:g} gives chunks of {chunk} samples; the encoder needs at "
                             f"least {self.min_samples} ({self.min_samples / self.sampling_rate:.4f} s)")
        items = [_Item(i, x, _input_name(x, i), self._estimate_length(x, sample_rate, _input_name(x, i)))
                 for i, x in enumerate(inputs)]
        items.sort(key=lambda it: -it.length)
        budget = int(self.batch_seconds * self.sampling_rate)
        batches: list[list[_Item]] = []
        for it in items:  # longest first: the first item of a batch sets its padded length
            if batches and (len(batches[-1]) + 1) * batches[-1][0].length <= budget:
                batches[-1].append(it)
            else:
                batches.append([it])
        sums = np.zeros((len(inputs), self.embedding_size), dtype=np.float64)
        weights = np.zeros(len(inputs), dtype=np.float64)
        durations = np.zeros(len(inputs), dtype=np.float32)
        show = progress if progress is not None else len(inputs) > 16
        iterator: Iterable[list[_Item]] = batches
        if show:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc="embedding", unit="batch")
        for batch in iterator:
            pieces: list[tuple[int, np.ndarray]] = []
            for it in batch:
                wav = self.load(it.source, sample_rate, it.name)
                durations[it.index] = wav.size / self.sampling_rate
                pieces.extend((it.index, p) for p in self._chunks(wav, chunk_seconds, it.name))
            pieces.sort(key=lambda ip: -ip[1].size)
            start = 0
            while start < len(pieces):  # the batch's estimate can be off (resampling, chunks): re-split
                per = max(1, budget // pieces[start][1].size)
                group = pieces[start:start + per]
                start += per
                for (idx, p), e in zip(group, self._run([p for _, p in group])):
                    sums[idx] += e.astype(np.float64) * p.size
                    weights[idx] += p.size
        return (sums / weights[:, None]).astype(np.float32), durations

    def _estimate_length(self, x: AudioInput, sample_rate: int | None, name: str) -> int:
        if _is_pathlike(x):
            from mlsv.data.audio import audio_info

            frames, sr, _ = audio_info(x)  # raises AudioError for missing / empty / corrupt files
            return max(1, int(frames * self.sampling_rate / sr))
        shape = getattr(x, "shape", None)
        if shape is None:
            raise AudioError(f"{name}: expected a path or an array of samples, got {type(x).__name__}")
        n = max(shape) if len(shape) == 2 else (shape[0] if len(shape) == 1 else 0)
        return max(1, int(n * self.sampling_rate / (sample_rate or self.sampling_rate)))

    def _chunks(self, wav: np.ndarray, chunk_seconds: float, name: str) -> list[np.ndarray]:
        from mlsv.data.loader import chunk_bounds  # evaluation's rule: equal chunks

        bounds = chunk_bounds(wav.size, self.sampling_rate, chunk_seconds)
        shortest = int(np.diff(bounds).min())
        if shortest < self.min_samples:  # equal chunks can be down to half of chunk_seconds
            raise ValueError(f"{name}: chunk_seconds={chunk_seconds:g} cuts it into {len(bounds) - 1} chunks of "
                             f"{shortest}+ samples; the encoder needs at least {self.min_samples} "
                             f"({self.min_samples / self.sampling_rate:.4f} s)")
        return [wav[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _run(self, waves: list[np.ndarray]) -> np.ndarray:
        n = max(w.size for w in waves)
        x = np.zeros((len(waves), n), dtype=np.float32)
        m = np.zeros((len(waves), n), dtype=np.int64)
        for i, w in enumerate(waves):
            x[i, :w.size] = w
            m[i, :w.size] = 1
        return np.asarray(self.embedder(x, m), dtype=np.float32)

    # -- scoring ----------------------------------------------------------------------------------
    @property
    def score_scale(self) -> str:
        """``calibrated`` (calibration + cohort), ``asnorm`` (cohort) or ``cosine``."""
        if self.cohort is not None:
            return "calibrated" if self.calibrator is not None else "asnorm"
        return "cosine"

    def score_embeddings(self, a: np.ndarray, b: np.ndarray, duration_a: float | None = None,
                         duration_b: float | None = None) -> dict[str, float]:
        """Scores two raw embeddings (E,) on every available scale: ``{"cosine", "asnorm"?, "calibrated"?}``.

        ``duration_*`` (seconds) are needed only on the calibrated scale.
        """
        durations = None if duration_a is None or duration_b is None else (duration_a, [duration_b])
        return {k: float(v[0]) for k, v in self._scores_against(a, np.asarray(b).reshape(1, -1), durations).items()}

    def _scores_against(self, a: np.ndarray, tests: np.ndarray, durations: tuple[float, Sequence[float]] | None,
                        a_is_test: bool = False) -> dict[str, np.ndarray]:
        """Scores of one raw embedding ``a`` (E,) against each row of ``tests`` (N, E), on every available
        scale: ``{"cosine", "asnorm"?, "calibrated"?}`` of (N,) float64. ``durations`` (seconds of ``a``,
        and of each row) are needed only on the calibrated scale. ``a`` is each trial's enrolment side,
        or with ``a_is_test`` its test side (the rows are then the enrolments)."""
        from mlsv.scoring.backend import as_norm, cohort_stats, cosine_scores, subtract_mean

        tests = np.asarray(tests, np.float32)
        raw = np.concatenate([np.asarray(a, np.float32).reshape(1, -1), tests.reshape(len(tests), -1)])
        if raw.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings have {raw.shape[1]} dimensions, the model gives {self.embedding_size}")
        x = subtract_mean(raw, self.mean)
        e, t = np.zeros(len(tests), np.int64), np.arange(1, len(tests) + 1)
        if a_is_test:
            e, t = t, e
        out = {"cosine": cosine_scores(x[e], x[t])}
        if self.cohort is None:
            return out
        mu, sigma = cohort_stats(x, self.cohort, self.top_k)
        out["asnorm"] = as_norm(out["cosine"], e, t, mu, sigma)
        if self.calibrator is not None:
            from mlsv.scoring.calibration import quality_measures, trial_features

            if durations is None:
                raise ValueError("calibrated scoring needs both utterances' durations")
            q = quality_measures(raw, np.array([durations[0], *durations[1]], dtype=np.float64))
            out["calibrated"] = self.calibrator.transform(trial_features(out["asnorm"], q, e, t))
        return out

    def _pair_scores(self, a: Enrolment, b: AudioInput, sample_rate: int | None) -> dict[str, float]:
        enroll = _inputs(a)
        matrix, durations = self._embed([*enroll, b], sample_rate, 0.0, False)
        embedding, seconds = _pool(matrix[:-1], durations[:-1])
        return self.score_embeddings(embedding, matrix[-1], seconds, float(durations[-1]))

    def _enrolment(self, enroll: Enrolment, sample_rate: int | None) -> tuple[np.ndarray, float]:
        """The raw embedding and seconds of an enrolment (one recording, or a list of them)."""
        return _pool(*self._embed(_inputs(enroll), sample_rate, 0.0, False))

    def score(self, a: Enrolment, b: AudioInput, sample_rate: int | None = None) -> float:
        """The trial score of two utterances on :attr:`score_scale` (higher: more likely the same speaker);
        ``a`` may be a list of one speaker's recordings (see :meth:`verify`)."""
        return self._pair_scores(a, b, sample_rate)[self.score_scale]

    # -- thresholds and decisions -----------------------------------------------------------------
    def _statistics(self, scale: str) -> dict:
        ev = getattr(self.config, "evaluation", None) or {}
        return dict((ev.get("score_statistics") or {}).get(scale) or {})

    def _config_threshold_scale(self) -> str:
        ev = getattr(self.config, "evaluation", None) or {}
        scale = ev.get("threshold_scale") or ("calibrated" if self.calibrator is not None else "cosine")
        return "calibrated" if scale.startswith("calibrated") else scale

    def threshold(self, far: float | None = None, scale: str | None = None) -> Threshold:
        """The decision threshold on ``scale`` (default :attr:`score_scale`), see the module docstring.

        Raises:
            ValueError: the model stores nothing that gives a threshold on that scale, explaining why
                and what to pass instead.
        """
        scale = scale or self.score_scale
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        stats = self._statistics(scale)
        if far is not None:
            return self._far_threshold(_finite(far, "far (--far)"), scale, stats)
        if stats.get("eer_threshold") is not None:
            name = stats.get("trial_list")
            return Threshold(float(stats["eer_threshold"]), scale,
                             "EER point of the model's evaluation" + (f" on {name}" if name else ""))
        t = getattr(self.config, "threshold", None)
        if t is not None and self._config_threshold_scale() == scale:
            return Threshold(float(t), scale, "the model's stored threshold")
        if scale == "calibrated" and self.calibrator is not None:
            return Threshold(float(self.calibrator.threshold_), scale,
                             f"the calibration's {self.calibrator.threshold} threshold")
        have = []
        if t is not None:
            have.append(f"a threshold of {t:.4g} on the {self._config_threshold_scale()} scale")
        if self.calibrator is not None:
            have.append("a calibration (applies to AS-norm scores: give cohort=...)")
        if have:
            raise ValueError(f"this model stores no decision threshold for {scale} scores (it has "
                             f"{' and '.join(have)}); pass threshold=... (--threshold), or score with the cohort "
                             "the threshold was set on")
        raise ValueError("this model stores no decision threshold (evaluating it with a cohort, or "
                         "mlsv.api.record_score_statistics, stores one); pass threshold=... (--threshold)")

    def _far_threshold(self, far: float, scale: str, stats: Mapping) -> Threshold:
        if not 0.0 < far < 1.0:
            raise ValueError(f"far (--far) must be in (0, 1), got {far}")
        tail = stats.get("nontarget_tail")
        if tail:
            levels = np.asarray(tail["far"], dtype=np.float64)
            values = np.asarray(tail["threshold"], dtype=np.float64)
            ok = np.flatnonzero(levels <= far * (1 + 1e-9))
            n = int(stats.get("n_nontarget", 0))
            if ok.size == 0:
                raise ValueError(f"far={far:g} is below what the stored {scale} non-target scores can measure "
                                 f"({n} trials: lowest FAR {levels.min():.2g})")
            i = ok[np.argmax(levels[ok])]
            return Threshold(float(values[i]), scale, f"FAR <= {levels[i]:.3g} on {n} stored non-target "
                             f"{scale} scores" + (f" of {stats['trial_list']}" if stats.get("trial_list") else ""))
        if scale == "calibrated":
            return Threshold(math.log(1.0 / far), scale,
                             f"log(1/far) for calibrated LLRs: guarantees FAR <= {far:g} (an upper bound)")
        t = getattr(self.config, "threshold", None)
        what = (f"only a threshold ({t:.4g}, the EER point on the {self._config_threshold_scale()} scale)"
                if t is not None else "no score distribution")
        raise ValueError(
            f"far={far:g} needs the non-target {scale} score distribution, and this model stores {what}: a "
            "threshold fixes one operating point and says nothing about the false-accept rate elsewhere. "
            "Re-evaluate the model to store its score statistics (mlsv.api.record_score_statistics), "
            "score on the calibrated scale (a model calibration and cohort=...), or pass threshold=...")

    def verify(self, a: Enrolment, b: AudioInput, *, far: float | None = None, threshold: float | None = None,
               sample_rate: int | None = None) -> VerificationResult:
        """Same speaker or not: score the pair and compare with the threshold (``score >= threshold``).

        Args:
            a, b: the two utterances (paths or sample arrays). ``a`` may be a list (or tuple) of one
                speaker's recordings: their embeddings are averaged, weighted by duration (the rule for
                a long file's chunks), and their durations add up.
            far: target false-accept rate instead of the model's EER-point threshold.
            threshold: an explicit, finite threshold on :attr:`score_scale` (not with ``far``).
            sample_rate: the rate of array inputs.

        Raises:
            ValueError: both ``far`` and ``threshold``, a non-finite threshold, a ``far`` outside (0, 1),
                or a ``sample_rate`` that is not a positive integer, before any audio is read.
        """
        scale = self.score_scale
        th = self._decision_threshold(far, threshold, scale)  # fails before any audio is read
        sample_rate = check_sample_rate(sample_rate)
        scores = self._pair_scores(a, b, sample_rate)
        s = scores[scale]
        return VerificationResult(score=s, threshold=th.value, decision=bool(s >= th.value), scale=scale,
                                  threshold_source=th.source, cosine=scores["cosine"])

    def _decision_threshold(self, far: float | None, threshold: float | None, scale: str) -> Threshold:
        """The threshold of ``verify`` and ``track``: a given one, one for ``far``, or the model's."""
        if far is not None and threshold is not None:
            raise ValueError("give far (--far) or threshold (--threshold), not both: each sets the threshold")
        if threshold is not None:
            return Threshold(_finite(threshold, "threshold (--threshold)"), scale, "given by the caller")
        return self.threshold(far=far, scale=scale)

    # -- identification ---------------------------------------------------------------------------
    def identify(self, test: AudioInput, speakers: Mapping[str, Enrolment] | EmbeddingTable, *,
                 far: float | None = None, threshold: float | None = None,
                 sample_rate: int | None = None) -> Identification:
        """Which of the enrolled ``speakers`` is speaking in ``test``, or none of them (open set).

        Each enrolled speaker is scored against ``test`` as :meth:`verify` would score them (the speaker
        as the enrolment side); the best one is the answer when its score reaches the threshold, else
        the speaker is unknown.

        Args:
            speakers: name -> recording(s) (see :meth:`verify`), or an embeddings table with speakers
                (``mlsv embed --manifest`` of an enrolment manifest): each speaker's rows are pooled as
                several recordings are (duration-weighted mean, durations added).
        """
        scale = self.score_scale
        th = self._decision_threshold(far, threshold, scale)
        sample_rate = check_sample_rate(sample_rate)
        names, matrix, seconds = self._speaker_set(speakers, sample_rate)
        test_matrix, test_seconds = self._embed([test], sample_rate, 0.0, False)
        scores = self._scores_against(test_matrix[0], matrix, (float(test_seconds[0]), seconds),
                                      a_is_test=True)[scale]
        order = np.argsort(-scores, kind="stable")
        best = float(scores[order[0]])
        return Identification(speaker=names[order[0]] if best >= th.value else None, score=best,
                              threshold=th.value, scale=scale, threshold_source=th.source,
                              ranking=[(names[i], float(scores[i])) for i in order])

    def _speaker_set(self, speakers: Mapping[str, Enrolment] | EmbeddingTable,
                     sample_rate: int | None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Enrolled speakers as (names, (S, E) raw embeddings, (S,) seconds): all recordings embedded in
        one batched pass, or a table's rows, pooled per speaker."""
        if isinstance(speakers, EmbeddingTable):
            if speakers.speakers is None:
                raise ValueError("the enrolled speakers' table has no speaker labels; embed an enrolment manifest "
                                 "with speakers (mlsv embed --manifest)")
            if speakers.embeddings.shape[1] != self.embedding_size:
                raise ValueError(f"the enrolled speakers' embeddings have {speakers.embeddings.shape[1]} dimensions, "
                                 f"the model gives {self.embedding_size}")
            if not len(speakers.ids):
                raise ValueError("the enrolled speakers' table is empty")
            owners, matrix, durations = speakers.speakers.tolist(), speakers.embeddings, speakers.durations
        else:
            if not isinstance(speakers, Mapping) or not speakers:
                raise ValueError("speakers must be a non-empty mapping of name -> recording(s), or an embeddings "
                                 "table with speakers")
            owners, inputs = [], []
            if len({str(name) for name in speakers}) < len(speakers):
                raise ValueError(f"speaker names repeat as text ({', '.join(map(repr, speakers))}): each speaker "
                                 "needs a name of its own")
            for name, enrolment in speakers.items():
                recordings = _inputs(enrolment)
                owners += [str(name)] * len(recordings)
                inputs += recordings
            matrix, durations = self._embed(inputs, sample_rate, 0.0, False)
        pooled = pool_rows(owners, matrix, durations)
        return pooled.ids.tolist(), pooled.embeddings, pooled.durations

    # -- sliding windows --------------------------------------------------------------------------
    def embed_windows(self, x: AudioInput, *, window: float = 1.5, hop: float | None = None,
                      sample_rate: int | None = None, progress: bool | None = None) -> WindowEmbeddings:
        """Embeddings of a recording's sliding windows (for where a voice is in it, or for clustering).

        Windows of ``window`` seconds start every ``hop`` seconds (default ``window / 2``); when the
        last one stops short of the end, one more window ends exactly at the end, so every window has
        the same length and (with ``hop <= window``) every sample is covered. A recording shorter than
        ``window`` is one window. Windows are cut and embedded batch by batch; each gets the embedding
        the same samples would get alone (``embed(samples[start:end])``).

        Raises:
            ValueError: ``window`` shorter than the encoder's minimum, or ``hop`` not positive, before
                any audio is read.
            AudioError: the recording is missing, empty, corrupt, too short or silent, naming it.
        """
        size, step = self._window_sizes(window, hop)
        return self._windows(x, size, step, check_sample_rate(sample_rate), progress)

    def _windows(self, x: AudioInput, size: int, step: int, sample_rate: int | None,
                 progress: bool | None) -> WindowEmbeddings:
        wav = self.load(x, sample_rate, _input_name(x))
        size = min(size, wav.size)
        starts = window_starts(wav.size, size, step)
        embeddings = self._embed_windows(np.lib.stride_tricks.sliding_window_view(wav, size), starts, progress)
        rate = float(self.sampling_rate)
        return WindowEmbeddings(starts / rate, (starts + size) / rate, embeddings)

    def _embed_windows(self, frames: np.ndarray, starts: np.ndarray, progress: bool | None = False) -> np.ndarray:
        """(N, E) embeddings of the windows ``frames[starts]`` (``frames``: a (S - W + 1, W) sliding view),
        cut and embedded in batches of ``batch_seconds``, so only one batch is ever copied."""
        per = max(1, int(self.batch_seconds * self.sampling_rate) // frames.shape[1])
        groups: Iterable[int] = range(0, len(starts), per)
        if progress if progress is not None else len(starts) > 16 * per:
            from tqdm.auto import tqdm

            groups = tqdm(groups, desc="windows", unit="batch", total=-(-len(starts) // per))
        parts = []
        for i in groups:
            part = np.ascontiguousarray(frames[starts[i:i + per]], dtype=np.float32)
            parts.append(np.asarray(self.embedder(part, np.ones(part.shape, np.int64)), dtype=np.float32))
        return np.concatenate(parts)

    def _window_sizes(self, window: Any, hop: Any) -> tuple[int, int]:
        """(window, hop) in samples, checked: a window the encoder can embed, a positive hop (default half
        a window)."""
        size = self._window_samples(window, "window")
        return size, self._window_samples(_finite(window, "window") / 2 if hop is None else hop, "hop", minimum=1)

    def _window_samples(self, seconds: Any, what: str, minimum: int | None = None) -> int:
        value = _finite(seconds, what)
        samples = int(round(value * self.sampling_rate))
        least = self.min_samples if minimum is None else minimum
        if value <= 0 or samples < least:
            raise ValueError(f"{what} must be at least {least / self.sampling_rate:.4g} s"
                             f"{' (the encoder needs ' + str(least) + ' samples)' if minimum is None else ''}, "
                             f"got {seconds}")
        return samples

    def track(self, enroll: Enrolment, recording: AudioInput, *, window: float = 1.5, hop: float | None = None,
              far: float | None = None, threshold: float | None = None,
              sample_rate: int | None = None) -> SpeakerTrack:
        """Where the enrolled speaker speaks in a recording: ``enroll`` scored against each of the
        recording's sliding windows (:meth:`embed_windows`), on :attr:`score_scale`, each window
        compared with the threshold as in :meth:`verify`.

        The model's threshold was chosen on whole utterances; on the calibrated scale a window's
        duration enters its score, on the others short windows score lower, so a threshold for the
        windows' length (``threshold=`` or ``far=``) may suit them better.
        """
        scale = self.score_scale
        th = self._decision_threshold(far, threshold, scale)
        size, step = self._window_sizes(window, hop)
        sample_rate = check_sample_rate(sample_rate)
        embedding, seconds = self._enrolment(enroll, sample_rate)
        windows = self._windows(recording, size, step, sample_rate, None)
        scores = self._scores_against(embedding, windows.embeddings, (seconds, windows.ends - windows.starts))[scale]
        return SpeakerTrack(windows.starts, windows.ends, np.asarray(scores, np.float64), th.value, scale, th.source)

    def online(self, enroll: Enrolment, *, window: float = 1.5, hop: float | None = None, far: float | None = None,
               threshold: float | None = None, sample_rate: int | None = None) -> OnlineTracker:
        """``track`` for a live stream: an :class:`~mlsv.tracking.OnlineTracker` whose ``push(samples)``
        returns each window's score and decision as soon as its last sample arrives.

        >>> tracker = v.online("enroll.wav", window=1.5, hop=0.5)
        >>> for chunk in microphone():                       # float32 samples at the model's rate
        ...     for w in tracker.push(chunk):
        ...         print(w.start, w.end, w.score, w.decision)
        >>> tracker.flush()                                   # the last window, at the end of the stream

        ``sample_rate`` is the rate of the stream (and of an array ``enroll``); default: the model's. Other
        rates are resampled as the samples come.
        """
        scale = self.score_scale
        th = self._decision_threshold(far, threshold, scale)
        size, step = self._window_sizes(window, hop)
        sample_rate = check_sample_rate(sample_rate)
        embedding, seconds = self._enrolment(enroll, sample_rate)
        return OnlineTracker(self, embedding, seconds, size, step, th, sample_rate or self.sampling_rate)

    def __repr__(self) -> str:
        runtime = getattr(self.embedder, "runtime", type(self.embedder).__name__)
        return (f"Verifier(runtime={runtime!r}, embedding_size={self.embedding_size}, "
                f"sampling_rate={self.sampling_rate}, scale={self.score_scale!r})")


def _onnx_embedder(factory, onnx_file: str, model_src: str, config, device: str):
    """``factory(onnx_file, ...)`` (an ``OnnxEmbedder``), with ONNX Runtime's load errors (a corrupt,
    truncated or non-ONNX file) as a ValueError naming the file and the command that re-exports it."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    load_errors = tuple(getattr(ort_errors, n) for n in ("InvalidProtobuf", "InvalidGraph", "NoModel", "Fail",
                                                         "InvalidArgument", "NotImplemented")
                        if isinstance(getattr(ort_errors, n, None), type))
    try:
        return factory(onnx_file, config=config, device=device)
    except load_errors as e:
        folder = model_src if os.path.isdir(model_src) else "MODEL_DIR"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{onnx_file}: not a loadable ONNX model, corrupt or truncated ({first}); re-export it: "
                         f"mlsv export --model {folder} --out {onnx_file}") from None


def _inputs(enroll: Enrolment) -> list:
    """An enrolment's recordings as a list (a list or tuple holds several)."""
    inputs = list(enroll) if isinstance(enroll, (list, tuple)) else [enroll]
    if not inputs:
        raise ValueError("an empty enrolment: give one recording, or a list of one speaker's recordings")
    return inputs


def _pool(matrix: np.ndarray, durations: np.ndarray) -> tuple[np.ndarray, float]:
    """Several recordings of one speaker as one (``pool_rows``): (E,) embedding and total seconds."""
    one = pool_rows(np.zeros(len(matrix), np.int64), matrix, durations)
    return one.embeddings[0], float(one.durations[0])


def _finite(x: Any, what: str) -> float:
    """``x`` as a finite float; ValueError naming ``what`` for NaN, infinities, booleans and non-numbers."""
    try:
        if isinstance(x, (bool, np.bool_)):
            raise TypeError
        value = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}")
    return value


def _stored_cohort(model, embedder) -> np.ndarray | None:
    """The (C, E) AS-norm cohort a model stores (``cohort_embeddings`` buffer), or None."""
    if model is None:
        return None
    buf = getattr(model, "cohort_embeddings", None)
    if buf is None:
        buf = getattr(embedder, "cohort_embeddings", None)
    if buf is None:
        return None
    arr = buf.detach().cpu().numpy() if hasattr(buf, "detach") else np.asarray(buf)
    return arr.astype(np.float32) if arr.ndim == 2 and arr.shape[0] > 0 else None


def _read_stored_cohort(src: str, config, revision: str | None = None) -> np.ndarray | None:
    """``cohort_embeddings`` from a model folder's (or hub repo's) ``model.safetensors``, for ONNX runs."""
    if not int(getattr(config, "cohort_size", 0) or 0):
        return None
    from safetensors import safe_open

    with safe_open(_resolve_file(src, "model.safetensors", revision), framework="numpy") as f:
        return f.get_tensor("cohort_embeddings") if "cohort_embeddings" in f.keys() else None


def _check_onnx_weights(onnx_file: str, src: str, revision: str | None, explicit: bool = False) -> None:
    """Refuses an ONNX export made from other weights than the model's; warns when it cannot tell.

    ``src`` is the model folder (or hub id) whose config is used. A hub model's export is compared with
    the weights only when they are in the local cache (they are downloaded anyway for a stored
    cohort): the check never downloads the weights for itself.
    """
    from mlsv.export import WEIGHTS_INDEX_NAME, WEIGHTS_NAME, check_export_weights

    report = onnx_file + ".json"
    if os.path.isdir(src):
        folder = Path(src)
        weights = next((folder / n for n in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME) if (folder / n).is_file()), None)
    else:  # a hub id
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError

        if not explicit and not os.path.isfile(report):
            try:
                report = _resolve_file(src, "model.onnx.json", revision)
            except EntryNotFoundError:
                pass  # an export without a report: check_export_weights says so
        cached = try_to_load_from_cache(src, WEIGHTS_NAME, revision=revision)
        if not isinstance(cached, str):
            import logging

            logging.getLogger(__name__).info(
                "%s: the weights of %s are not downloaded, so the export is not compared with them "
                "(push_to_hub compares them before uploading)", onnx_file, src)
            return
        weights = Path(cached)
    reason = check_export_weights(onnx_file, weights, report_file=report, model_ref=src)
    if reason is not None:
        warnings.warn(f"{reason}; loading it unchecked", stacklevel=3)


def _load_config(src: str, revision: str | None = None):
    import mlsv.models  # noqa: F401
    from mlsv.models import MLSVConfig

    _check_model_folder(src)
    _check_model_config(src, revision)
    return MLSVConfig.from_pretrained(src, revision=revision)


# ------------------------------------------------------------------------------------------------
# writing what thresholds need


def record_score_statistics(config, scores: Mapping[str, np.ndarray], labels: np.ndarray, *,
                            trial_list: str | None = None, final: str | None = None) -> dict:
    """Stores, per score scale, the EER threshold and the non-target tail in ``config.evaluation``.

    Call it after evaluating on a (validation) trial list, before ``save_pretrained``, so that the
    Verifier can decide at the EER point or at any FAR down to ``1 / n_nontarget``. It also sets
    ``config.threshold`` to the final scale's EER threshold and records that scale in
    ``config.evaluation["threshold_scale"]``.

    Args:
        config: an ``MLSVConfig`` (changed in place).
        scores: ``{"cosine": (T,), "asnorm": (T,), "calibrated": (T,)}``, any subset.
        labels: (T,) 0/1.
        trial_list: the trial list's name, for the record.
        final: the scale ``config.threshold`` refers to (default: the last present in pipeline order).

    Returns:
        The ``score_statistics`` dict written.
    """
    from mlsv.scoring.metrics import eer

    y = np.asarray(labels).reshape(-1).astype(np.int64)
    stats: dict[str, dict] = {}
    for scale in SCALES:
        if scale not in scores:
            continue
        s = np.asarray(scores[scale], dtype=np.float64).reshape(-1)
        if s.shape != y.shape:
            raise ValueError(f"{scale}: {s.size} scores for {y.size} labels")
        eer_pct, thr = eer(s, y)
        non = np.sort(s[y == 0])[::-1]
        levels, values = [], []
        for f in _FAR_GRID:
            if f * len(non) < 1:
                continue  # a FAR below 1 / n cannot be measured
            allowed = int(math.floor(f * len(non)))  # non-targets at or above the threshold
            t = float(np.nextafter(non[min(allowed, len(non) - 1)], np.inf))
            levels.append(f)
            values.append(t)
        stats[scale] = {"eer": float(eer_pct), "eer_threshold": float(thr), "n_target": int((y == 1).sum()),
                        "n_nontarget": int(len(non)), "nontarget_tail": {"far": levels, "threshold": values}}
        if trial_list:
            stats[scale]["trial_list"] = trial_list
    if not stats:
        raise ValueError(f"no score scale among {sorted(scores)}; expected some of {SCALES}")
    final = final or [s for s in SCALES if s in stats][-1]
    evaluation = dict(getattr(config, "evaluation", None) or {})
    evaluation["score_statistics"] = stats
    evaluation["threshold_scale"] = final
    config.evaluation = evaluation
    config.threshold = stats[final]["eer_threshold"]
    return stats
