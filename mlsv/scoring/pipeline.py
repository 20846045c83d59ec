"""Scores trial lists end to end (cosine → AS-norm → QMF) and writes the scores TSV and metrics JSON."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsv.data.trials import Trials, check_trial_ids
from mlsv.scoring.backend import (
    ASNORM_TOP_K,
    Cohort,
    as_norm,
    cohort_from_table,
    cohort_stats,
    cosine_scores_indexed,
    embedding_mean,
    subtract_mean,
)
from mlsv.scoring.calibration import QualityCalibrator, quality_measures, trial_features
from mlsv.scoring.embeddings import EmbeddingTable
from mlsv.scoring.metrics import compute_metrics

__all__ = [
    "STAGES",
    "calibration_outside",
    "check_distinct_names",
    "final_stage",
    "score_index_lists",
    "score_trial_lists",
    "score_trials",
    "trial_indices",
    "trial_metrics",
    "write_metrics_json",
    "write_scores_tsv",
]

log = logging.getLogger(__name__)

#: Score stages in pipeline order; the last one present is the "final" score.
STAGES = ("cosine", "asnorm", "calibrated")


def trial_indices(table: EmbeddingTable, trials: Trials) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``table`` for each trial's enrolment and test ids.

    Raises:
        KeyError: naming the trial list, the line numbers and the ids missing from the table.
    """
    index = table.index()
    e = np.fromiter((index.get(u, -1) for u in trials.enroll), dtype=np.int64, count=len(trials))
    t = np.fromiter((index.get(u, -1) for u in trials.test), dtype=np.int64, count=len(trials))
    if (e < 0).any() or (t < 0).any():
        check_trial_ids(trials, index, source="embeddings")  # raises with line numbers and ids
    return e, t


def _resolve_mean_and_cohort(mean, cohort) -> tuple[np.ndarray | None, Cohort | None]:
    if mean is not None:
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    if cohort is None:
        return mean, None
    if isinstance(cohort, EmbeddingTable):
        if mean is None:
            mean = embedding_mean(cohort.embeddings)
        return mean, cohort_from_table(cohort, mean)
    if not isinstance(cohort, Cohort):
        raise TypeError(f"cohort must be an EmbeddingTable or a Cohort, got {type(cohort).__name__}")
    if mean is None:
        return cohort.mean, cohort
    if mean.shape != cohort.mean.shape or not np.allclose(mean, cohort.mean, atol=1e-6):
        raise ValueError("the mean vector differs from the one the cohort was built with")
    return mean, cohort


def score_index_lists(
    embeddings: np.ndarray,
    durations: np.ndarray | None,
    index_lists: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    mean: np.ndarray | None = None,
    cohort: Cohort | EmbeddingTable | None = None,
    top_k: int = ASNORM_TOP_K,
    calibrator: QualityCalibrator | None = None,
    device: str | torch.device | None = None,
    snr: np.ndarray | None = None,
) -> list[dict[str, np.ndarray]]:
    """Scores several trial lists given as row indices, with AS-norm statistics computed once.

    Args:
        embeddings: (N, E) raw embeddings.
        durations: (N,) seconds (needed only with a calibrator).
        index_lists: per trial list, ``(enroll_idx (T,), test_idx (T,))`` rows of ``embeddings``.
        mean: (E,) vector subtracted before cosine scoring; defaults to the cohort mean, else none.
        cohort: AS-norm cohort (a cohort table with speakers, or a built :class:`Cohort`); None skips
            AS-norm.
        top_k: AS-norm cohort size.
        calibrator: fitted QMF; needs ``cohort`` (its first feature is the AS-norm score).
        device: torch device for the products.
        snr: (N,) SNR estimates in dB (needed only by a calibrator with the SNR features).

    Returns:
        Per list, ``{"cosine": (T,), "asnorm": (T,) if cohort, "calibrated": (T,) if calibrator}``,
        float64.
    """
    mean, cohort = _resolve_mean_and_cohort(mean, cohort)
    if calibrator is not None:
        if cohort is None:
            raise ValueError("calibrated scoring needs the AS-norm cohort (--cohort) the calibration used")
        _check_calibrator(calibrator, top_k, mean)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    pairs = [(_rows(e, len(embeddings)), _rows(t, len(embeddings))) for e, t in index_lists]
    for e, t in pairs:
        if e.shape != t.shape:
            raise ValueError(f"a trial list has {e.size} enrolment but {t.size} test indices")
    # Only the utterances the trials use, renumbered 0..U-1 (O(N), no sort).
    flat = np.concatenate([i for pair in pairs for i in pair]) if pairs else np.empty(0, np.int64)
    used_mask = np.zeros(len(embeddings), dtype=bool)
    used_mask[flat] = True
    used = np.flatnonzero(used_mask)
    renumber = np.cumsum(used_mask) - 1
    x = subtract_mean(embeddings[used], mean)  # (U, E)
    stats = None if cohort is None else cohort_stats(x, cohort, top_k, device=device)
    quality = None
    if calibrator is not None:
        if durations is None:
            raise ValueError("calibrated scoring needs utterance durations")
        quality = quality_measures(
            embeddings[used], np.asarray(durations)[used], None if snr is None else np.asarray(snr)[used]
        )
    e_all = np.concatenate([renumber[e] for e, _ in pairs]) if pairs else np.empty(0, np.int64)
    t_all = np.concatenate([renumber[t] for _, t in pairs]) if pairs else np.empty(0, np.int64)
    # One call for all lists, so the full-matrix shortcut sees the total number of trials.
    cosine = cosine_scores_indexed(x, e_all, t_all, device=device)
    out = []
    bounds = np.cumsum([0] + [len(e) for e, _ in pairs])
    for a, b in zip(bounds[:-1], bounds[1:]):
        e, t = e_all[a:b], t_all[a:b]
        scores = {"cosine": cosine[a:b]}
        if stats is not None:
            scores["asnorm"] = as_norm(scores["cosine"], e, t, *stats)
        if quality is not None and calibrator is not None:
            scores["calibrated"] = calibrator.transform(trial_features(scores["asnorm"], quality, e, t))
        out.append(scores)
    return out


def calibration_outside(table: EmbeddingTable, trials: Trials, calibrator: QualityCalibrator) -> np.ndarray:
    """(T,) bool: the trials with a side outside the conditions ``calibrator`` was fitted on (its guard,
    :meth:`~mlsv.scoring.calibration.QualityCalibrator.outside_conditions`), from the table's durations and
    SNR estimates (an unknown SNR does not mark a trial)."""
    e, t = trial_indices(table, trials)
    q = quality_measures(table.embeddings, table.durations, table.snr)  # the measures a calibration sees
    features = {f"{m}_{side}": q[m][idx] for m in ("log_dur", "snr") for side, idx in (("e", e), ("t", t))}
    return calibrator.outside_conditions(features)


def _rows(idx, n: int) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"trial indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return idx


def _check_calibrator(cal: QualityCalibrator, top_k: int, mean: np.ndarray | None) -> None:
    k = cal.info.get("top_k")
    if k is not None and int(k) != top_k:
        log.warning("the calibration was fitted with AS-norm top_k=%s but scoring uses %s", k, top_k)
    ref = cal.info.get("mean")
    if ref is not None and mean is not None:
        ref = np.asarray(ref, dtype=np.float32)
        if ref.shape != mean.shape or not np.allclose(ref, mean, atol=1e-4):
            log.warning("the calibration was fitted with a different mean vector than the one used here")


def score_trial_lists(
    table: EmbeddingTable,
    trial_lists: Sequence[Trials],
    *,
    mean: np.ndarray | None = None,
    cohort: Cohort | EmbeddingTable | None = None,
    top_k: int = ASNORM_TOP_K,
    calibrator: QualityCalibrator | None = None,
    device: str | torch.device | None = None,
) -> list[dict[str, np.ndarray]]:
    """:func:`score_trials` for several lists sharing one embedding table (cohort stats computed once)."""
    index_lists = [trial_indices(table, tr) for tr in trial_lists]
    return score_index_lists(
        table.embeddings,
        table.durations,
        index_lists,
        mean=mean,
        cohort=cohort,
        top_k=top_k,
        calibrator=calibrator,
        device=device,
        snr=table.snr,
    )


def score_trials(
    table: EmbeddingTable,
    trials: Trials,
    *,
    mean: np.ndarray | None = None,
    cohort: Cohort | EmbeddingTable | None = None,
    top_k: int = ASNORM_TOP_K,
    calibrator: QualityCalibrator | None = None,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Scores one trial list: cosine after mean subtraction, then AS-norm, then QMF calibration.

    Args:
        table: embeddings of every utterance the trials name.
        trials: the trial list (ids must be in ``table``, else KeyError naming them and their lines).
        mean: (E,) mean vector; defaults to the cohort mean when a cohort is given, else none.
        cohort: cohort embeddings with speakers (or a built :class:`Cohort`) for AS-norm; None skips it.
        top_k: AS-norm cohort size (600 in the paper).
        calibrator: a fitted :class:`QualityCalibrator` (needs ``cohort``).
        device: torch device.

    Returns:
        ``{"cosine": (T,), "asnorm": (T,), "calibrated": (T,)}`` float64, the last two only when their
        inputs are given.
    """
    return score_trial_lists(
        table, [trials], mean=mean, cohort=cohort, top_k=top_k, calibrator=calibrator, device=device
    )[0]


def check_distinct_names(names: Sequence[str], paths: Sequence | None = None) -> None:
    """Raises ValueError naming the trial lists (``paths``, else ``names``) that share a name: the
    outputs named after them would overwrite each other."""
    clash = [str(p) for p, n in zip(paths or names, names) if list(names).count(n) > 1]
    if clash:
        raise ValueError(f"trial lists must have distinct file names to get distinct outputs: {', '.join(clash)}")


def final_stage(scores: Mapping[str, np.ndarray]) -> str:
    """Name of the last pipeline stage present in ``scores`` (``calibrated`` > ``asnorm`` > ``cosine``)."""
    for name in reversed(STAGES):
        if name in scores:
            return name
    raise ValueError(f"no score stage among {sorted(scores)}; expected one of {STAGES}")


def trial_metrics(
    trials: Trials,
    scores: Mapping[str, np.ndarray] | np.ndarray,
    *,
    stage: str | None = None,
    p_targets: Sequence[float] = (0.01, 0.05),
    outside: np.ndarray | None = None,
) -> dict:
    """Metrics of one scored trial list (its final stage unless ``stage`` is given).

    Calibrated scores also get ``act_dcf_<p>`` and ``cllr``. Raises ValueError when labels are unknown.
    With ``outside`` ((T,) bool, :func:`calibration_outside`) calibrated metrics also get
    ``n_outside_calibration`` and ``inside_calibration``: the same metrics on the trials inside the
    calibration's conditions only (absent when those lack a class); the other keys stay over all trials.
    """
    if isinstance(scores, Mapping):
        stage = stage or final_stage(scores)
        values = scores[stage]
    else:
        values = scores
    if not trials.has_labels:
        raise ValueError(f"trial list {trials.name!r} has unknown labels; metrics need 'LABEL ENROLL TEST' lines")
    metrics: dict[str, Any] = dict(
        compute_metrics(values, trials.labels, tuple(p_targets), calibrated=stage == "calibrated")
    )
    if outside is not None and stage == "calibrated":
        keep = ~np.asarray(outside, dtype=bool)
        metrics["n_outside_calibration"] = int((~keep).sum())
        labels = np.asarray(trials.labels)[keep]
        if (labels == 1).any() and (labels == 0).any():
            metrics["inside_calibration"] = compute_metrics(
                np.asarray(values)[keep], labels, tuple(p_targets), calibrated=True
            )
    return {**metrics, **trials.oddities()}


def write_scores_tsv(path: str | Path, trials: Trials, scores: Mapping[str, np.ndarray] | np.ndarray) -> Path:
    """Writes ``enroll\\ttest\\tscore\\tlabel`` (label empty when unknown), atomically.

    Args:
        path: output file.
        trials: the scored list.
        scores: (T,) scores, or a stage dict whose final stage is written.
    """
    values = scores[final_stage(scores)] if isinstance(scores, Mapping) else np.asarray(scores)
    if len(values) != len(trials):
        raise ValueError(f"{len(values)} scores for {len(trials)} trials")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = ["" if lab < 0 else str(int(lab)) for lab in trials.labels]
    text = [f"{e}\t{t}\t{s:.8g}\t{lab}\n" for e, t, s, lab in zip(trials.enroll, trials.test, values.tolist(), labels)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("enroll\ttest\tscore\tlabel\n")
        f.writelines(text)
    tmp.replace(path)
    return path


def _json_safe(x):
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_metrics_json(path: str | Path, metrics: Mapping[str, Mapping]) -> Path:
    """Writes ``{"<trial list name>": {"eer": ..., ...}}`` (non-finite numbers become null), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(metrics), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
