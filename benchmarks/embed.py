"""Evaluation embedding throughput (seconds of audio per second) as one JSON object.

* fast: utterances sorted by length and cut into batches (``--batch``), padded with attention masks,
  SDPA attention, bf16 autocast on a GPU, ``inference_mode``, embeddings kept on the device until the
  end (no per-utterance host synchronisation).
* reference: one utterance at a time in fp32 with transformers' eager WavLM attention, each embedding
  copied to the host as it is made (the reference implementation's way); on ``--reference-utterances``
  of them.
* equivalence: on the reference utterances, the largest absolute difference between the two paths'
  embeddings (raw and L2-normalised) and the smallest cosine between them.

Utterances are random noise of uniformly drawn durations (``--min-seconds``..``--max-seconds``; 3-15 s on
a GPU). Encoders are random-initialised with the real hyper-parameters (``--shape base|large``) or tiny.

    python benchmarks/embed.py                                 # CPU: tiny shape, short utterances
    python benchmarks/embed.py --shape base --utterances 512 --batch 64 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlsv.models import runtime, shapes  # noqa: E402
from mlsv.models.frontend import CONV_LAYOUTS  # noqa: E402

SAMPLE_RATE = 16000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="base" if cuda else "tiny", help="base | large | tiny | small | a tiny name")
    p.add_argument("--utterances", type=int, default=512 if cuda else 8)
    p.add_argument("--min-seconds", type=float, default=3.0 if cuda else 0.5)
    p.add_argument("--max-seconds", type=float, default=15.0 if cuda else 1.5)
    p.add_argument("--batch", type=int, default=64 if cuda else 4, help="utterances per length-sorted batch")
    p.add_argument(
        "--precision",
        choices=sorted(runtime.PRECISIONS),
        default="bf16" if cuda else "fp32",
        help="fast path precision (the reference is always fp32)",
    )
    p.add_argument("--attention", choices=("eager", "sdpa"), default="sdpa", help="fast path attention")
    p.add_argument(
        "--conv-layout",
        choices=CONV_LAYOUTS,
        default="channels_last",
        help="fast path: memory layout of the CNN and positional convolutions",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the fast path (dynamic shapes)")
    p.add_argument(
        "--reference-utterances",
        type=int,
        default=64 if cuda else 8,
        help="utterances embedded one at a time in fp32 (0: skip the reference)",
    )
    p.add_argument("--passes", type=int, default=2, help="timed passes over the utterances (the best counts)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=0 if cuda else 1,
        help="CPU threads (0: torch's default; 1 on CPU: steadier on shared cores)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_batches(waves: list[torch.Tensor], batch: int, pin: bool):
    """Length-sorted padded batches: [(indices (b,), padded (b, S_max), attention_mask (b, S_max))]."""
    order = sorted(range(len(waves)), key=lambda i: waves[i].numel())
    batches = []
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        S = max(waves[i].numel() for i in idx)
        x = torch.zeros(len(idx), S)
        mask = torch.zeros(len(idx), S, dtype=torch.long)
        for row, i in enumerate(idx):
            n = waves[i].numel()
            x[row, :n] = waves[i]
            mask[row, :n] = 1
        if pin:
            x, mask = x.pin_memory(), mask.pin_memory()
        batches.append((torch.tensor(idx), x, mask))
    return batches


def embed_fast(model, batches, n: int, precision: str, device: str) -> torch.Tensor:
    """Embeds the batches; returns (n, E) float32 on the device, in the original order. No host sync."""
    out = None
    with torch.inference_mode(), runtime.autocast(precision, device):
        for idx, x, mask in batches:
            emb = model(
                x.to(device, non_blocking=True), attention_mask=mask.to(device, non_blocking=True)
            ).embeddings.float()
            if out is None:
                out = torch.empty(n, emb.shape[-1], device=device)
            out[idx.to(device, non_blocking=True)] = emb
    return out


def embed_reference(model, waves: list[torch.Tensor], device: str) -> torch.Tensor:
    """One utterance at a time, fp32, each embedding to the host at once. Returns (n, E) on the CPU."""
    rows = []
    with torch.no_grad():
        for w in waves:
            rows.append(model(w[None].to(device)).embeddings.float().cpu())
    return torch.cat(rows)


def _best_time(fn, passes: int, device: str):
    best, result = float("inf"), None
    for _ in range(passes):
        runtime.synchronize(device)
        start = time.perf_counter()
        result = fn()
        runtime.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    runtime.enable_tf32(False, cudnn_benchmark=False)  # true fp32 reference; lengths vary
    with torch.device(device):  # parameters initialised where they will live
        model = shapes.build_benchmark_model(args.shape).to(device).eval()
    g = torch.Generator().manual_seed(args.seed)
    seconds = torch.empty(args.utterances).uniform_(args.min_seconds, args.max_seconds, generator=g)
    waves = [torch.randn(int(s * SAMPLE_RATE), generator=g) for s in seconds.tolist()]
    audio_s = float(sum(w.numel() for w in waves)) / SAMPLE_RATE
    result: dict = {
        "benchmark": "embed",
        "device": runtime.device_name(device),
        "torch": torch.__version__,
        "peak_memory_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "process max RSS",
        "settings": dict(vars(args)),
        "audio_seconds": round(audio_s, 2),
    }

    n_ref = min(args.reference_utterances, len(waves))
    ref = None
    if n_ref:
        runtime.set_attention(model, "eager")  # and transformers' own (B, C, T) convolution layout
        model.frontend.set_conv_layout("channels_first")
        ref_waves = waves[:n_ref]
        ref_audio = float(sum(w.numel() for w in ref_waves)) / SAMPLE_RATE
        runtime.reset_peak_memory(device)
        t_ref, ref = _best_time(lambda: embed_reference(model, ref_waves, device), 1, device)
        result["reference"] = {
            "utterances": n_ref,
            "audio_seconds": round(ref_audio, 2),
            "audio_s_per_s": round(ref_audio / t_ref, 2),
            "utterances_per_s": round(n_ref / t_ref, 2),
            "peak_memory_mb": round(runtime.peak_memory_mb(device), 1),
        }

    runtime.set_attention(model, args.attention)
    model.frontend.set_conv_layout(args.conv_layout)
    if args.compile:
        runtime.compile_model(model, dynamic=None)
    batches = make_batches(waves, args.batch, pin=torch.device(device).type == "cuda")
    embed_fast(model, batches[:1] + batches[-1:], len(waves), args.precision, device)  # warm-up
    runtime.reset_peak_memory(device)
    t_fast, fast = _best_time(
        lambda: embed_fast(model, batches, len(waves), args.precision, device), args.passes, device
    )
    fast = fast.cpu()
    padded_s = sum(x.numel() for _, x, _ in batches) / SAMPLE_RATE
    result["fast"] = {
        "utterances": len(waves),
        "batches": len(batches),
        "padding_fraction": round(1 - audio_s / padded_s, 4),
        "audio_s_per_s": round(audio_s / t_fast, 2),
        "utterances_per_s": round(len(waves) / t_fast, 2),
        "peak_memory_mb": round(runtime.peak_memory_mb(device), 1),
    }
    if ref is not None:
        result["speedup"] = round(result["fast"]["audio_s_per_s"] / result["reference"]["audio_s_per_s"], 2)
        a, b = fast[:n_ref], ref
        result["equivalence"] = {
            "max_abs_diff": float((a - b).abs().max()),
            "max_abs_embedding": float(b.abs().max()),
            "max_abs_diff_normalized": float((F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max()),
            "min_cosine": float(F.cosine_similarity(a, b, dim=-1).min()),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=1))


if __name__ == "__main__":
    main()
