"""What an evaluation leaves in a model: the typed record that thresholds and model cards are read from.

``mlsv evaluate`` writes it and the Verifier and the model card read it. It is stored in the model's
``config.json`` as three fields (``evaluation``, a JSON object; ``calibration``; ``threshold``) so that
a model loads with transformers alone; :class:`EvaluationRecord` is the one typed view of them:

>>> record = EvaluationRecord.from_config(model.config)
>>> record.statistics("asnorm").eer_threshold
>>> record.apply(model.config)          # writes the three fields back

Score scales are one ``Literal``: ``cosine`` (after mean subtraction), ``asnorm`` and ``calibrated``
(an LLR). Models saved before the record existed spelled the calibrated scale ``calibrated_llr`` in
``evaluation["threshold_scale"]``; they load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import numpy as np

from mlsv.scoring.metrics import eer

__all__ = ["SCALES", "EvaluationRecord", "Scale", "ScoreStatistics", "Threshold", "as_scale", "record_score_statistics"]

Scale = Literal["cosine", "asnorm", "calibrated"]
#: The score scales in pipeline order: each one needs what the one before it needs, and more.
SCALES: tuple[Scale, ...] = get_args(Scale)
#: Spellings of a scale in models saved by earlier versions.
_LEGACY_SCALES = {"calibrated_llr": "calibrated"}
#: FAR levels tabulated by :func:`record_score_statistics`.
FAR_GRID = tuple(float(x) for x in np.geomspace(1e-5, 0.5, 48))


def as_scale(name: Any, what: str = "scale") -> Scale:
    """``name`` as a :data:`Scale` (legacy spellings accepted); ValueError naming ``what`` otherwise."""
    scale = _LEGACY_SCALES.get(name, name)
    if scale not in SCALES:
        raise ValueError(f"{what} must be one of {', '.join(SCALES)}, got {name!r}")
    return scale


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
class ScoreStatistics:
    """One scale's scores on a held-out trial list: the EER point and the non-target tail.

    ``far[i]`` is a false-accept rate and ``thresholds[i]`` the lowest threshold whose measured FAR on
    the ``n_nontarget`` non-target scores is at most ``far[i]``.
    """

    eer: float
    eer_threshold: float
    n_target: int
    n_nontarget: int
    far: tuple[float, ...] = ()
    thresholds: tuple[float, ...] = ()
    trial_list: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "n_target": self.n_target,
            "n_nontarget": self.n_nontarget,
            "nontarget_tail": {"far": list(self.far), "threshold": list(self.thresholds)},
        }
        if self.trial_list:
            d["trial_list"] = self.trial_list
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreStatistics:
        tail = d.get("nontarget_tail") or {}
        return cls(
            eer=float(d["eer"]),
            eer_threshold=float(d["eer_threshold"]),
            n_target=int(d.get("n_target", 0)),
            n_nontarget=int(d.get("n_nontarget", 0)),
            far=tuple(float(x) for x in tail.get("far", ())),
            thresholds=tuple(float(x) for x in tail.get("threshold", ())),
            trial_list=d.get("trial_list"),
        )

    @classmethod
    def measure(cls, scores: np.ndarray, labels: np.ndarray, trial_list: str | None = None) -> ScoreStatistics:
        """The statistics of ``scores`` (T,) with 0/1 ``labels`` (T,)."""
        eer_pct, thr = eer(scores, labels)
        non = np.sort(scores[labels == 0])[::-1]
        levels, values = [], []
        for f in FAR_GRID:
            if f * len(non) < 1:
                continue  # a FAR below 1 / n cannot be measured
            allowed = int(math.floor(f * len(non)))  # non-targets at or above the threshold
            levels.append(f)
            values.append(float(np.nextafter(non[min(allowed, len(non) - 1)], np.inf)))
        return cls(
            float(eer_pct),
            float(thr),
            int((labels == 1).sum()),
            int(len(non)),
            tuple(levels),
            tuple(values),
            trial_list or None,
        )


@dataclass(frozen=True)
class EvaluationRecord:
    """Everything an evaluation stores in a model.

    Attributes:
        final_stage: the last scale the evaluation scored (its metrics are ``metrics``).
        metrics: ``{trial list: metrics}`` of the final stage.
        metrics_by_stage: ``{scale: {trial list: metrics}}``, in pipeline order.
        trial_lists: the evaluated trial lists' names, in the order evaluated.
        top_k: the AS-norm cohort size the scores were computed with.
        threshold_scale: the scale ``threshold`` is on.
        threshold: the model's default decision threshold (None: none stored).
        score_statistics: per scale, the held-out list's EER point and non-target tail.
        calibration: the QMF calibration (``QualityCalibrator.to_dict()``), None when not fitted.
        extra: keys of the stored ``evaluation`` object this version does not know, kept as they are.
    """

    final_stage: Scale | None = None
    metrics: dict[str, dict] = field(default_factory=dict)
    metrics_by_stage: dict[str, dict] = field(default_factory=dict)
    trial_lists: tuple[str, ...] = ()
    top_k: int | None = None
    threshold_scale: Scale | None = None
    threshold: float | None = None
    score_statistics: dict[str, ScoreStatistics] = field(default_factory=dict)
    calibration: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = (
        "final_stage",
        "metrics",
        "metrics_by_stage",
        "trial_lists",
        "top_k",
        "threshold_scale",
        "score_statistics",
    )

    # -- the stored form ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``config.evaluation`` object (without ``threshold`` and ``calibration``, which have fields of
        their own in ``config.json``); empty entries are left out."""
        d: dict[str, Any] = dict(self.extra)
        if self.final_stage is not None:
            d["final_stage"] = self.final_stage
        if self.metrics:
            d["metrics"] = self.metrics
        if self.metrics_by_stage:
            d["metrics_by_stage"] = self.metrics_by_stage
        if self.trial_lists:
            d["trial_lists"] = list(self.trial_lists)
        if self.top_k is not None:
            d["top_k"] = self.top_k
        if self.threshold_scale is not None:
            d["threshold_scale"] = self.threshold_scale
        if self.score_statistics:
            d["score_statistics"] = {s: st.to_dict() for s, st in self.score_statistics.items()}
        return d

    @classmethod
    def from_dict(
        cls, evaluation: Mapping[str, Any] | None, *, threshold: float | None = None, calibration: Mapping | None = None
    ) -> EvaluationRecord:
        """The record of a stored ``evaluation`` object (None or {}: nothing evaluated) and the
        ``threshold`` and ``calibration`` fields beside it."""
        ev = dict(evaluation or {})
        stats = ev.get("score_statistics") or {}
        return cls(
            final_stage=as_scale(ev["final_stage"], "evaluation final_stage") if ev.get("final_stage") else None,
            metrics=dict(ev.get("metrics") or {}),
            metrics_by_stage=dict(ev.get("metrics_by_stage") or {}),
            trial_lists=tuple(str(t) for t in ev.get("trial_lists") or ()),
            top_k=int(ev["top_k"]) if ev.get("top_k") is not None else None,
            threshold_scale=(
                as_scale(ev["threshold_scale"], "evaluation threshold_scale") if ev.get("threshold_scale") else None
            ),
            threshold=None if threshold is None else float(threshold),
            score_statistics={
                as_scale(s, "a score_statistics scale"): ScoreStatistics.from_dict(v) for s, v in stats.items() if v
            },
            calibration=dict(calibration) if calibration else None,
            extra={k: v for k, v in ev.items() if k not in cls._KEYS},
        )

    @classmethod
    def from_config(cls, config) -> EvaluationRecord:
        """The record an ``MLSVConfig`` holds (an unevaluated model gives an empty record)."""
        return cls.from_dict(
            getattr(config, "evaluation", None),
            threshold=getattr(config, "threshold", None),
            calibration=getattr(config, "calibration", None),
        )

    def apply(self, config) -> None:
        """Writes the record into ``config``'s ``evaluation``, ``threshold`` and ``calibration`` fields."""
        config.evaluation = self.to_dict() or None
        config.threshold = self.threshold
        config.calibration = self.calibration

    # -- what decisions read -----------------------------------------------------------------------
    def statistics(self, scale: str) -> ScoreStatistics | None:
        """The stored statistics of ``scale``, or None."""
        return self.score_statistics.get(scale)

    @property
    def default_threshold_scale(self) -> Scale:
        """The scale ``threshold`` is on: as recorded, else ``calibrated`` when a calibration is stored,
        else ``cosine``."""
        return self.threshold_scale or ("calibrated" if self.calibration else "cosine")


def record_score_statistics(
    config,
    scores: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    trial_list: str | None = None,
    final: str | None = None,
) -> dict:
    """Stores, per score scale, the EER threshold and the non-target tail in the model's record.

    Call it after evaluating on a (validation) trial list, before ``save_pretrained``, so that the
    Verifier can decide at the EER point or at any FAR down to ``1 / n_nontarget``. It also sets the
    model's threshold (``config.threshold``) to the final scale's EER threshold and records that scale.

    Args:
        config: an ``MLSVConfig`` (changed in place).
        scores: ``{"cosine": (T,), "asnorm": (T,), "calibrated": (T,)}``, any subset.
        labels: (T,) 0/1.
        trial_list: the trial list's name, for the record.
        final: the scale the threshold refers to (default: the last present in pipeline order).

    Returns:
        The ``score_statistics`` dict written (its stored form).
    """
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    stats: dict[str, ScoreStatistics] = {}
    for scale in SCALES:
        if scale not in scores:
            continue
        s = np.asarray(scores[scale], dtype=np.float64).reshape(-1)
        if s.shape != y.shape:
            raise ValueError(f"{scale}: {s.size} scores for {y.size} labels")
        stats[scale] = ScoreStatistics.measure(s, y, trial_list)
    if not stats:
        raise ValueError(f"no score scale among {sorted(scores)}; expected some of {SCALES}")
    final_scale = as_scale(final, "final") if final else [s for s in SCALES if s in stats][-1]
    record = replace(
        EvaluationRecord.from_config(config),
        score_statistics=stats,
        threshold_scale=final_scale,
        threshold=stats[final_scale].eer_threshold,
    )
    record.apply(config)
    return {s: st.to_dict() for s, st in stats.items()}
