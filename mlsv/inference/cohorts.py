"""AS-norm cohorts given either way: an embeddings table (``.npz`` with speakers) or a manifest of recordings
(JSONL / parquet with speakers), which is embedded with the model that scores against it.

Every ``--cohort`` of the command line (``mlsv score``, ``verify``, ``identify``, ``evaluate``) and the
``cohort=`` of :class:`~mlsv.inference.verifier.Verifier` take both. A table is read as it is (it must come
from the same model: the ``.npz`` does not record which); a manifest costs one embedding pass of its
recordings.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mlsv.data.manifest import iter_rows, manifest_root, resolve_path
from mlsv.scoring.embeddings import EmbeddingTable, check_finite, load_embeddings

__all__ = ["cohort_table", "is_embeddings_file"]


def is_embeddings_file(source: str | os.PathLike) -> bool:
    """True when ``source`` names an embeddings table (``.npz``), False for a manifest (anything else)."""
    return Path(source).suffix.lower() == ".npz"


def cohort_table(source: str | os.PathLike | EmbeddingTable, embedder=None, *, progress: bool | None = None):
    """The AS-norm cohort as an ``EmbeddingTable`` with speakers.

    Args:
        source: an ``EmbeddingTable``, an embeddings ``.npz``, or a manifest whose rows have ``id``, ``path``
            and ``speaker``.
        embedder: the model's :class:`~mlsv.inference.embedder.Embedder`; embeds a manifest, and checks a
            table's dimension. None: a manifest is refused (there is no model to embed it with).
        progress: a progress bar while a manifest is embedded (default: more than 16 recordings).

    Raises:
        ValueError: no speakers, a dimension other than the model's, NaN / infinite values, a manifest without
            a model, or a manifest row without a path or speaker (naming its line).
        FileNotFoundError: the table, the manifest or a recording it names is missing.
    """
    if isinstance(source, EmbeddingTable):
        table = source
        check_finite(table, "the AS-norm cohort")
        where = "the AS-norm cohort"
    elif is_embeddings_file(source):
        table = load_embeddings(source)
        where = os.fspath(source)
    else:
        where = os.fspath(source)
        if embedder is None:
            raise ValueError(
                f"--cohort {where}: a cohort manifest is embedded with the model: give --model, or an "
                "embeddings .npz with speakers (mlsv embed --manifest)"
            )
        table = _embed_manifest(Path(source), embedder, progress)
    if table.speakers is None:
        raise ValueError(
            f"{where}: the AS-norm cohort needs speaker labels ('speakers' in the .npz); "
            "embed it with mlsv embed --manifest, or give a manifest with a speaker on every row"
        )
    if embedder is not None and table.embeddings.shape[1] != embedder.embedding_size:
        raise ValueError(
            f"{where}: cohort embeddings have {table.embeddings.shape[1]} dimensions, the model gives "
            f"{embedder.embedding_size} (a cohort must be embedded with the model that scores against it)"
        )
    return table


def _embed_manifest(manifest: Path, embedder, progress: bool | None) -> EmbeddingTable:
    """A cohort manifest's recordings embedded whole (as ``mlsv evaluate`` embeds a cohort without chunks)."""
    if not manifest.exists():
        raise FileNotFoundError(f"--cohort {manifest}: no such manifest or embeddings file")
    root = manifest_root(manifest)
    ids, paths, speakers = [], [], []
    for line, row in iter_rows(manifest):
        for key in ("id", "path", "speaker"):
            if row.get(key) in (None, ""):
                hint = " (a shard with embedded audio: embed it with mlsv embed --manifest)" if key == "path" else ""
                raise ValueError(f"{manifest}:{line}: a cohort manifest row needs {key!r}{hint}")
        ids.append(str(row["id"]))
        paths.append(resolve_path(str(row["path"]), root))
        speakers.append(str(row["speaker"]))
    if not ids:
        raise ValueError(f"{manifest}: the cohort manifest has no rows")
    table = embedder.embed_table(paths, ids, progress=progress)
    table.speakers = np.asarray(speakers)
    return table
