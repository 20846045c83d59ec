"""``mlsv embed``: speaker embeddings of a manifest, of files or of folders, to an ``.npz``."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsv.commands.options import (
    add_device_option,
    add_window_options,
    check_window_options,
    non_negative_float,
    non_negative_int,
    output_file,
    positive_float,
)

EPILOG = """example:
  mlsv embed --model runs/default/model --manifest data/vox1_test.jsonl --out emb/vox1.npz
  mlsv embed --model runs/default/model recordings/ extra.flac --out emb/mine.npz --chunk-seconds 20
  mlsv embed --model runs/default/model meeting.wav --out emb/windows.npz --window 1.5 --hop 0.75

The .npz holds ids (manifest ids, or the file paths as given), embeddings (N x E float32), durations
(seconds) and, for a manifest with speakers, speakers (usable as an AS-norm cohort). Folders are searched
recursively for .wav .flac .ogg .mp3 .m4a files. --chunk-seconds embeds long files in chunks and
averages them (weighted by length). --window embeds each file's sliding windows instead, one row each,
with ids FILE@START-END (seconds, e.g. a.wav@0.75-2.25) and the window's duration (for clustering,
e.g. diarization)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="extract speaker embeddings to an .npz",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (save_pretrained) or hub id")
    p.add_argument(
        "--manifest", help="manifest (JSONL / parquet) with id, path, ... rows, or a dataset source hf:DIR_OR_ID?..."
    )
    p.add_argument(
        "files", nargs="*", default=[], help="audio files or folders (instead of --manifest)", metavar="FILES"
    )
    p.add_argument("--out", required=True, type=Path, help="embeddings .npz to write")
    p.add_argument(
        "--batch-seconds", type=positive_float, default=60.0, help="padded audio per batch in seconds (default 60)"
    )
    p.add_argument(
        "--chunk-seconds",
        type=non_negative_float,
        default=None,
        help="embed long files in overlapping windows of this length and average (0: whole files; default: the "
        "window the model stores, chosen by mlsv evaluate; whole files when none)",
    )
    add_window_options(p, "embed each file's sliding windows of this length, one row each (files only)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="torch or onnx (MODEL/model.onnx)")
    add_device_option(p)
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="with --manifest: autocast precision of the embedding pass (bf16: a GPU's fast path)",
    )
    p.add_argument(
        "--num-workers", type=non_negative_int, default=2, help="data loader workers for --manifest (default 2)"
    )
    p.set_defaults(func=run)


def _embed_manifest(args: argparse.Namespace):
    """Manifest rows through the evaluation loader and the batched extractor (ids = manifest ids)."""
    from mlsv.inference.evaluation import embed_manifest
    from mlsv.models.loading import load_model
    from mlsv.models.runtime import autocast_dtype

    if args.runtime != "torch":
        raise ValueError("--manifest runs with --runtime torch; for ONNX give the files")
    model = load_model(args.model, device=args.device)
    return embed_manifest(
        model,
        args.manifest,
        batch_seconds=args.batch_seconds,
        chunk_seconds=args.chunk_seconds,
        device=args.device,
        autocast_dtype=autocast_dtype(args.precision),
        num_workers=args.num_workers,
    )


def run(args: argparse.Namespace) -> int:
    from mlsv.data.inputs import find_audio_files
    from mlsv.inference.verifier import Verifier
    from mlsv.scoring.embeddings import save_embeddings

    if args.manifest is not None and args.files:
        raise ValueError("give either --manifest or audio files / folders, not both")
    check_window_options(args)
    if args.window is not None and (args.manifest is not None or args.chunk_seconds):
        raise ValueError(
            "--window embeds the windows of audio files: give files or folders, without --manifest or --chunk-seconds"
        )
    output_file(args.out)
    if args.manifest is not None:
        table = _embed_manifest(args)
    else:
        if not args.files:
            raise ValueError("give --manifest or audio files / folders to embed")
        files = find_audio_files(args.files)
        verifier = Verifier.from_pretrained(
            args.model, device=args.device, runtime=args.runtime, batch_seconds=args.batch_seconds
        )
        if args.window is not None:
            table = _embed_windows(verifier, files, args.window, args.hop)
        else:
            table = verifier.embed_table(files, ids=files, chunk_seconds=args.chunk_seconds, progress=len(files) > 1)
    save_embeddings(table, args.out)
    print(f"wrote {len(table)} embeddings of dimension {table.embeddings.shape[1]} to {args.out}")
    return 0


def _embed_windows(verifier, files: list[str], window: float, hop: float | None):
    """Every file's sliding windows as rows of one table: ids FILE@START-END (seconds to the microsecond,
    so windows a sample apart get their own ids), the windows' durations."""
    import numpy as np
    from tqdm.auto import tqdm

    from mlsv.scoring.embeddings import EmbeddingTable

    ids, parts, durations = [], [], []
    for file in tqdm(files, desc="files", unit="file", disable=len(files) < 2):
        w = verifier.embed_windows(file, window=window, hop=hop)
        ids += [f"{file}@{_seconds(a)}-{_seconds(b)}" for a, b in zip(w.starts.tolist(), w.ends.tolist())]
        parts.append(w.embeddings)
        durations.append(w.ends - w.starts)
    return EmbeddingTable(np.asarray(ids), np.concatenate(parts), np.concatenate(durations).astype(np.float32))


def _seconds(x: float) -> str:
    """Seconds to the microsecond, without trailing zeros: 0, 0.25, 0.250188."""
    return f"{x:.6f}".rstrip("0").rstrip(".")
