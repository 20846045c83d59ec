"""``mlsv score``: trial scores (cosine, AS-norm, QMF) from an embeddings file, with optional metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsv.commands.options import int_at_least, load_mean, output_file

EPILOG = """example:
  mlsv score --embeddings vox1.npz --trials vox1_O.txt vox1_E.txt vox1_H.txt \\
      --cohort vox2_dev.npz --asnorm-top-k 600 --calibration qmf.json \\
      --out scores/vox1.tsv --metrics scores/metrics.json

With one trial list the scores go to --out. With several, each list gets its own file named after
--out and the list (trial file name without extension): scores/vox1.vox1_O.tsv, scores/vox1.vox1_E.tsv,
... The score written is the last stage available: calibrated LLR (--calibration), else AS-norm
(--cohort), else cosine. The mean vector subtracted before cosine scoring is --mean, else the cohort's
mean, else none."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score trial lists from embeddings (cosine, AS-norm, QMF)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--embeddings", required=True, type=Path, help="embeddings .npz of the trial utterances")
    p.add_argument("--trials", required=True, nargs="+", type=Path, help="trial list(s), VoxCeleb format")
    p.add_argument("--cohort", type=Path, help="cohort embeddings .npz with speakers (enables AS-norm)")
    p.add_argument(
        "--asnorm-top-k",
        type=int_at_least(2),
        default=None,
        help="AS-norm cohort size (default: the calibration's, else 600)",
    )
    p.add_argument("--calibration", type=Path, help="QMF calibration JSON from `mlsv calibrate`")
    p.add_argument("--mean", type=Path, help="mean vector .npy (default: the cohort mean)")
    p.add_argument("--out", required=True, type=Path, help="scores TSV (enroll, test, score, label)")
    p.add_argument("--metrics", type=Path, help="write EER/minDCF (and actDCF/Cllr if calibrated) JSON")
    p.add_argument("--device", default="cpu", help="torch device for the cohort products (default cpu)")
    p.set_defaults(func=run)


def output_paths(out: Path, names: list[str], paths: list[Path] | None = None) -> list[Path]:
    """The scores file of each trial list: ``out`` for one list, ``<out stem>.<name><suffix>`` for several."""
    from mlsv.scoring.pipeline import check_distinct_names

    if len(names) == 1:
        return [out]
    check_distinct_names(names, paths)
    suffix = out.suffix or ".tsv"
    return [out.with_name(f"{out.stem}.{n}{suffix}") for n in names]


def run(args: argparse.Namespace) -> int:
    import sys

    from mlsv.data.trials import read_trials
    from mlsv.scoring.calibration import QualityCalibrator
    from mlsv.scoring.embeddings import load_embeddings
    from mlsv.scoring.pipeline import score_trial_lists, trial_metrics, write_metrics_json, write_scores_tsv

    output_file(args.out)
    output_file(args.metrics, "--metrics")
    table = load_embeddings(args.embeddings)
    trial_lists = [read_trials(p) for p in args.trials]
    outs = output_paths(args.out, [t.name for t in trial_lists], args.trials)
    for out in outs:
        output_file(out, f"--out {args.out}: the scores file")
    calibrator = QualityCalibrator.load(args.calibration) if args.calibration else None
    top_k = args.asnorm_top_k
    if top_k is None:
        top_k = int((calibrator.info.get("top_k") if calibrator else None) or 600)
    cohort = load_embeddings(args.cohort) if args.cohort else None
    dim = table.embeddings.shape[1]
    if cohort is not None and cohort.embeddings.shape[1] != dim:
        raise ValueError(
            f"{args.cohort}: cohort embeddings have {cohort.embeddings.shape[1]} dimensions, "
            f"{args.embeddings} has {dim}"
        )
    mean = load_mean(args.mean, dim, args.embeddings) if args.mean else None
    results = score_trial_lists(
        table, trial_lists, mean=mean, cohort=cohort, top_k=top_k, calibrator=calibrator, device=args.device
    )
    metrics = {}
    for trials, scores, out in zip(trial_lists, results, outs):
        write_scores_tsv(out, trials, scores)
        print(f"{trials.name}: {len(trials)} trials -> {out}")
        if args.metrics:
            if not trials.has_labels:
                print(f"{trials.name}: labels unknown, no metrics", file=sys.stderr)
                continue
            metrics[trials.name] = m = trial_metrics(trials, scores)
            print(
                f"{trials.name}: EER {m['eer']:.3f}%  minDCF0.01 {m['min_dcf_0.01']:.4f}  "
                f"minDCF0.05 {m['min_dcf_0.05']:.4f}"
            )
    if args.metrics:
        if not metrics:
            raise ValueError("--metrics was given but no trial list has labels")
        write_metrics_json(args.metrics, metrics)
    return 0
