"""Embedding one long recording: time and peak memory of the blocked attention of long inputs against the
one-block path (the whole (heads x T x T) relative-position bias at once), as one JSON object.

Each path runs in a process of its own, so that each peak memory is its own (the process's maximum
resident set on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU). The one-block path is skipped when
its bias alone would pass ``--max-gb``. The recording is a synthetic harmonic tone with a syllable-rate
envelope; the model is a model folder (``--model``) or a random-initialised shape (``--shape``).

    python benchmarks/long_audio.py                                    # small shape, 60 s
    python benchmarks/long_audio.py --model runs/default/model --seconds 180 600
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_RATE = 16000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a model folder (default: a random --shape model)")
    p.add_argument(
        "--shape", default="small", help="small (the main job's encoder shape), base or large (without --model)"
    )
    p.add_argument("--seconds", type=float, nargs="+", default=[60.0], help="recording lengths")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of the measuring processes")
    p.add_argument(
        "--max-gb", type=float, default=8.0, help="skip the one-block path when its float32 bias alone would take more"
    )
    p.add_argument("--block-bytes", type=int, default=None, help="float32 bias per block (default: the library's)")
    p.add_argument("--run", choices=("blocked", "one_block"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def recording(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    voice = sum(np.sin(2 * np.pi * 140 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    return (0.1 * voice * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2) + 0.01 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def _load(args: argparse.Namespace):
    import torch

    from mlsv.api import Verifier
    from mlsv.models import shapes

    torch.set_num_threads(args.threads)
    if args.model:
        return Verifier.from_pretrained(args.model, device=args.device)
    torch.manual_seed(0)
    return Verifier(shapes.build_benchmark_model(args.shape).eval(), device=args.device)


def run_one(args: argparse.Namespace) -> None:
    """In the child process: one path, one length; writes the embedding and prints the figures."""
    import torch

    from mlsv.models import fast_attention

    if args.run == "one_block":
        fast_attention.LONG_FRAMES = 1 << 62
    if args.block_bytes:
        fast_attention.BLOCK_BYTES = args.block_bytes
    verifier = _load(args)
    x = recording(args.seconds[0])
    t0 = time.perf_counter()
    embedding = verifier.embed(x)
    seconds = time.perf_counter() - t0
    np.save(args.out, embedding)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "audio_s_per_s": round(args.seconds[0] / seconds, 1),
                "peak_memory_mb": round(peak),
            }
        )
    )


def encoder_config(args: argparse.Namespace) -> dict:
    """The encoder's config, read without building the model (this process measures nothing)."""
    if args.model:
        return json.loads((Path(args.model) / "config.json").read_text())["encoder_config"]
    from mlsv.models import shapes

    return shapes.benchmark_encoder_config(args.shape).to_dict()


def bias_gb(enc: dict, seconds: float) -> float:
    """The one-block path's float32 (heads x T x T) relative-position bias in GB."""
    hop = int(np.prod(enc.get("conv_stride") or (5, 2, 2, 2, 2, 2, 2)))
    frames = int(seconds * SAMPLE_RATE) // hop
    return 4 * enc["num_attention_heads"] * frames * frames / 1e9


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.run:
        run_one(args)
        return
    import torch

    from mlsv.models.fast_attention import BLOCK_BYTES, LONG_FRAMES

    enc = encoder_config(args)  # the measuring is done in child processes: this one's settings stay as they are
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            row: dict = {"bias_gb_one_block": round(bias_gb(enc, seconds), 2)}
            embeddings = {}
            for path in ("blocked", "one_block"):
                if path == "one_block" and row["bias_gb_one_block"] > args.max_gb:
                    row[path] = {
                        "skipped": f"its bias alone takes {row['bias_gb_one_block']} GB (--max-gb {args.max_gb:g})"
                    }
                    continue
                out = os.path.join(tmp, f"{path}.npy")
                cmd = [
                    sys.executable,
                    __file__,
                    "--run",
                    path,
                    "--out",
                    out,
                    "--seconds",
                    str(seconds),
                    "--device",
                    args.device,
                    "--threads",
                    str(args.threads),
                    "--shape",
                    args.shape,
                    *(["--block-bytes", str(args.block_bytes)] if args.block_bytes else []),
                    *(["--model", args.model] if args.model else []),
                ]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    row[path] = {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}
                    continue
                row[path] = json.loads(r.stdout.strip().splitlines()[-1])
                embeddings[path] = np.load(out)
            if len(embeddings) == 2:
                row["max_abs_diff"] = float(np.abs(embeddings["blocked"] - embeddings["one_block"]).max())
            results[f"{seconds:g}s"] = row
    print(
        json.dumps(
            {
                "benchmark": "long_audio",
                "device": args.device
                if args.device != "cpu"
                else f"cpu ({os.cpu_count()} cores, {args.threads} threads)",
                "torch": torch.__version__,
                "model": args.model or f"random {args.shape}",
                "long_frames": LONG_FRAMES,
                "block_bytes": args.block_bytes or BLOCK_BYTES,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
