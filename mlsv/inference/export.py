"""ONNX export of the whole embedding model (encoder, aggregation, backend) and an ONNX Runtime embedder.

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
import shlex
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError

from mlsv.models.loading import (
    FINGERPRINT_SCHEME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    check_model_folder,
    load_config,
    read_stored_cohort,
    resolve_file,
    saved_weights_fingerprint,
    weights_fingerprint,
)

__all__ = [
    "ExportReport",
    "OnnxEmbedder",
    "StaleExportError",
    "check_export_weights",
    "check_onnx",
    "export_onnx",
    "saved_weights_fingerprint",
    "weights_fingerprint",
]

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_values", "attention_mask")
OUTPUT_NAMES = ("embeddings",)
DEFAULT_OPSET = 17


class StaleExportError(ValueError):
    """An ONNX export whose report says it was exported from other weights than the model's."""


# ------------------------------------------------------------------------------------------------
# which weights an export was made from


def _reexport_command(model_ref: str, onnx_file: str) -> str:
    return f"mlsv export --model {shlex.quote(model_ref)} --out {shlex.quote(onnx_file)}"


def check_export_weights(
    onnx_file: str | os.PathLike,
    weights: str | os.PathLike | None,
    *,
    report_file: str | os.PathLike | None = None,
    model_ref: str | None = None,
    fingerprint: str | None = None,
) -> str | None:
    """Checks that an ONNX export was made from ``weights``, with the fingerprint in its report.

    Args:
        onnx_file: the ``.onnx`` file.
        weights: the weights it must match: a ``model.safetensors`` file, a shard index or a model
            folder; None when there are none (an ONNX-only folder).
        report_file: the export's report (default ``<onnx_file>.json``); may be missing.
        model_ref: the model folder or hub id for the re-export command (default: the weights' folder).
        fingerprint: the weights' fingerprint when already known (``weights`` is then only named).

    Returns:
        None when the report records the weights' fingerprint; otherwise why it cannot be checked (no
        weights, no report, or a report without a fingerprint), for the caller to warn with.

    Raises:
        StaleExportError: the report records another fingerprint: the weights changed after the export.
    """
    onnx_file = os.fspath(onnx_file)
    report_file = os.fspath(report_file) if report_file is not None else onnx_file + ".json"
    if weights is None and fingerprint is None:
        return (
            f"there are no weights beside {onnx_file} (an ONNX-only folder), so whether it was exported "
            "from the model's current weights cannot be checked"
        )
    weights = Path(weights) if weights is not None else None
    if model_ref is None:
        model_ref = "MODEL" if weights is None else os.fspath(weights if weights.is_dir() else weights.parent)
    command = _reexport_command(model_ref, onnx_file)
    try:
        recorded = json.loads(Path(report_file).read_text(encoding="utf-8")).get("weights_fingerprint")
    except FileNotFoundError:
        return (
            f"{onnx_file} has no export report ({report_file}), so whether it was exported from {weights} "
            f"cannot be checked; re-export it to record one: {command}"
        )
    except (OSError, ValueError, AttributeError) as e:
        return f"{report_file} is unreadable ({type(e).__name__}: {e}); re-export it: {command}"
    if not isinstance(recorded, str) or not recorded:
        return (
            f"{report_file} records no weights fingerprint (an export made before mlsv recorded one), so "
            f"whether {onnx_file} was exported from {weights} cannot be checked; re-export it: {command}"
        )
    if recorded.rpartition(":")[0] != FINGERPRINT_SCHEME:
        return (
            f"{report_file} records a weights fingerprint of another kind ({recorded.rpartition(':')[0]!r}), "
            f"so whether {onnx_file} was exported from {weights} cannot be checked; re-export it: {command}"
        )
    actual = fingerprint if fingerprint is not None else saved_weights_fingerprint(weights)
    if actual != recorded:
        raise StaleExportError(
            f"{onnx_file} was exported from other weights than {weights} (its report {report_file} records "
            f"{recorded.rpartition(':')[2][:12]}..., the weights are {actual.rpartition(':')[2][:12]}...): the "
            f"weights changed after the export, and the ONNX model would give another model's embeddings. "
            f"Re-export it: {command}"
        )
    return None


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
            config = load_config(os.fspath(path.parent))
        self.config = config
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"  # the provider in use
        self.session = ort.InferenceSession(os.fspath(path), opts, providers=providers)
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUT_NAMES):
            raise ValueError(f"{path}: expected inputs {list(INPUT_NAMES)}, the graph has {names}")

    def __call__(self, input_values: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {
            "input_values": np.ascontiguousarray(input_values, dtype=np.float32),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        return self.session.run(list(OUTPUT_NAMES), feeds)[0]


def load_onnx_verifier_parts(
    src: str, device: str, *, onnx_path: str | os.PathLike | None = None, revision: str | None = None
) -> OnnxEmbedder:
    """The ``OnnxEmbedder`` of a model folder, hub id or ``.onnx`` file (with ``config.json`` beside it) for
    ``Verifier.from_pretrained(..., runtime="onnx")``, carrying the model's stored AS-norm cohort.

    Raises:
        FileNotFoundError: no ONNX file, or no ``config.json`` beside it, naming what is missing.
        StaleExportError: the export's report records other weights than the model's.
    """
    if src.endswith(".onnx"):
        if not os.path.isfile(src):
            raise FileNotFoundError(f"ONNX file not found: {src}")
        onnx_file, config_src = src, os.path.dirname(os.path.abspath(src))
        if not os.path.isfile(os.path.join(config_src, "config.json")):
            raise FileNotFoundError(
                f"no config.json beside {src}; give the model folder and "
                "onnx_path=... (or put the file in the model folder)"
            )
    else:
        check_model_folder(src)
        onnx_file = os.fspath(onnx_path) if onnx_path else resolve_file(src, "model.onnx", revision)
        config_src = src
    config = load_config(config_src, revision)
    cohort = read_stored_cohort(config_src, config, revision)
    embedder = _onnx_embedder(onnx_file, config_src, config, device)
    _check_onnx_weights(onnx_file, config_src, revision, explicit=onnx_path is not None)
    embedder.cohort_embeddings = cohort
    return embedder


def _onnx_embedder(onnx_file: str, model_src: str, config, device: str) -> OnnxEmbedder:
    """``OnnxEmbedder(onnx_file, ...)``, with ONNX Runtime's load errors (a corrupt,
    truncated or non-ONNX file) as a ValueError naming the file and the command that re-exports it."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    load_errors = tuple(
        getattr(ort_errors, n)
        for n in ("InvalidProtobuf", "InvalidGraph", "NoModel", "Fail", "InvalidArgument", "NotImplemented")
        if isinstance(getattr(ort_errors, n, None), type)
    )
    try:
        return OnnxEmbedder(onnx_file, config=config, device=device)
    except load_errors as e:
        folder = model_src if os.path.isdir(model_src) else "MODEL_DIR"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{onnx_file}: not a loadable ONNX model, corrupt or truncated ({first}); re-export it: "
            f"mlsv export --model {folder} --out {onnx_file}"
        ) from None


def _check_onnx_weights(onnx_file: str, src: str, revision: str | None, explicit: bool = False) -> None:
    """Refuses an ONNX export made from other weights than the model's; warns when it cannot tell.

    ``src`` is the model folder (or hub id) whose config is used. A hub model's export is compared with
    the weights only when they are in the local cache (they are downloaded anyway for a stored
    cohort): the check never downloads the weights for itself.
    """
    report = onnx_file + ".json"
    if os.path.isdir(src):
        folder = Path(src)
        weights = next((folder / n for n in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME) if (folder / n).is_file()), None)
    else:  # a hub id
        if not explicit and not os.path.isfile(report):
            try:
                report = resolve_file(src, "model.onnx.json", revision)
            except EntryNotFoundError:
                pass  # an export without a report: check_export_weights says so
        cached = try_to_load_from_cache(src, WEIGHTS_NAME, revision=revision)
        if not isinstance(cached, str):
            log.info(
                "%s: the weights of %s are not downloaded, so the export is not compared with them "
                "(push_to_hub compares them before uploading)",
                onnx_file,
                src,
            )
            return
        weights = Path(cached)
    reason = check_export_weights(onnx_file, weights, report_file=report, model_ref=src)
    if reason is not None:
        warnings.warn(f"{reason}; loading it unchecked", stacklevel=3)
