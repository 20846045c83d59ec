"""Trial lists in VoxCeleb format: one ``LABEL ENROLL_ID TEST_ID`` line per trial."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Trials:
    """A trial list.

    Attributes:
        enroll: (N,) enrolment utterance ids.
        test: (N,) test utterance ids.
        labels: (N,) int8, 1 same speaker, 0 different, -1 unknown.
        name: the list's name (its file name without extension).
    """

    enroll: np.ndarray
    test: np.ndarray
    labels: np.ndarray
    name: str = "trials"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


def read_trials(path: str | Path) -> Trials:
    """Reads a trial list; lines are ``LABEL ENROLL TEST`` or ``ENROLL TEST`` (label unknown).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a malformed line, naming the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trial list not found: {path}")
    enroll, test, labels = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 3:
                if parts[0] not in ("0", "1"):
                    raise ValueError(f"{path}:{lineno}: label must be 0 or 1, got {parts[0]!r}")
                labels.append(int(parts[0]))
                enroll.append(parts[1])
                test.append(parts[2])
            elif len(parts) == 2:
                labels.append(-1)
                enroll.append(parts[0])
                test.append(parts[1])
            else:
                raise ValueError(f"{path}:{lineno}: expected 'LABEL ENROLL TEST', got {line.strip()!r}")
    return Trials(np.asarray(enroll, dtype=object), np.asarray(test, dtype=object),
                  np.asarray(labels, dtype=np.int8), name=path.stem)


def write_trials(trials: Trials, path: str | Path) -> None:
    """Writes a trial list in VoxCeleb format (labels must be known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for lab, e, t in zip(trials.labels, trials.enroll, trials.test):
            f.write(f"{int(lab)} {e} {t}\n")
    tmp.replace(path)


def check_trial_ids(trials: Trials, known_ids, source: str = "manifest") -> None:
    """Raises KeyError naming the first trial lines whose ids are not in ``known_ids``."""
    known = set(known_ids)
    bad = []
    for i, (e, t) in enumerate(zip(trials.enroll, trials.test), 1):
        for x in (e, t):
            if x not in known:
                bad.append(f"line {i}: {x}")
        if len(bad) >= 5:
            break
    if bad:
        raise KeyError(f"trial list {trials.name!r} names ids missing from the {source}: " + "; ".join(bad))
