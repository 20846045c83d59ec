"""Checking a manifest (and the trial lists that name its ids) before a run.

Required columns, duplicate ids, ids without whitespace, durations and sample rates in range (finite, > 0
and at most 24 hours; whole Hz within 4-384 kHz), files present and decodable with the stated rate, one
rate, trial ids known: each error names the manifest line (``FILE:LINE``) or the trial list
line and the culprit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlsv.data.audio import AudioError, audio_info
from mlsv.data.manifest import (
    REQUIRED_COLUMNS,
    ManifestError,
    iter_rows,
    manifest_root,
    resolve_path,
    row_value_errors,
)
from mlsv.data.trials import read_trials

__all__ = ["ValidationReport", "validate"]


@dataclass
class ValidationReport:
    """Result of ``validate``: row count, speakers, total hours and the errors found (culprit first)."""

    manifest: str
    rows: int = 0
    speakers: int = 0
    hours: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = f"{self.manifest}: {self.rows} rows, {self.speakers} speakers, {self.hours:.2f} h"
        if self.ok:
            return head + ", no errors"
        shown = "\n  ".join(self.errors[:20])
        more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        return f"{head}, {len(self.errors)} error(s):\n  {shown}{more}"


def validate(
    manifest_path: str | Path,
    trials: str | Path | Iterable[str | Path] | None = None,
    *,
    check_audio: bool = True,
    sample_rate: int | None = None,
    raise_on_error: bool = True,
) -> ValidationReport:
    """Checks a manifest: required columns, duplicate ids, ids without whitespace, durations and sample
    rates in range (``row_value_errors``), files present and decodable with the stated rate
    (``check_audio``), one rate (``sample_rate``), trial ids known.

    Each error names the manifest line (``FILE:LINE``) or the trial list line and the culprit.

    Raises:
        ManifestError: when errors are found and ``raise_on_error`` (the message lists them).
    """
    manifest_path = Path(manifest_path)
    root = manifest_root(manifest_path)
    report = ValidationReport(str(manifest_path))
    seen: dict[str, int] = {}
    speakers: set[str] = set()
    seconds = 0.0
    for lineno, row in iter_rows(manifest_path):
        where = f"{manifest_path}:{lineno}"
        report.rows += 1
        missing = [c for c in REQUIRED_COLUMNS if row.get(c) in (None, "") and not (c == "path" and row.get("audio"))]
        if missing:
            report.errors.append(f"{where}: missing {missing}")
            continue
        uid = str(row["id"])
        if not isinstance(row["id"], str):
            report.errors.append(f"{where}: id {row['id']!r} is not a string (write it in quotes)")
        if uid in seen:
            report.errors.append(f"{where}: duplicate id {uid!r} (first on line {seen[uid]})")
        seen.setdefault(uid, lineno)
        speakers.add(str(row["speaker"]))
        values = row_value_errors(row)  # an id's own message shows it quoted (it may hold a line break)
        report.errors += [f"{where}: {e}" if c == "id" else f"{where}: {uid}: {e}" for c, e in values.items()]
        if "duration" in values or "sample_rate" in values:  # no number to compare the file with
            continue
        duration, sr = float(row["duration"]), int(row["sample_rate"])
        seconds += duration
        if sample_rate is not None and sr != sample_rate:
            report.errors.append(f"{where}: {uid}: sample rate {sr} Hz, expected {sample_rate} Hz")
        if check_audio:
            source = row["audio"] if row.get("audio") else resolve_path(row["path"], root)
            try:
                frames, file_sr, _ = audio_info(source)
            except AudioError as e:
                report.errors.append(f"{where}: {uid}: {e}")
                continue
            if file_sr != sr:
                report.errors.append(f"{where}: {uid}: file is {file_sr} Hz but the row says {sr} Hz")
            if abs(frames / file_sr - duration) > 0.1:
                report.errors.append(
                    f"{where}: {uid}: file lasts {frames / file_sr:.2f} s but the row says {duration:.2f} s"
                )
    report.speakers = len(speakers)
    report.hours = seconds / 3600
    if trials is not None:
        lists = [trials] if isinstance(trials, (str, Path)) else list(trials)
        for trial_path in lists:
            t = read_trials(trial_path)
            for lineno, e, s in zip(t.lines, t.enroll, t.test):
                for x in dict.fromkeys((e, s)):
                    if x not in seen:
                        report.errors.append(f"{trial_path}:{lineno}: id {x!r} not in {manifest_path}")
    if raise_on_error and not report.ok:
        raise ManifestError(report.summary())
    return report


# ----------------------------------------------------------------------------------------------
# speaker labels
