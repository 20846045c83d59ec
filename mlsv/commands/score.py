"""``mlsv score``: trial scores (cosine, AS-norm, QMF) from an embeddings file, with optional metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsv.commands.options import (
    add_asnorm_top_k_option,
    add_cohort_option,
    add_device_option,
    load_mean,
    output_file,
)

EPILOG = """example:
  mlsv score --embeddings vox1.npz --trials vox1_O.txt vox1_E.txt vox1_H.txt \\
      --cohort vox2_dev.npz --asnorm-top-k 600 --calibration qmf.json \\
      --out scores/vox1.tsv --metrics scores/metrics.json
  mlsv score --model runs/default/model --embeddings vox1.npz --trials vox1_O.txt --out scores.tsv

With one trial list the scores go to --out. With several, each list gets its own file named after
--out and the list (trial file name without extension): scores/vox1.vox1_O.tsv, scores/vox1.vox1_E.tsv,
... The score written is the last stage available: calibrated LLR (--calibration), else AS-norm
(--cohort), else cosine. The mean vector subtracted before cosine scoring is --mean, else the cohort's
mean, else none.

With --model (the model that made the embeddings) the model's stored training mean, AS-norm cohort,
top-k and calibration apply, as `mlsv verify` applies them: the scores are the ones verify gives each
pair. --mean, --cohort and --calibration replace the model's. --cohort may also be a manifest with
speakers, whose recordings are then embedded with --model."""


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
    p.add_argument(
        "--model",
        default=None,
        help="the model that made the embeddings: its mean, cohort and calibration apply (folder or hub id)",
    )
    add_cohort_option(p)
    add_asnorm_top_k_option(p, "the model's evaluation's, else the calibration's, else 600")
    p.add_argument("--calibration", type=Path, help="QMF calibration JSON from `mlsv calibrate`")
    p.add_argument("--mean", type=Path, help="mean vector .npy (default: the model's, else the cohort mean)")
    p.add_argument("--out", required=True, type=Path, help="scores TSV (enroll, test, score, label)")
    p.add_argument("--metrics", type=Path, help="write EER/minDCF (and actDCF/Cllr if calibrated) JSON")
    p.add_argument(
        "--no-calibration-guard",
        dest="calibration_guard",
        action="store_false",
        help="calibrated scores: do not count the trials outside the calibration's conditions (durations, SNR) "
        "nor give metrics on the rest (inside_calibration)",
    )
    add_device_option(p, "torch device for the cohort products")
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
    from mlsv.inference.cohorts import cohort_table
    from mlsv.models.loading import check_device
    from mlsv.scoring.backend import ASNORM_TOP_K
    from mlsv.scoring.calibration import QualityCalibrator
    from mlsv.scoring.embeddings import EmbeddingTable, load_embeddings
    from mlsv.scoring.pipeline import (
        calibration_outside,
        score_trial_lists,
        trial_metrics,
        write_metrics_json,
        write_scores_tsv,
    )

    output_file(args.out)
    output_file(args.metrics, "--metrics")
    table = load_embeddings(args.embeddings)
    trial_lists = [read_trials(p) for p in args.trials]
    outs = output_paths(args.out, [t.name for t in trial_lists], args.trials)
    for out in outs:
        output_file(out, f"--out {args.out}: the scores file")
    calibrator = QualityCalibrator.load(args.calibration) if args.calibration else None
    dim = table.embeddings.shape[1]
    mean = load_mean(args.mean, dim, args.embeddings) if args.mean else None
    if args.model:
        mean, cohort, top_k, calibrator = _model_scoring(args, dim, mean, calibrator)
    else:
        cohort = cohort_table(args.cohort) if args.cohort else None
        top_k = args.asnorm_top_k or int((calibrator.info.get("top_k") if calibrator else None) or ASNORM_TOP_K)
    if isinstance(cohort, EmbeddingTable) and cohort.embeddings.shape[1] != dim:
        raise ValueError(
            f"{args.cohort}: cohort embeddings have {cohort.embeddings.shape[1]} dimensions, "
            f"{args.embeddings} has {dim}"
        )
    results = score_trial_lists(
        table,
        trial_lists,
        mean=mean,
        cohort=cohort,
        top_k=top_k,
        calibrator=calibrator,
        device=check_device(args.device),
    )
    metrics = {}
    guard = calibrator is not None and "calibrated" in results[0] and args.calibration_guard
    if guard and calibrator.unguarded:
        print(f"calibration conditions: {', '.join(calibrator.unguarded)} not guarded (not recorded)", file=sys.stderr)
    for trials, scores, out in zip(trial_lists, results, outs):
        write_scores_tsv(out, trials, scores)
        print(f"{trials.name}: {len(trials)} trials -> {out}")
        outside = calibration_outside(table, trials, calibrator) if guard else None
        if outside is not None:
            print(
                f"{trials.name}: {int(outside.sum())} of {len(trials)} trials outside the calibration's "
                "conditions (their LLRs are extrapolations)"
            )
        if args.metrics:
            if not trials.has_labels:
                print(f"{trials.name}: labels unknown, no metrics", file=sys.stderr)
                continue
            metrics[trials.name] = m = trial_metrics(trials, scores, outside=outside)
            print(
                f"{trials.name}: EER {m['eer']:.3f}%  minDCF0.01 {m['min_dcf_0.01']:.4f}  "
                f"minDCF0.05 {m['min_dcf_0.05']:.4f}"
            )
            if "cllr" in m:
                inside = m.get("inside_calibration")
                rest = (
                    f"; inside the conditions ({inside['n_trials']} trials): actDCF0.01 "
                    f"{inside['act_dcf_0.01']:.4f}  Cllr {inside['cllr']:.4f}"
                    if inside
                    else ""
                )
                print(f"{trials.name}: all trials: actDCF0.01 {m['act_dcf_0.01']:.4f}  Cllr {m['cllr']:.4f}{rest}")
    if args.metrics:
        if not metrics:
            raise ValueError("--metrics was given but no trial list has labels")
        write_metrics_json(args.metrics, metrics)
    return 0


def _model_scoring(args: argparse.Namespace, dim: int, mean, calibrator):
    """(mean, cohort, top_k, calibrator) of ``--model``, as the model's ``Verifier`` scores: its stored
    training mean, AS-norm cohort (speaker means), evaluation top-k and calibration; ``--mean``,
    ``--cohort``, ``--asnorm-top-k`` and ``--calibration`` replace them. The calibration applies only with
    a cohort (it was fitted on AS-norm scores), as in ``mlsv verify``."""
    from mlsv.inference.cohorts import cohort_table, is_embeddings_file
    from mlsv.inference.model_files import read_stored_cohort
    from mlsv.inference.scorer import Scorer
    from mlsv.models.loading import load_config, model_source
    from mlsv.scoring.backend import ASNORM_TOP_K

    src = model_source(args.model)
    config = load_config(src)
    if int(config.embedding_size) != dim:
        raise ValueError(
            f"--model {args.model} gives {config.embedding_size}-dimensional embeddings, {args.embeddings} holds {dim}"
        )
    if args.cohort and not is_embeddings_file(args.cohort):  # a manifest: embedded with the model
        from mlsv.inference.verifier import Verifier

        verifier = Verifier.from_pretrained(src, device=args.device, use_stored_cohort=False)
        cohort = cohort_table(args.cohort, verifier.embedder)
    else:
        cohort = cohort_table(args.cohort) if args.cohort else None
    stored = None if cohort is not None else read_stored_cohort(src, config)
    if stored is not None:
        stored = stored.astype("float32")
    if calibrator is not None:
        config.calibration = calibrator.to_dict()
    scorer = Scorer(config, cohort=cohort, stored_cohort=stored, asnorm_top_k=args.asnorm_top_k)
    if scorer.cohort is None:
        return (mean if mean is not None else scorer.mean), None, scorer.top_k or ASNORM_TOP_K, None
    if mean is not None and cohort is not None:  # the given mean, and the cohort's speaker means made with it
        return mean, cohort, scorer.top_k, scorer.calibrator
    return (mean if mean is not None else scorer.mean), scorer.cohort, scorer.top_k, scorer.calibrator
