"""Embedding tables: the ``.npz`` file format of docs/evaluation.md#file-formats.

A table holds ids, embeddings, durations and, when known, speakers and each recording's SNR estimate
(:func:`mlsv.data.audio.estimate_snr`; NaN where unknown, e.g. in files written before mlsv stored it).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class EmbeddingTable:
    """N embeddings with their ids, one row per id (a repeated id is a ValueError naming it).

    Attributes:
        ids: (N,) utterance ids (str), unique.
        embeddings: (N, E) float32.
        durations: (N,) float32 seconds.
        speakers: (N,) speaker ids, or None (required for cohort files).
        snr: (N,) float32 blind SNR estimates in dB (:func:`mlsv.data.audio.estimate_snr`), NaN where
            unknown; not given (or None, or empty): all unknown.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    durations: np.ndarray
    speakers: np.ndarray | None = None
    snr: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self):
        self.ids = np.asarray(self.ids).astype(str)
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        self.durations = np.asarray(self.durations, dtype=np.float32)
        n = len(self.ids)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n or self.durations.shape != (n,):
            raise ValueError(
                f"inconsistent embedding table: {n} ids, embeddings {self.embeddings.shape}, "
                f"durations {self.durations.shape}"
            )
        if self.speakers is not None:
            self.speakers = np.asarray(self.speakers).astype(str)
            if self.speakers.shape != (n,):
                raise ValueError(f"speakers has shape {self.speakers.shape}, expected ({n},)")
        unknown = self.snr is None or (np.size(self.snr) == 0 and n > 0)
        self.snr = np.full(n, np.nan, np.float32) if unknown else np.asarray(self.snr, dtype=np.float32)
        if self.snr.shape != (n,):
            raise ValueError(f"snr has shape {self.snr.shape}, expected ({n},)")
        repeated = repeated_ids(self.ids)
        if repeated:
            u, rows = repeated[0]
            more = f" ({len(repeated) - 1} more ids repeat)" if len(repeated) > 1 else ""
            raise ValueError(
                f"id {u!r} appears {len(rows)} times (rows {', '.join(map(str, rows[:5]))}){more}; ids must be unique"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_snr(self) -> bool:
        """Whether every row has a (finite) SNR estimate."""
        return bool(np.isfinite(np.asarray(self.snr)).all())

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


def repeated_ids(ids: np.ndarray) -> list[tuple[str, list[int]]]:
    """``[(id, rows), ...]`` for every id that appears more than once, in order of first appearance."""
    ids = np.asarray(ids)
    if len(ids) < 2:
        return []
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts == 1).all():
        return []
    rows: dict[str, list[int]] = {str(u): [] for u in uniq[counts > 1]}
    for i, u in enumerate(ids.tolist()):  # one pass: rows of the repeated ids
        if (listed := rows.get(str(u))) is not None:
            listed.append(i)
    return sorted(rows.items(), key=lambda item: item[1][0])  # in order of first appearance


def pool_rows(ids, embeddings: np.ndarray, durations: np.ndarray, snr: np.ndarray | None = None) -> EmbeddingTable:
    """Rows that share an id as one: their duration-weighted mean embedding and summed duration, ids in
    the order they first appear. The rule for a long file's chunks and for one speaker's recordings.
    ``snr`` (dB, NaN unknown) pools as the duration-weighted mean of the dB values (NaN if any is unknown)."""
    ids = [str(u) for u in ids]
    position = {u: i for i, u in enumerate(dict.fromkeys(ids))}
    index = np.array([position[u] for u in ids], dtype=np.int64)
    dur = np.asarray(durations, np.float64)
    sums = np.zeros((len(position), np.shape(embeddings)[1]), np.float64)
    np.add.at(sums, index, np.asarray(embeddings, np.float64) * dur[:, None])
    total = np.bincount(index, weights=dur, minlength=len(position))
    pooled_snr = np.full(len(position), np.nan, np.float32)
    if snr is not None:
        db = np.bincount(index, weights=np.asarray(snr, np.float64) * dur, minlength=len(position))
        pooled_snr = (db / np.maximum(total, 1e-9)).astype(np.float32)  # NaN in, NaN out
    return EmbeddingTable(
        np.array(list(position)),
        (sums / np.maximum(total, 1e-9)[:, None]).astype(np.float32),
        total.astype(np.float32),
        snr=pooled_snr,
    )


def save_embeddings(table: EmbeddingTable, path: str | Path) -> None:
    """Writes the table atomically as ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ids": table.ids, "embeddings": table.embeddings, "durations": table.durations}
    if table.speakers is not None:
        arrays["speakers"] = table.speakers
    if np.isfinite(np.asarray(table.snr)).any():
        arrays["snr"] = table.snr
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types the first keyword only
    tmp.replace(path)


def check_finite(table: EmbeddingTable, source: str, paths: dict[str, str] | None = None) -> None:
    """Raises ValueError naming ``source`` and the first ids (with their ``paths``) of non-finite rows."""
    bad = np.flatnonzero(~np.isfinite(table.embeddings).all(axis=1))
    if bad.size:
        names = [f"{u} ({paths[u]})" if paths and u in paths else str(u) for u in table.ids[bad[:5]]]
        more = f" and {bad.size - 5} more" if bad.size > 5 else ""
        raise ValueError(
            f"{source}: {bad.size} embeddings are NaN or infinite (NaN/infinite audio samples, or "
            f"a numeric overflow): {', '.join(names)}{more}"
        )


def load_embeddings(path: str | Path) -> EmbeddingTable:
    """Reads an ``.npz`` written by :func:`save_embeddings`; ValueError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not an embeddings .npz file ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an embeddings .npz file (a single {type(z).__name__})")
    with z:
        for key in ("ids", "embeddings", "durations"):
            if key not in z:
                raise ValueError(f"{path}: missing array {key!r} (has {sorted(z.files)})")
        try:
            speakers = z["speakers"] if "speakers" in z else None
            # files written before mlsv stored SNR: unknown (NaN)
            snr = z["snr"] if "snr" in z else np.zeros(0, np.float32)
            table = EmbeddingTable(z["ids"], z["embeddings"], z["durations"], speakers, snr)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: {e}") from None
    check_finite(table, str(path))
    return table
