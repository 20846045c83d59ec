"""``mlsv verify``: one decision for two recordings: score, threshold in use, same / different speaker;
with ``--window``, one decision per window of the test recording (where the enrolled speaker speaks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsv.commands.options import (
    add_asnorm_top_k_option,
    add_cohort_option,
    add_device_option,
    add_window_options,
    check_window_options,
    probability,
)

EPILOG = """example:
  mlsv verify --model runs/default/model enroll.wav test.flac
  mlsv verify --model runs/default/model a.wav b.mp3 --far 0.01 --json
  mlsv verify --model runs/default/model a.wav b.wav --cohort cohort.npz   # AS-norm (+ calibration)
  mlsv verify --model runs/default/model ann1.wav ann2.wav ann3.wav test.wav # enrolled from three
  mlsv verify --model runs/default/model enroll.wav meeting.wav --window 1.5 --hop 0.75
  mlsv verify --model runs/default/model --pairs pairs.txt --json                  # many pairs at once

Audio at any sample rate and channel count is resampled and downmixed. All recordings but the last are the
enrolment: their embeddings are averaged, weighted by duration. The score is cosine after
subtracting the model's training mean; with --cohort it is AS-norm, calibrated to an LLR when the model
carries a calibration. The threshold is the model's EER point for that score, --far picks one for a
false-accept rate (needs stored score statistics or a calibration), --threshold sets one.
With --window, the enrolment is scored against each window of the test recording (windows of that many
seconds every --hop seconds, the last one ending at the end) and the spans of accepted windows are
printed (the threshold was chosen on whole utterances: --threshold or --far may suit short windows).
With --pairs FILE, every line of FILE is a pair, "ENROLL TEST" or "LABEL ENROLL TEST" (a VoxCeleb trial
list of paths; relative paths are read from FILE's folder, as a manifest's are): each recording is
embedded once, all in one batched pass, and each pair gets its score, threshold and decision (a line
per pair, or a JSON list with --json).
On the calibrated scale, a trial whose duration or SNR lies outside what the calibration was fitted on gets
no calibrated decision: it is decided on the AS-norm scale with the model's AS-norm threshold, or not at all
when the model has none ("outside_calibration" says why; --no-calibration-guard turns this off; see
docs/evaluation.md#calibration-conditions).

Exit status 0 whatever the decision; read it from the output ("decision" in --json)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="are two recordings the same speaker? (score, threshold, decision)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (save_pretrained) or hub id")
    # one positional list split in run(); mlsv.cli.main adds the recordings that follow an option
    p.add_argument(
        "recordings",
        type=Path,
        nargs="*",
        metavar="RECORDING",
        help="the enrolment (one recording, or several of one speaker: averaged), then the test recording",
    )
    p.add_argument(
        "--pairs",
        type=Path,
        default=None,
        metavar="FILE",
        help="verify every pair of FILE ('ENROLL TEST' or 'LABEL ENROLL TEST' lines) in one batched pass",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--far", type=probability, default=None, help="target false-accept rate, e.g. 0.01")
    p.add_argument("--threshold", type=float, default=None, help="explicit threshold on the score scale in use")
    add_cohort_option(p)
    add_asnorm_top_k_option(p)
    p.add_argument(
        "--no-calibration-guard",
        dest="calibration_guard",
        action="store_false",
        help="decide every trial on the calibrated scale, also outside the conditions the calibration was fitted on",
    )
    add_window_options(p, "score each window of this length of the test recording (where the speaker speaks)")
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="torch, or onnx (runs MODEL/model.onnx with onnxruntime)",
    )
    add_device_option(p, "torch device (with --runtime onnx: cpu or cuda)")
    p.set_defaults(func=run, more_positionals="recordings")


def run(args: argparse.Namespace) -> int:
    import json

    from mlsv.inference.verifier import Verifier

    if args.pairs is not None and (args.recordings or args.window is not None):
        raise ValueError("--pairs FILE names the recordings: give no recordings (nor --window) with it")
    if args.pairs is None and len(args.recordings) < 2:
        raise ValueError("give the enrolment recording(s) and then the test recording (or --pairs FILE)")
    pairs = _read_pairs(args.pairs) if args.pairs is not None else None
    if pairs is None:
        args.a, args.b = args.recordings[:-1], args.recordings[-1]
    check_window_options(args)
    verifier = Verifier.from_pretrained(
        args.model,
        device=args.device,
        runtime=args.runtime,
        cohort=args.cohort,
        asnorm_top_k=args.asnorm_top_k,
        calibration_guard=args.calibration_guard,
    )
    if pairs is not None:
        return _verify_pairs(verifier, pairs, args)
    if args.window is not None:
        return _track(verifier, args)
    result = verifier.verify(args.a, args.b, far=args.far, threshold=args.threshold)
    if args.json:
        print(json.dumps({"a": _names(args.a), "b": _printable(args.b), **result.to_dict()}, indent=2))
    else:
        print(f"score      {result.score:.4f}  ({result.scale})")
        shown = "none" if result.threshold is None else f"{result.threshold:.4f}"
        print(f"threshold  {shown}  ({result.threshold_source})")
        print(f"decision   {result.label}")
        if result.outside_calibration:
            print(f"outside the calibration's conditions: {result.outside_calibration}")
    return 0


def _read_pairs(path: Path):
    """The pairs of a ``--pairs`` file: the trial list, its paths resolved against the file's folder (checked
    before the model loads)."""
    from mlsv.data.manifest import resolve_path
    from mlsv.data.trials import read_trials

    trials = read_trials(path)
    root = path.resolve().parent
    for i in range(len(trials)):
        for p in (trials.enroll[i], trials.test[i]):
            if not Path(resolve_path(str(p), root)).is_file():
                raise FileNotFoundError(f"{path}:{trials.line(i)}: no such recording: {p}")
    return trials, root


def _verify_pairs(verifier, pairs, args: argparse.Namespace) -> int:
    import json

    from mlsv.data.manifest import resolve_path

    trials, root = pairs
    enroll, test = [str(p) for p in trials.enroll], [str(p) for p in trials.test]
    results = verifier.verify_pairs(
        [(resolve_path(a, root), resolve_path(b, root)) for a, b in zip(enroll, test)],
        far=args.far,
        threshold=args.threshold,
        progress=False if getattr(args, "quiet", False) else None,
    )
    rows = []
    for a, b, label, r in zip(enroll, test, trials.labels.tolist(), results):
        row = {"enroll": _printable(a), "test": _printable(b), **r.to_dict()}
        if label >= 0:
            row["trial_label"] = int(label)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    inside = [r for r in results if not r.outside_calibration]
    if inside:
        r = inside[0]
        print(f"threshold {r.threshold:.4f} ({r.scale}; {r.threshold_source})")
    print(f"{'score':>9}  {'decision':<18}  enroll  test")
    for row in rows:
        print(f"{row['score']:9.4f}  {row['label']:<18}  {row['enroll']}  {row['test']}")
    outside = [r for r in results if r.outside_calibration]
    if outside:
        print(
            f"{len(outside)} pair(s) outside the calibration's conditions, scored and decided on the "
            f"{outside[0].scale} scale ({outside[0].threshold_source}); --json gives each reason"
        )
    return 0


def _track(verifier, args: argparse.Namespace) -> int:
    import json

    track = verifier.track(args.a, args.b, window=args.window, hop=args.hop, far=args.far, threshold=args.threshold)
    if args.json:
        print(json.dumps({"a": _names(args.a), "b": _printable(args.b), **track.to_dict()}, indent=2))
        return 0
    print(f"threshold  {track.threshold:.4f}  ({track.scale}; {track.threshold_source})")
    print(f"{'start':>8} {'end':>8} {'score':>9}  decision")
    for a, b, score, same in zip(track.starts, track.ends, track.scores, track.decisions):
        print(f"{a:8.2f} {b:8.2f} {score:9.4f}  {'same speaker' if same else '-'}")
    spans = track.segments()
    enrolled = " + ".join(_printable(a.name) for a in args.a)
    print(
        f"{enrolled} speaks in {_printable(args.b.name)}: "
        + (", ".join(f"{a:.2f}-{b:.2f} s" for a, b in spans) or "nowhere")
    )
    return 0


def _names(paths: list[Path]) -> str | list[str]:
    """The enrolment's path in JSON: one as text (as before several were allowed), several as a list."""
    return _printable(paths[0]) if len(paths) == 1 else [_printable(p) for p in paths]


def _printable(path: Path | str) -> str:
    """A path as printed: a name that is not UTF-8 (a Latin-1 ``caf\\xe9.wav``) with its bytes as ``\\xNN``
    (stdout and JSON take no undecodable bytes)."""
    from mlsv.data.audio import printable

    return printable(path)
