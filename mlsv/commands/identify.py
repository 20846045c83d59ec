"""``mlsv identify``: which enrolled speaker is speaking in each recording, or none of them (open set)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsv.commands.options import (
    add_asnorm_top_k_option,
    add_cohort_option,
    add_device_option,
    int_at_least,
    probability,
)

EPILOG = """example:
  mlsv identify --model runs/default/model --speaker ann=ann1.wav,ann2.wav --speaker bob=bob.flac test.wav
  mlsv embed --model runs/default/model --manifest enrol.jsonl --out enrolled.npz      # many speakers
  mlsv identify --model runs/default/model --speakers enrolled.npz calls/ --far 0.01 --json

Each enrolled speaker (several recordings, or a table's rows, pooled: duration-weighted mean) is scored
against each test recording as mlsv verify scores a pair, on the same scale and threshold (--far,
--threshold). The best speaker is the answer when its score reaches the threshold; otherwise the
recording's speaker is unknown. The threshold is a per-pair one: an unknown speaker has one chance per
enrolled speaker to pass it, so with many speakers choose a stricter --far or a higher --threshold.
Folders are searched for audio files (not in --speaker). An enrolment table must come from the same
model (its .npz does not record which)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "identify",
        help="which enrolled speaker is this? (or unknown)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (save_pretrained) or hub id")
    p.add_argument(
        "--speaker",
        action="append",
        default=[],
        metavar="NAME=FILE[,FILE...]",
        help="an enrolled speaker and its recording(s); repeat for each speaker",
    )
    p.add_argument(
        "--speakers",
        type=Path,
        default=None,
        help="embeddings .npz with speakers (mlsv embed --manifest): every speaker in it is enrolled",
    )
    p.add_argument("tests", nargs="+", metavar="TEST", help="recordings or folders to identify")
    p.add_argument("--top", type=int_at_least(1), default=3, help="speakers listed per recording (default 3)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--far", type=probability, default=None, help="target false-accept rate, e.g. 0.01")
    p.add_argument("--threshold", type=float, default=None, help="explicit threshold on the score scale in use")
    add_cohort_option(p)
    add_asnorm_top_k_option(p)
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="torch, or onnx (runs MODEL/model.onnx with onnxruntime)",
    )
    add_device_option(p, "torch device (with --runtime onnx: cpu or cuda)")
    p.set_defaults(func=run, more_positionals="tests")


def _enrolled(args: argparse.Namespace):
    """The enrolled speakers: a table (--speakers), or NAME=FILES (--speaker) as a mapping."""
    from mlsv.scoring.embeddings import load_embeddings

    mapping: dict[str, list[str]] = {}
    for item in args.speaker:
        name, sep, files = item.partition("=")
        recordings = [f for f in files.split(",") if f]
        if not sep or not name or not recordings:
            raise ValueError(f"--speaker {item!r}: expected NAME=FILE[,FILE...]")
        if name in mapping:
            raise ValueError(f"--speaker: {name!r} is given twice; list all its recordings in one --speaker")
        mapping[name] = recordings
    if args.speakers is not None and mapping:
        raise ValueError("give the enrolled speakers with --speakers or with --speaker, not both")
    if args.speakers is not None:
        return load_embeddings(args.speakers)
    if not mapping:
        raise ValueError("no enrolled speakers: give --speaker NAME=FILE[,FILE...] or --speakers TABLE.npz")
    return mapping


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from mlsv.data.inputs import find_audio_files
    from mlsv.inference.verifier import Verifier

    speakers = _enrolled(args)
    tests = find_audio_files(args.tests)
    verifier = Verifier.from_pretrained(
        args.model, device=args.device, runtime=args.runtime, cohort=args.cohort, asnorm_top_k=args.asnorm_top_k
    )
    if isinstance(speakers, dict):  # embedded once, as a table, for all the tests
        owners = [name for name, files in speakers.items() for _ in files]
        files = [f for recordings in speakers.values() for f in recordings]
        speakers = verifier.embed_table(files, ids=[f"{n}#{i}" for i, n in enumerate(owners)], progress=len(files) > 16)
        speakers.speakers = np.asarray(owners)
    results = []
    for test in tests:
        r = verifier.identify(test, speakers, far=args.far, threshold=args.threshold)
        result = r.to_dict()
        results.append({"test": test, **result, "ranking": result["ranking"][: args.top]})
        if not args.json:
            print(f"{test}: {r}")
            for name, score in r.ranking[: args.top]:
                print(f"    {score:9.4f}  {name}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0
