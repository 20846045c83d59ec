"""ONNX export of the whole embedding model (encoder, aggregation, backend) and an ONNX Runtime embedder.

The graph takes ``input_values`` (B, S) float32 waveforms at the model's rate and ``attention_mask``
(B, S) int64 (1 for valid samples) and returns ``embeddings`` (B, E) float32; batch and length axes are
dynamic. Input normalisation and padding masks are inside the graph, so padded batches give the
embeddings of the utterances alone, as in PyTorch.

The legacy TorchScript exporter (``dynamo=False``) is tried first: it handles transformers' speech
encoders (WavLM's relative position bias, ``F.multi_head_attention_forward``) reliably. WavLM is
exported through transformers' attention ("eager"): mlsv's fused path pads lengths to multiples of 16
with Python integers, which a trace would freeze to the example's length; the parameters are the same. When it fails,
the dynamo exporter (``torch.export``) is tried with dynamic shapes. Every export is checked against
PyTorch with onnxruntime at lengths other than the traced one; the result is written beside the file
(``<out>.json``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExportReport", "OnnxEmbedder", "check_onnx", "export_onnx"]

INPUT_NAMES = ("input_values", "attention_mask")
OUTPUT_NAMES = ("embeddings",)
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

    def to_dict(self) -> dict[str, Any]:
        import onnxruntime
        import torch

        return {**asdict(self), "inputs": {"input_values": "float32 (batch, samples)",
                                           "attention_mask": "int64 (batch, samples)"},
                "outputs": {"embeddings": f"float32 (batch, {self.embedding_size})"},
                "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


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

    axes = {"input_values": {0: "batch", 1: "samples"}, "attention_mask": {0: "batch", 1: "samples"},
            "embeddings": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python values
        torch.onnx.export(graph, example, path, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)


def _export_dynamo(graph, example, path: str, opset: int) -> None:
    import torch

    batch, samples = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=400)
    shapes = {"input_values": {0: batch, 1: samples}, "attention_mask": {0: batch, 1: samples}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(graph, example, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                 dynamic_shapes=shapes, opset_version=max(opset, 18), dynamo=True)
    prog.save(path)


def export_onnx(model, out: str | os.PathLike, *, opset: int = DEFAULT_OPSET, exporter: str = "auto",
                trace_seconds: float = 1.0, check: bool = True,
                check_seconds: tuple[float, ...] = (1.7, 0.9, 0.45)) -> ExportReport:
    """Exports ``model`` (an ``MLSVModel``) to ONNX and checks it against PyTorch.

    Args:
        model: the embedding model (moved to CPU, eval mode).
        out: the ``.onnx`` file to write.
        opset: ONNX opset (17 by default; dynamo uses at least 18).
        exporter: ``"auto"`` (TorchScript, then dynamo), ``"torchscript"`` or ``"dynamo"``.
        trace_seconds: length of the traced example (two rows, the second padded).
        check: run the parity check and write ``<out>.json``.
        check_seconds: valid lengths of the parity batch (one padded batch, longest first).

    Returns:
        An :class:`ExportReport`; ``max_abs_diff`` is the parity result.

    Raises:
        RuntimeError: every exporter failed (their messages are included).
    """
    model = model.cpu().eval()
    sr = int(model.config.sampling_rate)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _EmbeddingGraph.build(model)
    example = _example(sr, trace_seconds)
    order = {"auto": ("torchscript", "dynamo"), "torchscript": ("torchscript",), "dynamo": ("dynamo",)}
    if exporter not in order:
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    errors: list[str] = []
    used = None
    frontend = model.frontend
    attention = getattr(frontend, "attention", None)
    if attention not in (None, "eager") and hasattr(frontend, "set_attention"):
        # the fused attention path rounds lengths up with Python integers, which tracing would freeze
        frontend.set_attention("eager")
    try:
        for name in order[exporter]:
            try:
                (_export_torchscript if name == "torchscript" else _export_dynamo)(graph, example, os.fspath(path),
                                                                                 opset)
                used = name
                break
            except Exception as e:  # noqa: BLE001 - any exporter failure falls through to the next one
                errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        if attention not in (None, "eager") and hasattr(frontend, "set_attention"):
            frontend.set_attention(attention)
    if used is None:
        raise RuntimeError("ONNX export failed:\n  " + "\n  ".join(errors))
    report = ExportReport(path=os.fspath(path), exporter=used, opset=opset if used == "torchscript" else max(opset, 18),
                          max_abs_diff=None, trace_seconds=trace_seconds,
                          embedding_size=int(model.config.embedding_size), sampling_rate=sr, errors=errors)
    if check:
        report.max_abs_diff = check_onnx(model, path, check_seconds)
        report.check_lengths = list(check_seconds)
        Path(os.fspath(path) + ".json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def check_onnx(model, path: str | os.PathLike, seconds: tuple[float, ...] = (1.7, 0.9, 0.45),
               seed: int = 1) -> float:
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


class OnnxEmbedder:
    """Runs an exported model with onnxruntime. ``(input_values (B, S), attention_mask (B, S)) -> (B, E)``.

    Args:
        path: the ``.onnx`` file.
        config: the model's ``MLSVConfig`` (sampling rate, training mean, calibration, threshold), read
            from ``config.json`` beside the file when not given.
        device: ``"cpu"`` or ``"cuda"`` (CUDA provider when onnxruntime has it).
        threads: intra-op threads (default: onnxruntime's choice).
    """

    runtime = "onnx"

    def __init__(self, path: str | os.PathLike, config=None, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        if config is None:
            from mlsv.api import _load_config

            config = _load_config(os.fspath(path.parent))
        self.config = config
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(os.fspath(path), opts, providers=providers)
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUT_NAMES):
            raise ValueError(f"{path}: expected inputs {list(INPUT_NAMES)}, the graph has {names}")

    def __call__(self, input_values: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_values": np.ascontiguousarray(input_values, dtype=np.float32),
                 "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
        return self.session.run(list(OUTPUT_NAMES), feeds)[0]
