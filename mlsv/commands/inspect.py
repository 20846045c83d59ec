"""``mlsv inspect``: which encoder layers a model listens to, per frame (LAP) or overall (SUPERB)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsv.commands.options import add_device_option, non_negative_float, output_file
from mlsv.extras import needs_extra

EPILOG = """example:
  mlsv inspect --model runs/default/model sample.wav --out layers.png --table layers.csv

For a LAP model the figure shows the waveform, each head's layer scores over time (layers x frames),
their head average, and per layer the mean score and how often the layer wins LAP's max-pool over layers
(counted over frames x channels). For a SUPERB model it shows the static layer weights. The table is
printed and, with --table, written as CSV (one row per layer)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="picture of LAP's per-frame layer attention (or SUPERB weights)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (save_pretrained) or hub id")
    p.add_argument("audio", type=Path, help="a recording (any rate / channels; resampled and downmixed)")
    p.add_argument("--out", required=True, type=Path, help="figure to write (.png, .pdf, .svg)")
    p.add_argument("--table", type=Path, default=None, help="also write the per-layer table as CSV")
    p.add_argument(
        "--max-seconds",
        type=non_negative_float,
        default=20.0,
        help="analyse at most this many seconds from the start (default 20; 0: the whole file)",
    )
    add_device_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlsv.data.inputs import load_audio
    from mlsv.inference.inspect_layers import (
        analyze_layers,
        format_layer_table,
        plot_layers,
        write_layer_table,
    )
    from mlsv.models.loading import load_model, min_samples

    out = _figure_path(args.out)
    output_file(args.table, "--table")
    model = load_model(args.model, device=args.device).eval()
    sr = int(model.config.sampling_rate)
    wav = load_audio(args.audio, None, target_sr=sr, min_length=min_samples(model.config))
    if args.max_seconds > 0:
        wav = wav[: int(args.max_seconds * sr)]
        if model.frontend.frame_lengths(wav.size) < 1:
            need = min_samples(model.config)
            raise ValueError(
                f"--max-seconds {args.max_seconds:g} keeps {wav.size} samples; the encoder needs at "
                f"least {need} ({need / sr:.4f} s)"
            )
    analysis = analyze_layers(model, wav)
    plot_layers(analysis, out, title=f"{args.audio.name}: {analysis.aggregation.upper()} layer aggregation")
    print(format_layer_table(analysis))
    if args.table:
        write_layer_table(analysis, args.table)
        print(f"wrote {args.table}")
    print(f"wrote {out}")
    return 0


def _figure_path(out: Path) -> Path:
    """The figure file ``--out`` names, checked before any work: ``.png`` is added to a name without a
    suffix (as matplotlib does, so the path printed is the one written); a directory or a suffix
    matplotlib cannot write is refused."""
    with needs_extra("eval", "the layer picture"):
        from matplotlib.backend_bases import FigureCanvasBase

    output_file(out)
    if not out.suffix:
        out = out.with_name(out.name + ".png")
        output_file(out)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix[1:].lower() not in formats:
        raise ValueError(
            f"--out {out}: matplotlib cannot write {out.suffix} figures; use .png, .pdf or .svg "
            f"(or one of {', '.join(sorted(formats))})"
        )
    return out
