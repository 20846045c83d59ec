"""Loading a trained model: model folders and hub ids, device checks, weight fingerprints.

Everything that turns a name the user typed into an ``MLSVModel`` (or its config, or one of its files)
checks what it can first and fails with an error that names the culprit: a mistyped folder fails at
once (not after the hub client's retries), a run's folder points at its ``model/`` folder, a config of
another model type or a corrupt weights file names the file, and a device this machine lacks is refused
before anything is loaded.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from safetensors import SafetensorError
from transformers import CONFIG_MAPPING, PretrainedConfig

from mlsv.models.configuration_mlsv import MLSVConfig
from mlsv.models.frontend import min_samples as encoder_min_samples
from mlsv.models.modeling_mlsv import MLSVModel

__all__ = [
    "check_device",
    "load_config",
    "load_model",
    "min_samples",
    "model_source",
    "resolve_file",
    "weights_fingerprint",
]

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
#: Names the fingerprint's recipe; a report with another one is not compared (it cannot tell).
FINGERPRINT_SCHEME = "mlsv-weights-sha256-v1"
#: Saved tensors the fingerprint leaves out: the AS-norm cohort is not part of the graph (the ONNX
#: runtime reads it from the weights file) and ``mlsv evaluate`` rewrites it without touching the graph.
FINGERPRINT_EXCLUDES = frozenset({"cohort_embeddings"})


def min_samples(config) -> int:
    """Fewest samples (at the model's rate) that give an ``MLSVConfig``'s encoder one output frame: the
    encoder's own frame arithmetic (:func:`mlsv.models.frontend.min_samples`), the one rule of every
    entry point."""
    return encoder_min_samples(config.encoder_config)


def check_device(device: Any):
    """``device`` as a ``torch.device`` this torch can run on; ValueError naming it otherwise.

    The one check of every device string that enters the API (``TorchEmbedder``,
    ``Verifier.from_pretrained``, ``load_model``, the evaluation functions): a misspelt device
    (``gpu``) or one this machine lacks (``cuda`` on a CPU-only torch, ``cuda:3`` with 2 GPUs, ``mps``
    off a Mac) is refused before any model is loaded, instead of failing deep inside torch. ``"auto"`` is
    ``cuda`` when this torch sees a GPU, else ``cpu`` (the default of every ``--device``).
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {name!r} is not a torch device (cpu, cuda, cuda:0, mps, ...)") from None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(f"device {name!r}: this torch build has no CUDA (use cpu)")
        n = torch.cuda.device_count()
        if n == 0:
            raise ValueError(f"device {name!r}: no CUDA GPU is visible to this torch (use cpu)")
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"device {name!r}: this machine has {n} CUDA device{'s' * (n > 1)} (cuda:0 to cuda:{n - 1})"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r}: MPS is not available on this machine (use cpu)")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(f"device {name!r}: this torch cannot run a model there (use cpu or cuda)")
    return dev


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, read when asked (not at import)."""
    return any(
        os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (a TCP connection to its endpoint within ``timeout`` s), or None.

    A quick check before looking a model up on the hub: offline, huggingface_hub retries for about
    half a minute before failing. Behind a proxy (``HTTPS_PROXY``, ``ALL_PROXY``) nothing is checked:
    the proxy, not this machine, reaches the hub.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    if not url.hostname:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {constants.ENDPOINT}: {e.strerror or e}"
    return None


def model_source(src: str, revision: str | None = None, probe_hub: bool = True) -> str:
    """``src`` when it is a local path or a hub id worth asking the hub for; else FileNotFoundError at once.

    Only ``namespace/name`` is looked up on the hub, and only when it is in the local hub cache or
    (``probe_hub``) the hub can be reached; with HF_HUB_OFFLINE set only from the cache. A mistyped
    folder name fails now, not after the hub client's retries.
    """
    if os.path.exists(src):
        return src
    if src.startswith((".", "/", "~")) or src.count("/") > 1 or "\\" in src or src.endswith(".onnx"):
        raise FileNotFoundError(f"model folder not found: {src}")
    if "/" not in src or not all(src.split("/")):
        raise FileNotFoundError(f"model folder not found: {src} (a hub model id is namespace/name)")
    try:
        cached = isinstance(try_to_load_from_cache(src, "config.json", revision=revision), str)
    except ValueError:  # not a valid repo id
        raise FileNotFoundError(f"model folder not found: {src} (nor a valid hub model id)") from None
    if cached:
        return src
    if hub_offline():
        raise FileNotFoundError(
            f"model folder not found: {src} (nor in the local hub cache; HF_HUB_OFFLINE "
            "is set, so the hub is not asked)"
        )
    why = hub_unreachable() if probe_hub else None
    if why:
        raise FileNotFoundError(
            f"model folder not found: {src} (nor in the local hub cache, and the hub cannot be asked: {why})"
        )
    return src


def _config_where(src: str) -> str:
    return os.path.join(src, "config.json") if os.path.isdir(src) else f"{src} (config.json)"


def check_model_folder(src: str) -> None:
    """FileNotFoundError for a local folder without a config.json (a run's or a training stage's folder
    gets the path of its model/ folder)."""
    if os.path.isdir(src) and not os.path.isfile(os.path.join(src, "config.json")):
        inner = os.path.join(src, "model")
        hint = (
            f"; a run's or training stage's model is in its model/ folder: {inner}"
            if os.path.isfile(os.path.join(inner, "config.json"))
            else ""
        )
        raise FileNotFoundError(f"{src}: not a model folder (no config.json){hint}")


def check_model_config(src: str, revision: str | None = None) -> None:
    """ValueError when ``src``'s config.json is not an mlsv model's, naming the file and what it is.

    OSError (missing or unreadable config.json, hub errors) is left to the caller, who checks a local
    folder first (``check_model_folder``: transformers reads a folder without one as an empty config).
    """
    config, _ = PretrainedConfig.get_config_dict(src, revision=revision)
    model_type = config.get("model_type")
    if model_type != "mlsv":
        what = f"a {model_type!r} model" if model_type else "a config.json without a model_type"
        raise ValueError(f"{src}: {what}, not an mlsv model")
    encoder = config.get("encoder_config")
    if not isinstance(encoder, dict) or not encoder:
        raise ValueError(f"{_config_where(src)}: no encoder_config (not a complete mlsv model config)")
    if not encoder.get("model_type"):
        raise ValueError(
            f"{_config_where(src)}: encoder_config has no model_type (which encoder family: wavlm, hubert, ...)"
        )
    if encoder.get("model_type") not in CONFIG_MAPPING:
        raise ValueError(
            f"{_config_where(src)}: encoder_config has an unknown model_type "
            f"{encoder.get('model_type')!r} (not one this transformers version knows)"
        )


def _weights_where(src: str) -> str:
    if os.path.isdir(src):
        for name in ("model.safetensors", "model.safetensors.index.json"):
            if os.path.isfile(os.path.join(src, name)):
                return os.path.join(src, name) if name == "model.safetensors" else f"{src} (a weights shard)"
    return f"{src} (model.safetensors)"


def load_model(src: str | os.PathLike, revision: str | None = None, *, device: str | Any | None = None):
    """An ``MLSVModel`` from a model folder or hub id, on ``device`` when given (see :func:`check_device`).

    Raises:
        FileNotFoundError: ``src`` is neither a model folder nor a model on the hub, naming it.
        ValueError: a model of another type, an incomplete config.json, corrupt or truncated weights,
            or a bad ``device``, naming the file (or the device).
    """
    dev = check_device(device) if device is not None else None
    src = model_source(os.fspath(src), revision)
    check_model_folder(src)
    try:
        check_model_config(src, revision)
        model = MLSVModel.from_pretrained(src, revision=revision)
    except SafetensorError as e:
        raise ValueError(
            f"{_weights_where(src)}: corrupt or truncated weights file ({e}); copy or save the model again"
        ) from None
    except OSError as e:
        what = "not a model folder" if os.path.isdir(src) else "no such model folder, nor a model on the hub"
        raise FileNotFoundError(f"{src}: {what} ({e})") from None
    return model if dev is None else model.to(dev)


def resolve_file(model: str, filename: str, revision: str | None) -> str:
    """A file of a local model folder or, for a hub id, downloaded with huggingface_hub."""
    # no connection probe: this path leaves reaching the hub to hf_hub_download (retrying ~25 s offline)
    model = model_source(model, revision, probe_hub=False)
    if os.path.isdir(model):
        path = os.path.join(model, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found"
                + (
                    "; export it first: mlsv export --model MODEL --out MODEL/model.onnx"
                    if filename.endswith(".onnx")
                    else ""
                )
            )
        return path
    return hf_hub_download(model, filename, revision=revision)


def load_config(src: str, revision: str | None = None) -> MLSVConfig:
    """The ``MLSVConfig`` of a model folder or hub id, checked as :func:`load_model` checks it."""
    check_model_folder(src)
    check_model_config(src, revision)
    return MLSVConfig.from_pretrained(src, revision=revision)


# ------------------------------------------------------------------------------------------------
# which weights a model has


def _hash_tensors(names: Iterable[str], get: Callable[[str], Any]) -> str:
    """``SCHEME:sha256`` over the named torch tensors, by sorted name: name, dtype, shape, bytes.

    Floating-point tensors are hashed as float32 values, so the fingerprint does not depend on the
    dtype the weights were stored or loaded in (a bf16 file loaded as float32 gives the same values).
    """
    h = hashlib.sha256(FINGERPRINT_SCHEME.encode())
    for name in sorted(set(names) - FINGERPRINT_EXCLUDES):
        t = get(name).detach()
        t = t.to("cpu", torch.float32) if t.is_floating_point() else t.cpu()
        data = t.contiguous().numpy().reshape(-1).view(np.uint8)
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0{data.nbytes}\n".encode())
        h.update(data)
    return f"{FINGERPRINT_SCHEME}:{h.hexdigest()}"


def weights_fingerprint(model) -> str:
    """Fingerprint of a model's weights: its ``state_dict`` (what ``save_pretrained`` writes).

    Equal to :func:`mlsv.inference.model_files.saved_weights_fingerprint` (numpy, without building the
    model) of the folder the model was saved to or loaded from (checked for every encoder family in the
    tests). Leaves out ``FINGERPRINT_EXCLUDES``.
    """
    state = model.state_dict()
    return _hash_tensors(state.keys(), state.__getitem__)
