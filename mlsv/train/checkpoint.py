"""Checkpoints: accelerate state folders written atomically, the N best kept, best-N averaging.

Nothing in a checkpoint is read with a full unpickler, since a crafted file there would run code on resume:
the weights are safetensors, the scheduler's and weight average's states are JSON and safetensors files
of our own (``extra`` states, not accelerate's pickled custom states), and the files accelerate pickles
(optimiser, random-number and scaler states) are checked first with torch's tensors-only unpickler, which a
crafted file fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mlsv.extras import needs_extra

META = "mlsv_meta.json"
#: Files accelerate writes with torch.save (pickles): checked with the tensors-only unpickler before loading.
PICKLED_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


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


def _check_pickles(path: Path) -> None:
    """Every pickled file of a checkpoint loads with the tensors-only unpickler (accelerate's own
    ``weights_only`` load, with the numpy and random-state types it allows), or the checkpoint is refused:
    accelerate would unpickle some fully, and skips a random-state file it cannot read without a word."""
    with needs_extra("train", "training"):
        from accelerate.utils.other import load as tensors_only_load

    for f in sorted(path.iterdir()):
        if f.suffix in PICKLED_SUFFIXES:
            try:
                tensors_only_load(str(f), map_location="cpu", mmap=True)  # mapped, not read: only checked
            except Exception as e:  # UnpicklingError for a crafted file, others for a damaged one
                reason = " ".join(str(e).split())[:160]
                raise CheckpointError(
                    f"checkpoint {path}: {f.name} is not a plain state file (refused without "
                    f"running it: {type(e).__name__}: {reason}); if you did not put it there, "
                    f"the folder was tampered with or damaged: "
                    f"{_delete_hint(path)}"
                ) from None


def save_extra(obj, folder: Path, name: str) -> None:
    """``obj``'s state as ``name.safetensors`` (all tensors: a weight average) or ``name.json`` (a scheduler)."""
    state = obj.state_dict()
    if all(isinstance(v, torch.Tensor) for v in state.values()):
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / f"{name}.safetensors"))
    else:
        (folder / f"{name}.json").write_text(json.dumps(state))


def load_extra(obj, folder: Path, name: str, legacy_index: int | None = None) -> None:
    """Loads what ``save_extra`` wrote; a checkpoint from before it holds accelerate's
    ``custom_checkpoint_<legacy_index>.pkl`` instead, read with the tensors-only unpickler."""
    if (folder / f"{name}.safetensors").is_file():
        obj.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
    elif (folder / f"{name}.json").is_file():
        obj.load_state_dict(json.loads((folder / f"{name}.json").read_text()))
    elif legacy_index is not None and (folder / f"custom_checkpoint_{legacy_index}.pkl").is_file():
        obj.load_state_dict(
            torch.load(folder / f"custom_checkpoint_{legacy_index}.pkl", map_location="cpu", weights_only=True)
        )
    else:
        raise CheckpointError(f"checkpoint {folder} has no {name} state: {_delete_hint(folder)}")


def load_checkpoint(
    accelerator, path: Path, previous: Path | None = None, extra: dict[str, object] | None = None
) -> None:
    """``accelerator.load_state(path)``, then the ``extra`` states (name -> object with ``load_state_dict``,
    in the order they were saved). A damaged checkpoint (a truncated weights file, say, after a full disk)
    is a CheckpointError naming the folder; it is not skipped silently (falling back would quietly redo
    training, and hide a storage problem that may have damaged other files): the user deletes it to resume
    from ``previous``."""
    _check_pickles(path)
    try:
        accelerator.load_state(str(path))
        for index, (name, obj) in enumerate((extra or {}).items()):
            load_extra(obj, path, name, legacy_index=index)
    except (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):  # the first: torch 2.5
        raise
    except Exception as e:  # safetensors, torch.load and pickle raise their own types for a damaged file
        reason = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded ({type(e).__name__}{': ' if reason else ''}"
            f"{reason}): if it is damaged (a truncated file, say), "
            f"{_delete_hint(path, previous, only=previous is None)}"
        ) from e


def save_checkpoint(accelerator, root: Path, name: str, meta: dict, extra: dict[str, object] | None = None) -> Path:
    """``accelerator.save_state`` and the ``extra`` states (``save_extra``) into ``root/name.tmp``, then an
    atomic rename: a kill never leaves a half-written checkpoint that resume would pick up (the meta file is
    written last)."""
    final = root / name
    tmp = root / f"{name}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            for extra_name, obj in (extra or {}).items():
                save_extra(obj, tmp, extra_name)
            (tmp / META).write_text(json.dumps(meta, indent=1))
    except (OSError, RuntimeError, SafetensorError) as e:  # a full disk: SafetensorError, torch's RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        reason = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"cannot write checkpoint {final} ({type(e).__name__}: {reason}); the half-written "
            f"{tmp.name} was removed and the earlier checkpoints are intact: free space under "
            f"{root} and rerun to resume"
        ) from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
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
    best = sorted(scored, key=lambda p: read_meta(p)[metric])[: max(keep_best, 1)]
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
