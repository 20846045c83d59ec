"""``HostSyncCounter``: a test tool that catches tensor operations making the host wait for the device."""

from __future__ import annotations

import sys

import torch

# Tensor operations whose result the host must read back, so that on a GPU the host waits for every
# queued kernel: the step that calls one cannot be queued while the previous one runs.
HOST_READS = frozenset(
    {
        "item",
        "tolist",
        "numpy",
        "cpu",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "__complex__",
        "is_nonzero",
        "nonzero",
        "argwhere",
        "masked_select",
        "unique",
        "unique_consecutive",
        "equal",
        "allclose",
    }
)


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostSyncCounter(torch.overrides.TorchFunctionMode):
    """Records, inside a ``with`` block, each tensor operation that makes the host wait for the device.

    Works on any device, CPU included, so tests catch a synchronising training step without a GPU:
    reads of values (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``), operations whose output shape
    depends on the data (``nonzero``, boolean-mask indexing, ``unique``, ``repeat_interleave`` without
    ``output_size``), and tensors made from host data on a named device (``torch.tensor(x,
    device=...)``: a blocking copy). ``calls`` maps "operation at file:line" (the first caller outside
    torch) to a count.

        with HostSyncCounter() as syncs:
            step()
        assert not syncs.calls, syncs.calls

    On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` is the kernel-level check of the same thing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if (
            name in HOST_READS
            or (name in ("tensor", "as_tensor") and kwargs.get("device") is not None)
            or (name in ("__getitem__", "__setitem__", "index_put_") and len(args) > 1 and _bool_index(args[1]))
            or (
                name == "repeat_interleave"
                and len(args) > 1
                and isinstance(args[1], torch.Tensor)
                and kwargs.get("output_size") is None
            )
        ):
            where = _caller_outside_torch()
            key = f"{name} at {where}"
            self.calls[key] = self.calls.get(key, 0) + 1
        return func(*args, **kwargs)


def _caller_outside_torch() -> str:
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_globals.get("__name__") == __name__ or frame.f_globals.get("__name__", "").startswith("torch")
    ):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"
