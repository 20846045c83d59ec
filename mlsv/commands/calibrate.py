"""``mlsv calibrate``: fits the QMF calibration on pairs drawn from a cohort set and writes it as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsv.commands.options import (
    add_asnorm_top_k_option,
    add_device_option,
    check_cohort_speakers,
    int_at_least,
    load_mean,
    output_file,
    positive_float,
    prior,
    probability,
)
from mlsv.extras import require_extra

EPILOG = """example:
  mlsv calibrate --embeddings vox2_dev.npz --asnorm-top-k 600 --pairs 30000 --out qmf.json
  mlsv score --embeddings vox1.npz --trials vox1_O.txt --cohort vox2_dev.npz --calibration qmf.json \\
      --out scores.tsv --metrics metrics.json

Pairs are half same-speaker, half different-speaker, each pair's speakers left out of its AS-norm
cohort. Use the same cohort, mean and top-k when scoring (`mlsv score` warns otherwise).

--quality snr adds each recording's blind SNR estimate (snr_e, snr_t; the cohort table needs them: tables
that mlsv embed writes have them). Either way the calibration records the range of durations and SNR it
was fitted on (its conditions guard; SNR only when the table has it): `mlsv score`/`evaluate` count the
trials outside it, `mlsv verify` gives them no calibrated decision (docs/evaluation.md#calibration-conditions)."""


def register(subparsers) -> None:
    from mlsv.scoring.calibration import ALL_FEATURES, FEATURES

    p = subparsers.add_parser(
        "calibrate",
        help="fit QMF score calibration on a cohort set",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--embeddings", required=True, type=Path, help="cohort embeddings .npz with speakers and durations")
    p.add_argument("--out", required=True, type=Path, help="calibration JSON")
    add_asnorm_top_k_option(p, "600, as everywhere without a calibration")
    p.add_argument("--mean", type=Path, help="mean vector .npy (default: the cohort mean)")
    p.add_argument("--pairs", type=int_at_least(2), default=30000, help="number of training pairs (default 30000)")
    p.add_argument("--seed", type=int, default=7, help="pair sampling seed (default 7)")
    p.add_argument(
        "--features",
        nargs="+",
        default=list(FEATURES),
        choices=ALL_FEATURES,
        metavar="NAME",
        help=f"features to use (default: {' '.join(FEATURES)})",
    )
    p.add_argument(
        "--quality",
        choices=("default", "snr"),
        default="default",
        help="snr: add the recordings' SNR estimates (snr_e snr_t) to --features (default: no)",
    )
    p.add_argument(
        "--prior",
        type=prior,
        default=0.5,
        help="effective target prior of the training pairs; 0 means unweighted (default 0.5)",
    )
    p.add_argument("--regularization", type=positive_float, default=1.0, help="logistic regression C (default 1)")
    p.add_argument(
        "--threshold",
        choices=("eer", "far", "bayes"),
        default="eer",
        help="stored decision threshold: EER point, a false-accept rate, or Bayes for --p-target",
    )
    p.add_argument("--target-far", type=probability, default=0.01, help="false-accept rate for --threshold far")
    p.add_argument("--p-target", type=probability, default=0.01, help="target prior for --threshold bayes")
    add_device_option(p, "torch device for the cohort products")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_extra("eval", "mlsv calibrate")
    import numpy as np

    from mlsv.models.loading import check_device
    from mlsv.scoring.backend import ASNORM_TOP_K
    from mlsv.scoring.calibration import fit_calibration
    from mlsv.scoring.embeddings import load_embeddings

    args.asnorm_top_k = args.asnorm_top_k or ASNORM_TOP_K
    output_file(args.out)
    table = load_embeddings(args.embeddings)
    if table.speakers is None:
        raise ValueError(
            f"{args.embeddings}: the cohort embeddings need speakers (embed a manifest with a speaker on every row)"
        )
    check_cohort_speakers(len(np.unique(table.speakers)), args.asnorm_top_k, args.embeddings)
    mean = load_mean(args.mean, table.embeddings.shape[1], args.embeddings) if args.mean else None
    cal = fit_calibration(
        table,
        mean=mean,
        top_k=args.asnorm_top_k,
        n_pairs=args.pairs,
        seed=args.seed,
        features=args.features,
        with_snr=args.quality == "snr",
        prior=args.prior or None,
        regularization=args.regularization,
        threshold=args.threshold,
        target_far=args.target_far,
        p_target=args.p_target,
        device=check_device(args.device),
    )
    cal.save(args.out)
    i = cal.info
    print(
        f"calibration on {i['n_pairs']} pairs from {i['cohort_speakers']} speakers: "
        f"AS-norm EER {i['train_asnorm_eer']:.3f}%, calibrated EER {i['train_eer']:.3f}%, "
        f"Cllr {i['train_cllr']:.4f}; threshold ({cal.threshold}) {cal.threshold_:.4f} -> {args.out}"
    )
    guarded = ", ".join(f"{m} {lo:.3g}..{hi:.3g}" for m, (lo, hi) in cal.conditions_.items())
    unguarded = f"; unguarded (no estimate in {args.embeddings}): {', '.join(cal.unguarded)}" if cal.unguarded else ""
    print(f"conditions guard: {guarded or 'none'}{unguarded}")
    return 0
