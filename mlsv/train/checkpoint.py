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


def read_meta(path: Path) -> dict:
    return json.loads((path / META).read_text())


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
