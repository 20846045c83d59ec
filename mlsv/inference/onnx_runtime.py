"""Running an ONNX export with ONNX Runtime: ``Verifier.from_pretrained(..., runtime="onnx")``.

Needs onnxruntime, numpy, soundfile and soxr, not torch or transformers: the model's ``config.json`` is
read as JSON and its stored AS-norm cohort and weights fingerprint with numpy
(:mod:`mlsv.inference.model_files`); huggingface_hub is imported only for a hub id. The export itself
(which needs torch) is :mod:`mlsv.inference.export`.

The graph takes ``input_values`` (B, S) float32 waveforms at the model's rate and ``attention_mask``
(B, S) int64 (1 for valid samples) and returns ``embeddings`` (B, E) float32. An export's report
(``<onnx>.json``) records the fingerprint of the weights it was exported from; loading compares it with
the model's ``model.safetensors`` and refuses an export made before the weights were overwritten (a
retrain): such a graph would silently give another model's embeddings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mlsv.extras import needs_extra
from mlsv.inference.model_files import (
    FINGERPRINT_SCHEME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    check_model_folder,
    min_samples,
    model_file,
    read_model_config,
    read_stored_cohort,
    saved_weights_fingerprint,
)

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "OnnxEmbedder",
    "StaleExportError",
    "check_export_weights",
    "check_onnx_device",
    "load_onnx_verifier_parts",
    "min_samples",
    "saved_weights_fingerprint",
]

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_values", "attention_mask")
OUTPUT_NAMES = ("embeddings",)


def check_onnx_device(device: Any) -> str:
    """``cpu`` or ``cuda[:N]`` for ONNX Runtime; ValueError when it is neither or has no CUDA provider.
    ``"auto"`` is ``cuda`` when onnxruntime has the CUDA provider, else ``cpu``."""
    name = str(device)
    if name == "auto":
        with needs_extra("onnx", "the ONNX runtime"):
            import onnxruntime as ort

        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"device {name!r} is not a device for ONNX Runtime (cpu or cuda)")
    if name.startswith("cuda"):
        with needs_extra("onnx", "the ONNX runtime"):
            import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(
                f"device {name!r}: this onnxruntime has no CUDA provider (install onnxruntime-gpu, or use cpu)"
            )
    return name


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
        with needs_extra("onnx", "the ONNX runtime"):
            import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        if config is None:
            config = read_model_config(os.fspath(path.parent))
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
        onnx_file = os.fspath(onnx_path) if onnx_path else model_file(src, "model.onnx", revision)
        config_src = src
    config = read_model_config(config_src, revision)
    cohort = read_stored_cohort(config_src, config, revision)
    embedder = _onnx_embedder(onnx_file, config_src, config, device)
    _check_onnx_weights(onnx_file, config_src, revision, explicit=onnx_path is not None)
    embedder.cohort_embeddings = cohort
    return embedder


def _onnx_embedder(onnx_file: str, model_src: str, config, device: str) -> OnnxEmbedder:
    """``OnnxEmbedder(onnx_file, ...)``, with ONNX Runtime's load errors (a corrupt,
    truncated or non-ONNX file) as a ValueError naming the file and the command that re-exports it."""
    with needs_extra("onnx", "the ONNX runtime"):
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
        import huggingface_hub
        import huggingface_hub.errors

        if not explicit and not os.path.isfile(report):
            try:
                report = model_file(src, "model.onnx.json", revision)
            except huggingface_hub.errors.EntryNotFoundError:
                pass  # an export without a report: check_export_weights says so
        cached = huggingface_hub.try_to_load_from_cache(src, WEIGHTS_NAME, revision=revision)
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
