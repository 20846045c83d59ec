"""A saved model's files read without torch or transformers: ``config.json`` as JSON, the encoder's
shortest input, and tensors of ``model.safetensors`` as numpy arrays (the safetensors format read
directly: an 8-byte header length, a JSON header, the raw bytes).

What the ONNX runtime (:mod:`mlsv.inference.onnx_runtime`) needs besides onnxruntime, numpy, soundfile
and soxr. The PyTorch side of the same rules is :mod:`mlsv.models.loading` (which builds an
``MLSVConfig`` and an ``MLSVModel``); the tests check that both give the same minimum length and the
same weights fingerprint for every encoder family.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = [
    "FINGERPRINT_SCHEME",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "check_model_folder",
    "min_samples",
    "model_file",
    "read_model_config",
    "read_stored_cohort",
    "saved_weights_fingerprint",
]

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
#: The recipe of :func:`mlsv.models.loading.weights_fingerprint`, whose value this module reproduces.
FINGERPRINT_SCHEME = "mlsv-weights-sha256-v1"
FINGERPRINT_EXCLUDES = frozenset({"cohort_embeddings"})

#: ``MLSVConfig``'s defaults of the fields the runtime reads, for a config.json that leaves one out.
CONFIG_DEFAULTS = {
    "sampling_rate": 16000,
    "embedding_size": 192,
    "training_mean": None,
    "calibration": None,
    "threshold": None,
    "evaluation": None,
    "cohort_size": 0,
}
#: Whisper's 10 ms hop at 16 kHz: one log-mel frame (``mlsv.models.frontend.WHISPER_HOP``).
WHISPER_HOP = 160
#: transformers' default CNN of the wav2vec 2.0 families, for an encoder config that leaves it out.
DEFAULT_CONV = ((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))


def check_model_folder(src: str) -> None:
    """FileNotFoundError for a local folder without a config.json (a run's or a training stage's folder
    gets the path of its model/ folder); the same rule as ``mlsv.models.loading.check_model_folder``."""
    if os.path.isdir(src) and not os.path.isfile(os.path.join(src, "config.json")):
        inner = os.path.join(src, "model")
        hint = (
            f"; a run's or training stage's model is in its model/ folder: {inner}"
            if os.path.isfile(os.path.join(inner, "config.json"))
            else ""
        )
        raise FileNotFoundError(f"{src}: not a model folder (no config.json){hint}")


def model_file(src: str, filename: str, revision: str | None = None) -> str:
    """A file of a local model folder, or of a hub model (downloaded with huggingface_hub, imported only then)."""
    if os.path.isdir(src):
        path = os.path.join(src, filename)
        if not os.path.isfile(path):
            hint = (
                "; export it first: mlsv export --model MODEL --out MODEL/model.onnx"
                if filename.endswith(".onnx")
                else ""
            )
            raise FileNotFoundError(f"{path} not found{hint}")
        return path
    if src.startswith((".", "/", "~")) or "\\" in src or src.endswith(".onnx") or os.path.exists(src):
        raise FileNotFoundError(f"model folder not found: {src}")
    if src.count("/") != 1 or not all(src.split("/")):
        raise FileNotFoundError(f"model folder not found: {src} (a hub model id is namespace/name)")
    import huggingface_hub

    return huggingface_hub.hf_hub_download(src, filename, revision=revision)


def read_model_config(src: str, revision: str | None = None) -> SimpleNamespace:
    """An mlsv model's ``config.json`` (a folder or hub id) as an object with its fields as attributes
    (``MLSVConfig``'s defaults for the ones the runtime reads and the file leaves out). ValueError,
    naming the file, when it is not an mlsv model's."""
    check_model_folder(src)
    path = model_file(src, "config.json", revision)
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not a readable config.json ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != "mlsv":
        kind = config.get("model_type") if isinstance(config, dict) else None
        what = f"a {kind!r} model" if kind else "a config.json without a model_type"
        raise ValueError(f"{src}: {what}, not an mlsv model")
    encoder = config.get("encoder_config")
    if not isinstance(encoder, dict) or not encoder.get("model_type"):
        raise ValueError(f"{path}: no encoder_config with a model_type (not a complete mlsv model config)")
    return SimpleNamespace(**{**CONFIG_DEFAULTS, **config})


def min_samples(config: Any) -> int:
    """Fewest samples (at the model's rate) that give the encoder one output frame: the rule of
    ``mlsv.models.frontend.min_samples``, on ``config.encoder_config`` (a dict or a transformers config)."""
    encoder = config.encoder_config

    def value(key: str, default=None):
        return encoder.get(key, default) if isinstance(encoder, dict) else getattr(encoder, key, default)

    if value("model_type") == "whisper":
        return WHISPER_HOP  # one log-mel frame; the STFT pads both edges
    n = 1  # one frame out of the last CNN layer; each layer needs (n - 1) * stride + kernel samples
    for k, s in zip(
        reversed(list(value("conv_kernel", DEFAULT_CONV[0]))), reversed(list(value("conv_stride", DEFAULT_CONV[1])))
    ):
        n = (n - 1) * s + k
    return n


# ------------------------------------------------------------------------------------------------
# safetensors, read with numpy

_DTYPES = {  # safetensors code -> (numpy dtype, torch's name of it)
    "F64": (np.float64, "float64"),
    "F32": (np.float32, "float32"),
    "F16": (np.float16, "float16"),
    "BF16": (np.uint16, "bfloat16"),  # the upper half of a float32: converted below
    "I64": (np.int64, "int64"),
    "I32": (np.int32, "int32"),
    "I16": (np.int16, "int16"),
    "I8": (np.int8, "int8"),
    "U8": (np.uint8, "uint8"),
    "BOOL": (np.bool_, "bool"),
}


class _SafetensorsFile:
    """The tensors of one ``.safetensors`` file, memory-mapped, as numpy arrays."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            self.data = (
                np.memmap(self.path, dtype=np.uint8, mode="r", offset=8 + n)
                if os.path.getsize(self.path) > 8 + n
                else np.zeros(0, np.uint8)
            )
        except (OSError, struct.error, ValueError) as e:
            raise ValueError(
                f"{self.path}: corrupt or truncated weights file ({e}); copy or save the model again"
            ) from None
        header.pop("__metadata__", None)
        self.header: dict[str, dict] = header

    def keys(self) -> list[str]:
        return list(self.header)

    def get(self, name: str) -> tuple[np.ndarray, str]:
        """(the tensor, torch's dtype name); bf16 comes back as float32 (the same values)."""
        info = self.header[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has dtype {info['dtype']}, which numpy cannot read")
        dtype, torch_name = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        raw = self.data[start:end]
        if raw.size != end - start:
            raise ValueError(f"{self.path}: corrupt or truncated weights file; copy or save the model again")
        array = raw.view(dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array, torch_name


def _weights_files(path: Path) -> list[Path]:
    """The safetensors file(s) of ``path``: a ``.safetensors`` file, a shard index, or a model folder."""
    if path.is_dir():
        for name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME):
            if (path / name).is_file():
                return _weights_files(path / name)
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path}")
    if path.name.endswith(".index.json"):
        shards = json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()
        return [path.parent / name for name in sorted(set(shards))]
    return [path]


@contextlib.contextmanager
def _tensors(path: str | os.PathLike) -> Iterator[dict[str, _SafetensorsFile]]:
    where: dict[str, _SafetensorsFile] = {}
    for file in _weights_files(Path(path)):
        f = _SafetensorsFile(file)
        where.update(dict.fromkeys(f.keys(), f))
    yield where


def saved_weights_fingerprint(path: str | os.PathLike) -> str:
    """``mlsv.models.loading.weights_fingerprint`` of saved weights, with numpy: the same value (tested).

    Args:
        path: a ``model.safetensors`` file, a ``model.safetensors.index.json`` (sharded weights), or a
            model folder holding one of them.
    """
    h = hashlib.sha256(FINGERPRINT_SCHEME.encode())
    with _tensors(path) as where:
        for name in sorted(set(where) - FINGERPRINT_EXCLUDES):
            t, torch_name = where[name].get(name)
            if np.issubdtype(t.dtype, np.floating):  # hashed as float32 values, whatever the stored dtype
                t, torch_name = t.astype(np.float32), "float32"
            data = np.ascontiguousarray(t).reshape(-1).view(np.uint8)
            h.update(f"{name}\0torch.{torch_name}\0{tuple(t.shape)}\0{data.nbytes}\n".encode())
            h.update(data)
    return f"{FINGERPRINT_SCHEME}:{h.hexdigest()}"


def read_stored_cohort(src: str, config: Any, revision: str | None = None) -> np.ndarray | None:
    """``cohort_embeddings`` (C, E) from a model folder's (or hub repo's) ``model.safetensors``, or None."""
    if not int(getattr(config, "cohort_size", 0) or 0):
        return None
    f = _SafetensorsFile(model_file(src, WEIGHTS_NAME, revision))
    return np.array(f.get("cohort_embeddings")[0]) if "cohort_embeddings" in f.header else None
