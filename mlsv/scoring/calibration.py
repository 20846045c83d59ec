"""Quality-measure-function (QMF) calibration: logistic regression from named quality features to LLRs.

docs/method.md#qmf-calibration describes the reference. What we keep: the nine features (AS-norm score, log durations,
L1/L2 norms and population std of the raw embeddings of both sides) and the training pairs drawn from the
cohort set, half targets, half non-targets, each pair's speakers left out of its AS-norm cohort. What we
change (docs/method.md#d19-qmf-calibration):

* features are standardised (mean/std fitted on the training pairs) before an L2-regularised logistic
  regression (sklearn ``lbfgs``, which does not penalise the intercept);
* the classes are weighted to an explicit effective target prior (0.5 by default, or the empirical one),
  and the prior's log-odds are subtracted, so the output is a log-likelihood ratio usable with any
  application prior (Bayes threshold ``log((1 - p) / p)``), not a posterior for a 50/50 world;
* the decision threshold is stored with the model.

The cohort mean: features at fitting time are computed exactly as at test time, with the same mean
vector (the cohort mean, or the one passed in) for every pair. The reference's mean also includes the
pair's own speakers; leaving them out would need a different mean, hence a different cohort matrix, per
pair. The bias is one speaker's share of the mean (about 1/6000 of its offset for VoxCeleb2), which we
accept and document rather than make fitting and test features differ.

What we add (docs/evaluation.md#calibration-conditions): the blind SNR estimate of each recording
(:func:`mlsv.data.audio.estimate_snr`) as two optional features (``snr_e``, ``snr_t``: ``with_snr=True``), and
the **conditions guard**: a fitted calibrator records the range of the per-utterance log duration and SNR over
its fitting pairs (:attr:`QualityCalibrator.conditions_`), and :meth:`QualityCalibrator.outside_conditions`
marks the trials with a side outside it, for which a calibrated LLR is an extrapolation that nothing vouches
for (a calibration fitted on clean speech gave an actual DCF of 2.65 on noisy trials).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlsv.extras import needs_extra
from mlsv.scoring.backend import (
    ASNORM_TOP_K,
    Cohort,
    cohort_from_table,
    cohort_topk,
    cosine_scores_indexed,
    embedding_mean,
    subtract_mean,
    topk_stats,
)
from mlsv.scoring.embeddings import EmbeddingTable
from mlsv.scoring.metrics import cllr, eer

__all__ = [
    "ALL_FEATURES",
    "CONDITION_MARGINS",
    "CONDITION_PERCENTILES",
    "FEATURES",
    "GUARDED",
    "SNR_FEATURES",
    "CalibrationPairs",
    "QualityCalibrator",
    "draw_calibration_pairs",
    "fitted_conditions",
    "fit_calibration",
    "quality_measures",
    "trial_features",
]

#: Per-utterance quality measures, computed on the raw (not mean-subtracted) embeddings.
QUALITY = ("log_dur", "l1", "l2", "std")
#: Trial features, in the reference's order; ``_e``/``_t`` are the enrolment and test sides. The default set.
FEATURES = ("score", "log_dur_e", "log_dur_t", "l1_e", "l2_e", "l1_t", "l2_t", "std_e", "std_t")
#: The optional SNR features (dB, :func:`mlsv.data.audio.estimate_snr` of each side's recording).
SNR_FEATURES = ("snr_e", "snr_t")
ALL_FEATURES = FEATURES + SNR_FEATURES
#: Per-utterance measures whose fitted range the conditions guard records.
GUARDED = ("log_dur", "snr")
#: The guard's range of a measure: the 1st to 99th percentile of the fitting pairs' utterance sides (not the
#: min/max, which one odd cohort recording would stretch), widened by a margin so that a trial is refused only
#: when clearly outside: 3 dB of SNR (benchmarks/snr_guard.py: noise at 5-20 dB is then refused 100 %, other
#: clean recordings 8 %; 6 dB lowers the latter only to 4 %), a factor 1.25 in duration.
CONDITION_PERCENTILES = (1.0, 99.0)
CONDITION_MARGINS = {"log_dur": math.log(1.25), "snr": 3.0}
THRESHOLDS = ("eer", "far", "bayes")
#: 2: ``conditions`` (the guard's ranges) stored; version 1 files load with no conditions (nothing guarded).
FORMAT_VERSION = 2
_MIN_DURATION = 1e-3  # seconds; keeps log-duration finite for missing (0) durations


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
    if q.shape != d.shape:
        raise ValueError(f"snr {q.shape} and durations {d.shape} do not match")
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
    """All :data:`FEATURES` of N trials, and the :data:`SNR_FEATURES` when ``quality`` has a known ``snr``.

    Args:
        score: (N,) AS-norm scores.
        quality: output of :func:`quality_measures` for U utterances.
        enroll_idx, test_idx: (N,) rows into ``quality`` for each trial's two sides.

    Returns:
        ``{name: (N,) float64}`` for every name in :data:`FEATURES` (and :data:`SNR_FEATURES`; NaN: unknown).
    """
    e = np.asarray(enroll_idx, dtype=np.int64)
    t = np.asarray(test_idx, dtype=np.int64)
    out = {"score": np.asarray(score, dtype=np.float64)}
    known = "snr" in quality and bool(np.isfinite(np.asarray(quality["snr"], dtype=np.float64)).any())
    measures = QUALITY + (("snr",) if known else ())
    for q in measures:
        out[f"{q}_e"] = np.asarray(quality[q], dtype=np.float64)[e]
        out[f"{q}_t"] = np.asarray(quality[q], dtype=np.float64)[t]
    return {name: out[name] for name in ALL_FEATURES if name in out}


def fitted_conditions(features: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """The guard's ranges of the :data:`GUARDED` measures over trial features (both sides of every trial):
    ``{measure: [low, high]}``, :data:`CONDITION_PERCENTILES` widened by :data:`CONDITION_MARGINS`. A measure
    missing or unknown (NaN) on any side is left out: unguarded."""
    out = {}
    for m in GUARDED:
        if f"{m}_e" not in features or f"{m}_t" not in features:
            continue
        v = np.concatenate([np.asarray(features[f"{m}_e"], np.float64), np.asarray(features[f"{m}_t"], np.float64)])
        if v.size == 0 or not np.isfinite(v).all():
            continue
        lo, hi = np.percentile(v, CONDITION_PERCENTILES)
        out[m] = [float(lo - CONDITION_MARGINS[m]), float(hi + CONDITION_MARGINS[m])]
    return out


def _n_trials(features: Mapping[str, np.ndarray]) -> int:
    return len(np.asarray(features["score"] if "score" in features else next(iter(features.values()))))


def _show(measure: str, value: float) -> str:
    return f"duration {math.exp(value):.2f} s" if measure == "log_dur" else f"SNR {value:.1f} dB"


def _show_range(measure: str, lo: float, hi: float) -> str:
    if measure == "log_dur":
        return f"{math.exp(lo):.2f}-{math.exp(hi):.2f} s"
    return f"{lo:.1f}-{hi:.1f} dB"


class QualityCalibrator:
    """Logistic QMF calibration to log-likelihood ratios, with a stored decision threshold.

    Args:
        features: names of the features to use, a subset of :data:`ALL_FEATURES` (order is kept).
        prior: effective target prior the training pairs are weighted to, in (0, 1); None uses the
            pairs' own proportion unweighted. Either way its log-odds are subtracted from the output.
        regularization: sklearn's ``C`` (inverse L2 strength) on the standardised features.
        threshold: ``"eer"`` (the EER threshold on the training pairs), ``"far"`` (the lowest LLR whose
            false-accept rate on the training non-targets is at most ``target_far``) or ``"bayes"``
            (``log((1 - p_target) / p_target)``).
        target_far: false-accept rate for ``threshold="far"``.
        p_target: application prior for ``threshold="bayes"``.

    Attributes (after :meth:`fit`):
        center_, scale_: (F,) standardisation.
        coef_: (F,) weights on standardised features; intercept_: float.
        threshold_: LLR threshold (accept ``llr >= threshold_``).
        conditions_: ``{measure: [low, high]}`` the guard's ranges (:func:`fitted_conditions`) of the
            :data:`GUARDED` measures it could see on the fitting pairs; a calibration stored before mlsv
            recorded them (format 1) has none: nothing is guarded.
        info: free-form metadata saved with the model (AS-norm settings, training metrics).
    """

    def __init__(
        self,
        features: Sequence[str] = FEATURES,
        *,
        prior: float | None = 0.5,
        regularization: float = 1.0,
        threshold: str = "eer",
        target_far: float = 0.01,
        p_target: float = 0.01,
    ):
        features = tuple(features)
        unknown = [f for f in features if f not in ALL_FEATURES]
        if unknown or not features or len(set(features)) != len(features):
            raise ValueError(f"features must be distinct names from {ALL_FEATURES}, got {features}")
        if prior is not None and not 0.0 < prior < 1.0:
            raise ValueError(f"prior must be in (0, 1) or None, got {prior}")
        if threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
        if not 0.0 < target_far < 1.0 or not 0.0 < p_target < 1.0:
            raise ValueError("target_far and p_target must be in (0, 1)")
        if regularization <= 0:
            raise ValueError(f"regularization (C) must be positive, got {regularization}")
        self.features = features
        self.prior = prior
        self.regularization = float(regularization)
        self.threshold = threshold
        self.target_far = float(target_far)
        self.p_target = float(p_target)
        self.center_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0
        self.train_prior_: float = 0.5
        self.threshold_: float = 0.0
        self.conditions_: dict[str, list[float]] = {}
        self.info: dict = {}

    def _matrix(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        unknown_snr = [
            f for f in self.features if f in SNR_FEATURES and (f not in features or not np.isfinite(features[f]).all())
        ]
        if unknown_snr:
            raise ValueError(
                "this calibration uses the SNR features but some recordings have no SNR estimate (embedding "
                "tables written before mlsv stored one): embed them again (mlsv embed / Verifier.embed_table)"
            )
        missing = [f for f in self.features if f not in features]
        if missing:
            raise KeyError(f"missing calibration features {missing}; have {sorted(features)}")
        cols = [np.asarray(features[f], dtype=np.float64).reshape(-1) for f in self.features]
        n = {c.size for c in cols}
        if len(n) != 1:
            raise ValueError(f"calibration features have different lengths: {sorted(n)}")
        x = np.stack(cols, axis=1)
        if not np.isfinite(x).all():
            raise ValueError("calibration features contain NaN or infinite values")
        return x

    @property
    def is_fitted(self) -> bool:
        return self.coef_ is not None

    def fit(self, features: Mapping[str, np.ndarray], labels: ArrayLike) -> QualityCalibrator:
        """Fits the standardisation, the logistic regression and the threshold.

        Args:
            features: ``{name: (N,)}`` containing at least ``self.features``.
            labels: (N,) 0/1.
        """
        with needs_extra("eval", "fitting a QMF calibration"):
            from sklearn.linear_model import LogisticRegression

        x = self._matrix(features)
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        if y.shape[0] != x.shape[0] or not set(np.unique(y)) == {0, 1}:
            raise ValueError("labels must be (N,) 0/1 with both classes present, matching the features")
        self.center_ = x.mean(0)
        self.scale_ = np.where(x.std(0) > 1e-12, x.std(0), 1.0)
        z = (x - self.center_) / self.scale_
        n_tar = int(y.sum())
        n_non = len(y) - n_tar
        if self.prior is None:
            self.train_prior_ = n_tar / len(y)
            weights = None
        else:
            self.train_prior_ = self.prior
            # Weights sum to N; targets carry `prior` of the total mass.
            weights = np.where(y == 1, self.prior * len(y) / n_tar, (1 - self.prior) * len(y) / n_non)
        model = LogisticRegression(C=self.regularization, solver="lbfgs", max_iter=1000)
        model.fit(z, y, sample_weight=weights)
        self.coef_ = model.coef_.reshape(-1).astype(np.float64)
        self.intercept_ = float(model.intercept_[0])
        llr = self.transform(features)
        self.threshold_ = self._pick_threshold(llr, y)
        self.conditions_ = fitted_conditions(features)
        return self

    @property
    def unguarded(self) -> list[str]:
        """The :data:`GUARDED` measures this calibration has no fitted range for (e.g. ``snr`` when fitted on
        tables without SNR estimates; all of them for a format-1 calibration)."""
        return [m for m in GUARDED if m not in self.conditions_]

    def outside_conditions(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N,) bool: the trials with a side outside the conditions the calibration was fitted on.

        Args:
            features: trial features (:func:`trial_features`), with ``log_dur_e/_t`` and, to guard SNR,
                ``snr_e/_t``. A guarded measure absent or unknown (NaN) for a trial does not mark it (nothing
                to compare); :attr:`unguarded` lists the measures the calibration itself cannot guard.
        """
        mask = np.zeros(_n_trials(features), dtype=bool)
        for _, _, bad in self._outside_sides(features):
            mask |= bad
        return mask

    def _outside_sides(self, features: Mapping[str, np.ndarray]):
        """(measure, side, (N,) bool outside) for every guarded measure and side present in ``features``."""
        for m, (lo, hi) in self.conditions_.items():
            for side in ("e", "t"):
                if f"{m}_{side}" in features:
                    v = np.asarray(features[f"{m}_{side}"], np.float64).reshape(-1)
                    with np.errstate(invalid="ignore"):  # NaN (unknown) compares False: not outside
                        yield m, side, (v < lo) | (v > hi)

    def outside_reasons(self, features: Mapping[str, np.ndarray]) -> list[str | None]:
        """Per trial, None inside the conditions, else why not: the first side and measure outside, its value
        and the fitted range (e.g. ``"test SNR 4.2 dB outside the calibration's 31.0-62.0 dB"``)."""
        out: list[str | None] = [None] * _n_trials(features)
        for m, side, bad in self._outside_sides(features):
            lo, hi = self.conditions_[m]
            name = "enrolment" if side == "e" else "test"
            v = np.asarray(features[f"{m}_{side}"], np.float64).reshape(-1)
            for i in np.flatnonzero(bad):
                if out[i] is None:
                    out[i] = f"{name} {_show(m, v[i])} outside the calibration's {_show_range(m, lo, hi)}"
        return out

    def _pick_threshold(self, llr: np.ndarray, y: np.ndarray) -> float:
        if self.threshold == "eer":
            return eer(llr, y)[1]
        if self.threshold == "bayes":
            return math.log((1.0 - self.p_target) / self.p_target)
        non = np.sort(llr[y == 0])[::-1]
        allowed = int(math.floor(self.target_far * len(non)))
        if allowed >= len(non):
            return float(non[-1])
        return float(np.nextafter(non[allowed], np.inf))

    def transform(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Calibrated log-likelihood ratios.

        Args:
            features: ``{name: (N,)}`` containing at least ``self.features``.

        Returns:
            (N,) float64 natural-log LLRs.
        """
        if not self.is_fitted:
            raise RuntimeError("QualityCalibrator is not fitted")
        z = (self._matrix(features) - self.center_) / self.scale_
        logit = z @ self.coef_ + self.intercept_
        return logit - math.log(self.train_prior_ / (1.0 - self.train_prior_))

    def decide(self, llr: np.ndarray) -> np.ndarray:
        """(N,) bool: same speaker when ``llr >= threshold_``."""
        return np.asarray(llr) >= self.threshold_

    def to_dict(self) -> dict:
        if self.center_ is None or self.scale_ is None or self.coef_ is None:
            raise RuntimeError("QualityCalibrator is not fitted")
        return {
            "format": "mlsv-qmf-calibration",
            "format_version": FORMAT_VERSION,
            "features": list(self.features),
            "center": self.center_.tolist(),
            "scale": self.scale_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
            "prior": self.prior,
            "train_prior": self.train_prior_,
            "regularization": self.regularization,
            "threshold_mode": self.threshold,
            "target_far": self.target_far,
            "p_target": self.p_target,
            "threshold": self.threshold_,
            "conditions": self.conditions_,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> QualityCalibrator:
        if d.get("format") != "mlsv-qmf-calibration":
            raise ValueError("not an mlsv calibration (missing 'format': 'mlsv-qmf-calibration')")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"calibration format_version {d['format_version']} is newer than this mlsv ({FORMAT_VERSION})"
            )
        cal = cls(
            d["features"],
            prior=d["prior"],
            regularization=d["regularization"],
            threshold=d["threshold_mode"],
            target_far=d["target_far"],
            p_target=d["p_target"],
        )
        cal.center_ = np.asarray(d["center"], dtype=np.float64)
        cal.scale_ = np.asarray(d["scale"], dtype=np.float64)
        cal.coef_ = np.asarray(d["coef"], dtype=np.float64)
        cal.intercept_ = float(d["intercept"])
        cal.train_prior_ = float(d["train_prior"])
        cal.threshold_ = float(d["threshold"])
        cal.info = dict(d.get("info", {}))
        cal.conditions_ = {str(m): [float(v[0]), float(v[1])] for m, v in (d.get("conditions") or {}).items()}
        n = len(cal.features)
        if not (cal.center_.shape == cal.scale_.shape == cal.coef_.shape == (n,)):
            raise ValueError(f"calibration arrays do not match its {n} features")
        return cal

    def save(self, path: str | Path) -> None:
        """Writes the calibration as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> QualityCalibrator:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(d)


@dataclass(frozen=True)
class CalibrationPairs:
    """Trials drawn from a cohort table.

    Attributes:
        enroll, test: (P,) int64 rows of the cohort table.
        labels: (P,) int8, 1 for the first ``P // 2`` (targets), 0 after.
        exclude: (P, 2) int64 cohort-speaker indices (into ``np.unique(table.speakers)``) to leave out
            of the pair's AS-norm cohort; -1 pads target pairs, which exclude one speaker.
    """

    enroll: np.ndarray
    test: np.ndarray
    labels: np.ndarray
    exclude: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def check_calibration_cohort(
    speakers: Sequence[str] | np.ndarray, *, n_pairs: int, top_k: int | None = None, source: str = ""
) -> None:
    """What a calibration needs of its cohort, checked from the speaker labels alone, so that a command can
    check it before embedding anything: ``n_pairs`` >= 2, two speakers or more, one with two utterances or
    more (target pairs), and (``top_k``) ``top_k + 2`` speakers (each pair leaves its own out of AS-norm).

    Raises:
        ValueError: what is missing, prefixed with ``source`` (e.g. the cohort manifest's path).
    """
    where = f"{source}: " if source else ""
    if n_pairs < 2:
        raise ValueError(f"n_pairs (--calibration-pairs) must be at least 2, got {n_pairs}")
    counts = Counter(str(s) for s in speakers)
    if len(counts) < 2:
        raise ValueError(f"{where}calibration pairs need at least two cohort speakers")
    if max(counts.values()) < 2:
        raise ValueError(f"{where}calibration target pairs need a cohort speaker with at least two utterances")
    if top_k is not None and top_k + 2 > len(counts):
        raise ValueError(
            f"{where}the cohort has {len(counts)} speakers, too few for calibration pairs with "
            f"top_k={top_k}: each pair leaves its own 2 speakers out, so it needs top_k + 2 = "
            f"{top_k + 2}; lower top_k (--asnorm-top-k) or use a larger cohort"
        )


def draw_calibration_pairs(table: EmbeddingTable, n_pairs: int, seed: int = 7) -> CalibrationPairs:
    """Draws ``n_pairs`` trials from a cohort table, the first half targets, the rest non-targets.

    Targets: a speaker uniformly among those with at least two utterances, then two distinct utterances
    of it. Non-targets: two distinct speakers uniformly, one utterance each. Vectorised.

    Args:
        table: cohort embeddings with ``speakers``.
        n_pairs: number of pairs (``n_pairs // 2`` targets).
        seed: seed of the ``np.random.Generator``.
    """
    if table.speakers is None:
        raise ValueError("calibration pairs need a cohort table with 'speakers'")
    check_calibration_cohort(table.speakers, n_pairs=n_pairs)
    rng = np.random.default_rng(seed)
    speakers, inv = np.unique(table.speakers, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")  # rows grouped by speaker
    counts = np.bincount(inv, minlength=len(speakers))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_tar = n_pairs // 2
    n_non = n_pairs - n_tar

    multi = np.flatnonzero(counts >= 2)
    spk = multi[rng.integers(len(multi), size=n_tar)]
    i = rng.integers(counts[spk])
    j = rng.integers(counts[spk] - 1)
    j = j + (j >= i)  # distinct from i
    tar_e, tar_t = order[starts[spk] + i], order[starts[spk] + j]

    a = rng.integers(len(speakers), size=n_non)
    b = rng.integers(len(speakers) - 1, size=n_non)
    b = b + (b >= a)
    non_e = order[starts[a] + rng.integers(counts[a])]
    non_t = order[starts[b] + rng.integers(counts[b])]

    exclude = np.full((n_pairs, 2), -1, dtype=np.int64)
    exclude[:n_tar, 0] = spk
    exclude[n_tar:, 0] = a
    exclude[n_tar:, 1] = b
    labels = np.concatenate([np.ones(n_tar, np.int8), np.zeros(n_non, np.int8)])
    return CalibrationPairs(
        np.concatenate([tar_e, non_e]).astype(np.int64),
        np.concatenate([tar_t, non_t]).astype(np.int64),
        labels,
        exclude,
    )


def pair_features(
    table: EmbeddingTable,
    pairs: CalibrationPairs,
    cohort: Cohort,
    top_k: int,
    *,
    device: str | Any | None = None,  # a torch device
) -> dict[str, np.ndarray]:
    """The :data:`FEATURES` of calibration pairs, each pair's speakers left out of its AS-norm cohort.

    The top-(k+2) cohort similarities are computed once per distinct utterance; each side of each pair
    then drops its excluded speakers (:func:`~mlsv.scoring.backend.topk_stats`).

    Args:
        table: the cohort table the pairs index.
        pairs: from :func:`draw_calibration_pairs` (speaker indices must follow ``cohort.speakers``).
        cohort: built from ``table`` by :func:`~mlsv.scoring.backend.cohort_from_table`.
        top_k: AS-norm cohort size.
    """
    m = pairs.exclude.shape[1]
    if top_k < 2:
        raise ValueError(f"top_k (--asnorm-top-k) must be at least 2, got {top_k}")
    if top_k + m > len(cohort):
        raise ValueError(
            f"the cohort has {len(cohort)} speakers, too few for calibration pairs with top_k={top_k}: "
            f"each pair leaves its own {m} speakers out, so it needs top_k + {m} = {top_k + m}; lower "
            "top_k (--asnorm-top-k) or use a larger cohort"
        )
    used, inv = np.unique(np.concatenate([pairs.enroll, pairs.test]), return_inverse=True)
    inv = inv.reshape(-1)
    e, t = inv[: len(pairs)], inv[len(pairs) :]
    x = subtract_mean(table.embeddings[used], cohort.mean)
    values, indices = cohort_topk(x, cohort, top_k + m, sorted=False, device=device)
    mu_e, sd_e = topk_stats(values, indices, top_k, pairs.exclude, rows=e)
    mu_t, sd_t = topk_stats(values, indices, top_k, pairs.exclude, rows=t)
    s = cosine_scores_indexed(x, e, t, device=device)
    asn = 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)
    quality = quality_measures(table.embeddings[used], table.durations[used], table.snr[used])
    return trial_features(asn, quality, e, t)


def fit_calibration(
    cohort_table: EmbeddingTable,
    *,
    mean: np.ndarray | None = None,
    top_k: int = ASNORM_TOP_K,
    n_pairs: int = 30000,
    seed: int = 7,
    features: Sequence[str] = FEATURES,
    with_snr: bool = False,
    prior: float | None = 0.5,
    regularization: float = 1.0,
    threshold: str = "eer",
    target_far: float = 0.01,
    p_target: float = 0.01,
    device: str | Any | None = None,  # a torch device
) -> QualityCalibrator:
    """Fits a :class:`QualityCalibrator` on pairs drawn from a cohort set (``mlsv calibrate``).

    Args:
        cohort_table: cohort embeddings with speakers (the AS-norm cohort at test time).
        mean: (E,) mean vector; defaults to the cohort mean (as ``mlsv score`` does).
        top_k: AS-norm cohort size, as used when scoring.
        n_pairs, seed: calibration pairs (:func:`draw_calibration_pairs`).
        features, prior, regularization, threshold, target_far, p_target: see :class:`QualityCalibrator`.
        with_snr: add the :data:`SNR_FEATURES` to ``features`` (the table needs SNR estimates: tables that
            ``mlsv embed``, ``Verifier.embed_table`` and ``mlsv evaluate`` write have them).
        device: torch device for the cohort similarities.

    Returns:
        The fitted calibrator; ``info`` records the AS-norm settings, the mean and training Cllr/EER;
        ``conditions_`` the guard's ranges (SNR only when every cohort row has an estimate).
    """
    features = tuple(features)
    if with_snr:
        features += tuple(f for f in SNR_FEATURES if f not in features)
    if any(f in SNR_FEATURES for f in features) and not cohort_table.has_snr:
        missing = int((~np.isfinite(cohort_table.snr)).sum())
        raise ValueError(
            f"the SNR features need every cohort recording's SNR estimate; {missing} of {len(cohort_table)} have "
            "none (a table written before mlsv stored SNR): embed the cohort again with mlsv embed"
        )
    mean = embedding_mean(cohort_table.embeddings) if mean is None else np.asarray(mean, np.float32).reshape(-1)
    cohort = cohort_from_table(cohort_table, mean)
    pairs = draw_calibration_pairs(cohort_table, n_pairs, seed)
    feats = pair_features(cohort_table, pairs, cohort, top_k, device=device)
    cal = QualityCalibrator(
        features,
        prior=prior,
        regularization=regularization,
        threshold=threshold,
        target_far=target_far,
        p_target=p_target,
    )
    cal.fit(feats, pairs.labels)
    llr = cal.transform(feats)
    cal.info = {
        "top_k": int(top_k),
        "n_pairs": int(n_pairs),
        "seed": int(seed),
        "cohort_speakers": len(cohort),
        "cohort_utterances": len(cohort_table),
        "mean": [float(v) for v in mean],
        "train_cllr": cllr(llr, pairs.labels),
        "train_eer": eer(llr, pairs.labels)[0],
        "train_asnorm_eer": eer(feats["score"], pairs.labels)[0],
    }
    return cal
