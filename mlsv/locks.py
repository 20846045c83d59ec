"""Output folders that one process writes at a time.

Two trainings started on one folder used to corrupt it silently (one crashed on the other's temporary
checkpoint, the other finished with the first one's config). :class:`FolderLock` holds a lock file in the
folder while a process writes it; the file names the holder (process id, host, command, start time). A
second process is refused with that name. A lock left by a process that died (same host, no such process)
is taken over, with a message; a lock from another host cannot be checked and is refused, saying how to
remove it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from mlsv.extras import needs_extra

with needs_extra("eval", "run folders (mlsv evaluate, training)"):
    import psutil

__all__ = ["FolderLock", "LockError"]

log = logging.getLogger(__name__)
LOCK_NAME = ".mlsv.lock"


class LockError(OSError):
    """The folder is being written by another process; the message names it."""


def _alive(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class FolderLock:
    """``with FolderLock(folder, "training"):`` holds ``folder/.mlsv.lock`` for this process.

    Re-entrant within a process (a recipe's folder, then a step's, or the same folder twice).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "a run"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._mine = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "what": self.what,
            "command": " ".join(sys.argv)[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    return self  # this process holds it already
                if not holder:  # being written this instant, or an empty file left by a crash
                    time.sleep(0.2)
                    holder = self._holder()
                    if not holder:
                        log.warning("%s: an empty lock file (left by a crash?) is taken over", self.path)
                        self.path.unlink(missing_ok=True)
                        continue
                if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    log.warning(
                        "%s: taking over the lock of process %s (%s), which is no longer running",
                        self.path,
                        holder.get("pid"),
                        holder.get("what", "?"),
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockError(
                    f"{self.folder} is being written by {holder.get('what', 'another run')}: process "
                    f"{holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
                    f"({holder.get('command', '?')}); wait for it to finish or give another output folder"
                    + (f" (if that process is gone, delete {self.path})" if holder.get("host") != me["host"] else "")
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self._mine = True
            return self
        raise LockError(f"{self.path}: could not take the lock (it keeps changing)")

    def release(self) -> None:
        if self._mine:
            holder = self._holder()
            if holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._mine = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
