"""Trial lists in VoxCeleb format: one ``LABEL ENROLL_ID TEST_ID`` line per trial."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsv.data.manifest import not_utf8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trials:
    """A trial list.

    Attributes:
        enroll: (N,) enrolment utterance ids.
        test: (N,) test utterance ids.
        labels: (N,) int8, 1 same speaker, 0 different, -1 unknown.
        name: the list's name (its file name without extension).
        path: the file it was read from (None when built in memory); errors name it.
        lines: (N,) the file line of each trial (blank lines counted); None means trial i is on line i + 1.
    """

    enroll: np.ndarray
    test: np.ndarray
    labels: np.ndarray
    name: str = "trials"
    path: str | None = None
    lines: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def line(self, i: int) -> int:
        """The file line of trial ``i``."""
        return int(self.lines[i]) if self.lines is not None else i + 1

    def self_pairs(self) -> np.ndarray:
        """Indices of the trials that pair an utterance with itself."""
        return np.flatnonzero(self.enroll == self.test)

    def repeats(self) -> list[tuple[int, int]]:
        """(trial, the earlier trial it repeats) for every trial whose pair of utterances (in either order:
        scoring is symmetric) came before."""
        first: dict[tuple[str, str], int] = {}
        out = []
        for i, (e, t) in enumerate(zip(self.enroll, self.test)):
            key = (e, t) if e <= t else (t, e)
            if key in first:
                out.append((i, first[key]))
            else:
                first[key] = i
        return out

    def oddities(self) -> dict[str, int]:
        """Counts recorded with the metrics: repeated trials and self-pairs (both count as given)."""
        return {"n_repeated_trials": len(self.repeats()), "n_self_pairs": int(self.self_pairs().size)}


def read_trials(path: str | Path) -> Trials:
    """Reads a trial list; lines are ``LABEL ENROLL TEST`` or ``ENROLL TEST`` (label unknown), all alike.

    UTF-8, with or without a byte-order mark (as some Windows editors save it); blank lines are skipped.
    Every line must have as many fields as the first, so that a stray unlabelled line cannot turn a
    labelled list into one without labels (or a truncated first line be read as an unlabelled trial).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a folder given, a line that is not UTF-8, malformed or unlike the first, naming the file
            and line number; a list without trials.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a directory, not a trial list")
    if not path.is_file():
        raise FileNotFoundError(f"trial list not found: {path}")
    forms = {3: "LABEL ENROLL TEST", 2: "ENROLL TEST"}
    enroll, test, labels, lines = [], [], [], []
    first = None  # (line number, field count) of the first trial
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: {not_utf8(raw, e)}") from None
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in forms:
                raise ValueError(f"{path}:{lineno}: expected 'LABEL ENROLL TEST', got {line.strip()!r}")
            if first is None:
                first = (lineno, len(parts))
            elif len(parts) != first[1]:
                like = f"line {first[0]}" if len(labels) == 1 else "the other lines"
                raise ValueError(
                    f"{path}:{lineno}: expected {forms[first[1]]!r} like {like}, got {len(parts)} "
                    "fields (a trial list is all 'LABEL ENROLL TEST' or all 'ENROLL TEST' lines)"
                )
            if len(parts) == 3:
                if parts[0] not in ("0", "1"):
                    raise ValueError(f"{path}:{lineno}: label must be 0 or 1, got {parts[0]!r}")
                labels.append(int(parts[0]))
                parts = parts[1:]
            else:
                labels.append(-1)
            enroll.append(parts[0])
            test.append(parts[1])
            lines.append(lineno)
    if not labels:
        raise ValueError(f"empty trial list: {path}")
    trials = Trials(
        np.asarray(enroll, dtype=object),
        np.asarray(test, dtype=object),
        np.asarray(labels, dtype=np.int8),
        name=path.stem,
        path=str(path),
        lines=np.asarray(lines, dtype=np.int64),
    )
    warn_oddities(trials)
    return trials


def warn_oddities(trials: Trials) -> None:
    """Logs a warning when a trial list repeats trials or pairs an utterance with itself: both are scored
    and counted in the metrics as given (a self-pair is a trivially easy target), so the EER is not what
    the list's distinct trials give."""
    repeats, selves = trials.repeats(), trials.self_pairs()
    where = trials.path or trials.name
    if repeats:
        i, j = repeats[0]
        log.warning(
            "%s: %d trial(s) repeat an earlier one (line %d repeats line %d); each is scored and counted "
            "in the metrics",
            where,
            len(repeats),
            trials.line(i),
            trials.line(j),
        )
    if selves.size:
        log.warning(
            "%s: %d trial(s) pair an utterance with itself (line %d: %s); each is scored and counted in the metrics",
            where,
            selves.size,
            trials.line(int(selves[0])),
            trials.enroll[selves[0]],
        )


def write_trials(trials: Trials, path: str | Path) -> None:
    """Writes a trial list in VoxCeleb format (labels must be known).

    Raises:
        ValueError: an id holds whitespace (the format is whitespace-separated), naming the id.
    """
    path = Path(path)
    for x in (*trials.enroll, *trials.test):
        if len(str(x).split()) != 1:
            raise ValueError(f"{path}: id {x!r} is empty or holds whitespace, which a trial list cannot store")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for lab, e, t in zip(trials.labels, trials.enroll, trials.test):
            f.write(f"{int(lab)} {e} {t}\n")
    tmp.replace(path)


def check_trial_ids(trials: Trials, known_ids, source: str = "manifest") -> None:
    """Raises KeyError naming the file lines (``FILE:LINE``) and ids of trials not in ``known_ids``.

    The first five are listed, with a count of the rest.
    """
    known = set(known_ids)
    where = trials.path or trials.name
    bad = []
    for i, (e, t) in enumerate(zip(trials.enroll, trials.test)):
        lineno = int(trials.lines[i]) if trials.lines is not None else i + 1
        bad.extend(f"{where}:{lineno}: id {x!r} not in the {source}" for x in dict.fromkeys((e, t)) if x not in known)
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise KeyError("; ".join(bad[:5]) + more)


def make_trials(
    ids,
    speakers,
    sessions=None,
    *,
    per_utterance: int = 5,
    seed: int = 0,
    name: str = "trials",
) -> Trials:
    """A balanced trial list over a set of utterances, deterministic for a given ``seed``.

    Each utterance (in sorted id order) enrols up to ``per_utterance`` target trials against other
    utterances of its speaker from a *different session* (same-session pairs would let channel cues
    pass for the voice) and as many non-target trials against other speakers. Unordered duplicates
    are dropped, then the larger class is subsampled so targets and non-targets are equal in number.

    Args:
        ids, speakers: (N,) utterance ids and their speakers.
        sessions: (N,) session (recording) of each utterance; None means every utterance is its own.
        per_utterance: target (and non-target) trials drawn per enrolment utterance.
        seed: the only source of randomness.

    Returns:
        Trials with labels 1 (same speaker) / 0, targets first in enrolment order; fewer than asked
        when fewer distinct pairs exist, none when there are no utterances.

    Raises:
        ValueError: repeated ids, ``per_utterance < 1``, or utterances that allow no target and
            non-target trials.
    """
    if per_utterance < 1:
        raise ValueError(f"make_trials: per_utterance must be at least 1, got {per_utterance}")
    ids, speakers, sessions = _sorted_utterances(ids, speakers, sessions)
    rng = np.random.default_rng(seed)
    spk_codes = np.unique(speakers.astype(str), return_inverse=True)[1]
    by_speaker = [np.flatnonzero(spk_codes == k) for k in range(spk_codes.max() + 1)] if len(ids) else []
    n = len(ids)
    pairs = _draw_pairs(rng, spk_codes, by_speaker, sessions, per_utterance)
    m = min(len(pairs[1]), len(pairs[0]))
    if m == 0 and n:
        raise ValueError(
            f"{name}: no target and non-target trials possible from {n} utterances of "
            f"{len(by_speaker)} speaker(s) (need 2+ speakers and a speaker with 2+ utterances "
            "from different sessions)"
        )
    _subsample(pairs, m, rng)
    return _pairs_to_trials(ids, pairs[1], pairs[0], name)


def _sorted_utterances(ids, speakers, sessions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_trials``' inputs as object arrays sorted by id, a missing session replaced by the utterance's id.

    Raises:
        ValueError: an id is repeated, naming it.
    """
    ids = np.asarray(ids, dtype=object)
    speakers = np.asarray(speakers, dtype=object)
    sessions = (
        ids
        if sessions is None
        else np.asarray([s if s not in (None, "") else i for s, i in zip(sessions, ids)], dtype=object)
    )
    order = np.argsort(ids.astype(str), kind="stable")
    ids, speakers, sessions = ids[order], speakers[order], sessions[order]
    if len(set(ids)) != len(ids):
        raise ValueError(f"make_trials: id {next(a for a, b in zip(ids, ids[1:]) if a == b)!r} is repeated")
    return ids, speakers, sessions


def _draw_pairs(
    rng: np.random.Generator,
    spk_codes: np.ndarray,
    by_speaker: list[np.ndarray],
    sessions: np.ndarray,
    per_utterance: int,
) -> dict[int, list[tuple[int, int]]]:
    """Each utterance's target and non-target partners as (enrol, test) index pairs in enrolment order.

    Targets are other utterances of the speaker from a different session; an utterance with none, or
    whose speaker is the only one, enrols nothing. Unordered duplicates are dropped.

    Returns:
        ``{1: target pairs, 0: non-target pairs}``.
    """
    n = len(spk_codes)
    seen: set[tuple[int, int]] = set()
    pairs: dict[int, list[tuple[int, int]]] = {1: [], 0: []}
    pools: dict[int, np.ndarray] = {}  # other speakers' utterances, listed only when they are few
    for i in range(n):
        same = by_speaker[spk_codes[i]]
        targets = same[(same != i) & (sessions[same] != sessions[i])]
        k = min(per_utterance, len(targets))
        if k == 0 or n - len(same) == 0:
            continue
        chosen_t = rng.choice(targets, size=k, replace=False)
        chosen_n = _draw_non_targets(rng, i, k, n - len(same), spk_codes, pools)
        for label, chosen in ((1, chosen_t), (0, chosen_n)):
            for j in chosen:
                key = (min(i, int(j)), max(i, int(j)))
                if key not in seen:
                    seen.add(key)
                    pairs[label].append((i, int(j)))
    return pairs


def _draw_non_targets(
    rng: np.random.Generator, i: int, k: int, others: int, spk_codes: np.ndarray, pools: dict[int, np.ndarray]
) -> list[int]:
    """Up to ``k`` distinct utterances of speakers other than utterance ``i``'s (``others`` such utterances).

    ``pools`` caches, per speaker, the list of the other speakers' utterances, made only when they are few.
    """
    n = len(spk_codes)
    if others < k or 4 * others < n:  # few other utterances: rejection sampling would crawl or never end
        if spk_codes[i] not in pools:
            pools[spk_codes[i]] = np.flatnonzero(spk_codes != spk_codes[i])
        return [int(j) for j in rng.choice(pools[spk_codes[i]], size=min(k, others), replace=False)]
    # rejection-sample non-targets: far cheaper than listing all other speakers' utterances
    chosen_n: list[int] = []
    while len(chosen_n) < k:
        j = int(rng.integers(n))
        if spk_codes[j] != spk_codes[i] and j not in chosen_n:
            chosen_n.append(j)
    return chosen_n


def _subsample(pairs: dict[int, list[tuple[int, int]]], m: int, rng: np.random.Generator) -> None:
    """Keeps ``m`` pairs of each label (a random subset, in their order), targets drawn first."""
    for label in (1, 0):
        if len(pairs[label]) > m:
            keep = np.sort(rng.choice(len(pairs[label]), size=m, replace=False))
            pairs[label] = [pairs[label][k] for k in keep]


def _pairs_to_trials(
    ids: np.ndarray, targets: list[tuple[int, int]], non_targets: list[tuple[int, int]], name: str
) -> Trials:
    """Trials naming ``ids`` by index pair: the targets (label 1), then the non-targets (label 0)."""
    both = targets + non_targets
    enroll = np.asarray([ids[i] for i, _ in both], dtype=object)
    test = np.asarray([ids[j] for _, j in both], dtype=object)
    labels = np.asarray([1] * len(targets) + [0] * len(non_targets), dtype=np.int8)
    return Trials(enroll, test, labels, name=name)
