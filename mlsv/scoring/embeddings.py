"""Embedding tables: the ``.npz`` file format of DESIGN.md (ids, embeddings, durations, speakers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class EmbeddingTable:
    """N embeddings with their ids.

    Attributes:
        ids: (N,) utterance ids (str).
        embeddings: (N, E) float32.
        durations: (N,) float32 seconds.
        speakers: (N,) speaker ids, or None (required for cohort files).
    """

    ids: np.ndarray
    embeddings: np.ndarray
    durations: np.ndarray
    speakers: np.ndarray | None = None

    def __post_init__(self):
        self.ids = np.asarray(self.ids).astype(str)
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        self.durations = np.asarray(self.durations, dtype=np.float32)
        n = len(self.ids)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n or self.durations.shape != (n,):
            raise ValueError(f"inconsistent embedding table: {n} ids, embeddings {self.embeddings.shape}, "
                             f"durations {self.durations.shape}")
        if self.speakers is not None:
            self.speakers = np.asarray(self.speakers).astype(str)
            if self.speakers.shape != (n,):
                raise ValueError(f"speakers has shape {self.speakers.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.ids)}

    def lookup(self, ids) -> np.ndarray:
        """Row indices of ``ids``; raises KeyError naming the first unknown ids."""
        idx = self.index()
        out = np.empty(len(ids), dtype=np.int64)
        missing = []
        for i, u in enumerate(ids):
            j = idx.get(u)
            if j is None:
                missing.append(u)
                if len(missing) >= 5:
                    break
            else:
                out[i] = j
        if missing:
            raise KeyError(f"ids not found in the embeddings: {', '.join(missing)}")
        return out


def save_embeddings(table: EmbeddingTable, path: str | Path) -> None:
    """Writes the table atomically as ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ids": table.ids, "embeddings": table.embeddings, "durations": table.durations}
    if table.speakers is not None:
        arrays["speakers"] = table.speakers
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_embeddings(path: str | Path) -> EmbeddingTable:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        for key in ("ids", "embeddings", "durations"):
            if key not in z:
                raise ValueError(f"{path}: missing array {key!r} (has {sorted(z.files)})")
        speakers = z["speakers"] if "speakers" in z else None
        return EmbeddingTable(z["ids"], z["embeddings"], z["durations"], speakers)
