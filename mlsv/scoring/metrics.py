"""Verification metrics on score arrays: EER, minDCF, actual DCF, Cllr and DET points (numpy, vectorised).

Conventions shared by every function here:

* ``scores``/``llr``: (N,) real numbers, higher means "more likely the same speaker".
* ``labels``: (N,) 1 for a target (same-speaker) trial, 0 for a non-target; both classes must occur.
* A threshold ``t`` accepts a trial when ``score >= t``. Tied scores are one threshold: a group of equal
  scores is accepted or rejected together, so ties never create operating points that no threshold can
  reach (the reference treated every tied sample as its own threshold, docs/method.md#d22-eer-and-mindcf).
* Error rates are fractions, except ``eer`` in :func:`compute_metrics`, which is in percent as in
  docs/evaluation.md#file-formats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DetCurve",
    "act_dcf",
    "cllr",
    "compute_metrics",
    "det_curve",
    "eer",
    "min_dcf",
]


class DetCurve(NamedTuple):
    """Operating points of a detector, one per distinct score plus "reject all".

    Attributes:
        p_miss: (M+1,) miss rate, non-decreasing.
        p_fa: (M+1,) false-alarm rate, non-increasing.
        thresholds: (M+1,) ascending; point ``i`` accepts ``score >= thresholds[i]``; the last one is
            ``+inf`` (reject all). The first one is the smallest score (accept all: ``p_miss=0, p_fa=1``).
    """

    p_miss: np.ndarray
    p_fa: np.ndarray
    thresholds: np.ndarray


def _check(scores: ArrayLike, labels: ArrayLike, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{what} has {s.size} entries but labels has {y.size}")
    if not np.isfinite(s).all():
        raise ValueError(f"{what} contain {int((~np.isfinite(s)).sum())} NaN or infinite values")
    if y.dtype == bool:
        y = y.astype(np.int8)
    bad = (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(
            f"labels must be 0 or 1 (unknown labels cannot be scored); found {y[bad][0]!r} "
            f"at position {int(np.flatnonzero(bad)[0])}"
        )
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("labels need both target (1) and non-target (0) trials")
    return s, y


def det_curve(scores: ArrayLike, labels: ArrayLike) -> DetCurve:
    """Miss and false-alarm rates at every distinct score threshold (ties grouped).

    Args:
        scores: (N,) scores.
        labels: (N,) 0/1.

    Returns:
        :class:`DetCurve` with M+1 points for M distinct scores.
    """
    s, y = _check(scores, labels)
    thr, inv = np.unique(s, return_inverse=True)  # ascending distinct scores
    m = len(thr)
    n_tar_at = np.bincount(inv[y], minlength=m)
    n_non_at = np.bincount(inv[~y], minlength=m)
    n_tar, n_non = int(n_tar_at.sum()), int(n_non_at.sum())
    # Point i accepts score >= thr[i]: misses are the targets strictly below thr[i].
    tar_below = np.concatenate([[0], np.cumsum(n_tar_at)])
    non_below = np.concatenate([[0], np.cumsum(n_non_at)])
    p_miss = tar_below / n_tar
    p_fa = (n_non - non_below) / n_non
    return DetCurve(p_miss, p_fa, np.append(thr, np.inf))


def _eer_from_curve(curve: DetCurve) -> tuple[float, float]:
    p_miss, p_fa, thr = curve
    d = p_miss - p_fa  # non-decreasing from -1 (accept all) to +1 (reject all)
    i = int(np.argmax(d >= 0))  # first point at or past the crossing; i >= 1 since d[0] = -1
    d0, d1 = d[i - 1], d[i]
    a = -d0 / (d1 - d0)  # in (0, 1]
    value = p_miss[i - 1] + a * (p_miss[i] - p_miss[i - 1])
    t0, t1 = thr[i - 1], thr[i]
    threshold = t0 + a * (t1 - t0) if np.isfinite(t1) else t0
    return float(value), float(threshold)


def eer(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Equal error rate, in percent, and the threshold where it occurs.

    The DET points (one per distinct score, ties grouped) are joined by straight lines in
    (p_fa, p_miss) space, i.e. the ROC is linearly interpolated between consecutive operating points (no
    convex hull), and the EER is where that polyline crosses ``p_miss == p_fa``. Between two points, the
    interpolation is what randomly accepting a fraction of the tied group at the lower threshold would
    give. The threshold is interpolated between the two scores by the same fraction (the lower score
    when the upper point is "reject all"). This differs from the reference's nearest ROC point and
    ``max(fpr, fnr)`` (docs/method.md#d22-eer-and-mindcf), and equals the classic ``brentq`` on ``interp1d(fpr, tpr)``.

    Args:
        scores: (N,) scores.
        labels: (N,) 0/1.

    Returns:
        ``(eer_percent, threshold)``.
    """
    value, threshold = _eer_from_curve(det_curve(scores, labels))
    return 100.0 * value, threshold


def _dcf_norm(p_target: float, c_miss: float, c_fa: float) -> float:
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    return min(c_miss * p_target, c_fa * (1.0 - p_target))


def _min_dcf_from_curve(curve: DetCurve, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    norm = _dcf_norm(p_target, c_miss, c_fa)
    cost = c_miss * p_target * curve.p_miss + c_fa * (1.0 - p_target) * curve.p_fa
    i = int(np.argmin(cost))
    return float(cost[i] / norm), float(curve.thresholds[i])


def min_dcf(
    scores: ArrayLike, labels: ArrayLike, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Minimum normalised detection cost over all thresholds (ties grouped).

    ``C_det(t) = c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target)``, minimised over the
    thresholds of :func:`det_curve` and divided by ``min(c_miss * p_target, c_fa * (1 - p_target))``
    (the cost of the best trivial system), so it lies in [0, 1].

    Args:
        scores: (N,) scores.
        labels: (N,) 0/1.
        p_target: prior probability of a target trial, in (0, 1).
        c_miss, c_fa: costs of a miss and of a false alarm.

    Returns:
        ``(min_dcf, threshold)``; the threshold accepts ``score >= threshold`` and is ``inf`` when
        rejecting every trial is optimal.
    """
    return _min_dcf_from_curve(det_curve(scores, labels), p_target, c_miss, c_fa)


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The log-likelihood-ratio threshold that minimises the expected cost: ``log(c_fa (1-p) / (c_miss p))``."""
    _dcf_norm(p_target, c_miss, c_fa)
    return math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))


def act_dcf(llr: ArrayLike, labels: ArrayLike, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Actual normalised detection cost of calibrated scores at the Bayes threshold.

    Args:
        llr: (N,) log-likelihood ratios (natural log).
        labels: (N,) 0/1.
        p_target, c_miss, c_fa: the application, as in :func:`min_dcf`.

    Returns:
        The normalised cost when accepting ``llr >= bayes_threshold(p_target, c_miss, c_fa)``; it is
        ``>= min_dcf`` and equal to it only for perfectly calibrated scores.
    """
    s, y = _check(llr, labels, "llr")
    norm = _dcf_norm(p_target, c_miss, c_fa)
    t = bayes_threshold(p_target, c_miss, c_fa)
    p_miss = float(np.mean(s[y] < t))
    p_fa = float(np.mean(s[~y] >= t))
    return (c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa) / norm


def cllr(llr: ArrayLike, labels: ArrayLike) -> float:
    """Log-likelihood-ratio cost in bits (0 perfect, 1 for an uninformative system that outputs 0).

    ``Cllr = 1/(2 ln 2) * (mean_tar log(1 + e^-llr) + mean_non log(1 + e^llr))``.

    Args:
        llr: (N,) log-likelihood ratios (natural log).
        labels: (N,) 0/1.
    """
    s, y = _check(llr, labels, "llr")
    c_tar = np.mean(np.logaddexp(0.0, -s[y]))
    c_non = np.mean(np.logaddexp(0.0, s[~y]))
    return float((c_tar + c_non) / (2.0 * math.log(2.0)))


def _key(p: float) -> str:
    return f"{p:g}"


def compute_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    p_targets: tuple[float, ...] = (0.01, 0.05),
    calibrated: bool = False,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> dict[str, float | int | None]:
    """All metrics of one trial list, keyed as in docs/evaluation.md#file-formats's metrics JSON.

    Args:
        scores: (N,) scores (log-likelihood ratios when ``calibrated``).
        labels: (N,) 0/1.
        p_targets: target priors for minDCF (and actDCF).
        calibrated: also report ``act_dcf_<p>`` and ``cllr``, which only mean something for LLRs.
        c_miss, c_fa: detection costs.

    Returns:
        ``{"eer": percent, "eer_threshold", "min_dcf_<p>", "min_dcf_<p>_threshold" (None when
        rejecting all is optimal), "n_trials", "n_target", "n_nontarget"}`` plus, when ``calibrated``,
        ``"act_dcf_<p>"`` and ``"cllr"``.
    """
    curve = det_curve(scores, labels)
    y = np.asarray(labels).reshape(-1).astype(bool)
    value, threshold = _eer_from_curve(curve)
    out: dict[str, float | int | None] = {
        "eer": 100.0 * value,
        "eer_threshold": threshold,
    }
    for p in p_targets:
        v, t = _min_dcf_from_curve(curve, p, c_miss, c_fa)
        out[f"min_dcf_{_key(p)}"] = v
        out[f"min_dcf_{_key(p)}_threshold"] = t if math.isfinite(t) else None
    if calibrated:
        for p in p_targets:
            out[f"act_dcf_{_key(p)}"] = act_dcf(scores, labels, p, c_miss, c_fa)
        out["cllr"] = cllr(scores, labels)
    out["n_trials"] = int(y.size)
    out["n_target"] = int(y.sum())
    out["n_nontarget"] = int(y.size - y.sum())
    return out
