"""Runtime settings: attention kernels, mixed precision, ``torch.compile`` with fixed crop shapes.

Every helper leaves the model's parameters and outputs alone (up to floating-point rounding; the
equivalence tests in ``tests/test_models_fast_paths.py`` bound it), so they can be switched on and off freely.

    model = MLSVModel.from_encoder(...)
    set_attention(model, "sdpa")              # WavLM: gated relative-position bias through SDPA
    compile_model(model, head=head)           # fixed crops: dynamic=False
    with autocast("bf16", device):
        out = model(x, attention_mask=mask)
"""

from __future__ import annotations

import contextlib
import platform
import sys
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs on a GPU


def _frontend(model: nn.Module) -> nn.Module:
    """The ``Frontend`` of an MLSVModel (or the Frontend itself)."""
    f = getattr(model, "frontend", model)
    if not hasattr(f, "set_attention"):
        raise TypeError(f"{type(model).__name__} has no mlsv Frontend")
    return f


def set_attention(model: nn.Module, mode: str = "sdpa", fused_qkv: bool | None = None) -> None:
    """Chooses the encoder's attention implementation: "eager" (transformers' own WavLM attention) or
    "sdpa" (``scaled_dot_product_attention``; for WavLM with its gated relative-position bias as an
    additive mask). ``fused_qkv``: one matrix product for WavLM's queries, keys and values."""
    _frontend(model).set_attention(mode, fused_qkv=fused_qkv)


def get_attention(model: nn.Module) -> str:
    """The encoder's attention implementation ("eager" | "sdpa")."""
    return _frontend(model).attention


def autocast(precision: str = "bf16", device: str | torch.device = "cuda") -> contextlib.AbstractContextManager:
    """A mixed-precision context: ``torch.autocast`` to bf16/fp16 on ``device``, or nothing for fp32.

    fp16 needs a gradient scaler in training (``grad_scaler``); bf16 does not. The margin head and the
    attentive statistics compute in float32 inside autocast regardless.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=PRECISIONS[precision])


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name: None for "fp32" (no autocast), bf16 or fp16 otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return None if precision == "fp32" else PRECISIONS[precision]


def grad_scaler(precision: str, device: str | torch.device = "cuda") -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16."""
    device_type = torch.device(device).type
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16")


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """One optimiser update from ``loss`` through the (possibly disabled) gradient scaler."""
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def enable_tf32(enabled: bool = True, cudnn_benchmark: bool | None = None) -> None:
    """TF32 matrix products and convolutions on Ampere+ GPUs for the fp32 parts (harmless on CPU).

    ``cudnn_benchmark``: let cuDNN time its convolution algorithms per input shape; worth it for fixed
    training crops, not for evaluation's varying lengths (None: leave as it is).
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    if cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = cudnn_benchmark


def compile_model(
    model: nn.Module,
    *,
    head: nn.Module | None = None,
    mode: str = "default",
    dynamic: bool | None = False,
    fullgraph: bool = False,
    frontend: bool = True,
    backend: str = "inductor",
) -> nn.Module:
    """Compiles an MLSVModel's frontend, aggregation and backend (and a training head) in place.

    Each part is compiled with ``nn.Module.compile`` so that parameter names, ``state_dict`` and
    ``save_pretrained`` are unchanged. Training crops have fixed shapes: ``dynamic=False`` specialises
    the graphs on them (a new shape recompiles, so evaluation with varying lengths should use
    ``dynamic=None`` or length buckets). ``mode="reduce-overhead"`` adds CUDA graphs on a GPU.

    Args:
        model: an MLSVModel (``frontend``, ``aggregation``, ``backend``).
        head: the margin head, compiled too when given.
        mode: a ``torch.compile`` mode.
        dynamic: ``torch.compile``'s ``dynamic``.
        fullgraph: fail on graph breaks instead of splitting.
        frontend: also compile the frontend (False: only the small parts).
        backend: ``torch.compile``'s backend ("aot_eager" traces without generating kernels: a quick check).

    Returns:
        ``model`` (compiled in place).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    parts = [getattr(model, "aggregation", None), getattr(model, "backend", None), head]
    if frontend:
        parts.insert(0, getattr(model, "frontend", None))
    for part in parts:
        if part is not None:
            if backend == "inductor":
                part.compile(mode=mode, dynamic=dynamic, fullgraph=fullgraph)
            else:  # other backends take no mode
                part.compile(backend=backend, dynamic=dynamic, fullgraph=fullgraph)
    return model


def step_begin(mode: str) -> None:
    """Marks a new training iteration for graphs compiled with a CUDA-graph ``mode`` (the outputs of the
    previous iteration's replays may be overwritten from here on); a no-op for the other modes."""
    if mode in CUDAGRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()


def is_compiled(module: nn.Module) -> bool:
    """Whether ``nn.Module.compile`` was called on ``module``."""
    return getattr(module, "_compiled_call_impl", None) is not None


def synchronize(device: str | torch.device) -> None:
    """Waits for the device's queued work (a no-op on CPU): call it only around timed regions."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: str | torch.device) -> None:
    """Starts a new peak-memory window on a GPU (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: str | torch.device) -> float:
    """Peak GPU memory allocated since the last reset, in MiB; on CPU the process's peak resident size."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # POSIX only

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def device_name(device: str | torch.device) -> str:
    """A readable name of the device."""
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def inference_mode() -> Iterator[None]:
    """``torch.inference_mode`` (no autograd bookkeeping at all) for embedding extraction."""
    with torch.inference_mode():
        yield
