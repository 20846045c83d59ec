"""Optional dependencies: which extra installs what, and the error that names the extra to install.

The core install (``pip install mlsv``) embeds and verifies; the rest comes with extras
(``pip install "mlsv[train]"``). An import of an optional package sits where it is used, inside
:func:`needs_extra`, so that a missing one is a one-line error naming the extra, not a bare
``ModuleNotFoundError``::

    with needs_extra("train", "training"):
        from accelerate import Accelerator
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

__all__ = ["EXTRAS", "MissingExtra", "needs_extra", "require_extra"]

#: The import names each extra provides (setup.cfg's extras_require installs their distributions).
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("accelerate", "datasets", "pyarrow", "scipy", "sklearn", "matplotlib", "psutil"),
    "eval": ("scipy", "sklearn", "matplotlib", "psutil"),
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "onnx": ("onnxruntime",),
    "m4a": ("av",),
    "metrics": ("evaluate",),
    "tracking": ("tensorboard",),
    "wandb": ("wandb",),
    "demo": ("gradio",),
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
    "neptune": ("neptune_scale",),
}


class MissingExtra(ModuleNotFoundError):
    """An optional package is not installed; the message names the extra that installs it."""


def _message(extra: str, what: str | None, missing: list[str]) -> str:
    return f'{what or "this"} needs the "{extra}" extra: pip install "mlsv[{extra}]" (missing: {", ".join(missing)})'


@contextlib.contextmanager
def needs_extra(extra: str, what: str | None = None) -> Iterator[None]:
    """Turns a ``ModuleNotFoundError`` of one of ``extra``'s packages, raised by the imports in the block,
    into :class:`MissingExtra` naming the extra (``what``: the feature, e.g. "training"). A missing module
    that the extra does not provide is not ours to explain, and propagates as it is."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {', '.join(EXTRAS)}")
    try:
        yield
    except MissingExtra:
        raise
    except ModuleNotFoundError as e:
        top = (e.name or "").partition(".")[0]
        if top not in EXTRAS[extra]:
            raise
        raise MissingExtra(_message(extra, what, [top]), name=e.name) from None


def require_extra(extra: str, what: str | None = None) -> None:
    """:class:`MissingExtra` naming ``extra`` and every package of it that is not installed (checked
    without importing them), so that a command fails before its work, not half-way through it."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {', '.join(EXTRAS)}")
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(_message(extra, what, missing), name=missing[0])
