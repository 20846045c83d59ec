"""Loss curves of the plain and the fast training path: a short stage-1 run reaches the same curve.

The same random-initialised model (``--shape``) and sub-center AAM-softmax head are built twice from
one seed and trained stage-1 style (frozen frontend; Adam over the aggregation, backend and head) on
the same fixed sequence of batches, with the dropout RNG seeded identically before each run:

* plain: fp32 (no TF32), transformers' eager attention, no compile;
* fast: ``--precision`` autocast (bf16 on a GPU, fp32 on a CPU), ``--attention`` (sdpa), ``--compile``.

The batches can be learnt: every class has a fixed random "speaker" signature (harmonic partials of its
own pitch under its own spectral envelope) mixed at a random phase and level into noise (``--snr``),
so the loss falls within a few dozen steps.

Training from scratch amplifies rounding differences: two runs that differ only in the last bit agree
to about 1e-6 for the first few steps, then drift apart to the batch-to-batch spread of the loss (a few
per cent) within about ten Adam steps. So the fast path is judged against a noise run (on by default):
the plain path again with other dropout masks and the head's initial weights perturbed at fp32 rounding
level (relative 2^-23; with ``--dropout 0`` that alone). Compiled graphs draw their dropout masks from
their own RNG, so ``--compile`` is compared within rounding only with ``--dropout 0``.
``tracked_steps`` counts the leading steps on which a curve stays within 1e-3 (relative) of the plain
one; ``tail_mean`` is the mean loss of the last quarter of the steps.

Prints one JSON object: device, torch version, settings, the loss lists, the largest absolute and
relative difference from the plain curve per step, first/last loss and wall time of each run (the
batches are made and moved to the device beforehand; ``first_step_seconds`` holds any compilation).

    python benchmarks/loss_curve.py                     # CPU: tiny shape, fp32 sdpa vs fp32 eager, seconds
    python benchmarks/loss_curve.py --shape base --batch 64 --seconds 2 --steps 50 --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlsv.models import runtime, shapes  # noqa: E402
from mlsv.models.head import SubCenterAAMSoftmax  # noqa: E402

SAMPLE_RATE = 16000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shape",
        default="base" if cuda else "tiny",
        help="base | large | tiny | small | a TINY_ENCODERS name (default: base on GPU, tiny on CPU)",
    )
    p.add_argument("--batch", type=int, default=64 if cuda else 8)
    p.add_argument("--seconds", type=float, default=2.0 if cuda else 0.5, help="crop length")
    p.add_argument("--classes", type=int, default=64 if cuda else 16, help="speakers (head classes)")
    p.add_argument("--steps", type=int, default=50 if cuda else 16, help="optimiser steps per run")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--margin", type=float, default=0.3, help="the head's (constant) margin")
    p.add_argument("--top-k", type=int, default=5, help="the head's inter-top-K hard negatives")
    p.add_argument("--snr", type=float, default=10.0, help="signature-to-noise ratio of the batches (dB)")
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="LAP and backend dropout (default: the model's, 0.1); 0 to compare compiled runs",
    )
    p.add_argument(
        "--precision",
        choices=sorted(runtime.PRECISIONS),
        default="bf16" if cuda else "fp32",
        help="the fast path's autocast (the plain path is fp32)",
    )
    p.add_argument("--attention", choices=("eager", "sdpa"), default="sdpa", help="the fast path's attention")
    p.add_argument("--compile", action="store_true", help="the fast path: torch.compile (dynamic=False)")
    p.add_argument("--compile-mode", choices=runtime.COMPILE_MODES, default="default")
    p.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=cuda,
        help="the fast path: TF32 matrix products (default on a GPU; the plain path never)",
    )
    p.add_argument(
        "--noise-run",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a third run: the plain path, other dropout masks, weights perturbed by rounding",
    )
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=0 if cuda else 1,
        help="CPU threads (0: torch's default; 1 on CPU: steadier on shared cores)",
    )
    p.add_argument("--seed", type=int, default=0, help="model, head and dropout seed")
    p.add_argument("--data-seed", type=int, default=1, help="signatures and batches")
    return p.parse_args(argv)


class Batches:
    """A fixed, reproducible sequence of (waveforms (B, S), labels (B,)) on the CPU.

    Class c has partials at multiples of its own pitch (90-250 Hz) under its own random spectral
    envelope; a crop is that signature at a random phase and level in white noise at ``snr`` dB.
    Batch ``i`` depends only on (seed, i).
    """

    def __init__(self, classes: int, batch: int, samples: int, snr: float, seed: int, partials: int = 12):
        g = torch.Generator().manual_seed(seed)
        self.classes, self.batch, self.samples, self.snr, self.seed = classes, batch, samples, snr, seed
        self.f0 = 90.0 + 160.0 * torch.rand(classes, generator=g)  # (C,)
        self.harmonics = torch.arange(1, partials + 1, dtype=torch.float64)  # (K,)
        envelope = torch.randn(classes, partials, generator=g).mul(6.0).div(20.0).exp2()  # ~6 dB deviations
        self.amplitude = envelope / envelope.norm(dim=-1, keepdim=True)  # (C, K)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 1)
        labels = torch.randint(0, self.classes, (self.batch,), generator=g)
        t = torch.arange(self.samples, dtype=torch.float64) / SAMPLE_RATE  # (S,)
        phase = 2 * math.pi * torch.rand(self.batch, len(self.harmonics), 1, generator=g, dtype=torch.float64)
        freqs = self.f0[labels].double()[:, None] * self.harmonics  # (B, K)
        waves = torch.sin(2 * math.pi * freqs[..., None] * t + phase)  # (B, K, S)
        signal = (self.amplitude[labels].double()[..., None] * waves).sum(1)  # (B, S)
        signal = signal / signal.std(-1, keepdim=True)
        noise = torch.randn(self.batch, self.samples, generator=g, dtype=torch.float64)
        x = signal * 10 ** (self.snr / 20) + noise
        level = 0.05 * torch.rand(self.batch, 1, generator=g, dtype=torch.float64).mul(2.0).add(0.5)
        return (x / x.std(-1, keepdim=True) * level).float(), labels


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build(args: argparse.Namespace, perturb: bool = False):
    """The model and head from ``args.seed``: the same weights on every call. ``perturb``: the head's
    weights times (1 + 2^-23 N(0, 1)), a difference at fp32 rounding level."""
    _seed(args.seed)
    dropout = {} if args.dropout is None else {"lap_dropout": args.dropout, "backend_dropout": args.dropout}
    model = shapes.build_benchmark_model(args.shape, **dropout)
    head = SubCenterAAMSoftmax(model.config.embedding_size, args.classes, margin=args.margin, top_k=args.top_k)
    if perturb:
        g = torch.Generator().manual_seed(args.seed + 1)
        with torch.no_grad():
            head.weight.mul_(1 + 2.0**-23 * torch.randn(head.weight.shape, generator=g))
    return model.to(args.device), head.to(args.device)


def train(
    args: argparse.Namespace,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    precision: str,
    attention: str,
    compile: bool,
    tf32: bool,
    noise: bool = False,
) -> dict:
    """One stage-1 run; returns its per-step losses and wall time. ``noise``: other dropout masks and the
    head's initial weights perturbed at rounding level."""
    device = args.device
    runtime.enable_tf32(tf32)
    model, head = build(args, perturb=noise)
    model.configure_training(trainable="none")
    runtime.set_attention(model, attention)
    params = [*model.aggregation.parameters(), *model.backend.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.lr)  # the default (foreach) update on every device
    if compile:
        runtime.compile_model(model, head=head, mode=args.compile_mode, dynamic=False)
    scaler = runtime.grad_scaler(precision, device)
    model.train()
    head.train()
    _seed(args.seed + noise)  # the dropout masks: the same sequence in every run but the noise run
    losses, first_step_s = [], 0.0
    runtime.synchronize(device)
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        with runtime.autocast(precision, device):
            emb = model(x).embeddings
            loss, _ = head(emb, y)
        runtime.backward_and_step(loss, optimizer, scaler)
        losses.append(loss.detach())
        if step == 0:
            runtime.synchronize(device)
            first_step_s = time.perf_counter() - start
    runtime.synchronize(device)
    seconds = time.perf_counter() - start
    losses = [float(v) for v in torch.stack(losses).float().cpu()]
    tail = losses[-max(len(losses) // 4, 1) :]
    return {
        "precision": precision,
        "attention": attention,
        "compile": compile,
        "tf32": tf32,
        "losses": losses,
        "first": losses[0],
        "last": losses[-1],
        "tail_mean": sum(tail) / len(tail),
        "seconds": round(seconds, 3),
        "first_step_seconds": round(first_step_s, 3),
    }


def compare(a: list[float], b: list[float], tolerance: float = 1e-3) -> dict:
    """The largest absolute and relative (to ``a``, the plain loss) difference over the steps, their mean,
    and the number of leading steps within ``tolerance`` relative."""
    abs_diff = [abs(x - y) for x, y in zip(a, b)]
    rel_diff = [d / max(abs(x), 1e-12) for d, x in zip(abs_diff, a)]
    tracked = next((i for i, r in enumerate(rel_diff) if not r <= tolerance), len(rel_diff))
    return {
        "max_abs_diff": max(abs_diff),
        "max_rel_diff": max(rel_diff),
        "mean_abs_diff": sum(abs_diff) / len(abs_diff),
        "tracked_steps": tracked,
    }


def run(args: argparse.Namespace) -> dict:
    """Both runs (and the noise run when asked); returns the result dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    make = Batches(args.classes, args.batch, int(round(args.seconds * SAMPLE_RATE)), args.snr, args.data_seed)
    batches = [tuple(t.to(args.device) for t in make(step)) for step in range(args.steps)]
    plain_settings = dict(precision="fp32", attention="eager", compile=False, tf32=False)  # true fp32
    plain = train(args, batches, **plain_settings)
    fast = train(
        args, batches, precision=args.precision, attention=args.attention, compile=args.compile, tf32=args.tf32
    )
    out = {
        "benchmark": "loss_curve",
        "device": runtime.device_name(args.device),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items()},
        **compare(plain["losses"], fast["losses"]),
        "plain": plain,
        "fast": fast,
    }
    if args.noise_run:
        noise = train(args, batches, **{**plain_settings, "noise": True})
        out["noise"] = {**noise, **compare(plain["losses"], noise["losses"])}
    return out


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=1))


if __name__ == "__main__":
    main()
