"""The arithmetic of scoring a trial from what a model stores: mean subtraction, cosine, AS-norm statistics,
QMF quality measures (with the blind SNR estimate of a recording), the calibrated log-likelihood ratio and the
calibration's conditions guard.

Part of the model code saved beside a model (``trust_remote_code``), so that the speaker-verification
pipeline (``pipeline_mlsv.py``) scores exactly as ``mlsv.scoring`` does where mlsv is not installed:
``mlsv.scoring.backend`` and ``mlsv.scoring.calibration`` use these functions, the pipeline too. Imports
only numpy and torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = [
    "FEATURES",
    "QUALITY",
    "cosine_scores",
    "estimate_snr",
    "outside_reasons",
    "normalized_rows",
    "qmf_llr",
    "quality_measures",
    "subtract_mean",
    "topk_moments",
    "trial_features",
]

#: Per-utterance quality measures, computed on the raw (not mean-subtracted) embeddings.
QUALITY = ("log_dur", "l1", "l2", "std")
#: Trial features, in the reference's order; ``_e``/``_t`` are the enrolment and test sides.
FEATURES = ("score", "log_dur_e", "log_dur_t", "l1_e", "l2_e", "l1_t", "l2_t", "std_e", "std_t")
#: The optional SNR features and all features (``mlsv.scoring.calibration.ALL_FEATURES``).
ALL_FEATURES = FEATURES + ("snr_e", "snr_t")
_MIN_DURATION = 1e-3  # seconds; keeps log-duration finite for missing (0) durations
# mlsv.data.audio.estimate_snr's constants
_SNR_RANGE = (-5.0, 60.0)
_SNR_FRAME_SECONDS, _SNR_HOP_SECONDS = 0.025, 0.010
_SNR_NOISE_PERCENTILE, _SNR_SPEECH_PERCENTILE = 5.0, 95.0


def estimate_snr(wav: np.ndarray, sample_rate: int) -> float:
    """A recording's blind SNR estimate in dB: ``mlsv.data.audio.estimate_snr`` (its docstring says what it
    measures), the same arithmetic."""
    x = np.asarray(wav).reshape(-1)
    frame = max(1, int(round(_SNR_FRAME_SECONDS * sample_rate)))
    hop = max(1, int(round(_SNR_HOP_SECONDS * sample_rate)))
    if x.size <= frame:
        power = np.array([np.mean(x.astype(np.float64) ** 2)]) if x.size else np.zeros(1)
    else:
        # frame powers from cumulative sums of squares, 1,000 frames at a time: O(S) time, and a long recording
        # never copied whole to float64
        starts = np.arange(0, x.size - frame + 1, hop)
        parts = []
        for i in range(0, len(starts), 1000):
            s = starts[i : i + 1000]
            c = np.concatenate([[0.0], np.cumsum(x[s[0] : s[-1] + frame].astype(np.float64) ** 2)])
            parts.append((c[s - s[0] + frame] - c[s - s[0]]) / frame)
        power = np.concatenate(parts)
    noise = float(np.percentile(power, _SNR_NOISE_PERCENTILE))
    speech = float(np.percentile(power, _SNR_SPEECH_PERCENTILE))
    low, high = _SNR_RANGE
    floor = max(noise, speech * 10 ** (-high / 10), 1e-20)
    snr = 10.0 * np.log10(max(speech - noise, 0.0) / floor + 1e-30)
    return float(np.clip(snr, low, high))


def subtract_mean(x: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Returns ``x - mean`` as float32; ``x`` is (N, E) or (E,), ``mean`` (E,) or None (no change)."""
    x = np.asarray(x, dtype=np.float32)
    if mean is None:
        return x
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    if mean.shape[0] != x.shape[-1]:
        raise ValueError(f"mean vector has {mean.shape[0]} dimensions, embeddings have {x.shape[-1]}")
    return x - mean


def cosine_scores(enroll: np.ndarray, test: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise cosine similarity.

    Args:
        enroll: (N, E) embeddings.
        test: (N, E) embeddings.

    Returns:
        (N,) float64, ``cos(enroll[i], test[i])``.
    """
    a = np.asarray(enroll, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"enroll {a.shape} and test {b.shape} must both be (N, E)")
    na = np.maximum(np.linalg.norm(a, axis=1), eps)
    nb = np.maximum(np.linalg.norm(b, axis=1), eps)
    return np.einsum("ne,ne->n", a, b) / (na * nb)


def normalized_rows(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, E) rows as a float32 tensor on ``device``, each of unit length."""
    t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    return torch.nn.functional.normalize(t, dim=1, eps=1e-12)


def topk_moments(similarities: torch.Tensor, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """AS-norm statistics of (N, C) cohort cosines: the mean and unbiased std of each row's ``top_k``
    largest values, each (N,) float64."""
    v = torch.topk(similarities, top_k, dim=1, sorted=False).values.double()  # (N, top_k)
    return v.mean(1).cpu().numpy(), v.std(1, correction=1).cpu().numpy()


def quality_measures(
    embeddings: np.ndarray, durations: np.ndarray, snr: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-utterance quality measures.

    Args:
        embeddings: (N, E) raw embeddings.
        durations: (N,) seconds (values below 1 ms are clamped to 1 ms before the log).
        snr: (N,) SNR estimates in dB (NaN: unknown), or None (all unknown).

    Returns:
        ``{"log_dur", "l1", "l2", "std", "snr"}``, each (N,) float64; ``std`` is the population std (ddof 0)
        over the E entries.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    d = np.asarray(durations, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or d.shape[0] != x.shape[0]:
        raise ValueError(f"embeddings {x.shape} and durations {d.shape} do not match")
    q = np.full(len(d), np.nan) if snr is None else np.asarray(snr, dtype=np.float64).reshape(-1)
    return {
        "log_dur": np.log(np.maximum(d, _MIN_DURATION)),
        "l1": np.abs(x).sum(1),
        "l2": np.linalg.norm(x, axis=1),
        "std": x.std(1),
        "snr": q,
    }


def trial_features(
    score: np.ndarray, quality: Mapping[str, np.ndarray], enroll_idx: ArrayLike, test_idx: ArrayLike
) -> dict[str, np.ndarray]:
    """All :data:`FEATURES` of N trials, and ``snr_e``/``snr_t`` when ``quality`` has a known ``snr``.

    Args:
        score: (N,) AS-norm scores.
        quality: output of :func:`quality_measures` for U utterances.
        enroll_idx, test_idx: (N,) rows into ``quality`` for each trial's two sides.

    Returns:
        ``{name: (N,) float64}`` for every name in :data:`FEATURES`.
    """
    e = np.asarray(enroll_idx, dtype=np.int64)
    t = np.asarray(test_idx, dtype=np.int64)
    out = {"score": np.asarray(score, dtype=np.float64)}
    known = "snr" in quality and bool(np.isfinite(np.asarray(quality["snr"], dtype=np.float64)).any())
    for q in QUALITY + (("snr",) if known else ()):
        out[f"{q}_e"] = np.asarray(quality[q], dtype=np.float64)[e]
        out[f"{q}_t"] = np.asarray(quality[q], dtype=np.float64)[t]
    return {name: out[name] for name in ALL_FEATURES if name in out}


def outside_reasons(conditions: Mapping[str, list], features: Mapping[str, np.ndarray]) -> list[str | None]:
    """``QualityCalibrator.outside_reasons`` of a stored calibration's ``conditions``: per trial, None inside
    them, else the first side and measure outside, its value and the fitted range."""
    n = len(np.asarray(features["score"]))
    out: list[str | None] = [None] * n
    for m, (lo, hi) in conditions.items():
        for side, name in (("e", "enrolment"), ("t", "test")):
            if f"{m}_{side}" not in features:
                continue
            v = np.asarray(features[f"{m}_{side}"], np.float64).reshape(-1)
            with np.errstate(invalid="ignore"):
                bad = np.flatnonzero((v < lo) | (v > hi))
            for i in bad:
                if out[i] is None:
                    out[i] = f"{name} {_show(m, v[i])} outside the calibration's {_show_range(m, lo, hi)}"
    return out


def _show(measure: str, value: float) -> str:
    return f"duration {math.exp(value):.2f} s" if measure == "log_dur" else f"SNR {value:.1f} dB"


def _show_range(measure: str, lo: float, hi: float) -> str:
    if measure == "log_dur":
        return f"{math.exp(lo):.2f}-{math.exp(hi):.2f} s"
    return f"{lo:.1f}-{hi:.1f} dB"


def qmf_llr(
    x: np.ndarray, center: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float, train_prior: float
) -> np.ndarray:
    """Calibrated natural-log likelihood ratios of (N, F) feature rows: the standardised features' logistic
    score minus the log-odds of the prior the calibration was trained with. (N,) float64."""
    z = (x - center) / scale
    logit = z @ coef + intercept
    return logit - math.log(train_prior / (1.0 - train_prior))
