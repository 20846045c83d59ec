"""Parquet shards with embedded FLAC bytes, for streaming large corpora with ``datasets``.

A shard row is a manifest row whose ``audio`` column holds the utterance encoded as FLAC (16- and
24-bit sources decode bit-identically; float sources are stored as 24-bit) and whose ``path`` keeps the
original file for reference. ``load_manifest(shard_folder, streaming=True)`` streams them; the
loaders decode ``audio`` with soundfile.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mlsv.data.audio import AudioError, MissingDependencyError, encode_flac, pcm_subtype, read_audio
from mlsv.data.manifest import iter_rows, manifest_root, resolve_path
from mlsv.data.prepare import progress_bar
from mlsv.extras import needs_extra


def _write_shard(task: tuple[list[dict], str, str]) -> tuple[int, list[str]]:
    with needs_extra("train", "parquet shards"):
        import pyarrow as pa
        import pyarrow.parquet as pq

    rows, root, dst = task
    out, bad = [], []
    for row in rows:
        path = resolve_path(row["path"], root)
        try:
            subtype = pcm_subtype(path)
            x, sr = read_audio(path, mono=False)
            # keep a source's channels: reading back with mono=True then equals reading the original
            data = encode_flac(x if x.shape[1] > 1 else x[:, 0], sr, subtype)
        except MissingDependencyError:  # not a bad file: every such file fails
            raise
        except AudioError as e:
            bad.append(str(e))
            continue
        out.append({**row, "audio": data, "duration": round(x.shape[0] / sr, 4), "sample_rate": sr})
    tmp = Path(dst + ".tmp")
    pq.write_table(pa.Table.from_pylist(out), tmp, row_group_size=256)
    tmp.replace(dst)
    return len(out), bad


def write_shards(
    manifest: str | Path, out_dir: str | Path, *, rows_per_shard: int = 2000, workers: int = 1, progress: bool = True
) -> tuple[list[Path], list[str]]:
    """Packs a manifest into ``out_dir/shard-NNNNN-of-MMMMM.parquet``; existing shards are kept (resume).

    Returns:
        (shard paths, bad-file messages naming the files left out).

    Raises:
        ValueError: ``rows_per_shard`` < 1 or an empty manifest.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    rows = [row for _, row in iter_rows(manifest)]
    if not rows:
        raise ValueError(f"{manifest}: empty manifest")
    root = str(manifest_root(manifest))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = math.ceil(len(rows) / rows_per_shard)
    paths = [out / f"shard-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    tasks = [
        (rows[i * rows_per_shard : (i + 1) * rows_per_shard], root, str(p))
        for i, p in enumerate(paths)
        if not p.is_file()
    ]
    bad: list[str] = []
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _, b in progress_bar(pool.map(_write_shard, tasks), len(tasks), "shards", progress):
                bad += b
    else:
        for task in progress_bar(tasks, len(tasks), "shards", progress):
            bad += _write_shard(task)[1]
    return paths, bad
