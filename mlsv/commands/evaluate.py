"""``mlsv evaluate``: embed + score (cosine, AS-norm, QMF) + metrics + plots + report for one model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlsv.commands.options import (
    add_asnorm_top_k_option,
    add_cohort_option,
    add_device_option,
    int_at_least,
    non_negative_float,
    output_folder,
    positive_float,
)
from mlsv.extras import needs_extra, require_extra

EXAMPLE = """example:
  mlsv evaluate --model runs/default/model --manifest data/vox1/test.jsonl \\
      --trials data/vox1/vox1_O_cleaned.txt data/vox1/vox1_E_cleaned.txt \\
      --cohort data/vox2/dev.jsonl --out runs/eval_vox1
writes embeddings.npz, cohort.npz, scores_<list>.tsv, metrics.json (final scores), metrics_by_stage.json,
calibration.json, det.png, scores.png, report.md and model/ (the model with its calibration and threshold).
A rerun into the same --out reuses embeddings.npz / cohort.npz made by the same model weights, manifest
file (path, size, time), audio files (the same of each) and --precision / --chunk-seconds (recorded in
*.source.json), and embeds again when any of them changed.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="embed, score, calibrate and report a model on trial lists",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (save_pretrained) or hub id")
    p.add_argument(
        "--manifest", required=True, help="manifest of the utterances the trials name, or a dataset source hf:..."
    )
    p.add_argument("--trials", required=True, nargs="+", help="trial lists (LABEL ENROLL TEST)")
    add_cohort_option(p, "for AS-norm and the QMF calibration pairs")
    add_asnorm_top_k_option(p, "600, as everywhere without a calibration")
    p.add_argument(
        "--calibration-pairs", type=int_at_least(2), default=30000, help="QMF training pairs from the cohort"
    )
    p.add_argument(
        "--calibration-quality",
        choices=("default", "snr"),
        default="default",
        help="QMF quality features: default (durations, embedding norms) or snr (those and each recording's "
        "SNR estimate); see docs/evaluation.md#calibration-conditions",
    )
    p.add_argument("--batch-seconds", type=positive_float, default=120.0, help="audio per embedding batch")
    p.add_argument(
        "--chunk-seconds",
        type=non_negative_float,
        default=None,
        help="cut longer files into overlapping windows of this length (0: whole files; default: the model's "
        "stored window, else the better on --threshold-trials of whole files and chunks of the training crop)",
    )
    p.add_argument("--threshold-manifest", default=None, help="manifest of the held-out threshold trials")
    p.add_argument(
        "--threshold-trials", default=None, help="held-out (validation) trials that set the model's decision thresholds"
    )
    add_device_option(p)
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="embedding pass precision (bf16: autocast, the fast path on a GPU)",
    )
    p.add_argument("--out", required=True, help="results folder")
    p.set_defaults(func=run)


def run(args) -> int:
    require_extra("eval", "mlsv evaluate")
    from mlsv.inference.evaluation import evaluate_model
    from mlsv.scoring.backend import ASNORM_TOP_K

    args.asnorm_top_k = args.asnorm_top_k or ASNORM_TOP_K
    output_folder(args.out)
    if args.cohort:
        _check_cohort(args.cohort, args.asnorm_top_k)
    result = evaluate_model(
        args.model,
        manifest=args.manifest,
        trials=args.trials,
        out_dir=args.out,
        cohort=args.cohort,
        top_k=args.asnorm_top_k,
        calibration_pairs=args.calibration_pairs,
        batch_seconds=args.batch_seconds,
        chunk_seconds=args.chunk_seconds,
        device=args.device,
        threshold_manifest=args.threshold_manifest,
        threshold_trials=args.threshold_trials,
        precision=args.precision,
        calibration_snr=args.calibration_quality == "snr",
    )
    print(json.dumps(result["metrics"][result["final_stage"]], indent=2))
    print(f"report: {args.out}/report.md")
    return 0


def _check_cohort(cohort: str, top_k: int) -> None:
    """Refuses, before any embedding, a cohort manifest with too few speakers for ``top_k``.

    Reads only the speaker column; a manifest it cannot read that way is left to the evaluation, which
    reports it.
    """
    from mlsv.commands.options import check_cohort_speakers
    from mlsv.data.manifest import ManifestError, _data_files, _format, iter_rows

    path = Path(cohort)
    if not path.exists():
        return
    try:
        if _format(path) == "json":
            speakers = [row.get("speaker") for _, row in iter_rows(path)]
        else:
            with needs_extra("train", "a parquet manifest"):
                import pyarrow.parquet as pq

            speakers = [
                s for f in _data_files(path) for s in pq.read_table(f, columns=["speaker"])["speaker"].to_pylist()
            ]
    except (ManifestError, OSError, KeyError, ValueError, ImportError):
        return
    if speakers and all(speakers):
        check_cohort_speakers(len(set(speakers)), top_k, cohort)
