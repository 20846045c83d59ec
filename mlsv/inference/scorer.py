"""Scoring embeddings with what a model stores: the mean, an AS-norm cohort, the calibration, thresholds.

Score scales (:attr:`Scorer.score_scale`), the last one whose inputs are available:

* ``"cosine"``: cosine similarity after subtracting the model's ``training_mean``, in [-1, 1].
* ``"asnorm"``: adaptive symmetric score normalisation against a cohort: the speaker means stored in
  the model (``cohort_embeddings``, written by ``mlsv evaluate``) or one the caller gives (``cohort=``:
  an embedding ``.npz`` with ``speakers``). Two utterances alone have nothing to normalise against.
* ``"calibrated"``: the QMF calibration stored with the model, a natural-log likelihood ratio. The
  calibration was fitted on **AS-norm scores** plus quality measures (log durations, L1/L2 norms and
  std of the raw embeddings), so it is applied only with a cohort; without one scores are cosine and
  need a cosine threshold.

The calibration's **conditions guard** (docs/evaluation.md#calibration-conditions): a trial with a side whose
duration or SNR estimate lies outside the range the calibration was fitted on gets a reason
(:meth:`Scorer.score_trial`); the Verifier then decides on the AS-norm scale instead
(``Verifier(calibration_guard=False)`` turns this off).

Thresholds always live on the scale being scored (:meth:`Scorer.threshold`), read from the model's
:class:`~mlsv.scoring.record.EvaluationRecord`:

* default: the EER-point threshold stored for that scale (``score_statistics``, written by
  :func:`~mlsv.scoring.record.record_score_statistics`), or the model's threshold when its scale is
  the one in use, or, on the calibrated scale, the calibration's own threshold;
* ``far=``: a target false-accept rate. Needs the stored non-target score distribution of that scale
  (the threshold picked keeps the measured FAR at or below the target), or, on the calibrated scale,
  uses ``log(1 / far)``: for calibrated LLRs ``P(LR >= 1/far | non-target) <= far`` (Markov's
  inequality, since ``E[LR | non-target] = 1``), an upper bound on the FAR. A model that stores only a
  threshold cannot answer a FAR question: the error says so and what to do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from mlsv.inference.embedder import finite
from mlsv.scoring.backend import (
    ASNORM_TOP_K,
    Cohort,
    as_norm,
    cohort_from_table,
    cohort_stats,
    cosine_scores,
    embedding_mean,
    subtract_mean,
)
from mlsv.scoring.calibration import QualityCalibrator, quality_measures, trial_features
from mlsv.scoring.embeddings import EmbeddingTable
from mlsv.scoring.record import SCALES, EvaluationRecord, ScoreStatistics, Threshold

__all__ = ["Scorer"]


class Scorer:
    """Scores raw embeddings of one model on every scale it can, and picks thresholds.

    Args:
        config: the model's ``MLSVConfig`` (its mean and evaluation record).
        cohort: a checked AS-norm cohort table with speakers, made with this model (None: the stored one).
        stored_cohort: (C, E) speaker means the model stores, already mean-subtracted.
        asnorm_top_k: AS-norm cohort size (default: the evaluation's, else the calibration's, else 600;
            capped at the cohort size).
    """

    def __init__(
        self,
        config,
        *,
        cohort: EmbeddingTable | None = None,
        stored_cohort: np.ndarray | None = None,
        asnorm_top_k: int | None = None,
    ):
        self.config = config
        self.embedding_size = int(config.embedding_size)
        record = self.record
        self.calibrator = QualityCalibrator.from_dict(record.calibration) if record.calibration else None
        mean = getattr(config, "training_mean", None)
        if mean is None and self.calibrator is not None and self.calibrator.info.get("mean") is not None:
            mean = self.calibrator.info["mean"]
        self.cohort: Cohort | None = None
        self.top_k = 0
        if asnorm_top_k is not None and asnorm_top_k < 2:
            raise ValueError(f"asnorm_top_k (--asnorm-top-k) must be at least 2, got {asnorm_top_k}")
        if cohort is not None:
            if mean is None:
                mean = embedding_mean(cohort.embeddings)
            self.cohort = cohort_from_table(cohort, np.asarray(mean, np.float32))
        elif stored_cohort is not None:  # speaker means, already mean-subtracted by the evaluation
            self.cohort = Cohort(
                np.arange(len(stored_cohort)).astype(str),
                stored_cohort,
                np.zeros(stored_cohort.shape[1], np.float32) if mean is None else np.asarray(mean, np.float32),
            )
        if self.cohort is not None:
            k = int(
                asnorm_top_k
                or record.top_k
                or (self.calibrator.info.get("top_k") if self.calibrator else None)
                or ASNORM_TOP_K
            )
            if k > len(self.cohort):
                if asnorm_top_k:
                    warnings.warn(
                        f"AS-norm top_k={k} exceeds the cohort's {len(self.cohort)} speakers; using {len(self.cohort)}",
                        stacklevel=3,
                    )
                k = len(self.cohort)
            if k < 2:
                raise ValueError("the AS-norm cohort needs at least 2 speakers")
            self.top_k = k
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32).reshape(-1)

    @property
    def record(self) -> EvaluationRecord:
        """The model's evaluation record, read from its config when asked (a config changed in place, e.g.
        by ``record_score_statistics``, counts at once)."""
        return EvaluationRecord.from_config(self.config)

    # -- scores -----------------------------------------------------------------------------------
    @property
    def score_scale(self) -> str:
        """``calibrated`` (calibration + cohort), ``asnorm`` (cohort) or ``cosine``."""
        if self.cohort is not None:
            return "calibrated" if self.calibrator is not None else "asnorm"
        return "cosine"

    def score_embeddings(
        self,
        a: np.ndarray,
        b: np.ndarray,
        duration_a: float | None = None,
        duration_b: float | None = None,
        snr_a: float | None = None,
        snr_b: float | None = None,
    ) -> dict[str, float]:
        """Scores two raw embeddings (E,) on every available scale: ``{"cosine", "asnorm"?, "calibrated"?}``.

        ``duration_*`` (seconds) are needed only on the calibrated scale, ``snr_*`` (dB SNR estimates, e.g. an
        embeddings table's ``snr``) only by a calibration with the SNR features.
        """
        return self.score_trial(a, b, duration_a, duration_b, snr_a, snr_b)[0]

    def score_trial(
        self,
        a: np.ndarray,
        b: np.ndarray,
        duration_a: float | None = None,
        duration_b: float | None = None,
        snr_a: float | None = None,
        snr_b: float | None = None,
    ) -> tuple[dict[str, float], str | None]:
        """:meth:`score_embeddings`, and on the calibrated scale why the trial lies outside the calibration's
        conditions (None: inside, not calibrated, or nothing to compare). ``snr_*``: dB estimates, None unknown."""
        durations = None if duration_a is None or duration_b is None else (duration_a, [duration_b])
        snr = (
            (math.nan if snr_a is None else snr_a, [math.nan if snr_b is None else snr_b])
            if snr_a is not None or snr_b is not None
            else None
        )
        scores, reasons = self._scores(a, np.asarray(b).reshape(1, -1), durations, snr)
        return {k: float(v[0]) for k, v in scores.items()}, (reasons[0] if reasons else None)

    def scores_against(
        self,
        a: np.ndarray,
        tests: np.ndarray,
        durations: tuple[float, Sequence[float]] | None,
        a_is_test: bool = False,
        snr: tuple[float, Sequence[float]] | None = None,
    ) -> dict[str, np.ndarray]:
        """Scores of one raw embedding ``a`` (E,) against each row of ``tests`` (N, E), on every available
        scale: ``{"cosine", "asnorm"?, "calibrated"?}`` of (N,) float64. ``durations`` (seconds of ``a``,
        and of each row) are needed only on the calibrated scale, ``snr`` (dB, likewise) only by a calibration
        with SNR features. ``a`` is each trial's enrolment side, or with ``a_is_test`` its test side (the rows
        are then the enrolments)."""
        return self._scores(a, tests, durations, snr, a_is_test)[0]

    def _scores(
        self,
        a: np.ndarray,
        tests: np.ndarray,
        durations: tuple[float, Sequence[float]] | None,
        snr: tuple[float, Sequence[float]] | None,
        a_is_test: bool = False,
    ) -> tuple[dict[str, np.ndarray], list[str | None] | None]:
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
            return out, None
        mu, sigma = cohort_stats(x, self.cohort, self.top_k)
        out["asnorm"] = as_norm(out["cosine"], e, t, mu, sigma)
        if self.calibrator is None:
            return out, None
        if durations is None:
            raise ValueError("calibrated scoring needs both utterances' durations")
        if snr is None and any(f.startswith("snr_") for f in self.calibrator.features):
            raise ValueError(
                "this model's calibration uses the recordings' SNR estimates (snr_e, snr_t), and none were given "
                "(score_embeddings needs snr_a/snr_b; sliding windows in track/online carry none): give them, score "
                "on the AS-norm scale, or use a calibration without the SNR features"
            )
        db = None if snr is None else np.array([snr[0], *snr[1]], dtype=np.float64)
        q = quality_measures(raw, np.array([durations[0], *durations[1]], dtype=np.float64), db)
        features = trial_features(out["asnorm"], q, e, t)
        out["calibrated"] = self.calibrator.transform(features)
        return out, self.calibrator.outside_reasons(features)

    # -- thresholds -------------------------------------------------------------------------------
    def threshold(self, far: float | None = None, scale: str | None = None) -> Threshold:
        """The decision threshold on ``scale`` (default :attr:`score_scale`), see the module docstring.

        Raises:
            ValueError: the model stores nothing that gives a threshold on that scale, explaining why
                and what to pass instead.
        """
        scale = scale or self.score_scale
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        record = self.record
        stats = record.statistics(scale)
        if far is not None:
            return self._far_threshold(finite(far, "far (--far)"), scale, stats)
        if stats is not None:
            name = stats.trial_list
            return Threshold(
                stats.eer_threshold, scale, "EER point of the model's evaluation" + (f" on {name}" if name else "")
            )
        t = self.record.threshold
        if t is not None and self.record.default_threshold_scale == scale:
            return Threshold(float(t), scale, "the model's stored threshold")
        if scale == "calibrated" and self.calibrator is not None:
            return Threshold(
                float(self.calibrator.threshold_), scale, f"the calibration's {self.calibrator.threshold} threshold"
            )
        have = []
        if t is not None:
            have.append(f"a threshold of {t:.4g} on the {self.record.default_threshold_scale} scale")
        if self.calibrator is not None:
            have.append("a calibration (applies to AS-norm scores: give cohort=...)")
        if have:
            raise ValueError(
                f"this model stores no decision threshold for {scale} scores (it has "
                f"{' and '.join(have)}); pass threshold=... (--threshold), or score with the cohort "
                "the threshold was set on"
            )
        raise ValueError(
            "this model stores no decision threshold (evaluating it with a cohort, or "
            "mlsv.scoring.record.record_score_statistics, stores one); pass threshold=... (--threshold)"
        )

    def _far_threshold(self, far: float, scale: str, stats: ScoreStatistics | None) -> Threshold:
        if not 0.0 < far < 1.0:
            raise ValueError(f"far (--far) must be in (0, 1), got {far}")
        if stats is not None and stats.far:
            levels = np.asarray(stats.far, dtype=np.float64)
            values = np.asarray(stats.thresholds, dtype=np.float64)
            ok = np.flatnonzero(levels <= far * (1 + 1e-9))
            n = stats.n_nontarget
            if ok.size == 0:
                raise ValueError(
                    f"far={far:g} is below what the stored {scale} non-target scores can measure "
                    f"({n} trials: lowest FAR {levels.min():.2g})"
                )
            i = ok[np.argmax(levels[ok])]
            return Threshold(
                float(values[i]),
                scale,
                f"FAR <= {levels[i]:.3g} on {n} stored non-target "
                f"{scale} scores" + (f" of {stats.trial_list}" if stats.trial_list else ""),
            )
        if scale == "calibrated":
            return Threshold(
                math.log(1.0 / far),
                scale,
                f"log(1/far) for calibrated LLRs: guarantees FAR <= {far:g} (an upper bound)",
            )
        t = self.record.threshold
        what = (
            f"only a threshold ({t:.4g}, the EER point on the {self.record.default_threshold_scale} scale)"
            if t is not None
            else "no score distribution"
        )
        raise ValueError(
            f"far={far:g} needs the non-target {scale} score distribution, and this model stores {what}: a "
            "threshold fixes one operating point and says nothing about the false-accept rate elsewhere. "
            "Re-evaluate the model to store its score statistics (mlsv.scoring.record.record_score_statistics), "
            "score on the calibrated scale (a model calibration and cohort=...), or pass threshold=..."
        )

    def decision_threshold(self, far: float | None, threshold: float | None, scale: str | None = None) -> Threshold:
        """The threshold of a decision: a given one, one for ``far``, or the model's."""
        scale = scale or self.score_scale
        if far is not None and threshold is not None:
            raise ValueError("give far (--far) or threshold (--threshold), not both: each sets the threshold")
        if threshold is not None:
            return Threshold(finite(threshold, "threshold (--threshold)"), scale, "given by the caller")
        return self.threshold(far=far, scale=scale)
