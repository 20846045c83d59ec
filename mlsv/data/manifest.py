"""Manifests: one row per utterance (JSONL or parquet), loaded as ``datasets`` tables, validated, labelled.

A row is ``{"id", "path", "speaker", "duration", "sample_rate"}`` plus optional ``"session"``
(recording / video), ``"category"`` (noise banks: noise, music, speech), ``"kind"`` (RIRs: real,
simulated) and, in parquet shards, ``"audio"`` (the encoded FLAC bytes, used instead of ``path``).
``path`` is absolute or relative to the manifest's folder.

Wherever a manifest path is taken, a ``datasets`` dataset with an Audio column may stand instead, named by
a source string ``hf:PATH_OR_ID?split=...&speaker=...`` (``mlsv.data.sources``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from mlsv.data.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from mlsv.data.sources import is_source, source_manifest
from mlsv.extras import needs_extra

REQUIRED_COLUMNS = ("id", "path", "speaker", "duration", "sample_rate")
MANIFEST_SUFFIXES = (".jsonl", ".json", ".parquet")
#: Longest ``duration`` a row may give (seconds): 24 hours. A longer recording is not one utterance, and a
#: value beyond it is most often a length in samples or milliseconds (1e308 overflowed the loader).
MAX_DURATION = 86400.0


class ManifestError(ValueError):
    """A manifest is malformed or fails validation; the message names the file and lines."""


def _decode_line(raw: bytes, where: str) -> str:
    """A manifest line as text; ManifestError at ``where`` (FILE:LINE) when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{where}: {not_utf8(raw, e)}") from None


def not_utf8(raw: bytes, e: UnicodeDecodeError) -> str:
    """What is wrong with a line ``raw`` that failed to decode with ``e``, and the fix (for a FILE:LINE message)."""
    return (
        f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line); save the file as "
        "UTF-8 (from Latin-1: iconv -f latin1 -t utf-8 OLD > NEW)"
    )


#: JSONL manifests found to be UTF-8, by resolved path: (size, modification time in ns) when checked.
_UTF8_CHECKED: dict[str, tuple[int, int]] = {}


def _check_utf8(path: Path) -> None:
    """Raises ManifestError naming the first line of a JSONL manifest that is not UTF-8.

    ``datasets`` (pyarrow) loads such a file without complaint and fails only when the row is read, deep
    inside a data loader. A file is read again only when its size or modification time has changed: the
    training loop loads its manifest every epoch. (An edit that keeps both, such as a same-size file
    copied over it with ``cp -p``, is not read again in the same process.)
    """
    stat = path.stat()
    key, version = os.fspath(path.resolve()), (stat.st_size, stat.st_mtime_ns)
    if _UTF8_CHECKED.get(key) == version:
        return
    _scan_utf8(path)
    _UTF8_CHECKED[key] = version


def _scan_utf8(path: Path, block: int = 1 << 24) -> None:
    """``_check_utf8``'s reading: whole lines in blocks of about ``block`` bytes, so memory stays bounded."""
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(block):
            chunk += f.readline()  # end on a line break: no character split between blocks
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                start = chunk.rfind(b"\n", 0, e.start) + 1
                end = chunk.find(b"\n", e.start)
                lineno = lines + chunk.count(b"\n", 0, start) + 1
                _decode_line(chunk[start : end if end >= 0 else len(chunk)], f"{path}:{lineno}")
            lines += chunk.count(b"\n")


def row_value_errors(row: Mapping[str, Any]) -> dict[str, str]:
    """What is wrong with a row's ``id``, ``duration`` and ``sample_rate`` values: field -> a message naming
    it and the fix (for a ``FILE:LINE: `` prefix); empty when nothing is. Missing values and ids that are
    not strings are the callers' to report.

    An id holds no whitespace (trial lists are whitespace-separated); a duration is a finite number of
    seconds in (0, ``MAX_DURATION``]; a sample rate a whole number of Hz in [MIN_SAMPLE_RATE,
    MAX_SAMPLE_RATE].
    """
    errors: dict[str, str] = {}
    uid, duration, rate = row.get("id"), row.get("duration"), row.get("sample_rate")
    if isinstance(uid, str) and uid and len(uid.split()) != 1:
        errors["id"] = (
            f"id {uid!r} holds whitespace, which a trial list (whitespace-separated) cannot "
            "name: replace it (e.g. with '_')"
        )
    length = "give the utterance's length in seconds"
    if duration is None:
        pass
    elif isinstance(duration, bool) or not isinstance(duration, Real):
        errors["duration"] = f"duration {duration!r} is not a number"
    elif not math.isfinite(duration):
        errors["duration"] = f"duration {duration} is not a finite number of seconds: {length}"
    elif duration <= 0:
        errors["duration"] = f"zero or negative duration {duration}: {length} (> 0)"
    elif duration > MAX_DURATION:
        errors["duration"] = (
            f"duration {duration:g} s is over 24 hours ({MAX_DURATION:g} s): not one "
            "utterance; cut the recording into utterances (or is the length in samples or "
            "milliseconds?)"
        )
    fix = "give the file's rate (e.g. 16000)"
    if rate is None:
        pass
    elif isinstance(rate, bool) or not isinstance(rate, Real):
        errors["sample_rate"] = f"sample_rate {rate!r} is not a number"
    elif not float(rate).is_integer():
        errors["sample_rate"] = f"sample_rate {rate!r} is not a whole number of Hz: {fix}"
    elif not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        errors["sample_rate"] = f"sample_rate {int(rate)} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz: {fix}"
    return errors


def _parquet_error(file: str | Path, e: Exception) -> ManifestError:
    return ManifestError(f"{file}: not a readable parquet file ({e})")


def _read_schema(file: str | Path):
    """``pyarrow.parquet.read_schema``, with a ManifestError naming a corrupt or foreign file."""
    with needs_extra("train", "this manifest (parquet shards, datasets)"):
        import pyarrow as pa
        import pyarrow.parquet as pq

    try:
        return pq.read_schema(file)
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(file, e) from None


def _parquet_file(file: str | Path):
    """``pyarrow.parquet.ParquetFile``, with a ManifestError naming a corrupt or foreign file."""
    with needs_extra("train", "this manifest (parquet shards, datasets)"):
        import pyarrow as pa
        import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(file, e) from None


def _format(path: Path | str) -> str:
    if is_source(path):
        return "source"
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        return "parquet"
    if path.suffix in (".jsonl", ".json"):
        return "json"
    raise ManifestError(f"{path}: a manifest must end in .jsonl or .parquet (or be a folder of parquet shards)")


def _data_files(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(str(p) for p in path.glob("*.parquet"))
        if not files:
            raise ManifestError(f"{path}: folder holds no .parquet shards")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    return [str(path)]


def write_manifest(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Writes rows as JSONL (``.jsonl``) or parquet (``.parquet``) atomically. Returns the path.

    Raises:
        ManifestError: a row lacks a required column (naming the row index and column).
    """
    path = Path(path)
    fmt = _format(path)
    rows = list(rows)
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if c not in row and not (c == "path" and "audio" in row)]
        if missing:
            raise ManifestError(f"{path}: row {i} (id {row.get('id')!r}) lacks column(s) {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "json":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        with needs_extra("train", "this manifest (parquet shards, datasets)"):
            import pyarrow as pa
            import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)
    return path


def has_audio(path: Path) -> bool:
    """A parquet manifest whose rows carry their encoded audio (shards), or a dataset source."""
    if is_source(path):
        return True
    return any("audio" in _read_schema(f).names for f in _data_files(path))


def sample_manifest(path: str | Path, limit: int, out: str | Path, seed: int = 0) -> Path:
    """A seeded random subset of at most ``limit`` rows of a manifest, written to ``out`` (returned).

    Rows with paths: with the paths made absolute, in ``out``'s format. Shards (parquet rows carrying their
    audio): the chosen rows as they are, as one parquet file at ``out`` with a ``.parquet`` suffix,
    read one shard at a time so that a corpus of encoded audio is never held in memory. A manifest of
    ``limit`` rows or fewer is returned as it is.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    if is_source(path):  # the chosen rows with their audio bytes, as one parquet file
        ds = source_manifest(os.fspath(path))
        if len(ds) <= limit:
            return path
        out = Path(out).with_suffix(".parquet")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        ds.select(np.sort(rng.choice(len(ds), limit, replace=False))).to_parquet(str(tmp))
        os.replace(tmp, out)
        return out
    path = Path(path)
    if _format(path) == "json" or not has_audio(path):  # rows with paths: made absolute for ``out``'s folder
        rows = [row for _, row in iter_rows(path)]
        if len(rows) <= limit:
            return path
        root = manifest_root(path)
        pick = np.sort(rng.choice(len(rows), limit, replace=False))
        return write_manifest([{**rows[i], "path": resolve_path(rows[i]["path"], root)} for i in pick], out)
    with needs_extra("train", "this manifest (parquet shards, datasets)"):
        import pyarrow.parquet as pq

    files = _data_files(path)
    counts = [_parquet_file(f).metadata.num_rows for f in files]
    if sum(counts) <= limit:
        return path
    pick = np.sort(rng.choice(sum(counts), limit, replace=False))
    out = Path(out).with_suffix(".parquet")
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer, start = None, 0
    for file, n in zip(files, counts):
        mine = pick[(pick >= start) & (pick < start + n)] - start
        start += n
        if not len(mine):
            continue
        table = pq.read_table(file).take(mine)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table.cast(writer.schema))
    writer.close()
    os.replace(tmp, out)
    return out


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line number from 1, row) without ``datasets``; parquet rows count from 1 too.

    Paths are returned as stored (not resolved). Raises ManifestError naming a malformed line (or one
    not UTF-8) or a file that is not parquet. A dataset source's rows come without their audio bytes.
    """
    if is_source(path):
        ds = source_manifest(os.fspath(path))
        ds = ds.select_columns([c for c in ds.column_names if c != "audio"])
        n = 0
        for batch in ds.iter(batch_size=1024):
            for values in zip(*batch.values()):
                n += 1
                yield n, dict(zip(batch, values))
        return
    path = Path(path)
    if _format(path) == "json":
        with open(_data_files(path)[0], "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = _decode_line(raw, f"{path}:{lineno}")
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ManifestError(f"{path}:{lineno}: not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise ManifestError(f"{path}:{lineno}: a row must be a JSON object")
                yield lineno, row
    else:
        with needs_extra("train", "this manifest (parquet shards, datasets)"):
            import pyarrow as pa

        n = 0
        for file in _data_files(path):
            batches = _parquet_file(file).iter_batches(batch_size=1024)
            while True:
                try:
                    batch = next(batches, None)
                except (pa.ArrowException, OSError) as e:  # a corrupt page past a sound footer
                    raise _parquet_error(file, e) from None
                if batch is None:
                    break
                for row in batch.to_pylist():
                    n += 1
                    yield n, row


def resolve_path(path: str, root: str | Path) -> str:
    """``path`` made absolute against the manifest folder ``root`` (absolute paths are kept)."""
    return path if os.path.isabs(path) else os.path.join(os.fspath(root), path)


def manifest_root(path: str | Path) -> Path:
    """The folder relative row paths are resolved against (a dataset source's: the working folder)."""
    if is_source(path):
        return Path.cwd()
    path = Path(path).resolve()
    return path if path.is_dir() else path.parent


def load_manifest(
    path: str | Path,
    *,
    streaming: bool = False,
    process_index: int = 0,
    num_processes: int = 1,
    resolve: bool = True,
    cache_dir: str | None = None,
):
    """Loads a manifest (JSONL, parquet, or a folder of parquet shards) with ``datasets``.

    Args:
        path: the manifest file or shard folder, or a dataset source (``hf:...``, see ``mlsv.data.sources``).
        streaming: return an ``IterableDataset`` (rows read lazily) instead of a ``Dataset``.
        process_index, num_processes: keep only this process's disjoint share
            (``datasets.distributed.split_dataset_by_node``: whole shards when their number divides
            evenly, else every ``num_processes``-th row).
        resolve: make relative ``path`` values absolute against the manifest folder.
        cache_dir: ``datasets`` cache folder (default: its own).

    Returns:
        ``datasets.Dataset`` or ``datasets.IterableDataset``; audio stays as paths (or ``audio`` bytes).

    Raises:
        ManifestError: no rows, a malformed line or one not UTF-8, a missing column or value, a non-string
            or repeated id, a file that is not parquet; the message names the file and line (audio is not
            opened here: ``validate`` does that).
    """
    with needs_extra("train", "this manifest (parquet shards, datasets)"):
        import datasets
        from datasets.distributed import split_dataset_by_node

    if is_source(path):
        spec = os.fspath(path)
        ds = source_manifest(spec)
        _check_rows(spec, ds.data.table)
        if streaming:  # shards of the memory-mapped rows, read lazily like a parquet manifest's
            ds = ds.to_iterable_dataset(num_shards=min(len(ds), 64))
        if num_processes > 1:
            ds = split_dataset_by_node(ds, rank=process_index, world_size=num_processes)
        return ds
    path = Path(path)
    fmt, files = _format(path), _data_files(path)
    if fmt == "json":
        _check_utf8(path)  # pyarrow reads bad bytes into strings that fail later, inside a data loader
    else:
        for file in files:
            _read_schema(file)  # a corrupt footer; datasets' own error would not name the file
    try:
        ds = datasets.load_dataset(fmt, data_files=files, split="train", streaming=streaming, cache_dir=cache_dir)
    except Exception:
        if fmt == "json":
            _scan_json(path)  # raises a ManifestError naming the line, if a line is to blame
        else:
            _scan_parquet(files)  # raises a ManifestError naming the file, if a file is corrupt
        raise
    _check_rows(path, _header_table(path, fmt, files) if streaming else ds.data.table)
    if resolve and "path" in (ds.column_names or ["path"]):
        root = os.fspath(manifest_root(path))

        def _resolve(batch: dict[str, list]) -> dict[str, list]:
            return {"path": [resolve_path(p, root) if p else p for p in batch["path"]]}

        kwargs = {} if streaming else {"keep_in_memory": True}
        ds = ds.map(_resolve, batched=True, **kwargs)
    if num_processes > 1:
        ds = split_dataset_by_node(ds, rank=process_index, world_size=num_processes)
    return ds


def _scan_json(path: Path) -> None:
    """Raises ManifestError for an empty JSONL manifest or the first line that is not a JSON object, has a
    non-string id or a non-numeric duration or sample rate."""
    rows = 0
    for lineno, row in iter_rows(path):
        rows += 1
        if row.get("id") is not None and not isinstance(row["id"], str):
            raise ManifestError(f"{path}:{lineno}: id {row['id']!r} is not a string (write it in quotes)")
        for c in ("duration", "sample_rate"):
            if row.get(c) is not None and (isinstance(row[c], bool) or not isinstance(row[c], (int, float))):
                raise ManifestError(f"{path}:{lineno}: {c} {row[c]!r} is not a number")
    if not rows:
        raise ManifestError(f"{path}: manifest has no rows")


def _scan_parquet(files: list[str]) -> None:
    """Reads every page of the parquet files; raises ManifestError naming the first one that is corrupt."""
    with needs_extra("train", "this manifest (parquet shards, datasets)"):
        import pyarrow as pa

    for file in files:
        try:
            for _ in _parquet_file(file).iter_batches(batch_size=4096):
                pass
        except (pa.ArrowException, OSError) as e:
            raise _parquet_error(file, e) from None


def _header_table(path: Path, fmt: str, files: list[str]):
    """Every column but ``audio``, read with pyarrow (for the checks on a streamed manifest)."""
    with needs_extra("train", "this manifest (parquet shards, datasets)"):
        import pyarrow as pa

    if fmt == "json":
        with needs_extra("train", "this manifest (parquet shards, datasets)"):
            import pyarrow.json as pj

        try:
            return pj.read_json(files[0])
        except pa.ArrowInvalid as e:
            _scan_json(path)
            raise ManifestError(f"{path}: {e}") from None
    with needs_extra("train", "this manifest (parquet shards, datasets)"):
        import pyarrow.parquet as pq

    tables = []
    for file in files:
        names = _read_schema(file).names
        try:
            table = pq.read_table(file, columns=[c for c in names if c != "audio"])
        except (pa.ArrowException, OSError) as e:
            raise _parquet_error(file, e) from None
        if "audio" in names:  # the checks need to know it is there, not its bytes
            table = table.append_column("audio", pa.nulls(table.num_rows, pa.binary()))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")


def _check_rows(path: Path | str, table) -> None:
    """Header checks on a loaded manifest (no audio is read): rows, a value in every required column,
    string ids, no id twice, and the values ``row_value_errors`` checks (ids without whitespace, finite
    durations in (0, 24 h], whole sample rates within 4-384 kHz). Raises ManifestError naming the line
    (JSONL) or row (parquet) and the field."""
    with needs_extra("train", "this manifest (parquet shards, datasets)"):
        import pyarrow as pa
        import pyarrow.compute as pc

    if table.num_rows == 0:
        raise ManifestError(f"{path}: manifest has no rows")
    names = table.column_names
    needed = [c for c in REQUIRED_COLUMNS if not (c == "path" and "audio" in names)]
    missing = [c for c in needed if c not in names]
    if missing:
        raise ManifestError(f"{path}: manifest lacks column(s) {missing}")
    lines: list[int] = []

    def line(i: int) -> int:  # on errors only: JSONL rows skip blank lines, parquet rows count from 1
        if not lines:
            json_lines = _format(path) == "json"
            lines.extend([n for n, _ in iter_rows(path)] if json_lines else range(1, table.num_rows + 1))
        return lines[i]

    def fail(errors: list[str]) -> None:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ManifestError("; ".join(errors[:5]) + more)

    empty: dict[int, list[str]] = {}
    for c in needed:
        col = table[c]
        mask = pc.is_null(col)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            mask = pc.or_kleene(mask, pc.equal(col, ""))
        if pc.any(mask).as_py():
            for i, bad in enumerate(mask.to_pylist()):
                if bad:
                    empty.setdefault(i, []).append(c)
    if empty:
        fail([f"{path}:{line(i)}: missing {cols}" for i, cols in sorted(empty.items())])
    types = {c: table[c].type for c in ("id", "duration", "sample_rate")}
    wrong = {
        c: str(t)
        for c, t in types.items()
        if not (
            pa.types.is_string(t) or pa.types.is_large_string(t)
            if c == "id"
            else pa.types.is_integer(t) or pa.types.is_floating(t)
        )
    }
    if wrong:
        if _format(path) == "json":
            _scan_json(path)
        raise ManifestError(f"{path}: column types {wrong}; ids must be strings, durations and sample rates numbers")
    ids = table["id"].to_pylist()
    if len(set(ids)) != len(ids):
        first: dict[str, int] = {}
        fail(
            [
                f"{path}:{line(i)}: duplicate id {uid!r} (first on line {line(first[uid])})"
                for i, uid in enumerate(ids)
                if first.setdefault(uid, i) != i
            ]
        )
    duration, rate = table["duration"], table["sample_rate"]
    ok = pc.and_(
        pc.and_(pc.greater(duration, 0), pc.less_equal(duration, MAX_DURATION)),  # false for NaN
        pc.and_(pc.greater_equal(rate, MIN_SAMPLE_RATE), pc.less_equal(rate, MAX_SAMPLE_RATE)),
    )
    if pa.types.is_floating(rate.type):
        ok = pc.and_(ok, pc.equal(rate, pc.floor(rate)))
    suspects = {i for i, good in enumerate(ok.to_pylist()) if not good} if not pc.all(ok).as_py() else set()
    suspects |= {i for i, uid in enumerate(ids) if len(uid.split()) != 1}
    if suspects:
        durations, rates = duration.to_pylist(), rate.to_pylist()
        values = [
            row_value_errors({"id": ids[i], "duration": durations[i], "sample_rate": rates[i]})
            for i in sorted(suspects)
        ]
        fail([f"{path}:{line(i)}: {e}" for i, v in zip(sorted(suspects), values) for e in v.values()])


def speaker_labels(manifest) -> dict[str, int]:
    """Speaker -> class index, sorted by speaker name; built once per training run.

    Args:
        manifest: a manifest path, a ``datasets.Dataset``, or an iterable of speaker names.
    """
    if isinstance(manifest, (str, Path)):
        names = {str(row["speaker"]) for _, row in iter_rows(manifest)}
    elif hasattr(manifest, "features"):  # a datasets table: whole column, or rows when streaming
        names = (
            set(map(str, manifest["speaker"]))
            if hasattr(manifest, "__len__")
            else {str(r["speaker"]) for r in manifest}
        )
    else:
        names = set(map(str, manifest))
    return {spk: i for i, spk in enumerate(sorted(names))}


def save_labels(labels: dict[str, int], path: str | Path) -> None:
    """Writes the label map as JSON (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(labels, indent=1, sort_keys=True))
    tmp.replace(path)


def load_labels(path: str | Path) -> dict[str, int]:
    """Reads a label map written by ``save_labels``; checks the indices are 0..N-1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map not found: {path}")
    labels = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    if sorted(labels.values()) != list(range(len(labels))):
        raise ManifestError(f"{path}: label indices must be 0..{len(labels) - 1} without gaps")
    return labels
