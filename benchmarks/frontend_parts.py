"""Where the frozen frontend's forward time goes: each part timed alone, as one JSON object.

Parts, on fixed crops (``--batch`` x ``--seconds``), in evaluation mode without autograd, under the
chosen precision: ``cnn`` (input normalisation and the CNN feature encoder), ``projection`` (feature
projection), ``positional`` (the positional convolution), ``layers`` (the transformer layers),
``lap_astp`` (LAP + ASTP forward on the states) and ``whole`` (the model's forward). The CNN and the
positional convolution are timed once per convolution layout (``--layouts``), so the layouts can be
compared on the same machine; channels_last also without ``first_conv_block`` (``cnn[unfused]``) and,
with ``--compile-cnn`` (the default on a GPU), both compiled (``cnn_compiled[fused|unfused]``). Device
time with CUDA events (median of ``--repeats``) on a GPU, wall
time on a CPU.

    python benchmarks/frontend_parts.py                           # CPU: tiny shape
    python benchmarks/frontend_parts.py --shape base --batch 128  # GPU: WavLM Base+ shape, bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlsv.models import runtime, shapes  # noqa: E402
from mlsv.models.frontend import CONV_LAYOUTS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="base" if cuda else "tiny")
    p.add_argument("--batch", type=int, default=128 if cuda else 2)
    p.add_argument("--seconds", type=float, default=2.0 if cuda else 0.5)
    p.add_argument("--precision", choices=sorted(runtime.PRECISIONS), default="bf16" if cuda else "fp32")
    p.add_argument("--layouts", default=",".join(CONV_LAYOUTS), help="convolution layouts to time")
    p.add_argument(
        "--compile-cnn",
        action=argparse.BooleanOptionalAction,
        default=cuda,
        help="also time the CNN under torch.compile, with and without first_conv_block",
    )
    p.add_argument("--repeats", type=int, default=20 if cuda else 3)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    return p.parse_args(argv)


def _time_ms(fn, repeats: int, device: str) -> float:
    """Median milliseconds of ``fn()`` after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    device = args.device
    runtime.enable_tf32(True, cudnn_benchmark=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = shapes.build_benchmark_model(args.shape).to(device).eval()
    f = model.frontend
    x = torch.randn(args.batch, int(args.seconds * 16000), device=device)
    lengths = torch.full((args.batch,), x.shape[1], device=device)
    enc = f.encoder
    ms: dict[str, float] = {}

    def timed(name, fn):
        def call():
            with torch.inference_mode(), runtime.autocast(args.precision, device):
                return fn()

        ms[name] = round(_time_ms(call, args.repeats, device), 3)

    with torch.inference_mode(), runtime.autocast(args.precision, device):
        feats = f._cnn(x, lengths, padded=False)
        proj = enc.feature_projection(feats)
        h = proj[0] if isinstance(proj, tuple) else proj
        states = f(x)[0]
    for layout in args.layouts.split(","):
        f.set_conv_layout(layout)
        timed(f"cnn[{layout}]", lambda: f._cnn(x, lengths, padded=False))
        timed(f"positional[{layout}]", lambda: f._positional(enc.encoder.pos_conv_embed, h, None))
    f.set_conv_layout("channels_last", fuse_first_conv=False)
    timed("cnn[unfused]", lambda: f._cnn(x, lengths, padded=False))
    if args.compile_cnn:
        for fused in (True, False):
            f.set_conv_layout("channels_last", fuse_first_conv=fused)
            torch._dynamo.reset()
            cnn = torch.compile(f._cnn, dynamic=False)
            timed(f"cnn_compiled[{'fused' if fused else 'unfused'}]", lambda c=cnn: c(x, lengths, padded=False))
    f.set_conv_layout("channels_last", fuse_first_conv=True)
    timed("projection", lambda: enc.feature_projection(feats))
    timed("layers", lambda: f._run_layers(h, None))
    mask = torch.ones(states.shape[1:3], dtype=torch.bool, device=device)
    timed("lap_astp", lambda: model.backend(model.aggregation(states), mask))
    timed("whole", lambda: model(x))
    return {
        "benchmark": "frontend_parts",
        "device": runtime.device_name(device),
        "torch": torch.__version__,
        "settings": dict(vars(args)),
        "unit": "ms per batch (median)",
        "ms": ms,
        "utterances_per_s": {k: round(args.batch * 1000 / v, 1) for k, v in ms.items()},
    }


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=1))


if __name__ == "__main__":
    main()
