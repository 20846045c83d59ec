"""Which encoder layers a model listens to: LAP's per-frame layer scores, SUPERB's static weights.

For a LAP model (docs/method.md#lap) the analysis recomputes the aggregation from the frontend's hidden
states with the LAP module's own parameters (eval mode) and keeps what its forward discards:

* ``scores`` (heads, T, L): the sigmoid layer scores of every head and frame;
* ``wins`` (L,): how often each layer wins the max-pool over layers, counted over every frame and
  channel (the argmax over layers of ``score * state``: the layer whose value reaches the output);
* the mean score per layer (over heads and frames).

For a SUPERB model it reports the static softmax layer weights. The figure shows the waveform on
top, one small heatmap (layers x frames) per LAP head, their head average, and per-layer bars beside.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsv.extras import needs_extra
from mlsv.models import LayerAttentivePooling, SuperbAggregation

__all__ = ["LayerAnalysis", "analyze_layers", "format_layer_table", "plot_layers", "write_layer_table"]


@dataclass
class LayerAnalysis:
    """Per-layer view of one utterance through a model.

    Attributes:
        aggregation: ``"lap"`` or ``"superb"``.
        waveform: (S,) the samples analysed (model rate).
        sampling_rate: the model's rate.
        num_layers: L, hidden states aggregated (index 0 is the CNN/embedding output).
        scores: (heads, T, L) LAP scores, or None.
        wins: (L,) max-pool wins per layer over frames x channels (LAP), or None.
        superb_weights: (L,) SUPERB softmax weights, or None.
        layer_ids: the encoder hidden-state index of each aggregated layer.
    """

    aggregation: str
    waveform: np.ndarray
    sampling_rate: int
    num_layers: int
    scores: np.ndarray | None = None
    wins: np.ndarray | None = None
    superb_weights: np.ndarray | None = None
    layer_ids: list[int] | None = None

    @property
    def duration(self) -> float:
        return self.waveform.size / self.sampling_rate

    @property
    def mean_scores(self) -> np.ndarray | None:
        """(L,) mean LAP score per layer over heads and frames."""
        return None if self.scores is None else self.scores.mean(axis=(0, 1))

    @property
    def win_share(self) -> np.ndarray | None:
        """(L,) fraction of max-pool wins per layer."""
        return None if self.wins is None else self.wins / max(int(self.wins.sum()), 1)

    def rows(self) -> list[dict[str, float | int | None]]:
        """One dict per layer: layer, mean_score, max_pool_wins, win_share, superb_weight."""
        ids = self.layer_ids or list(range(self.num_layers))
        out = []
        for i in range(self.num_layers):
            out.append(
                {
                    "layer": int(ids[i]),
                    "mean_score": None if self.scores is None else float(self.mean_scores[i]),
                    "max_pool_wins": None if self.wins is None else int(self.wins[i]),
                    "win_share": None if self.wins is None else float(self.win_share[i]),
                    "superb_weight": None if self.superb_weights is None else float(self.superb_weights[i]),
                }
            )
        return out


def analyze_layers(model, waveform: np.ndarray) -> LayerAnalysis:
    """Runs ``model``'s frontend on one utterance and extracts its layer aggregation's view.

    Args:
        model: an ``MLSVModel`` aggregating with LAP or SUPERB.
        waveform: (S,) float32 samples at the model's rate.

    Raises:
        ValueError: the model aggregates otherwise (last layer, MHFA's own aggregators).
    """
    import torch

    agg = model.aggregation
    if not isinstance(agg, (LayerAttentivePooling, SuperbAggregation)):
        kind = "MHFA" if agg is None else type(agg).__name__
        raise ValueError(f"inspect shows LAP scores or SUPERB weights; this model aggregates with {kind}")
    layer_ids = list(model.frontend.layers or range(model.frontend.num_states))
    wav = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if isinstance(agg, SuperbAggregation):
        return LayerAnalysis(
            "superb",
            wav,
            int(model.config.sampling_rate),
            agg.logits.numel(),
            superb_weights=agg.layer_weights().detach().cpu().numpy(),
            layer_ids=layer_ids,
        )
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = torch.from_numpy(wav)[None].to(device)
        states, _ = model.frontend(x, torch.tensor([wav.size], device=device))  # (L, 1, T, D)
        L, B, T, D = states.shape
        h, d = agg.heads, D // agg.heads
        z = agg.proj_in(agg.norm(states.reshape(-1, D).float())).view(L, B * T, h, d)
        mean = z.mean(-1).permute(1, 2, 0)  # (N, h, L)
        peak = z.amax(-1).permute(1, 2, 0)
        scores = torch.sigmoid(agg._mlp(mean) + agg._mlp(peak))  # (N, h, L); eval: no dropout
        weighted = z * scores.permute(2, 0, 1).unsqueeze(-1)  # (L, N, h, d)
        winners = weighted.argmax(0)  # (N, h, d): the layer reaching the max-pool output
        wins = torch.bincount(winners.reshape(-1), minlength=L)
    return LayerAnalysis(
        "lap",
        wav,
        int(model.config.sampling_rate),
        L,
        scores=scores.view(T, h, L).permute(1, 0, 2).cpu().numpy(),
        wins=wins.cpu().numpy().astype(np.int64),
        layer_ids=layer_ids,
    )


def format_layer_table(analysis: LayerAnalysis) -> str:
    """The per-layer table as aligned text."""
    head = f"{'layer':>5}  {'mean score':>10}  {'max-pool wins':>13}  {'win share':>9}  {'SUPERB weight':>13}"
    lines = [head, "-" * len(head)]

    def fmt(v, spec: str, width: int) -> str:
        return f"{'-':>{width}}" if v is None else f"{v:>{width}{spec}}"

    for r in analysis.rows():
        lines.append(
            f"{r['layer']:>5}  {fmt(r['mean_score'], '.4f', 10)}  {fmt(r['max_pool_wins'], 'd', 13)}  "
            f"{fmt(r['win_share'], '.1%', 9)}  {fmt(r['superb_weight'], '.4f', 13)}"
        )
    return "\n".join(lines)


def write_layer_table(analysis: LayerAnalysis, path: str | os.PathLike) -> Path:
    """Writes the per-layer table as CSV (empty cells where a measure does not apply)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = analysis.rows()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
    return path


def plot_layers(analysis: LayerAnalysis, out: str | os.PathLike, title: str | None = None, max_cols: int = 4) -> Path:
    """Draws the waveform, LAP's per-head and head-average layer scores and per-layer bars to ``out``."""
    with needs_extra("eval", "the layer picture"):
        import matplotlib

    matplotlib.use("Agg", force=False)
    with needs_extra("eval", "the layer picture"):
        import matplotlib.pyplot as plt

    a = analysis
    L, dur = a.num_layers, a.duration
    t = np.arange(a.waveform.size) / a.sampling_rate
    ticks = list(range(L)) if L <= 14 else list(range(0, L, max(1, L // 8)))
    ids = a.layer_ids or list(range(L))
    if a.aggregation == "superb":
        fig, (ax_w, ax_b) = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [3, 1]})
        ax_w.plot(t, a.waveform, lw=0.4, color="0.3")
        ax_w.set(xlim=(0, dur), xlabel="time (s)", title="waveform")
        ax_b.barh(np.arange(L), a.superb_weights, color="tab:orange")
        ax_b.set(
            yticks=ticks,
            yticklabels=[ids[i] for i in ticks],
            ylabel="layer",
            xlabel="weight",
            title="SUPERB layer weights",
        )
    else:
        heads = a.scores.shape[0]
        cols = min(max_cols, heads)
        rows = math.ceil(heads / cols)
        fig = plt.figure(figsize=(3.0 * cols + 3.2, 1.6 + 1.5 * rows + 2.0), constrained_layout=True)
        gs = fig.add_gridspec(
            rows + 2, cols + 1, height_ratios=[1.0] + [1.0] * rows + [1.4], width_ratios=[1.0] * cols + [0.9]
        )
        ax_w = fig.add_subplot(gs[0, :cols])
        ax_w.plot(t, a.waveform, lw=0.4, color="0.3")
        ax_w.set(xlim=(0, dur), title="waveform", yticks=[])
        extent = (0, dur, -0.5, L - 0.5)
        im = None
        for k in range(heads):
            ax = fig.add_subplot(gs[1 + k // cols, k % cols], sharex=ax_w)
            im = ax.imshow(
                a.scores[k].T,
                aspect="auto",
                origin="lower",
                extent=extent,
                vmin=0,
                vmax=1,
                cmap="viridis",
                interpolation="nearest",
            )
            ax.set_title(f"head {k}", fontsize=8)
            ax.set_yticks(ticks, [ids[i] for i in ticks], fontsize=6)
            ax.tick_params(labelsize=6)
        ax_m = fig.add_subplot(gs[rows + 1, :cols], sharex=ax_w)
        avg = a.scores.mean(0).T  # (L, T)
        ax_m.imshow(avg, aspect="auto", origin="lower", extent=extent, cmap="viridis", interpolation="nearest")
        ax_m.set(xlabel="time (s)", ylabel="layer", title="LAP layer scores, head average")
        ax_m.set_yticks(ticks, [ids[i] for i in ticks])
        if im is not None:
            fig.colorbar(im, ax=ax_w, location="right", label="score", shrink=0.9)
        ax_b = fig.add_subplot(gs[1:, cols])
        y = np.arange(L)
        ax_b.barh(y - 0.2, a.mean_scores, height=0.4, label="mean score", color="tab:blue")
        ax_b.barh(y + 0.2, a.win_share, height=0.4, label="max-pool win share", color="tab:orange")
        ax_b.set(
            yticks=ticks, yticklabels=[ids[i] for i in ticks], ylabel="layer", ylim=(-0.5, L - 0.5), title="per layer"
        )
        ax_b.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"{a.aggregation.upper()} layer aggregation ({dur:.2f} s)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
