"""ONNX export of the whole embedding model (encoder, aggregation, backend), checked with ONNX Runtime
(running an export, without torch, is :mod:`mlsv.inference.onnx_runtime`).

The graph takes ``input_values`` (B, S) float32 waveforms at the model's rate and ``attention_mask``
(B, S) int64 (1 for valid samples) and returns ``embeddings`` (B, E) float32; batch and length axes are
dynamic. Input normalisation and padding masks are inside the graph, so padded batches give the
embeddings of the utterances alone, as in PyTorch.

The legacy TorchScript exporter (``dynamo=False``) is tried first: it handles transformers' speech
encoders (WavLM's relative position bias, ``F.multi_head_attention_forward``) reliably. WavLM is
exported through transformers' attention ("eager"): mlsv's fused path pads lengths to multiples of 16
with Python integers, which a trace would freeze to the example's length; the first CNN layer runs as
a convolution (``first_conv_block`` unfolds the waveform, which the exporter cannot do at a dynamic
length); the parameters are the same. When it fails,
the dynamo exporter (``torch.export``) is tried with dynamic shapes. Every export is checked against
PyTorch with onnxruntime at lengths other than the traced one; the result is written beside the file
(``<out>.json``).

The report also records a fingerprint of the weights the graph was exported from
(:func:`weights_fingerprint`). The same fingerprint is computed from a model folder's
``model.safetensors`` without building the model (:func:`saved_weights_fingerprint`), so that
:func:`check_export_weights` can refuse an export made before the weights were overwritten (a retrain):
such a graph would silently give another model's embeddings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlsv.extras import require_extra
from mlsv.inference.model_files import WEIGHTS_NAME, saved_weights_fingerprint
from mlsv.inference.onnx_runtime import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    OnnxEmbedder,
    StaleExportError,
    check_export_weights,
    load_onnx_verifier_parts,
)
from mlsv.models.loading import weights_fingerprint

# OnnxEmbedder, StaleExportError, check_export_weights, load_onnx_verifier_parts: the runtime's, named here
# too (mlsv.inference.onnx_runtime runs an export without torch)
__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "WEIGHTS_NAME",
    "ExportReport",
    "load_onnx_verifier_parts",
    "OnnxEmbedder",
    "StaleExportError",
    "check_export_weights",
    "check_onnx",
    "export_onnx",
    "saved_weights_fingerprint",
    "weights_fingerprint",
]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


@dataclass
class ExportReport:
    """What :func:`export_onnx` did.

    Attributes:
        path: the ONNX file.
        exporter: ``"torchscript"`` or ``"dynamo"``.
        opset: ONNX opset.
        max_abs_diff: largest |onnxruntime - PyTorch| over the parity check's embeddings (None if skipped).
        check_lengths: lengths (seconds) of the parity batch; the export traced ``trace_seconds``.
        trace_seconds: length of the example input the export traced.
        errors: messages of exporters that failed before the one that worked.
        weights_fingerprint: :func:`weights_fingerprint` of the exported model (``SCHEME:sha256``).
    """

    path: str
    exporter: str
    opset: int
    max_abs_diff: float | None
    check_lengths: list[float] = field(default_factory=list)
    trace_seconds: float = 1.0
    embedding_size: int = 0
    sampling_rate: int = 16000
    errors: list[str] = field(default_factory=list)
    weights_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        import torch

        try:
            import onnxruntime
        except ImportError:  # an export without the parity check does not need it
            onnxruntime = None
        return {
            **asdict(self),
            "inputs": {"input_values": "float32 (batch, samples)", "attention_mask": "int64 (batch, samples)"},
            "outputs": {"embeddings": f"float32 (batch, {self.embedding_size})"},
            "torch": torch.__version__,
            "onnxruntime": getattr(onnxruntime, "__version__", None),
        }


class _EmbeddingGraph:
    """Wraps an MLSVModel as ``(input_values, attention_mask) -> embeddings`` (an nn.Module at build)."""

    @staticmethod
    def build(model):
        import torch

        class EmbeddingOnly(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                return self.inner(input_values, attention_mask=attention_mask).embeddings

        return EmbeddingOnly(model).eval()


def _example(sr: int, seconds: float, batch: int = 2, seed: int = 0):
    """A (batch, S) example with the later rows padded (valid lengths 100 %, 75 %, ...)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sr)
    x = 0.1 * torch.randn(batch, n, generator=g)
    mask = torch.zeros(batch, n, dtype=torch.long)
    for i in range(batch):
        mask[i, : max(n - i * n // (2 * batch), 1)] = 1
    return x * mask, mask


def _export_torchscript(graph, example, path: str, opset: int) -> None:
    import torch

    axes = {
        "input_values": {0: "batch", 1: "samples"},
        "attention_mask": {0: "batch", 1: "samples"},
        "embeddings": {0: "batch"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python values
        torch.onnx.export(
            graph,
            example,
            path,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def _export_dynamo(graph, example, path: str, opset: int) -> None:
    import torch

    batch, samples = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=400)
    shapes = {"input_values": {0: batch, 1: samples}, "attention_mask": {0: batch, 1: samples}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            graph,
            example,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=shapes,
            opset_version=max(opset, 18),
            dynamo=True,
        )
    prog.save(path)


@contextlib.contextmanager
def _traceable(frontend):
    """The frontend's plain paths while exporting (same parameters, same outputs): transformers'
    attention, since the fused one rounds lengths up with Python integers, which tracing would freeze;
    the first CNN layer as a convolution, since the TorchScript exporter has no dynamic-length unfold."""
    attention = getattr(frontend, "attention", None)
    fused_conv = getattr(frontend, "fuse_first_conv", False)
    if attention not in (None, "eager") and hasattr(frontend, "set_attention"):
        frontend.set_attention("eager")
    if fused_conv:
        frontend.fuse_first_conv = False
    try:
        yield
    finally:
        if attention not in (None, "eager") and hasattr(frontend, "set_attention"):
            frontend.set_attention(attention)
        if fused_conv:
            frontend.fuse_first_conv = True


def export_onnx(
    model,
    out: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    trace_seconds: float = 1.0,
    check: bool = True,
    check_seconds: tuple[float, ...] = (1.7, 0.9, 0.45),
) -> ExportReport:
    """Exports ``model`` (an ``MLSVModel``) to ONNX and checks it against PyTorch.

    Args:
        model: the embedding model (moved to CPU, eval mode).
        out: the ``.onnx`` file to write.
        opset: ONNX opset (17 by default; dynamo uses at least 18).
        exporter: ``"auto"`` (TorchScript, then dynamo), ``"torchscript"`` or ``"dynamo"``.
        trace_seconds: length of the traced example (two rows, the second padded).
        check: run the parity check.
        check_seconds: valid lengths of the parity batch (one padded batch, longest first).

    Returns:
        An :class:`ExportReport`, also written to ``<out>.json`` (with the weights' fingerprint, which
        loading with ``runtime="onnx"`` and ``push_to_hub`` compare with the model's weights);
        ``max_abs_diff`` is the parity result (None without the check).

    Raises:
        RuntimeError: every exporter failed (their messages are included).
    """
    require_extra("export", "ONNX export")
    model = model.cpu().eval()
    sr = int(model.config.sampling_rate)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    report_file = Path(os.fspath(path) + ".json")
    # a report left by an earlier export must not vouch for this one, even if this one fails half-way
    report_file.unlink(missing_ok=True)
    fingerprint = weights_fingerprint(model)
    graph = _EmbeddingGraph.build(model)
    example = _example(sr, trace_seconds)
    order = {"auto": ("torchscript", "dynamo"), "torchscript": ("torchscript",), "dynamo": ("dynamo",)}
    if exporter not in order:
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    errors: list[str] = []
    used = None
    with _traceable(model.frontend):
        for name in order[exporter]:
            try:
                (_export_torchscript if name == "torchscript" else _export_dynamo)(
                    graph, example, os.fspath(path), opset
                )
                used = name
                break
            except Exception as e:  # noqa: BLE001 - any exporter failure falls through to the next one
                errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if used is None:
        raise RuntimeError("ONNX export failed:\n  " + "\n  ".join(errors))
    report = ExportReport(
        path=os.fspath(path),
        exporter=used,
        opset=opset if used == "torchscript" else max(opset, 18),
        max_abs_diff=None,
        trace_seconds=trace_seconds,
        embedding_size=int(model.config.embedding_size),
        sampling_rate=sr,
        errors=errors,
        weights_fingerprint=fingerprint,
    )
    if check:
        report.max_abs_diff = check_onnx(model, path, check_seconds)
        report.check_lengths = list(check_seconds)
    report_file.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def check_onnx(model, path: str | os.PathLike, seconds: tuple[float, ...] = (1.7, 0.9, 0.45), seed: int = 1) -> float:
    """Max |ONNX Runtime - PyTorch| over the embeddings of one padded batch of the given valid lengths."""
    import torch

    sr = int(model.config.sampling_rate)
    g = torch.Generator().manual_seed(seed)
    lengths = [max(int(s * sr), 1) for s in seconds]
    n = max(lengths)
    x = torch.zeros(len(lengths), n)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, k in enumerate(lengths):
        x[i, :k] = 0.1 * torch.randn(k, generator=g)
        mask[i, :k] = 1
    with torch.inference_mode():
        ref = model.cpu().eval()(x, attention_mask=mask).embeddings.numpy()
    got = OnnxEmbedder(path, config=model.config)(x.numpy(), mask.numpy())
    return float(np.abs(got - ref).max())
