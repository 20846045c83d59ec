"""The demo page: two recordings (uploaded or recorded) in, the model's score, threshold and decision out, with
LAP's layer attention for each recording (``mlsv demo``, and the Hugging Face Space ``mlsv push --space`` makes).

:func:`compare` does the work and needs no web framework; :func:`build_demo` wraps it in a Gradio page (Gradio
is the ``demo`` extra, imported only here). Nothing reaches the internet: Gradio's analytics and version
check are off, and the page uses the system's fonts.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlsv.inference.inspect_layers import analyze_layers, plot_layers
from mlsv.inference.verifier import VerificationResult, Verifier

__all__ = ["DemoResult", "build_demo", "compare", "launch_demo", "load_demo_verifier"]

#: Seconds of each recording the layer plot shows (as ``mlsv inspect``'s default).
PLOT_SECONDS = 20.0


@dataclass(frozen=True)
class DemoResult:
    """What the page shows for two recordings.

    Attributes:
        result: the verification (score, threshold, decision on the model's scale), or None when the model
            stores no threshold for its scale.
        score: the score on the model's scale.
        scale: ``cosine``, ``asnorm`` or ``calibrated``.
        note: why there is no decision, or "".
        plots: the layer-attention figure of each recording (PNG), or None where the model has no layer
            attention to show (last-layer or MHFA aggregation, an ONNX runtime).
    """

    result: VerificationResult | None
    score: float
    scale: str
    note: str
    plots: tuple[Path | None, Path | None]

    @property
    def decision(self) -> str:
        return self.result.label if self.result is not None else "no decision (no threshold stored)"

    def markdown(self) -> str:
        """The result as the page's Markdown."""
        if self.result is None:
            return f"**score** {self.score:.4f} ({self.scale})\n\n{self.note}"
        r = self.result
        outside = f"\n\noutside the calibration's conditions: {r.outside_calibration}" if r.outside_calibration else ""
        if r.threshold is None:
            return f"### {r.label}\n\n**score** {r.score:.4f} on the {r.scale} scale ({r.threshold_source}){outside}"
        sign = ">=" if r.decision else "<"
        return (
            f"### {r.label}\n\n"
            f"**score** {r.score:.4f} {sign} **threshold** {r.threshold:.4f} on the {r.scale} scale "
            f"({r.threshold_source}){outside}"
        )


def load_demo_verifier(model: str | os.PathLike, *, device: str = "auto", cohort=None, asnorm_top_k=None) -> Verifier:
    """The PyTorch ``Verifier`` the demo runs (the layer plot needs the model itself, not an ONNX export)."""
    return Verifier.from_pretrained(model, device=device, cohort=cohort, asnorm_top_k=asnorm_top_k)


def compare(verifier: Verifier, a, b, plot_dir: str | os.PathLike) -> DemoResult:
    """Verifies ``a`` against ``b`` (paths or arrays, as :meth:`Verifier.verify` takes) and draws each one's
    layer attention into ``plot_dir``.

    Raises:
        AudioError / ValueError: a missing, silent or too short recording, naming it.
    """
    if a is None or b is None:
        raise ValueError("give two recordings: upload them or record them with the microphone")
    try:
        verifier.threshold()
    except ValueError as e:  # the score is still worth showing
        result, note = None, str(e)
        score = verifier.score(a, b)
    else:
        result, note = verifier.verify(a, b), ""
        score = result.score
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = (_layer_plot(verifier, a, plot_dir / "a.png", "A"), _layer_plot(verifier, b, plot_dir / "b.png", "B"))
    return DemoResult(result, float(score), verifier.score_scale, note, plots)


def _layer_plot(verifier: Verifier, x, out: Path, name: str) -> Path | None:
    model = getattr(verifier.embedder.backend, "model", None)
    if model is None:
        return None
    wav = verifier.load(x)[: int(PLOT_SECONDS * verifier.sampling_rate)]
    try:
        analysis = analyze_layers(model, wav)
    except ValueError:  # an aggregation without layer attention (last layer, MHFA)
        return None
    return plot_layers(analysis, out, title=f"recording {name}: {analysis.aggregation.upper()} layer aggregation")


def _gradio():
    """Gradio, with its analytics and version check off (before its first import), or an error naming the
    extra to install."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise ImportError('the demo page needs Gradio: pip install "mlsv[demo]"') from None
    return gr


def build_demo(model: str | os.PathLike | Verifier, *, title: str | None = None, **verifier_options):
    """The Gradio page (a ``gradio.Blocks``) of ``model`` (a model folder, a hub id, or a ``Verifier``).

    Two audio inputs (upload or microphone), a button, the decision with score and threshold on the
    model's scale, and each recording's layer-attention plot. ``verifier_options`` go to
    :func:`load_demo_verifier` (``device``, ``cohort``, ``asnorm_top_k``).
    """
    gr = _gradio()
    verifier = model if isinstance(model, Verifier) else load_demo_verifier(model, **verifier_options)
    name = title or (f"mlsv: {Path(os.fspath(model)).name}" if not isinstance(model, Verifier) else "mlsv")
    plots_root = Path(tempfile.mkdtemp(prefix="mlsv-demo-"))
    counter = iter(range(1 << 62))

    def run(a, b):
        try:
            out = compare(verifier, a, b, plots_root / str(next(counter)))
        except (OSError, ValueError) as e:  # AudioError is a ValueError: shown on the page, not a traceback
            raise gr.Error(str(e)) from None
        plot_a, plot_b = (None if p is None else str(p) for p in out.plots)
        return out.decision, out.markdown(), plot_a, plot_b

    scale = verifier.score_scale
    with gr.Blocks(title=name, analytics_enabled=False) as page:
        gr.Markdown(
            f"# {name}\n\nAre these two recordings the same speaker? Upload two recordings or record them, "
            f"then press **Verify**. Scores are on the model's **{scale}** scale "
            f"({verifier.embedding_size}-dimensional embeddings, {verifier.sampling_rate} Hz)."
        )
        with gr.Row():
            a = gr.Audio(sources=["upload", "microphone"], type="filepath", label="recording A", elem_id="audio-a")
            b = gr.Audio(sources=["upload", "microphone"], type="filepath", label="recording B", elem_id="audio-b")
        button = gr.Button("Verify", variant="primary", elem_id="verify")
        decision = gr.Textbox(label="decision", interactive=False, elem_id="decision")
        details = gr.Markdown(elem_id="details")
        plot_a = gr.Image(type="filepath", label="layer attention of A", elem_id="layers-a")
        plot_b = gr.Image(type="filepath", label="layer attention of B", elem_id="layers-b")
        button.click(run, inputs=[a, b], outputs=[decision, details, plot_a, plot_b])
    atexit.register(shutil.rmtree, plots_root, ignore_errors=True)  # the figures, once the server stops
    return page


def launch_demo(
    model: str | os.PathLike | Verifier,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    quiet: bool = False,
    **verifier_options,
):
    """Builds the page and serves it (blocking) at ``http://HOST:PORT``; ``share`` asks Gradio for a public
    link (which reaches the internet)."""
    gr = _gradio()
    page = build_demo(model, **verifier_options)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts
    return page.launch(server_name=host, server_port=port, share=share, quiet=quiet, theme=theme, show_error=True)
