"""The ``speaker-verification`` pipeline: embeddings of recordings, and scores and decisions for pairs of them.

Part of the model code saved beside a model: ``MLSVModel.save_pretrained`` records it in ``config.json``
(``custom_pipelines``), so that where only transformers is installed

>>> from transformers import pipeline
>>> verify = pipeline("speaker-verification", model="user/mlsv-model", trust_remote_code=True)
>>> verify("enroll.wav", "test.flac")          # a pair: score and decision on the model's own scale
{'score': 0.71, 'threshold': 0.43, 'decision': True, 'label': 'same speaker', 'scale': 'cosine', ...}
>>> verify("a.wav")["embedding"]               # one recording: its (E,) embedding
>>> verify([("a.wav", "b.wav"), ("a.wav", "c.wav")])   # a batch of pairs (or of recordings)

A recording is a path (read with soundfile), encoded bytes, a ``{"array": samples, "sampling_rate": rate}``
dict (``"raw"`` also names the samples, as in transformers' audio pipelines), a decoder with
``get_all_samples()`` (what ``datasets`` gives for an audio column), or a numpy array / torch tensor of
samples at ``sampling_rate=`` (default: the model's rate). Any rate is resampled with soxr; channels are
averaged. A pair is a tuple ``(enroll, test)``, or two arguments; the enrolment may be a list of one
speaker's recordings (their embeddings averaged, weighted by duration).

Scores are the ones ``mlsv verify`` gives (``Verifier.verify``): cosine after subtracting the model's
mean, AS-norm against the cohort stored with the weights, and the stored QMF calibration to a
log-likelihood ratio, whichever the model stores last; the threshold is the model's own on that scale
(``threshold=`` overrides it). Imports only numpy, torch, transformers and its sibling modules (soundfile
and soxr when a file is read or a rate converted).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .frontend import min_samples
from .scoring_mlsv import (
    cosine_scores,
    estimate_snr,
    normalized_rows,
    outside_reasons,
    qmf_llr,
    quality_measures,
    subtract_mean,
    topk_moments,
    trial_features,
)

__all__ = ["CUSTOM_PIPELINES", "TASK", "SpeakerVerificationPipeline"]

TASK = "speaker-verification"
_ENTRY = {"impl": "pipeline_mlsv.SpeakerVerificationPipeline", "pt": ["AutoModel"], "tf": [], "type": "audio"}
#: The ``custom_pipelines`` entry of a saved model's ``config.json`` (transformers' format for a pipeline that
#: travels with the model code). ``feature-extraction`` too: the Hub has no speaker-verification task, and its
#: "Use this model" snippet for the card's ``pipeline_tag: feature-extraction`` is
#: ``pipeline("feature-extraction", model=REPO, trust_remote_code=True)``, which then gives this pipeline
#: (transformers' own feature-extraction pipeline needs a tokenizer, which an audio model has not).
CUSTOM_PIPELINES = {TASK: _ENTRY, "feature-extraction": _ENTRY}
#: Score scales in pipeline order, and their spellings in models saved by earlier versions.
SCALES = ("cosine", "asnorm", "calibrated")
_LEGACY_SCALES = {"calibrated_llr": "calibrated"}
MAX_CHANNELS = 8
SILENCE_PEAK = 1e-4  # the peak below which mlsv refuses a recording as silent (mlsv.data.audio)


class SpeakerVerificationPipeline(Pipeline):
    """Embeds recordings and verifies pairs with an mlsv model (see the module docstring).

    Call parameters: ``sampling_rate`` (the rate of bare arrays), ``threshold`` (a decision threshold on
    the model's score scale instead of its stored one).
    """

    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.eval()
        config = self.model.config
        self.sampling_rate = int(getattr(config, "sampling_rate", 16000) or 16000)
        self.min_samples = min_samples(config.encoder_config)
        self.scoring = StoredScoring(config, getattr(self.model, "cohort_embeddings", None))

    # -- transformers' Pipeline protocol ------------------------------------------------------------
    def __call__(self, inputs, *args, **kwargs):
        """``pipe(recording)``, ``pipe(enroll, test)``, ``pipe((enroll, test))`` or a list of either."""
        if len(args) > 1:
            raise TypeError(f"give one recording, or a pair (two recordings); got {1 + len(args)} positional inputs")
        if args:
            inputs = (inputs, args[0])
        if isinstance(inputs, list) and not inputs:
            raise ValueError("nothing to embed or verify: an empty list")
        if (kwargs.get("batch_size") or self._batch_size or 1) > 1:
            raise ValueError(
                "batch_size is not supported: a list of recordings or pairs is run item by item (a pair's "
                "recordings in one padded batch); leave batch_size unset"
            )
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, sampling_rate=None, threshold=None, **kwargs):
        if kwargs:
            raise TypeError(f"unknown speaker-verification parameters: {', '.join(sorted(kwargs))}")
        preprocess = {} if sampling_rate is None else {"sampling_rate": _rate(sampling_rate, "sampling_rate")}
        postprocess = {} if threshold is None else {"threshold": _finite(threshold, "threshold")}
        return preprocess, {}, postprocess

    def preprocess(self, inputs, sampling_rate: int | None = None) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(inputs, tuple):
            if len(inputs) != 2:
                raise ValueError(f"a pair is (enroll, test): got a tuple of {len(inputs)} items")
            enroll, test = inputs
            if isinstance(test, (int, float)) and not isinstance(test, bool):
                raise ValueError(
                    "a (samples, rate) tuple is not a recording: give {'array': samples, 'sampling_rate': rate}, "
                    "or the samples with sampling_rate=..."
                )
            enrolls = list(enroll) if isinstance(enroll, (list, tuple)) else [enroll]
            if not enrolls:
                raise ValueError("an empty enrolment: give one recording, or a list of one speaker's recordings")
            names = [f"enroll #{i}" if len(enrolls) > 1 else "enroll" for i in range(len(enrolls))] + ["test"]
            waves = [self._load(x, sampling_rate, n) for x, n in zip([*enrolls, test], names)]
            kind = "pair"
        else:
            waves, kind = [self._load(inputs, sampling_rate, "input")], "embedding"
        # one padded batch, longest first (mlsv's batching rule): padding never changes an embedding
        order = sorted(range(len(waves)), key=lambda i: -waves[i].size)
        n = waves[order[0]].size
        x = torch.zeros(len(waves), n, dtype=torch.float32)
        mask = torch.zeros(len(waves), n, dtype=torch.int64)
        for row, i in enumerate(order):
            x[row, : waves[i].size] = torch.from_numpy(waves[i])
            mask[row, : waves[i].size] = 1
        return {
            "input_values": x,
            "attention_mask": mask,
            "order": order,
            "lengths": [w.size for w in waves],
            "snr": [estimate_snr(w, self.sampling_rate) for w in waves],
            "kind": kind,
        }

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        x = model_inputs["input_values"].to(self.model.dtype)  # a model loaded in another dtype (dtype=...)
        out = self.model(x, attention_mask=model_inputs["attention_mask"])
        emb = out.embeddings.float()
        rows = torch.empty_like(emb)
        rows[torch.as_tensor(model_inputs["order"])] = emb
        return {"embeddings": rows, **{k: model_inputs[k] for k in ("lengths", "snr", "kind")}}

    def postprocess(  # type: ignore[override]
        self, model_outputs: dict[str, Any], threshold: float | None = None
    ) -> dict[str, Any]:
        matrix = model_outputs["embeddings"].cpu().numpy()
        lengths = np.asarray(model_outputs["lengths"], dtype=np.float64)
        # mlsv's float32 seconds, and its length-weighted mean of a recording's pieces (here one piece)
        seconds = (lengths / self.sampling_rate).astype(np.float32)
        embeddings = ((matrix.astype(np.float64) * lengths[:, None]) / lengths[:, None]).astype(np.float32)
        snr = np.asarray(model_outputs["snr"], dtype=np.float32)  # mlsv's float32 table column
        if model_outputs["kind"] == "embedding":
            return {"embedding": embeddings[0], "duration": float(seconds[0])}
        enroll, enroll_seconds, enroll_snr = pool(embeddings[:-1], seconds[:-1], snr[:-1])
        return self.scoring.verify(
            enroll, embeddings[-1], enroll_seconds, float(seconds[-1]), threshold, enroll_snr, float(snr[-1])
        )

    # -- audio ----------------------------------------------------------------------------------
    def _load(self, x: Any, sampling_rate: int | None, name: str) -> np.ndarray:
        """One recording as float32 mono samples at the model's rate, checked as mlsv checks them."""
        if isinstance(x, (str, os.PathLike)):
            name = os.fspath(x)
            samples, rate = _read_file(x, name)
        elif isinstance(x, (bytes, bytearray)):
            samples, rate = _read_file(x, name)
        elif isinstance(x, Mapping):
            key = next((k for k in ("array", "raw") if k in x), None)
            if key is None or "sampling_rate" not in x:
                raise ValueError(
                    f"{name}: a dict recording needs 'array' (or 'raw') samples and their 'sampling_rate', "
                    f"got keys {sorted(x)}"
                )
            samples, rate = _array_samples(x[key], name), _rate(x["sampling_rate"], f"{name}: sampling_rate")
        elif hasattr(x, "get_all_samples"):  # a torchcodec AudioDecoder (datasets' audio column)
            decoded = x.get_all_samples()
            samples, rate = _array_samples(decoded.data, name), _rate(decoded.sample_rate, f"{name}: sample rate")
        else:
            samples, rate = _array_samples(x, name), sampling_rate or self.sampling_rate
        if samples.size == 0:
            raise ValueError(f"{name}: empty audio (0 samples)")
        if not np.isfinite(samples).all():
            raise ValueError(f"{name}: audio contains NaN or infinite samples")
        if rate != self.sampling_rate:
            samples = _resample(samples, rate, self.sampling_rate)
        if samples.size < self.min_samples:
            raise ValueError(
                f"{name}: too short ({samples.size / self.sampling_rate * 1000:.1f} ms); the encoder needs at "
                f"least {self.min_samples / self.sampling_rate * 1000:.1f} ms"
            )
        peak = float(np.abs(samples).max())
        if peak < SILENCE_PEAK:
            raise ValueError(
                f"{name}: silent audio (peak amplitude {peak:.2e}, below {SILENCE_PEAK:g}); no voice to embed or verify"
            )
        return samples


class StoredScoring:
    """Scores raw embeddings as ``mlsv.inference.scorer.Scorer`` does with what a model stores: its mean, its
    AS-norm cohort (``cohort_embeddings``, speaker means already mean-subtracted) and its calibration, and
    decides against the model's threshold on that scale; a calibrated trial outside the calibration's
    conditions is decided on the AS-norm scale, or not at all, as ``Verifier.verify`` does."""

    def __init__(self, config, cohort: torch.Tensor | None):
        self.config = config
        evaluation = dict(getattr(config, "evaluation", None) or {})
        self.evaluation = evaluation
        self.calibration = dict(getattr(config, "calibration", None) or {}) or None
        if self.calibration is not None and self.calibration.get("format") != "mlsv-qmf-calibration":
            raise ValueError("the model's calibration is not an mlsv calibration ('format': 'mlsv-qmf-calibration')")
        mean = getattr(config, "training_mean", None)
        info = (self.calibration or {}).get("info") or {}
        if mean is None and self.calibration is not None and info.get("mean") is not None:
            mean = info["mean"]
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32).reshape(-1)
        vectors = None if cohort is None else cohort.detach().cpu().numpy().astype(np.float32)
        self.cohort = vectors if vectors is not None and vectors.ndim == 2 and len(vectors) > 0 else None
        self.top_k = 0
        if self.cohort is not None:
            k = int(evaluation.get("top_k") or (info.get("top_k") if self.calibration else None) or 600)
            self.top_k = min(k, len(self.cohort))
            if self.top_k < 2:
                raise ValueError("the AS-norm cohort needs at least 2 speakers")

    @property
    def scale(self) -> str:
        """``calibrated`` (calibration + cohort), ``asnorm`` (cohort) or ``cosine``."""
        if self.cohort is not None:
            return "calibrated" if self.calibration is not None else "asnorm"
        return "cosine"

    def scores(
        self,
        a: np.ndarray,
        b: np.ndarray,
        seconds_a: float,
        seconds_b: float,
        snr_a: float = float("nan"),
        snr_b: float = float("nan"),
    ) -> tuple[dict[str, float], str | None]:
        """Two raw embeddings (E,) scored on every scale the model stores what it needs for, and why the trial
        lies outside the calibration's conditions (None: inside, or no calibration)."""
        outside = None
        raw = np.stack([np.asarray(a, np.float32), np.asarray(b, np.float32)])
        x = subtract_mean(raw, self.mean)
        e, t = np.array([0]), np.array([1])
        cosine = cosine_scores(x[e], x[t])
        out = {"cosine": cosine}
        if self.cohort is not None:
            device = torch.device("cpu")
            with torch.inference_mode():
                sim = normalized_rows(x, device) @ normalized_rows(self.cohort, device).T
                mu, sigma = topk_moments(sim, self.top_k)
            out["asnorm"] = 0.5 * ((cosine - mu[e]) / sigma[e] + (cosine - mu[t]) / sigma[t])
            if self.calibration is not None:
                cal = self.calibration
                q = quality_measures(
                    raw, np.array([seconds_a, seconds_b], dtype=np.float64), np.array([snr_a, snr_b], np.float64)
                )
                features = trial_features(out["asnorm"], q, e, t)
                if any(f not in features or not np.isfinite(features[f]).all() for f in cal["features"]):
                    raise ValueError("the calibration's features need both recordings' SNR estimates")
                matrix = np.stack([np.asarray(features[f], np.float64).reshape(-1) for f in cal["features"]], axis=1)
                out["calibrated"] = qmf_llr(
                    matrix,
                    np.asarray(cal["center"], np.float64),
                    np.asarray(cal["scale"], np.float64),
                    np.asarray(cal["coef"], np.float64),
                    float(cal["intercept"]),
                    float(cal["train_prior"]),
                )
                outside = outside_reasons(cal.get("conditions") or {}, features)[0]
        return {k: float(v[0]) for k, v in out.items()}, outside

    def threshold(self, scale: str) -> tuple[float, str]:
        """The model's decision threshold on ``scale`` and where it comes from: the EER point stored for that
        scale, else the model's threshold when it is on that scale, else (calibrated) the calibration's."""
        stats = {_LEGACY_SCALES.get(k, k): v for k, v in (self.evaluation.get("score_statistics") or {}).items()}
        if stats.get(scale):
            name = stats[scale].get("trial_list")
            return float(stats[scale]["eer_threshold"]), "EER point of the model's evaluation" + (
                f" on {name}" if name else ""
            )
        stored = getattr(self.config, "threshold", None)
        recorded = self.evaluation.get("threshold_scale")
        default = _LEGACY_SCALES.get(recorded, recorded) or ("calibrated" if self.calibration else "cosine")
        if stored is not None and default == scale:
            return float(stored), "the model's stored threshold"
        if scale == "calibrated" and self.calibration is not None:
            return float(self.calibration["threshold"]), (
                f"the calibration's {self.calibration.get('threshold_mode', '')} threshold"
            )
        raise ValueError(
            f"this model stores no decision threshold for {scale} scores; pass threshold=... (a threshold on "
            f"the {scale} scale)"
        )

    def verify(
        self,
        a: np.ndarray,
        b: np.ndarray,
        seconds_a: float,
        seconds_b: float,
        threshold: float | None = None,
        snr_a: float = float("nan"),
        snr_b: float = float("nan"),
    ) -> dict[str, Any]:
        """Score, threshold and decision (``score >= threshold``: the same speaker) of a pair, as mlsv's
        ``VerificationResult.to_dict()``: a calibrated trial outside the calibration's conditions gets the
        AS-norm score and threshold, or no decision (``decision`` None) when there is no AS-norm threshold."""
        scale = self.scale
        value, source = (threshold, "given by the caller") if threshold is not None else self.threshold(scale)
        scores, outside = self.scores(a, b, seconds_a, seconds_b, snr_a, snr_b)
        decided: float | None = value
        if scale == "calibrated" and outside is not None:
            scale = "asnorm"
            if threshold is not None:
                decided, source = None, "no AS-norm threshold: the threshold given applies to calibrated LLRs"
            else:
                try:
                    decided, source = self.threshold(scale)
                except ValueError as e:
                    decided, source = None, f"no AS-norm threshold ({e})"
        decision = None if decided is None else bool(scores[scale] >= decided)
        return {
            "score": scores[scale],
            "threshold": None if decided is None else float(decided),
            "decision": decision,
            "label": "no decision" if decision is None else "same speaker" if decision else "different speakers",
            "scale": scale,
            "threshold_source": source,
            "cosine": scores["cosine"],
            "outside_calibration": outside,
        }


def pool(embeddings: np.ndarray, seconds: np.ndarray, snr: np.ndarray) -> tuple[np.ndarray, float, float]:
    """One speaker's recordings as one: the duration-weighted mean embedding (E,), the total seconds and the
    duration-weighted mean SNR (dB)."""
    dur = np.asarray(seconds, np.float64)
    total = dur.sum(dtype=np.float64)
    mean = (np.asarray(embeddings, np.float64) * dur[:, None]).sum(0) / max(total, 1e-9)
    db = float(np.float32((np.asarray(snr, np.float64) * dur).sum() / max(total, 1e-9)))
    return mean.astype(np.float32), float(np.float32(total)), db


def _read_file(source: str | os.PathLike | bytes | bytearray, name: str) -> tuple[np.ndarray, int]:
    """A file's (or encoded bytes') samples as float32 mono, and its rate (soundfile)."""
    try:
        import soundfile as sf
    except ImportError:
        raise ImportError(
            f"{name}: reading audio files needs soundfile (pip install soundfile), or pass the samples"
        ) from None
    if isinstance(source, (bytes, bytearray)):
        target: Any = io.BytesIO(source)
    else:
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{name}: file not found")
        target = os.fspath(source)
    try:
        x, rate = sf.read(target, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ValueError(f"{name}: not decodable audio (corrupt or unsupported format: {e})") from None
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return np.ascontiguousarray(x, dtype=np.float32), int(rate)


def _array_samples(x: Any, name: str) -> np.ndarray:
    """Samples as float32 mono (S,): integer samples scaled to [-1, 1]; (S, C) or (C, S) channels averaged."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a path or numeric audio samples, got {type(x).__name__} of {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{name}: empty audio (0 samples)")
    if a.dtype.kind == "i":
        a = a.astype(np.float64) / (np.iinfo(a.dtype).max + 1.0)
    elif a.dtype.kind == "u":
        half = (np.iinfo(a.dtype).max + 1.0) / 2
        a = (a.astype(np.float64) - half) / half
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:
        if a.shape[1] <= MAX_CHANNELS and a.shape[0] >= a.shape[1]:
            a = a.mean(axis=1)
        elif a.shape[0] <= MAX_CHANNELS:
            a = a.mean(axis=0)
        else:
            raise ValueError(f"{name}: shape {a.shape} has more than {MAX_CHANNELS} channels on both axes")
    elif a.ndim != 1:
        raise ValueError(f"{name}: audio arrays must be (samples,), (samples, channels) or (channels, samples)")
    return np.ascontiguousarray(a, dtype=np.float32)


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    try:
        import soxr
    except ImportError:
        raise ImportError(
            f"audio at {rate} Hz needs resampling to the model's {target} Hz: pip install soxr, or pass "
            f"{target} Hz audio"
        ) from None
    return soxr.resample(x, rate, target).astype(np.float32, copy=False)


def _rate(value: Any, what: str) -> int:
    """A sample rate as a positive int (integral floats accepted)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not ok or not float(value).is_integer() or int(value) <= 0:
        raise ValueError(f"{what} must be a positive integer (samples per second), got {value!r}")
    return int(value)


def _finite(value: Any, what: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not np.isfinite(out):
        raise ValueError(f"{what} must be a finite number, got {out}")
    return out


def register() -> None:
    """Registers the task with transformers (done on import): ``pipeline("speaker-verification", model=an
    MLSVModel)`` in this process; a saved model names it in ``config.json`` for ``trust_remote_code``."""
    # this module may be imported twice (mlsv's copy and a model's remote-code copy): the last one is the task's
    PIPELINE_REGISTRY.supported_tasks.pop(TASK, None)
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=SpeakerVerificationPipeline, pt_model=AutoModel, type="audio"
    )


register()
