"""Pictures of scores (DET curves on probit axes, score histograms) and the markdown evaluation report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlsv.extras import needs_extra
from mlsv.scoring.metrics import det_curve

__all__ = ["plot_det", "plot_histogram", "write_report"]

_TICKS = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4])


def _pyplot():
    with needs_extra("eval", "the report's plots"):
        import matplotlib

    matplotlib.use("Agg", force=True)
    with needs_extra("eval", "the report's plots"):
        import matplotlib.pyplot as plt

    return plt


def plot_det(systems: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "DET curve") -> Path:
    """Draws DET curves (miss vs false-alarm rate on normal-deviate axes) as a PNG.

    Args:
        systems: ``{label: (scores (N,), labels (N,) 0/1)}``, one curve each.
        path: output PNG.
        title: figure title.
    """
    with needs_extra("eval", "the report's plots"):
        from scipy.stats import norm

    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lo, hi = 1e-4, 0.5
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    try:
        for name, (scores, labels) in systems.items():
            c = det_curve(scores, labels)
            ax.plot(norm.ppf(np.clip(c.p_fa, lo, hi)), norm.ppf(np.clip(c.p_miss, lo, hi)), label=name)
        ticks = norm.ppf(_TICKS)
        tick_labels = [f"{100 * t:g}" for t in _TICKS]
        ax.plot(ticks[[0, -1]], ticks[[0, -1]], color="0.7", lw=0.8, ls="--")  # EER line
        for setter in (ax.set_xticks, ax.set_yticks):
            setter(ticks)
        ax.set_xticklabels(tick_labels)
        ax.set_yticklabels(tick_labels)
        ax.set_xlim(ticks[0], ticks[-1])
        ax.set_ylim(ticks[0], ticks[-1])
        ax.set_xlabel("false-alarm rate (%)")
        ax.set_ylabel("miss rate (%)")
        ax.set_title(title)
        ax.grid(True, lw=0.4, alpha=0.6)
        if systems:
            ax.legend(loc="upper right", fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def plot_histogram(
    scores: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    title: str = "Scores",
    bins: int = 100,
    threshold: float | None = None,
) -> Path:
    """Draws target and non-target score histograms (densities) as a PNG.

    Args:
        scores: (N,) scores.
        labels: (N,) 0/1.
        path: output PNG.
        title: figure title.
        bins: number of bins over the joint score range.
        threshold: optional decision threshold drawn as a vertical line.
    """
    plt = _pyplot()
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edges = np.histogram_bin_edges(s, bins=bins)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    try:
        ax.hist(s[~y], bins=edges, density=True, alpha=0.55, label=f"non-target ({(~y).sum()})")
        ax.hist(s[y], bins=edges, density=True, alpha=0.55, label=f"target ({y.sum()})")
        if threshold is not None and np.isfinite(threshold):
            ax.axvline(threshold, color="k", lw=1, ls="--", label=f"threshold {threshold:.3g}")
        ax.set_xlabel("score")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.4f}"


def write_report(
    out_dir: str | Path,
    metrics: Mapping[str, Mapping],
    plots: Sequence[str | Path] = (),
    title: str = "mlsv evaluation",
) -> Path:
    """Writes ``out_dir/report.md``: one metrics table (a row per trial list) and the plots.

    Args:
        out_dir: folder of the report; plot paths inside it are linked relatively.
        metrics: ``{"<trial list>": {"eer": ..., "min_dcf_0.01": ..., ...}}`` as in the metrics JSON.
        plots: PNG paths to embed, in order.
        title: the report's heading.

    Returns:
        The report's path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preferred = ["eer", "min_dcf_0.01", "min_dcf_0.05", "act_dcf_0.01", "act_dcf_0.05", "cllr", "n_trials"]
    present = {k for m in metrics.values() for k in m}
    cols = [k for k in preferred if k in present]
    lines = [f"# {title}", ""]
    if metrics:
        header = ["trial list"] + [("EER (%)" if c == "eer" else c) for c in cols]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, m in metrics.items():
            lines.append("| " + " | ".join([name] + [_fmt(m.get(c)) for c in cols]) + " |")
        lines += ["", "minDCF with C_miss = C_fa = 1; EER interpolated between DET points (ties grouped).", ""]
    for p in plots:
        p = Path(p)
        try:
            rel = p.resolve().relative_to(out_dir.resolve())
        except ValueError:
            rel = p
        lines += [f"![{p.stem}]({rel.as_posix()})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
