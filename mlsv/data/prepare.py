"""Manifest recipes for audio already on disk: VoxCeleb, any speaker folder tree, MUSAN, RIRs, trials.

Nothing is downloaded. Every recipe reads each file's header once; corrupt, empty, non-audio and
(with ``resample=False``) mis-sampled files, symbolic link loops, dangling links and names that are not
UTF-8 are reported by name (count + list, also written to ``bad_files.txt`` beside the manifest) and left
out. Rows keep the file's own rate and channel count; the readers downmix and resample (soxr) at read time.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlsv.data.audio import AudioError, MissingDependencyError, audio_info, printable, read_audio, write_audio
from mlsv.data.manifest import ManifestError, iter_rows, write_manifest
from mlsv.data.trials import Trials, make_trials, read_trials, write_trials

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
VOXCELEB_SUFFIXES = (".wav", ".m4a", ".flac")
# official VoxCeleb1 trial lists (cleaned versions) -> our names
TRIAL_NAMES = {
    "veri_test2": "vox1_O",
    "vox1_o_cleaned": "vox1_O",
    "list_test_all2": "vox1_E",
    "vox1_e_cleaned": "vox1_E",
    "list_test_hard2": "vox1_H",
    "vox1_h_cleaned": "vox1_H",
}


@dataclass
class PrepareResult:
    """What a recipe wrote: named outputs, rows kept, and the files left out with the reason."""

    outputs: dict[str, Path] = field(default_factory=dict)
    rows: int = 0
    bad: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{name}: {path}" for name, path in self.outputs.items()]
        lines.append(f"{self.rows} utterances kept, {len(self.bad)} bad file(s) skipped")
        lines += [f"  bad: {b}" for b in self.bad[:20]]
        if len(self.bad) > 20:
            lines.append(f"  ... {len(self.bad) - 20} more in bad_files.txt")
        return "\n".join(lines)


def progress_bar(iterable, total: int, desc: str, show: bool = True):
    """``iterable`` wrapped in a tqdm bar when ``show``."""
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="file")


def _probe(task: tuple[dict, str, int, bool]) -> tuple[dict | None, str | None]:
    row, path, sample_rate, resample = task
    try:
        frames, sr, _ = audio_info(path)
    except MissingDependencyError:  # not a bad file: every such file fails
        raise
    except AudioError as e:
        return None, str(e)
    if sr != sample_rate and not resample:
        return None, f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz (resampling refused)"
    return {**row, "duration": round(frames / sr, 4), "sample_rate": sr}, None


def scan(
    rows: Sequence[dict],
    *,
    sample_rate: int = 16000,
    resample: bool = True,
    workers: int = 1,
    desc: str = "scanning",
    progress: bool = True,
    root: str | Path | None = None,
):
    """Reads every row's header to fill ``duration`` and ``sample_rate``.

    Args:
        rows: partial rows (``id``, ``path``, ``speaker``, ...); ``path`` relative to ``root`` if given.
        resample: keep files at other rates (read-time resampling) instead of rejecting them.
    Returns:
        (complete rows, bad-file messages naming each file).
    """
    tasks = [(r, os.path.join(root, r["path"]) if root else r["path"], sample_rate, resample) for r in rows]
    kept, bad = [], []
    if workers > 1 and len(tasks) > 64:
        with ProcessPoolExecutor(workers) as pool:
            results = list(progress_bar(pool.map(_probe, tasks, chunksize=64), len(tasks), desc, progress))
    else:
        results = [_probe(t) for t in progress_bar(tasks, len(tasks), desc, progress)]
    for row, err in results:
        if err:
            bad.append(err)
        else:
            kept.append(row)
    return kept, bad


def _write(rows: list[dict], bad: list[str], manifest: Path, result: PrepareResult, name: str) -> None:
    if not rows:
        raise ValueError(f"no usable audio for {manifest} ({len(bad)} bad file(s); first: {bad[:3]})")
    rows.sort(key=lambda r: r["id"])
    write_manifest(rows, manifest)
    result.outputs[name] = manifest
    result.rows += len(rows)
    result.bad += bad
    for b in bad:
        logger.warning("skipped: %s", b)


def _write_bad(result: PrepareResult, out_dir: Path) -> None:
    if result.bad:
        (out_dir / "bad_files.txt").write_text("\n".join(result.bad) + "\n", encoding="utf-8")
        result.outputs["bad_files"] = out_dir / "bad_files.txt"


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path.resolve(), base.resolve())


def _not_utf8(name: str) -> str:
    return (
        f"{name}: file name is not valid UTF-8 (a manifest is UTF-8 text): rename it (e.g. convmv -f latin1 -t utf-8)"
    )


def _file_problem(f: Path) -> str | None:
    """Why a file found by a recipe cannot be a manifest row, naming it (printably) with the fix, or None.

    A name that is not UTF-8 (held as surrogates; a manifest is UTF-8 text), a symbolic link loop, a
    dangling link (named as the link, with its target). A missing, empty or corrupt file is ``scan``'s to
    find.
    """
    name = printable(f)
    if name != os.fspath(f):
        return _not_utf8(name)
    try:
        os.stat(f)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{name}: symbolic link loop (a link that leads back to itself): remove or fix the link"
        if e.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(f):
            target = printable(os.readlink(f))
            return f"{name}: dangling link to {target} (no such file): remove or fix the link"
    return None


def _manifest_path(f: Path, base: Path) -> tuple[str | None, str | None]:
    """(``f``'s path relative to ``base`` with links resolved, None), or (None, why ``f`` cannot be a row)."""
    problem = _file_problem(f)
    if problem:
        return None, problem
    try:
        path = _rel(f, base)
    except (RuntimeError, OSError) as e:  # a link loop above the file (RuntimeError before Python 3.13)
        return None, f"{printable(f)}: its path cannot be resolved ({printable(str(e))}): fix the links on it"
    if printable(path) != path:  # a link to a file, or a folder on the way, whose name is not UTF-8
        return None, _not_utf8(f"{printable(f)} (resolved: {printable(path)})")
    return path, None


# ----------------------------------------------------------------------------------------------
# VoxCeleb


def _convert_one(task: tuple[str, str, int]) -> str | None:
    src, dst, sample_rate = task
    if Path(dst).is_file():  # written through a temporary name, so an existing file is complete
        return None
    try:
        x, _ = read_audio(src, target_sr=sample_rate)
        if len(x) == 0:
            raise AudioError(f"{src}: empty audio")
        write_audio(dst, x, sample_rate)
    except MissingDependencyError:  # not a bad file: every such file fails
        raise
    except AudioError as e:
        return str(e)
    return None


def convert_to_flac(
    pairs: Sequence[tuple[str, str]], *, sample_rate: int = 16000, workers: int = 1, progress: bool = True
) -> list[str]:
    """Decodes (m4a) files and writes mono 16-bit FLAC, resuming: existing outputs are skipped and each
    output is written to a temporary name, then renamed. Returns the failures (messages naming files)."""
    tasks = [(s, d, sample_rate) for s, d in pairs]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(
                progress_bar(pool.map(_convert_one, tasks, chunksize=16), len(tasks), "converting", progress)
            )
    else:
        results = [_convert_one(t) for t in progress_bar(tasks, len(tasks), "converting", progress)]
    return [r for r in results if r]


def _voxceleb_files(root: Path) -> list[tuple[str, Path]]:
    """(id ``spk/video/utt.wav``, file) under a root laid out as id*/video/utt.{wav,m4a,flac}."""
    if not root.is_dir():
        raise FileNotFoundError(f"VoxCeleb folder not found: {root}")
    out = []
    for spk in sorted(root.glob("id*")):
        for f in sorted(spk.glob("*/*")):
            if f.suffix.lower() in VOXCELEB_SUFFIXES:
                out.append((f"{spk.name}/{f.parent.name}/{f.stem}.wav", f))
    if not out:
        raise ValueError(f"{root}: no id*/VIDEO/UTT.{{wav,m4a,flac}} files (is this a VoxCeleb wav/ or aac/ folder?)")
    return out


def trial_list_name(path: str | Path) -> str:
    """vox1_O / vox1_E / vox1_H for the official cleaned lists, else the file's stem."""
    stem = Path(path).stem
    return TRIAL_NAMES.get(stem.lower(), stem)


def _missing_trial_ids(path: str | Path, missing: list[str], sets: dict[str, list[dict]], train_set: str | None) -> str:
    """Why a trial list names ids that ``test.jsonl`` lacks, and what to do about it."""
    head = f"trial list {path}: {len(set(missing))} id(s) not in test.jsonl, e.g. {missing[:3]}"
    dev = {r["id"] for r in sets.get("vox1_dev", ())}
    if train_set == "vox1_dev" and any(x in dev for x in missing):
        return (
            f"{head}: they include VoxCeleb1 dev utterances, and VoxCeleb1 dev is the training set here (no "
            "--vox2-dev was given), so this list would test on training speakers (Vox1-E/H use dev "
            "speakers). Give --vox2-dev as well (VoxCeleb2 dev then trains and VoxCeleb1 dev joins "
            "test.jsonl), or leave this list out (Vox1-O uses test speakers only)"
        )
    if "vox1_dev" not in sets:
        return f"{head} (Vox1-E/H need --vox1-dev as well as --vox1-test)"
    if "vox1_test" not in sets:
        return f"{head} (VoxCeleb1 trial lists need --vox1-test)"
    return f"{head}: is it a VoxCeleb1 trial list, and are the VoxCeleb1 folders complete?"


def prepare_voxceleb(
    out_dir: str | Path,
    *,
    vox1_dev: str | Path | None = None,
    vox1_test: str | Path | None = None,
    vox2_dev: str | Path | None = None,
    vox2_test: str | Path | None = None,
    trials: Iterable[str | Path] = (),
    validation_speakers: int = 0,
    convert_dir: str | Path | None = None,
    sample_rate: int = 16000,
    resample: bool = True,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> PrepareResult:
    """Manifests and trial lists from VoxCeleb folders the user already has.

    Each given root (``id*/VIDEO/UTT.{wav,m4a}``) gets ``<set>.jsonl`` (ids ``spk/video/utt.wav``,
    session = video). ``train.jsonl`` is VoxCeleb2 dev when given, else VoxCeleb1 dev, minus
    ``validation_speakers`` speakers held out (seeded) into ``validation.jsonl`` +
    ``validation_trials.txt``. ``test.jsonl`` is VoxCeleb1 test plus VoxCeleb1 dev when that is not the
    training set (Vox1-E/H use dev speakers). Official trial lists are checked against ``test.jsonl``
    and copied to ``trials/vox1_{O,E,H}.txt``.

    Args:
        convert_dir: decode m4a files to 16 kHz mono FLAC under this folder (parallel, resumable) and
            point the manifests at them; None keeps the m4a files (decoded at read time with PyAV).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = PrepareResult()
    roots = {"vox1_dev": vox1_dev, "vox1_test": vox1_test, "vox2_dev": vox2_dev, "vox2_test": vox2_test}
    roots = {k: Path(v) for k, v in roots.items() if v}
    if not roots:
        raise ValueError("give at least one of --vox1-dev, --vox1-test, --vox2-dev, --vox2-test")
    if validation_speakers == 1:
        raise ValueError("--validation-speakers must be 0 or at least 2 (one speaker gives no non-target trials)")
    sets: dict[str, list[dict]] = {}
    for name, root in roots.items():
        sets[name] = _voxceleb_set(
            name,
            root,
            out,
            result,
            convert_dir=convert_dir,
            sample_rate=sample_rate,
            resample=resample,
            workers=workers,
            progress=progress,
        )
    train_set = "vox2_dev" if "vox2_dev" in sets else "vox1_dev" if "vox1_dev" in sets else None
    if train_set:
        train = _hold_out_validation(sets[train_set], train_set, validation_speakers, out, result, seed=seed)
        write_manifest(train, out / "train.jsonl")
        result.outputs["train"] = out / "train.jsonl"
    test = [r for name in ("vox1_test", "vox1_dev") if name in sets and name != train_set for r in sets[name]]
    if test:
        write_manifest(test, out / "test.jsonl")
        result.outputs["test"] = out / "test.jsonl"
    _copy_trial_lists(trials, {r["id"] for r in test}, sets, train_set, out, result)
    _write_bad(result, out)
    return result


def _voxceleb_set(
    name: str,
    root: Path,
    out: Path,
    result: PrepareResult,
    *,
    convert_dir: str | Path | None,
    sample_rate: int,
    resample: bool,
    workers: int,
    progress: bool,
) -> list[dict]:
    """Finds one VoxCeleb set's files (m4a converted first when ``convert_dir``), checks them and writes
    ``<name>.jsonl`` (bad files go to ``result.bad``): its rows."""
    checked = [(uid, f, _file_problem(f)) for uid, f in _voxceleb_files(root)]
    link_bad = [problem for _, _, problem in checked if problem]
    files = [(uid, f) for uid, f, problem in checked if not problem]
    if convert_dir:
        files = _converted_voxceleb_files(
            files, Path(convert_dir) / name, result, sample_rate=sample_rate, workers=workers, progress=progress
        )
    partial = [
        {"id": uid, "path": _rel(f, out), "speaker": uid.split("/")[0], "session": "/".join(uid.split("/")[:2])}
        for uid, f in files
    ]
    rows, bad = scan(
        partial,
        sample_rate=sample_rate,
        resample=resample,
        workers=workers,
        desc=f"scanning {name}",
        progress=progress,
        root=out,
    )
    _write(rows, link_bad + bad, out / f"{name}.jsonl", result, name)
    return rows


def _converted_voxceleb_files(
    files: list[tuple[str, Path]], conv: Path, result: PrepareResult, *, sample_rate: int, workers: int, progress: bool
) -> list[tuple[str, Path]]:
    """Decodes the m4a files among ``files`` to FLAC under ``conv`` (resuming; failures go to ``result.bad``).

    Returns:
        (id, file) with each m4a file replaced by its FLAC, keeping only files that exist.
    """
    pairs = [(str(f), str((conv / uid).with_suffix(".flac"))) for uid, f in files if f.suffix == ".m4a"]
    result.bad += convert_to_flac(pairs, sample_rate=sample_rate, workers=workers, progress=progress)
    files = [(uid, (conv / uid).with_suffix(".flac") if f.suffix == ".m4a" else f) for uid, f in files]
    return [(uid, f) for uid, f in files if f.is_file()]


def _hold_out_validation(
    train: list[dict], train_set: str, validation_speakers: int, out: Path, result: PrepareResult, *, seed: int
) -> list[dict]:
    """Holds ``validation_speakers`` speakers of ``train`` out (seeded) into ``validation.jsonl`` and
    ``validation_trials.txt``; none when 0. Returns the training rows left.

    Raises:
        ValueError: no training speaker would be left.
    """
    if validation_speakers <= 0:
        return train
    speakers = sorted({r["speaker"] for r in train})
    if validation_speakers >= len(speakers):
        raise ValueError(
            f"--validation-speakers {validation_speakers} leaves no training speakers ({len(speakers)} in {train_set})"
        )
    held = set(np.random.default_rng(seed).choice(speakers, validation_speakers, replace=False))
    val = [r for r in train if r["speaker"] in held]
    train = [r for r in train if r["speaker"] not in held]
    write_manifest(val, out / "validation.jsonl")
    vt = make_trials(
        [r["id"] for r in val],
        [r["speaker"] for r in val],
        [r["session"] for r in val],
        seed=seed,
        name="validation_trials",
    )
    write_trials(vt, out / "validation_trials.txt")
    result.outputs.update(validation=out / "validation.jsonl", validation_trials=out / "validation_trials.txt")
    return train


def _copy_trial_lists(
    paths: Iterable[str | Path],
    known: set[str],
    sets: dict[str, list[dict]],
    train_set: str | None,
    out: Path,
    result: PrepareResult,
) -> None:
    """Checks each trial list against the test ids ``known`` and copies it to ``trials/<name>.txt``.

    Raises:
        KeyError: a list names ids ``test.jsonl`` lacks, saying why and what to do.
    """
    for path in paths:
        t = read_trials(path)
        missing = [x for pair in zip(t.enroll, t.test) for x in pair if x not in known]
        if missing:
            raise KeyError(_missing_trial_ids(path, missing, sets, train_set))
        name = trial_list_name(path)
        write_trials(Trials(t.enroll, t.test, t.labels, name), out / "trials" / f"{name}.txt")
        result.outputs[f"trials/{name}"] = out / "trials" / f"{name}.txt"


# ----------------------------------------------------------------------------------------------
# generic folders, MUSAN, RIRs


def _scan_and_write(
    partial: list[dict],
    out: Path,
    *,
    sample_rate: int,
    resample: bool,
    workers: int,
    progress: bool,
    bad: Sequence[str] = (),
) -> PrepareResult:
    """Checks every listed file (bad ones are reported and left out) and writes the manifest ``out``;
    ``bad``: files already left out (links, names), reported first."""
    result = PrepareResult()
    # the rows' paths are relative to the manifest's folder ("data/../mine/a.wav"): it must exist for the
    # system to resolve them
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, scan_bad = scan(
        partial, sample_rate=sample_rate, resample=resample, workers=workers, progress=progress, root=out.parent
    )
    _write(rows, [*bad, *scan_bad], out, result, "manifest")
    _write_bad(result, out.parent)
    return result


def prepare_folder(
    root: str | Path,
    out: str | Path,
    *,
    sample_rate: int = 16000,
    resample: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """A manifest from ``root/SPEAKER/[SESSION/]UTT.{wav,flac,ogg,mp3}``.

    ids are paths relative to ``root`` with each whitespace character replaced by ``_`` (trial lists are
    whitespace-separated); ``speaker`` and ``session`` (SPEAKER/SESSION when there is a session level)
    keep the names as they are. Symbolic link loops, dangling links and names that are not UTF-8 are bad
    files (listed, left out).

    Raises:
        ValueError: two files get the same id (``a b.wav`` and ``a_b.wav``), naming both.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"folder not found: {root}")
    partial, bad = [], []
    files: dict[str, Path] = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if f.suffix.lower() not in AUDIO_SUFFIXES or len(rel.parts) not in (2, 3):
            continue
        path, problem = _manifest_path(f, out.parent)
        if problem:
            bad.append(problem)
            continue
        uid = re.sub(r"\s", "_", rel.as_posix())
        if uid in files:
            raise ValueError(f"{files[uid]} and {f} both get id {uid!r} (whitespace in names becomes '_'): rename one")
        files[uid] = f
        row = {"id": uid, "path": path, "speaker": rel.parts[0]}
        if len(rel.parts) == 3:
            row["session"] = f"{rel.parts[0]}/{rel.parts[1]}"
        partial.append(row)
    if not partial and not bad:
        raise ValueError(f"{root}: no SPEAKER/[SESSION/]UTT{{{','.join(AUDIO_SUFFIXES)}}} files")
    return _scan_and_write(
        partial, out, sample_rate=sample_rate, resample=resample, workers=workers, progress=progress, bad=bad
    )


def prepare_musan(
    root: str | Path,
    out: str | Path,
    *,
    sample_rate: int = 16000,
    resample: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """A noise manifest from ``musan/{noise,music,speech}/SUBSET/*.wav`` with a ``category`` column.

    Files are not split: the augmenters read random stretches of the long files directly.
    """
    root, out = Path(root), Path(out)
    partial, bad = [], []
    for category in ("noise", "music", "speech"):
        for f in sorted((root / category).glob("*/*")):
            if f.suffix.lower() in AUDIO_SUFFIXES:
                path, problem = _manifest_path(f, out.parent)
                if problem:
                    bad.append(problem)
                    continue
                partial.append(
                    {
                        "id": f.relative_to(root).as_posix(),
                        "path": path,
                        "speaker": f"{category}/{f.parent.name}",
                        "category": category,
                    }
                )
    if not partial and not bad:
        raise ValueError(f"{root}: no {{noise,music,speech}}/SUBSET/*.wav files (is this the musan folder?)")
    return _scan_and_write(
        partial, out, sample_rate=sample_rate, resample=resample, workers=workers, progress=progress, bad=bad
    )


def prepare_rirs(
    root: str | Path,
    out: str | Path,
    *,
    sample_rate: int = 16000,
    resample: bool = True,
    workers: int = 1,
    progress: bool = True,
    kind: str = "real",
) -> PrepareResult:
    """A RIR manifest from RIRS_NOISES: ``real_rirs_isotropic_noises/rir_list`` (kind real) and
    ``simulated_rirs/*room/Room*/*.wav`` (kind simulated); ``root`` is RIRS_NOISES or its parent. Any
    other folder is a plain bank: every audio file under it is an impulse response of ``kind``."""
    root, out = Path(root), Path(out)
    if (root / "RIRS_NOISES").is_dir():
        root = root / "RIRS_NOISES"
    partial, bad = [], []
    rir_list = root / "real_rirs_isotropic_noises" / "rir_list"
    if rir_list.is_file():
        for line in rir_list.read_text().splitlines():
            if not line.strip():
                continue
            token = line.split()[-1]  # paths in rir_list start with RIRS_NOISES/
            f = root.parent / token if token.startswith("RIRS_NOISES/") else root / token
            path, problem = _manifest_path(f, out.parent)
            if problem:
                bad.append(problem)
                continue
            partial.append({"id": f.relative_to(root).as_posix(), "path": path, "speaker": f.stem, "kind": "real"})
    for f in sorted((root / "simulated_rirs").glob("*/*/*.wav")):
        path, problem = _manifest_path(f, out.parent)
        if problem:
            bad.append(problem)
            continue
        partial.append(
            {
                "id": f.relative_to(root).as_posix(),
                "path": path,
                "speaker": f"{f.parent.parent.name}/{f.parent.name}",
                "kind": "simulated",
            }
        )
    if not partial and not bad:  # not the RIRS_NOISES layout: a plain folder of impulse responses
        partial, bad = _plain_bank(root, out, "kind", kind)
        if not partial and not bad:
            raise ValueError(
                f"{root}: no impulse responses: neither the RIRS_NOISES layout "
                "(real_rirs_isotropic_noises/rir_list, simulated_rirs/*/*/*.wav) nor audio files in it"
            )
    return _scan_and_write(
        partial, out, sample_rate=sample_rate, resample=resample, workers=workers, progress=progress, bad=bad
    )


NOISE_CATEGORIES = {"noise": "noise", "music": "music", "speech": "speech", "babble": "speech"}


def _plain_bank(root: Path, out: Path, column: str, value: str) -> tuple[list[dict], list[str]]:
    """Rows for every audio file under ``root`` (recursively) with ``column`` = ``value``; bad names listed."""
    partial, bad = [], []
    for f in sorted(root.rglob("*")):
        if f.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        path, problem = _manifest_path(f, out.parent)
        if problem:
            bad.append(problem)
            continue
        rel = f.relative_to(root)
        partial.append(
            {
                "id": f"{value}/{rel.as_posix()}",
                "path": path,
                "speaker": value if rel.parent == Path(".") else f"{value}/{rel.parent.as_posix()}",
                column: value,
            }
        )
    return partial, bad


def prepare_noise(
    root: str | Path,
    out: str | Path,
    *,
    category: str,
    sample_rate: int = 16000,
    resample: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """A noise-bank manifest from any folder: every audio file under ``root`` in one ``category``.

    ``noise`` and ``music`` feed the noise and music kinds; ``babble`` (or ``speech``) recordings feed the
    babble kind (several are summed at the babble SNR) and the TV kind, as MUSAN's speech does. A bank with
    several categories is several folders prepared into one manifest each and concatenated.
    """
    if category not in NOISE_CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(NOISE_CATEGORIES)}, got {category!r}")
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"folder not found: {root}")
    partial, bad = _plain_bank(root, out, "category", NOISE_CATEGORIES[category])
    if not partial and not bad:
        raise ValueError(f"{root}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return _scan_and_write(
        partial, out, sample_rate=sample_rate, resample=resample, workers=workers, progress=progress, bad=bad
    )


def prepare_trials(manifest: str | Path, out: str | Path, *, per_utterance: int = 5, seed: int = 0) -> Trials:
    """A balanced trial list (same-session pairs excluded, deterministic by seed) for any manifest.

    Raises:
        ManifestError: no rows, a row without ``id`` or ``speaker``, a repeated, non-string or
            whitespace-holding id (naming the manifest line).
        ValueError: the manifest allows no target and non-target trials.
    """
    rows, first = [], {}
    for lineno, row in iter_rows(manifest):
        missing = [c for c in ("id", "speaker") if row.get(c) in (None, "")]
        if missing:
            raise ManifestError(
                f"{manifest}:{lineno}: missing {missing} (a trial list needs each row's id and speaker)"
            )
        uid = row["id"]
        if not isinstance(uid, str) or len(uid.split()) != 1:
            raise ManifestError(
                f"{manifest}:{lineno}: id {uid!r} must be a string without whitespace (trial "
                "lists are whitespace-separated)"
            )
        if first.setdefault(uid, lineno) != lineno:
            raise ManifestError(f"{manifest}:{lineno}: duplicate id {uid!r} (first on line {first[uid]})")
        rows.append(row)
    if not rows:
        raise ManifestError(f"{manifest}: manifest has no rows")
    try:
        trials = make_trials(
            [r["id"] for r in rows],
            [str(r["speaker"]) for r in rows],
            [r.get("session") for r in rows],
            per_utterance=per_utterance,
            seed=seed,
            name=Path(out).stem,
        )
    except ValueError as e:
        raise ValueError(f"{manifest}: {e}") from None
    write_trials(trials, out)
    return trials
