"""Checkpoints: accelerate state folders written atomically, the N best kept, best-N averaging."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

META = "mlsv_meta.json"


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root`` (those with their meta file), oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and (p / META).is_file() and not p.name.endswith(".tmp")]
    return sorted(done, key=lambda p: read_meta(p)["global_step"])


class CheckpointError(ValueError):
    """A checkpoint folder cannot be read back; the message names it and how to go on."""


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged ({path / META}: {e}): {_delete_hint(path)}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("global_step"), int):
        raise CheckpointError(f"checkpoint {path} is damaged ({path / META} has no global_step): {_delete_hint(path)}")
    return meta


def _delete_hint(path: Path, previous: Path | None = None, only: bool = False) -> str:
    if previous is not None:
        return f"delete that folder to resume from the previous checkpoint, {previous.name}"
    if only:
        return "delete that folder to start the stage again (it is the only checkpoint)"
    return "delete that folder to resume from the previous checkpoint (or start again if it is the only one)"


def load_checkpoint(accelerator, path: Path, previous: Path | None = None) -> None:
    """``accelerator.load_state(path)``. A damaged checkpoint (a truncated weights file, say, after a full disk)
    is a CheckpointError naming the folder; it is not skipped silently (falling back would quietly redo
    training, and hide a storage problem that may have damaged other files): the user deletes it to resume
    from ``previous``."""
    try:
        accelerator.load_state(str(path))
    except (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):  # the first: torch 2.5
        raise
    except Exception as e:  # safetensors, torch.load and pickle raise their own types for a damaged file
        reason = " ".join(str(e).split())[:200]
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({type(e).__name__}{': ' if reason else ''}"
                              f"{reason}): if it is damaged (a truncated file, say), "
                              f"{_delete_hint(path, previous, only=previous is None)}") from e


def save_checkpoint(accelerator, root: Path, name: str, meta: dict) -> Path:
    """``accelerator.save_state`` into ``root/name.tmp``, then an atomic rename: a kill never leaves a
    half-written checkpoint that resume would pick up (the meta file is written last)."""
    final = root / name
    tmp = root / f"{name}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(root: Path, keep_best: int, metric: str = "validation_eer") -> list[Path]:
    """Deletes all but the ``keep_best`` best (lowest ``metric``) and the latest checkpoint."""
    ckpts = checkpoint_dirs(root)
    if not ckpts:
        return []
    latest = ckpts[-1]
    scored = [p for p in ckpts if read_meta(p).get(metric) is not None]
    best = sorted(scored, key=lambda p: read_meta(p)[metric])[:max(keep_best, 1)]
    keep = set(best) | {latest}
    for p in ckpts:
        if p not in keep:
            shutil.rmtree(p, ignore_errors=True)
    return best


def best_checkpoints(root: Path, n: int, metric: str = "validation_eer") -> list[Path]:
    scored = [p for p in checkpoint_dirs(root) if read_meta(p).get(metric) is not None]
    return sorted(scored, key=lambda p: read_meta(p)[metric])[:n] or checkpoint_dirs(root)[-1:]


def average_checkpoints(paths: list[Path], filename: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """The element-wise mean of the same weights file across checkpoints (integer buffers, such as
    BatchNorm's batch counters, are taken from the first)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    states = [load_file(str(p / filename)) for p in paths]
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out
