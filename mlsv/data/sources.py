"""``datasets`` datasets with an Audio column as manifests: ``hf:PATH_OR_ID?split=...&speaker=...``.

A *dataset source* is a string that stands wherever a manifest path does (``data.train_manifest``,
``data.validation_manifest``, ``mlsv evaluate --manifest``, ``mlsv embed --manifest``, a recipe's
evaluate step)::

    hf:data/vox1_ds?split=test&speaker=speaker_id&session=video_id&id=utt_id
    hf:someone/voxceleb?config=sv&split=test&speaker=speaker_id

``PATH_OR_ID`` is a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), a folder of data
files ``datasets.load_dataset`` reads (parquet, audiofolder, ...), or a hub id already in the local
``datasets`` cache (read offline: nothing is downloaded). The query names the split and the columns:

- ``split``: the split (required when there is more than one);
- ``config``: the configuration, for a hub dataset that has several;
- ``audio``: the Audio column (default ``audio``), cast to ``Audio(decode=False)`` so that its bytes or paths
  are decoded by soundfile per item (``datasets``' own decoder needs torchcodec, which does not load with a
  CPU torch);
- ``speaker``: the speaker column (default ``speaker``; a ClassLabel gives its names);
- ``session``: an optional session (recording / video) column;
- ``id``: the utterance id column (default: an ``id`` column when there is one, else the row number from 0),
  which trial lists name.

``source_manifest`` gives the rows in manifest form (``id``, ``speaker``, ``duration``, ``sample_rate``,
optional ``session``, ``audio`` bytes and ``path``) over the dataset's own memory-mapped Arrow files: no
audio is copied or decoded. Durations and sample rates come from each item's header: read once and cached
next to the dataset (a ``datasets`` map) when the items' bytes are in the dataset, read each run when items
name files by path (which may change behind the dataset).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote

from mlsv.data.audio import AudioError, audio_info

SOURCE_PREFIX = "hf:"
#: The keys a source's query takes, with what each names.
SOURCE_KEYS = {
    "split": "the split",
    "config": "the configuration of a dataset that has several",
    "audio": "the Audio column (default audio)",
    "speaker": "the speaker column (default speaker)",
    "session": "an optional session column",
    "id": "the utterance id column (default: id when present, else the row number)",
}


class SourceError(ValueError):
    """A dataset source is malformed, missing, or lacks a split or column; the message names it."""


@dataclass(frozen=True)
class DatasetSource:
    """A parsed ``hf:`` source (see the module docstring)."""

    path: str
    split: str | None = None
    config: str | None = None
    audio: str = "audio"
    speaker: str = "speaker"
    session: str | None = None
    id: str | None = None

    def __str__(self) -> str:
        query = [(k, getattr(self, k)) for k in SOURCE_KEYS]
        defaults = {"audio": "audio", "speaker": "speaker"}
        parts = [f"{k}={quote(v, safe='')}" for k, v in query if v is not None and defaults.get(k) != v]
        return SOURCE_PREFIX + self.path + ("?" + "&".join(parts) if parts else "")


def is_source(path: object) -> bool:
    """Whether a manifest argument (a string or path) is a dataset source (``hf:...``) rather than a file."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(SOURCE_PREFIX)


def parse_source(spec: str) -> DatasetSource:
    """Parses ``hf:PATH_OR_ID?key=value&...``; SourceError naming an unknown or repeated key, or an empty path."""
    if not is_source(spec):
        raise SourceError(f"{spec!r} is not a dataset source (hf:PATH_OR_ID?split=...)")
    spec = os.fspath(spec)
    path, _, query = spec[len(SOURCE_PREFIX) :].partition("?")
    if not path:
        raise SourceError(f"{spec}: no dataset folder or hub id after {SOURCE_PREFIX!r}")
    values: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in SOURCE_KEYS:
            known = ", ".join(f"{k} ({v})" for k, v in SOURCE_KEYS.items())
            raise SourceError(f"{spec}: unknown key {key!r}; a source takes {known}")
        if key in values:
            raise SourceError(f"{spec}: {key} given twice")
        if not value:
            raise SourceError(f"{spec}: {key} is empty")
        values[key] = value
    return DatasetSource(path=path, **values)


def resolve_source(spec: str, base: str | Path | None) -> str:
    """``spec`` with a relative dataset folder made absolute against ``base`` (a config's folder) when that
    folder exists there; a hub id (or a folder not found there) is kept as given."""
    src = parse_source(spec)
    if base is None or os.path.isabs(src.path) or not (Path(base) / src.path).is_dir():
        return spec
    return str(DatasetSource(**{**src.__dict__, "path": str((Path(base) / src.path).resolve())}))


@contextlib.contextmanager
def _offline():
    """``datasets`` in offline mode for the call: a hub id resolves from the local cache, never the network."""
    import datasets

    before = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = before


def _pick_split(obj, src: DatasetSource, spec: str):
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        splits = sorted(obj)
        if src.split is None:
            if len(splits) == 1:
                return obj[splits[0]]
            raise SourceError(f"{spec}: the dataset has splits {splits}: name one with ?split=NAME")
        if src.split not in obj:
            raise SourceError(f"{spec}: unknown split {src.split!r}; the dataset has {splits}")
        return obj[src.split]
    if src.split is not None and obj.split is not None and str(obj.split) != src.split:
        raise SourceError(f"{spec}: unknown split {src.split!r}; the folder holds the split {str(obj.split)!r} alone")
    return obj


def open_source(spec: str):
    """The source's split as a map-style ``datasets.Dataset`` with its audio column as ``Audio(decode=False)``.

    Raises:
        SourceError: no such folder and no such dataset in the local cache, an unknown split, or a
            missing column (each named).
    """
    import datasets

    src = parse_source(spec)
    folder = Path(src.path)
    if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        if src.config is not None:
            raise SourceError(f"{spec}: a folder written by save_to_disk has no configurations: leave out config")
        obj = datasets.load_from_disk(str(folder))  # save_to_disk: memory-mapped Arrow files
    elif folder.is_dir():
        try:  # a folder of data files (parquet, audiofolder, ...): datasets picks the builder
            with _offline():
                obj = datasets.load_dataset(str(folder), src.config)
        except (FileNotFoundError, ValueError) as e:
            raise SourceError(f"{spec}: {folder} is not a dataset folder datasets can read ({e})") from None
    else:
        if folder.is_absolute() or src.path.startswith(".") or src.path.count("/") > 1:
            raise SourceError(f"{spec}: dataset folder {src.path} not found")
        try:
            with _offline():
                obj = datasets.load_dataset(src.path, src.config)
        except (ConnectionError, FileNotFoundError) as e:
            raise SourceError(
                f"{spec}: {src.path} is neither a dataset folder here nor a hub dataset in the local datasets cache "
                f"({datasets.config.HF_DATASETS_CACHE}); mlsv reads hub datasets offline: download it first "
                f'(datasets.load_dataset("{src.path}")) or give the folder save_to_disk wrote ({e})'
            ) from None
    ds = _pick_split(obj, src, spec)
    for key in ("audio", "speaker", "session", "id"):
        column = getattr(src, key)
        if column is not None and column not in ds.column_names:
            hint = f"; name it with ?{key}=COLUMN" if key in ("audio", "speaker") and column == key else ""
            raise SourceError(f"{spec}: no {key} column {column!r} (the split has {ds.column_names}){hint}")
    if not isinstance(ds.features[src.audio], datasets.Audio):
        ds = ds.cast_column(src.audio, datasets.Audio(decode=False))  # bytes or paths (strings) cast too
    elif ds.features[src.audio].decode:
        ds = ds.cast_column(src.audio, datasets.Audio(decode=False))
    if ds._indices is not None:  # a selection saved as an index mapping: rows in their own order
        ds = ds.flatten_indices()
    return ds


def _headers(batch: dict[str, list], audio: str, offset: list[int]) -> dict[str, list]:
    """``datasets`` map: (duration, sample_rate) from each item's header; SourceError naming the row."""
    durations, rates = [], []
    for k, item in enumerate(batch[audio]):
        item = item or {}
        source = item.get("bytes") or item.get("path")
        try:
            if not source:
                raise AudioError("neither audio bytes nor a path")
            frames, rate, _ = audio_info(source)
        except AudioError as e:
            raise SourceError(f"row {offset[0] + k} ({item.get('path') or 'bytes'}): {e}") from None
        durations.append(frames / rate)
        rates.append(rate)
    offset[0] += len(durations)
    return {"duration": durations, "sample_rate": rates}


#: source_manifest results by (spec, the dataset's files with their sizes and times).
_MANIFESTS: dict[tuple, object] = {}


def source_files(ds) -> list[list]:
    """The Arrow files behind a dataset, with their sizes and modification times (what its rows depend on)."""
    out = []
    for f in ds.cache_files:
        st = os.stat(f["filename"])
        out.append([f["filename"], st.st_size, st.st_mtime_ns])
    return out


def source_manifest(spec: str):
    """The source's rows in manifest form: a map-style ``datasets.Dataset`` with ``id``, ``speaker``,
    ``duration``, ``sample_rate`` (from the headers), ``audio`` (bytes, or null when the item is a path),
    ``path`` and, when named, ``session``. The audio stays in the dataset's memory-mapped files.

    Raises:
        SourceError: see ``open_source``; an item whose header cannot be read (naming its row).
    """
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    src = parse_source(spec)
    raw = open_source(spec)
    key = (spec, repr(source_files(raw)))
    if key in _MANIFESTS:
        return _MANIFESTS[key]
    table = raw.data.table
    audio = table.column(src.audio)
    audio_only = raw.select_columns([src.audio])
    settings = dict(batched=True, batch_size=256, remove_columns=[src.audio], desc="reading audio headers")
    # cached beside the dataset's files, so that a later run reads no audio, when the items are in them: the
    # cache is keyed on the dataset, and files that items name by path may change behind it
    embedded = pc.struct_field(audio, "bytes").null_count == 0
    try:
        try:
            headers = audio_only.map(
                _headers, fn_kwargs={"audio": src.audio, "offset": [0]}, keep_in_memory=not embedded, **settings
            )
        except PermissionError:  # a read-only dataset folder: read them again each run
            headers = audio_only.map(
                _headers, fn_kwargs={"audio": src.audio, "offset": [0]}, keep_in_memory=True, **settings
            )
    except SourceError as e:
        raise SourceError(f"{spec}: {e}") from None
    n = table.num_rows
    columns: dict[str, object] = {
        "audio": pc.struct_field(audio, "bytes"),
        "path": pc.struct_field(audio, "path"),
    }
    speaker_feature = raw.features[src.speaker]
    speakers = table.column(src.speaker)
    if isinstance(speaker_feature, datasets.ClassLabel):
        speakers = pa.array(speaker_feature.names, pa.string()).take(speakers.combine_chunks())
    columns["speaker"] = pc.cast(speakers, pa.string())
    if src.session is not None:
        columns["session"] = pc.cast(table.column(src.session), pa.string())
    id_column = src.id or ("id" if "id" in raw.column_names else None)
    columns["id"] = (
        pc.cast(table.column(id_column), pa.string())
        if id_column
        else pa.array([str(i) for i in range(n)], pa.string())
    )
    columns["duration"] = headers.data.table.column("duration")
    columns["sample_rate"] = headers.data.table.column("sample_rate")
    ds = datasets.Dataset(
        datasets.table.InMemoryTable(pa.table(columns)),
        fingerprint=datasets.fingerprint.Hasher.hash([spec, key[1], headers._fingerprint]),
    )
    _MANIFESTS.clear()  # one source at a time is enough (a training run reads the same one every epoch)
    _MANIFESTS[key] = ds
    return ds
