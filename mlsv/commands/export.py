"""``mlsv export``: the whole embedding model as ONNX, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsv.commands.options import non_negative_float, output_file, positive_int

EPILOG = """example:
  mlsv export --model runs/default/model --out runs/default/model/model.onnx

The graph covers encoder, layer aggregation and backend: inputs input_values (batch, samples) float32
at the model's sample rate and attention_mask (batch, samples) int64 (1 = real sample); output
embeddings (batch, E). Batch and length are dynamic. The legacy TorchScript exporter is tried first, then
the dynamo exporter. The parity check embeds a padded batch of lengths other than the traced one with
both runtimes; the max abs difference is printed and written to OUT.json. Put the file in the model
folder as model.onnx to use it with `mlsv verify/embed --runtime onnx` or Verifier(runtime="onnx").
OUT.json also records a fingerprint of the weights exported: after the model's weights change (a
retrain), loading the export with --runtime onnx and push_to_hub.py refuse it until it is exported again."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export the embedding model to ONNX (with a parity check)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (save_pretrained) or hub id")
    p.add_argument("--out", required=True, type=Path, help="ONNX file to write, e.g. model.onnx")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--exporter",
        choices=("auto", "torchscript", "dynamo"),
        default="auto",
        help="auto: TorchScript first, dynamo if it fails (default)",
    )
    p.add_argument(
        "--no-check", action="store_true", help="skip the onnxruntime parity check (OUT.json is still written)"
    )
    p.add_argument(
        "--tolerance",
        type=non_negative_float,
        default=1e-3,
        help="fail (exit 1) when the max abs difference exceeds this (default 1e-3)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from mlsv.inference.export import export_onnx
    from mlsv.models.loading import load_model

    output_file(args.out)
    output_file(f"{args.out}.json", f"--out {args.out}: its report")
    model = load_model(args.model)
    report = export_onnx(model, args.out, opset=args.opset, exporter=args.exporter, check=not args.no_check)
    for err in report.errors:
        print(f"note: exporter failed and was skipped: {err}", file=sys.stderr)
    print(f"exported {args.out} ({report.exporter} exporter, opset {report.opset})")
    if report.max_abs_diff is None:
        return 0
    lengths = ", ".join(f"{s:g}" for s in report.check_lengths)
    print(
        f"onnxruntime vs PyTorch: max abs difference {report.max_abs_diff:.3g} "
        f"(padded batch of {lengths} s; traced at {report.trace_seconds:g} s) -> {args.out}.json"
    )
    if report.max_abs_diff > args.tolerance:
        print(f"error: difference above the tolerance {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0
