"""Speaker-verification metrics (EER, minDCF) as a Hugging Face `evaluate` module, numpy only.

Self-contained on purpose (evaluate copies this one file); the numbers equal mlsv.scoring.metrics:
tied scores form one threshold, and the EER is interpolated linearly between consecutive DET points.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Speaker-verification metrics of trial scores: the equal error rate (EER, in percent) and the minimum
normalised detection cost (minDCF) at target priors 0.01 and 0.05 with C_miss = C_fa = 1, plus the
thresholds where they occur. Tied scores form one threshold; the EER is taken where the straight lines
between consecutive DET points cross P_miss = P_fa.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): one score per trial, higher meaning "same speaker".
    references (list of int): 1 for a same-speaker (target) trial, 0 otherwise; both must occur.
    p_targets (list of float, optional): target priors for minDCF, default [0.01, 0.05].
    c_miss (float, optional): cost of a miss, default 1.
    c_fa (float, optional): cost of a false alarm, default 1.
Returns:
    eer (float): equal error rate in percent.
    eer_threshold (float): the score threshold at the EER.
    min_dcf_<p> (float): normalised minimum detection cost at each target prior p.
    min_dcf_<p>_threshold (float or None): its threshold (None when rejecting all trials is best).
    n_trials, n_target, n_nontarget (int): trial counts.
Examples:
    >>> metric = evaluate.load("metrics/mlsv_verification")
    >>> r = metric.compute(predictions=[0.9, 0.8, 0.3, 0.1], references=[1, 1, 0, 0])
    >>> r["eer"]
    0.0
"""

_CITATION = """
@inproceedings{kim2025lap,
  title={Rethinking Leveraging Pre-Trained Multi-Layer Representations for Speaker Verification},
  author={Kim, Jin Sob and Park, Hyun Joon and Shin, Wooseok and Han, Sung Won},
  booktitle={Interspeech},
  year={2025}
}
"""


def _det_points(scores, labels):
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} predictions but {y.size} references")
    if not np.isfinite(s).all():
        raise ValueError("predictions contain NaN or infinite values")
    if ((y != 0) & (y != 1)).any():
        raise ValueError("references must be 0 or 1")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("references need both target (1) and non-target (0) trials")
    thr, inv = np.unique(s, return_inverse=True)
    inv = inv.reshape(-1)
    n_tar_at = np.bincount(inv[y], minlength=len(thr))
    n_non_at = np.bincount(inv[~y], minlength=len(thr))
    n_tar, n_non = int(n_tar_at.sum()), int(n_non_at.sum())
    p_miss = np.concatenate([[0], np.cumsum(n_tar_at)]) / n_tar
    p_fa = (n_non - np.concatenate([[0], np.cumsum(n_non_at)])) / n_non
    return p_miss, p_fa, np.append(thr, np.inf), n_tar, n_non


def _eer(p_miss, p_fa, thr):
    d = p_miss - p_fa
    i = int(np.argmax(d >= 0))
    a = -d[i - 1] / (d[i] - d[i - 1])
    value = p_miss[i - 1] + a * (p_miss[i] - p_miss[i - 1])
    t0, t1 = thr[i - 1], thr[i]
    threshold = t0 + a * (t1 - t0) if np.isfinite(t1) else t0
    return 100.0 * float(value), float(threshold)


def _min_dcf(p_miss, p_fa, thr, p_target, c_miss, c_fa):
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    i = int(np.argmin(cost))
    t = float(thr[i])
    return float(cost[i] / min(c_miss * p_target, c_fa * (1.0 - p_target))), (t if np.isfinite(t) else None)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MlsvVerification(evaluate.Metric):
    """EER and minDCF of speaker-verification trial scores."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("float64"),
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2512.22148"],
        )

    def _compute(self, predictions, references, p_targets=(0.01, 0.05), c_miss=1.0, c_fa=1.0):
        p_miss, p_fa, thr, n_tar, n_non = _det_points(predictions, references)
        eer, eer_threshold = _eer(p_miss, p_fa, thr)
        out = {"eer": eer, "eer_threshold": eer_threshold}
        for p in p_targets:
            value, t = _min_dcf(p_miss, p_fa, thr, float(p), c_miss, c_fa)
            out[f"min_dcf_{float(p):g}"] = value
            out[f"min_dcf_{float(p):g}_threshold"] = t
        out.update(n_trials=n_tar + n_non, n_target=n_tar, n_nontarget=n_non)
        return out
