"""Manifests from other toolkits' data descriptions: a Kaldi data folder, lhotse manifests.

Kaldi: ``wav.scp`` (``RECORDING PATH`` with plain paths; pipes and ark offsets are refused, naming the
line), ``utt2spk`` (``UTT SPEAKER``), optional ``segments`` (``UTT RECORDING START END`` in seconds, END -1:
to the end) and optional ``trials`` (``ENROLL TEST target|nontarget``, written as an mlsv trial list).
lhotse: a recordings manifest and a supervisions manifest, read as JSONL (or ``.jsonl.gz``) without lhotse;
each supervision (id, recording_id, start, duration, speaker, channel) becomes an utterance.

mlsv's manifest rows name whole files (no start/end offsets: the loaders crop, chunk, shard and check
whole files). A segment that covers its recording is listed with the recording's path; any other segment
is cut once into ``OUT/segments/RECORDING/UTT.flac`` (lossless: 24-bit for 24/32-bit and float sources),
which the manifest then names. Every file is checked as the other recipes check them: bad ones are listed
(``bad_files.txt``) and left out.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mlsv.data.audio import AudioError, MissingDependencyError, audio_info, pcm_subtype, read_audio, write_audio
from mlsv.data.prepare import PrepareResult, _manifest_path, _write, _write_bad, progress_bar, scan
from mlsv.data.trials import Trials, write_trials

KALDI_LABELS = {"target": 1, "nontarget": 0}


class DataDirError(ValueError):
    """A Kaldi data folder or lhotse manifest is malformed; the message names the file and line."""


def _table(path: Path, fields: tuple[int, ...], what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a whitespace-separated Kaldi table; DataDirError naming a bad line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in fields:
                want = " or ".join(map(str, fields))
                raise DataDirError(f"{path}:{lineno}: expected {want} fields ({what}), got {len(parts)}")
            yield lineno, parts


def _unique(path: Path, rows: Iterator[tuple[int, list[str]]]) -> dict[str, tuple[int, list[str]]]:
    out: dict[str, tuple[int, list[str]]] = {}
    for lineno, parts in rows:
        if parts[0] in out:
            raise DataDirError(f"{path}:{lineno}: {parts[0]!r} again (first on line {out[parts[0]][0]})")
        out[parts[0]] = (lineno, parts)
    return out


def _wav_scp(path: Path, base: Path) -> dict[str, str]:
    """RECORDING -> absolute file path from ``wav.scp`` (relative paths against ``base``)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, _, rest = line.strip().partition(" ")
            rest = rest.strip()
            if not rest:
                raise DataDirError(f"{path}:{lineno}: {key!r} has no path")
            if rest.endswith("|"):
                raise DataDirError(
                    f"{path}:{lineno}: {key!r} is a command ({rest[:60]}), not a file: mlsv reads plain paths; "
                    "write the audio out as files (e.g. run the command into a .wav) and list those"
                )
            if re.search(r"\.(ark|scp):\d+$", rest):
                raise DataDirError(f"{path}:{lineno}: {key!r} points into an archive ({rest}): list plain files")
            if key in out:
                raise DataDirError(f"{path}:{lineno}: recording {key!r} listed twice")
            out[key] = rest if os.path.isabs(rest) else str((base / rest).resolve())
    if not out:
        raise DataDirError(f"{path}: no recordings")
    return out


def _cut(task: tuple[str, str, float, float, int | None, str]) -> str | None:
    """Writes the segment [start, end) s (end < 0: to the end) of ``source`` (channel ``channel``, or all)
    to ``dst`` (again on a rerun: the segments may have changed); None, or why it could not be cut (naming
    the source)."""
    source, uid, start, end, channel, dst = task
    try:
        _, rate, channels = audio_info(source)
        first = int(round(start * rate))
        frames = -1 if end < 0 else int(round(end * rate)) - first
        if frames == 0 or frames < -1:
            return f"{source}: segment {uid} ({start:g}-{end:g} s) is empty"
        x, rate = read_audio(source, first, frames, mono=False)
        if channel is not None:
            if channel >= channels:
                return f"{source}: segment {uid} names channel {channel}, the file has {channels}"
            x = x[:, channel]
        elif x.shape[1] == 1:
            x = x[:, 0]
        if not len(x):
            return f"{source}: segment {uid} starts at {start:g} s, past the end of the file"
        write_audio(dst, x, rate, pcm_subtype(source))
    except MissingDependencyError:
        raise
    except AudioError as e:
        return f"{e} (segment {uid})"
    return None


def _finish(
    partial: list[dict],
    cuts: list[tuple[str, str, float, float, int | None, str]],
    out_dir: Path,
    *,
    sample_rate: int,
    resample: bool,
    workers: int,
    progress: bool,
) -> PrepareResult:
    """Cuts the segments, checks every file and writes ``out_dir/manifest.jsonl``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bad: list[str] = []
    failed: set[str] = set()
    if workers > 1 and len(cuts) > 16:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            results = list(progress_bar(pool.map(_cut, cuts, chunksize=16), len(cuts), "cutting segments", progress))
    else:
        results = [_cut(c) for c in progress_bar(cuts, len(cuts), "cutting segments", progress)]
    for (_, uid, *_), why in zip(cuts, results):
        if why:
            bad.append(why)
            failed.add(uid)
    partial = [r for r in partial if r["id"] not in failed]
    rows, scan_bad = scan(
        partial, sample_rate=sample_rate, resample=resample, workers=workers, progress=progress, root=out_dir
    )
    result = PrepareResult()
    _write(rows, [*bad, *scan_bad], out_dir / "manifest.jsonl", result, "manifest")
    _write_bad(result, out_dir)
    return result


def _segment_file(out_dir: Path, recording: str, uid: str) -> Path:
    """Where a cut segment goes: ``segments/RECORDING/UTT.flac`` (characters a file name cannot hold -> _)."""
    clean = [re.sub(r"[/\\\0]|^\.\.?$", "_", name) for name in (recording, uid)]
    return out_dir / "segments" / clean[0] / f"{clean[1]}.flac"


def _check_id(uid: str, where: str) -> None:
    if len(uid.split()) != 1:
        raise DataDirError(f"{where}: id {uid!r} holds whitespace, which a trial list cannot name")


def prepare_kaldi(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    sample_rate: int = 16000,
    resample: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """A manifest (``out_dir/manifest.jsonl``) and, when ``data_dir/trials`` exists, a trial list
    (``out_dir/trials.txt``) from a Kaldi data folder.

    Utterance ids are Kaldi's (``utt2spk``); speakers come from ``utt2spk``. With ``segments`` an
    utterance is a stretch of a recording (cut as the module docstring says) and its session is the
    recording. Relative paths in ``wav.scp`` are taken against the working folder (Kaldi runs from
    the recipe folder).

    Raises:
        FileNotFoundError: ``data_dir``, ``wav.scp`` or ``utt2spk`` missing.
        DataDirError: a malformed line, a command or archive in ``wav.scp``, an utterance without a
            recording, a segment whose end is before its start, or a trial naming an unknown utterance
            (each naming the file and line).
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    for name in ("wav.scp", "utt2spk"):
        if not (data_dir / name).is_file():
            raise FileNotFoundError(f"{data_dir / name} not found (a Kaldi data folder has wav.scp and utt2spk)")
    recordings = _wav_scp(data_dir / "wav.scp", Path.cwd())
    utt2spk = _unique(data_dir / "utt2spk", _table(data_dir / "utt2spk", (2,), "UTT SPEAKER"))
    segments = None
    if (data_dir / "segments").is_file():
        segments = _unique(data_dir / "segments", _table(data_dir / "segments", (4,), "UTT RECORDING START END"))
    partial, cuts = [], []
    where = data_dir / ("segments" if segments is not None else "utt2spk")
    for uid, (lineno, (_, speaker)) in utt2spk.items():
        _check_id(uid, f"{data_dir / 'utt2spk'}:{lineno}")
        row = {"id": uid, "speaker": speaker}
        if segments is None:
            if uid not in recordings:
                raise DataDirError(f"{data_dir / 'utt2spk'}:{lineno}: utterance {uid!r} is not in wav.scp")
            source = recordings[uid]
        else:
            if uid not in segments:
                raise DataDirError(f"{data_dir / 'utt2spk'}:{lineno}: utterance {uid!r} is not in segments")
            seg_line, (_, rec, start_s, end_s) = segments[uid]
            try:
                start, end = float(start_s), float(end_s)
            except ValueError:
                raise DataDirError(
                    f"{where}:{seg_line}: start and end must be seconds, got {start_s} {end_s}"
                ) from None
            if start < 0 or (end >= 0 and end <= start):
                raise DataDirError(f"{where}:{seg_line}: segment {uid} ends ({end:g} s) before it starts ({start:g} s)")
            if rec not in recordings:
                raise DataDirError(f"{where}:{seg_line}: recording {rec!r} is not in wav.scp")
            row["session"] = rec
            source = str(_segment_file(out_dir, rec, uid))
            cuts.append((recordings[rec], uid, start, end, None, source))
        path, problem = _manifest_path(Path(source), out_dir)
        row["path"] = path if problem is None else source
        partial.append(row)
    if segments is not None:
        orphans = sorted(set(segments) - set(utt2spk))
        if orphans:
            raise DataDirError(f"{where}: segment(s) {orphans[:5]} have no speaker in utt2spk")
    result = _finish(
        partial, cuts, out_dir, sample_rate=sample_rate, resample=resample, workers=workers, progress=progress
    )
    if (data_dir / "trials").is_file():
        trials = read_kaldi_trials(data_dir / "trials", set(utt2spk))
        write_trials(trials, out_dir / "trials.txt")
        result.outputs["trials"] = out_dir / "trials.txt"
    return result


def read_kaldi_trials(path: str | Path, known: set[str] | None = None) -> Trials:
    """A Kaldi trial list (``ENROLL TEST target|nontarget``); DataDirError naming a bad line or an utterance
    not in ``known``."""
    path = Path(path)
    enroll, test, labels, lines = [], [], [], []
    for lineno, (e, t, label) in _table(path, (3,), "ENROLL TEST target|nontarget"):
        if label not in KALDI_LABELS:
            raise DataDirError(f"{path}:{lineno}: label {label!r} is neither target nor nontarget")
        for uid in (e, t):
            if known is not None and uid not in known:
                raise DataDirError(f"{path}:{lineno}: utterance {uid!r} is not in utt2spk")
        enroll.append(e)
        test.append(t)
        labels.append(KALDI_LABELS[label])
        lines.append(lineno)
    if not labels:
        raise DataDirError(f"{path}: no trials")
    return Trials(
        np.array(enroll),
        np.array(test),
        np.array(labels, np.int8),
        name="trials",
        path=str(path),
        lines=np.array(lines),
    )


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line, object) of a JSONL file, gzipped when its name ends in ``.gz``; DataDirError naming a bad line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataDirError(f"{path}:{lineno}: not valid JSON ({e})") from None
                if not isinstance(obj, dict):
                    raise DataDirError(f"{path}:{lineno}: a line must be a JSON object")
                yield lineno, obj
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise DataDirError(
                f"{path}: cannot be read as {'gzipped ' if opener is gzip.open else ''}JSONL ({e})"
            ) from None


def _lhotse_source(rec: dict, channel: int | None, where: str) -> tuple[str, int | None]:
    """(file, channel within it, or None for all) of a lhotse recording for a supervision on ``channel``."""
    if rec.get("transforms"):
        raise DataDirError(f"{where}: recording {rec['id']!r} has transforms (speed, volume, ...): not supported")
    sources = rec.get("sources") or []
    for source in sources:
        channels = list(source.get("channels") or [0])
        if channel is not None and channel not in channels:
            continue
        if source.get("type") != "file":
            raise DataDirError(
                f"{where}: recording {rec['id']!r} has a {source.get('type')!r} source: mlsv reads files only"
            )
        inner = None if channel is None or len(channels) == 1 else channels.index(channel)
        return str(source["source"]), inner
    raise DataDirError(f"{where}: recording {rec['id']!r} has no file source for channel {channel}")


def prepare_lhotse(
    recordings: str | Path,
    supervisions: str | Path,
    out_dir: str | Path,
    *,
    sample_rate: int = 16000,
    resample: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """A manifest (``out_dir/manifest.jsonl``) from lhotse recordings and supervisions manifests (JSONL or
    ``.jsonl.gz``; lhotse itself is not needed).

    Each supervision is an utterance: id the supervision's, speaker its ``speaker``, session its
    recording. One that covers its whole recording (start 0, the recording's duration) names the file;
    others are cut (module docstring). Relative source paths are taken against the working folder, as
    lhotse does.

    Raises:
        DataDirError: a malformed line, a supervision without a speaker or with an unknown recording, a
            recording that is not a plain file (URL, command, in-memory) or has transforms (naming each).
    """
    recordings, supervisions, out_dir = Path(recordings), Path(supervisions), Path(out_dir)
    recs: dict[str, dict] = {}
    for lineno, rec in read_jsonl(recordings):
        if "id" not in rec or "sources" not in rec:
            raise DataDirError(
                f"{recordings}:{lineno}: a recording needs id and sources (is this a supervisions file?)"
            )
        if rec["id"] in recs:
            raise DataDirError(f"{recordings}:{lineno}: recording {rec['id']!r} listed twice")
        recs[rec["id"]] = rec
    partial, cuts, seen = [], [], set()
    for lineno, sup in read_jsonl(supervisions):
        where = f"{supervisions}:{lineno}"
        missing = [k for k in ("id", "recording_id", "start", "duration") if k not in sup]
        if missing:
            raise DataDirError(f"{where}: a supervision needs {missing} (is this a recordings file?)")
        uid, rec_id = str(sup["id"]), str(sup["recording_id"])
        _check_id(uid, where)
        if uid in seen:
            raise DataDirError(f"{where}: supervision {uid!r} listed twice")
        seen.add(uid)
        if not sup.get("speaker"):
            raise DataDirError(f"{where}: supervision {uid!r} has no speaker")
        if rec_id not in recs:
            raise DataDirError(f"{where}: recording {rec_id!r} is not in {recordings}")
        rec = recs[rec_id]
        channel = sup.get("channel")
        if isinstance(channel, list):
            if len(channel) != 1:
                raise DataDirError(f"{where}: supervision {uid!r} spans channels {channel}: give one")
            channel = channel[0]
        rec_channels = sorted({c for s in rec.get("sources") or [] for c in (s.get("channels") or [0])})
        whole_channels = channel is None or rec_channels == [channel]
        source, inner = _lhotse_source(rec, None if whole_channels else int(channel), f"{recordings} ({where})")
        if not os.path.isabs(source):
            source = str(Path(source).resolve())
        start, duration = float(sup["start"]), float(sup["duration"])
        rec_duration = float(rec.get("duration") or 0)
        whole = start == 0 and abs(duration - rec_duration) < 1e-3 and whole_channels
        row = {"id": uid, "speaker": str(sup["speaker"]), "session": rec_id}
        if not whole:
            target = _segment_file(out_dir, rec_id, uid)
            cuts.append((source, uid, start, start + duration, inner, str(target)))
            source = str(target)
        path, problem = _manifest_path(Path(source), out_dir)
        row["path"] = path if problem is None else source
        partial.append(row)
    if not partial:
        raise DataDirError(f"{supervisions}: no supervisions")
    return _finish(
        partial, cuts, out_dir, sample_rate=sample_rate, resample=resample, workers=workers, progress=progress
    )
