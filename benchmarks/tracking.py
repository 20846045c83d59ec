"""How well ``Verifier.track`` finds an enrolled speaker in a conversation, as one JSON object.

Conversations are built from a manifest with speakers: two speakers take turns (one utterance a turn),
and the first one is enrolled with one of its utterances that the conversation does not use. Each
conversation is tracked with the model's threshold (or ``--threshold``), and scored at 10 ms frames:

* miss: the share of the enrolled speaker's frames outside the accepted spans;
* false alarm: the share of the other speaker's frames inside them;
* window EER (percent): the equal error rate of the window scores against the windows' labels (the enrolled speaker
  in at least half of the window, or not at all; mixed windows left out), the threshold-free figure.

    python benchmarks/tracking.py --model runs/default/model --manifest runs/default/data/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FRAME = 0.01  # seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model folder")
    p.add_argument("--manifest", required=True, help="a manifest with speakers (the conversations' audio)")
    p.add_argument("--conversations", type=lambda v: max(1, int(v)), default=20)
    p.add_argument("--turns", type=int, default=4, help="turns per conversation, alternating speakers")
    p.add_argument("--window", type=float, default=1.5)
    p.add_argument("--hop", type=float, default=0.5)
    p.add_argument("--threshold", type=float, default=None, help="instead of the model's threshold")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def conversations(manifest: str, n: int, turns: int, seed: int):
    """(enrolment path, [(path, is_enrolled_speaker)] turns) for n conversations of two speakers."""
    from mlsv.data.manifest import iter_rows, manifest_root, resolve_path

    root = manifest_root(manifest)
    by_speaker: dict[str, list[str]] = defaultdict(list)
    for _, row in iter_rows(manifest):
        by_speaker[str(row["speaker"])].append(resolve_path(row["path"], root))
    need = 1 + (turns + 1) // 2  # the enrolment and the enrolled speaker's turns
    speakers = sorted(s for s, files in by_speaker.items() if len(files) >= need)
    if len(speakers) < 2:
        raise SystemExit(f"{manifest}: needs two speakers with at least {need} utterances each")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(speakers, size=2, replace=False)
        own = list(rng.permutation(by_speaker[a]))
        other = list(rng.permutation(by_speaker[b]))
        out.append(
            (
                own[0],
                [(own[1 + t // 2], True) if t % 2 == 0 else (other[t // 2 % len(other)], False) for t in range(turns)],
            )
        )
    return out


def frame_errors(truth: np.ndarray, spans: list[tuple[float, float]], rate: int) -> tuple[int, int, int, int]:
    """(missed, false-alarm, enrolled-speaker, other-speaker) 10 ms frames of a conversation whose samples
    are ``truth`` (True: the enrolled speaker) against the accepted ``spans`` in seconds. A frame is its
    first sample's speaker."""
    frames = truth[(np.arange(int(truth.size / rate / FRAME)) * FRAME * rate).astype(int)]
    detected = np.zeros(frames.size, bool)
    for a, b in spans:
        detected[int(round(a / FRAME)) : int(round(b / FRAME))] = True
    return (int((frames & ~detected).sum()), int((~frames & detected).sum()), int(frames.sum()), int((~frames).sum()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from mlsv.api import Verifier
    from mlsv.scoring.metrics import eer

    verifier = Verifier.from_pretrained(args.model)
    rate = verifier.sampling_rate
    misses = false_alarms = target_frames = other_frames = 0
    window_scores, window_labels = [], []
    seconds, t0 = 0.0, time.perf_counter()
    for enrol, turns in conversations(args.manifest, args.conversations, args.turns, args.seed):
        pieces = [verifier.load(path) for path, _ in turns]
        truth = np.concatenate([np.full(len(x), own) for x, (_, own) in zip(pieces, turns)])
        track = verifier.track(
            enrol, np.concatenate(pieces), window=args.window, hop=args.hop, sample_rate=rate, threshold=args.threshold
        )
        seconds += truth.size / rate
        counts = frame_errors(truth, track.segments(), rate)
        misses, false_alarms = misses + counts[0], false_alarms + counts[1]
        target_frames, other_frames = target_frames + counts[2], other_frames + counts[3]
        for a, b, score in zip(track.starts, track.ends, track.scores):
            share = truth[int(round(a * rate)) : int(round(b * rate))].mean()
            if share >= 0.5 or share == 0:
                window_scores.append(score)
                window_labels.append(int(share >= 0.5))
    wall = time.perf_counter() - t0
    scores, labels = np.asarray(window_scores), np.asarray(window_labels)
    print(
        json.dumps(
            {
                "benchmark": "tracking",
                "model": args.model,
                "manifest": args.manifest,
                "settings": {k: getattr(args, k) for k in ("conversations", "turns", "window", "hop", "seed")},
                "scale": track.scale,
                "threshold": track.threshold,
                "audio_seconds": round(seconds, 1),
                "wall_seconds": round(wall, 1),
                "miss_rate": round(misses / max(target_frames, 1), 4),
                "false_alarm_rate": round(false_alarms / max(other_frames, 1), 4),
                "windows": int(labels.size),
                "window_eer_percent": round(float(eer(scores, labels)[0]), 2)
                if 0 < labels.sum() < labels.size
                else None,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
