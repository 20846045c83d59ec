"""Training-step throughput: stage 1, stage 2 and the frontend's forward pass, as one JSON object.

* stage1: frozen frontend (no graph), LAP + ASTP + sub-center AAM-softmax head forward and backward, an
  Adam step over the aggregation, backend and head.
* stage2: the same with the frontend trained too (``--stage2-trainable``; gradient checkpointing with
  ``--checkpointing``).
* frontend: the frontend's forward pass alone, in evaluation mode without autograd.
* backend: stage 1 without the frontend: LAP + ASTP + head forward and backward and the Adam step on
  hidden states computed once beforehand (the reference's "backend alone" figure).
* loop: stage 1 as ``mlsv train`` runs it: the training loop's own ``train_batch`` through ``accelerate``
  (its autocast, gradient clipping, scheduler, running statistics) on pinned host batches copied to the
  device, with the loop's batched device augmentation (``augment.where: device``, p = 0.6, banks from a
  small synthetic corpus; ``--no-augment`` leaves it out). Its gap to stage1 is what the loop adds. Runs
  last: ``accelerator.prepare`` wraps the model's forward in autocast.

Encoders are random-initialised from configs with the real hyper-parameters (``--shape base`` = WavLM
Base+ 12 x 768, ``large`` = WavLM Large 24 x 1024; ``tiny``/``small`` for CPUs), so nothing is
downloaded. Crops have a fixed length (``--seconds``), as in training.

    python benchmarks/train_step.py                              # CPU: tiny shape, seconds
    python benchmarks/train_step.py --shape base --batch 128 --seconds 2 --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlsv.models import runtime, shapes  # noqa: E402
from mlsv.models.frontend import CONV_LAYOUTS  # noqa: E402
from mlsv.models.head import SubCenterAAMSoftmax  # noqa: E402

SAMPLE_RATE = 16000
PARTS = ("stage1", "stage2", "frontend", "backend", "loop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shape",
        default="base" if cuda else "tiny",
        help="base | large | tiny | small | a TINY_ENCODERS name (default: base on GPU, tiny on CPU)",
    )
    p.add_argument("--batch", type=int, default=128 if cuda else 4)
    p.add_argument("--stage2-batch", type=int, default=0, help="batch of the stage2 part (0: --batch)")
    p.add_argument("--seconds", type=float, default=2.0 if cuda else 0.5, help="crop length")
    p.add_argument("--classes", type=int, default=17982, help="head classes (VoxCeleb2 x 3 speed factors)")
    p.add_argument("--precision", choices=sorted(runtime.PRECISIONS), default="bf16" if cuda else "fp32")
    p.add_argument("--attention", choices=("eager", "sdpa"), default="sdpa")
    p.add_argument("--fused-qkv", action="store_true", help="WavLM sdpa: one matrix product for q, k, v")
    p.add_argument(
        "--conv-layout",
        choices=CONV_LAYOUTS,
        default="channels_last",
        help="memory layout of the CNN and positional convolutions",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile frontend, aggregation, backend, head")
    p.add_argument("--compile-mode", choices=runtime.COMPILE_MODES, default="default")
    p.add_argument("--steps", type=int, default=20 if cuda else 5, help="timed steps per part")
    p.add_argument("--warmup", type=int, default=5 if cuda else 2, help="untimed steps per part")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--stage2-trainable", choices=("all", "transformer"), default="all")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in stage 2")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="loop part without augmentation")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=0 if cuda else 1,
        help="CPU threads (0: torch's default; 1 on CPU: steadier on shared cores)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--profile",
        default="",
        help="also profile 3 steps of each part; write the kernel table sorted by device time to PROFILE-<part>.txt",
    )
    args = p.parse_args(argv)
    bad = [x for x in args.parts.split(",") if x not in PARTS]
    if bad:
        p.error(f"unknown parts {bad}; choose from {', '.join(PARTS)}")
    args.parts = ",".join(sorted(args.parts.split(","), key=lambda x: x == "loop"))  # loop last
    return args


def _loop_step(args: argparse.Namespace, model, head, x: torch.Tensor, labels: torch.Tensor, workdir: str):
    """Stage 1 through the training loop's ``train_batch`` (see the module docstring)."""
    import numpy as np
    from accelerate import Accelerator

    from mlsv.config import AugmentConfig, TrainConfig
    from mlsv.train import loop

    device = torch.device(args.device)
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="no" if args.precision == "fp32" else args.precision)
    model.configure_training(trainable="none")
    cfg = TrainConfig()
    optimizer = loop._optimizer(loop._param_groups(model, head, cfg), cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, head, optimizer = acc.prepare(model, head, optimizer)
    model.train()
    head.train()
    augmenter = None
    if args.augment:
        from mlsv.data.augment import BatchAugmenter
        from mlsv.data.synthetic import make_synthetic_corpus

        corpus = make_synthetic_corpus(
            workdir,
            n_speakers=2,
            utts_per_speaker=2,
            n_validation_speakers=0,
            n_test_speakers=0,
            bank_files=6,
            bank_seconds=12.0,
            n_rirs=24,
        )
        augmenter = BatchAugmenter(
            AugmentConfig(where="device", noise_manifest=str(corpus.noise), rir_manifest=str(corpus.rirs)),
            device=device,
        )
    pin = device.type == "cuda"
    batch = {
        "waveforms": x.cpu().pin_memory() if pin else x.cpu(),
        "labels": labels.cpu().pin_memory() if pin else labels.cpu(),
    }
    stats, rng = torch.zeros(2, device=device), np.random.default_rng(args.seed)

    def step() -> None:
        loop.train_batch(
            acc,
            model,
            head,
            optimizer,
            scheduler,
            batch,
            stats,
            augmenter=augmenter,
            rng=rng,
            max_grad_norm=cfg.optim.max_grad_norm,
            compile_mode=args.compile_mode if args.compile else "default",
        )

    return step


def _timed(step, steps: int, warmup: int, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for ``steps`` calls of ``step`` after ``warmup`` untimed ones
    (device synchronised). CPU time is the steadier figure on a shared CPU with ``--threads 1``."""
    for _ in range(warmup):
        step()
    runtime.synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    runtime.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def _profile(step, path: str, device: str) -> str:
    """Profiles 3 calls of ``step``; writes the operator table sorted by device (or CPU) time to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        runtime.synchronize(device)
    key = "self_cuda_time_total" if torch.device(device).type == "cuda" else "self_cpu_time_total"
    Path(path).write_text(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70))
    return path


def run(args: argparse.Namespace) -> dict:
    """Builds the model and head, times each part, returns the result dict."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    runtime.enable_tf32(True, cudnn_benchmark=True)  # fixed crop shapes
    with torch.device(device):  # parameters initialised where they will live
        model = shapes.build_benchmark_model(args.shape).to(device)
    runtime.set_attention(model, args.attention, fused_qkv=args.fused_qkv)
    model.frontend.set_conv_layout(args.conv_layout)
    head = SubCenterAAMSoftmax(model.config.embedding_size, args.classes).to(device)
    if args.compile:
        runtime.compile_model(model, head=head, mode=args.compile_mode, dynamic=False)
    samples = int(round(args.seconds * SAMPLE_RATE))
    x_full = torch.randn(args.batch, samples, device=device)
    labels_full = torch.randint(0, args.classes, (args.batch,), device=device)
    scaler = runtime.grad_scaler(args.precision, device)
    batch = {"x": x_full, "labels": labels_full}

    def make_step(optimizer: torch.optim.Optimizer, embed=lambda: (model(batch["x"]).embeddings, batch["labels"])):
        """A training step; ``embed()`` -> (embeddings, labels) is the forward pass it times."""

        def step() -> None:
            runtime.step_begin(args.compile_mode if args.compile else "default")
            with runtime.autocast(args.precision, device):
                emb, labels = embed()
                loss, _ = head(emb, labels)
            runtime.backward_and_step(loss, optimizer, scaler)

        return step

    def adam(params) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            [p for p in params if p.requires_grad], lr=args.lr, fused=torch.device(device).type == "cuda"
        )

    def backend_step(optimizer: torch.optim.Optimizer, states: torch.Tensor):
        frame_mask = torch.ones(states.shape[1:3], dtype=torch.bool, device=device)
        return make_step(optimizer, lambda: (model.backend(model.aggregation(states), frame_mask), labels_full))

    results: dict[str, dict] = {}
    workdir = tempfile.mkdtemp(prefix="mlsv-train-step-")  # the loop part's noise banks
    for part in args.parts.split(","):
        n = args.stage2_batch if part == "stage2" and args.stage2_batch else args.batch
        batch["x"], batch["labels"] = x_full[:n], labels_full[:n]
        if n > args.batch:
            batch["x"] = torch.randn(n, samples, device=device)
            batch["labels"] = torch.randint(0, args.classes, (n,), device=device)
        runtime.reset_peak_memory(device)
        if part == "loop":
            step = functools.partial(_loop_step, args, model, head, batch["x"], batch["labels"], workdir)
        elif part == "frontend":
            model.eval()

            def step() -> None:
                with torch.inference_mode(), runtime.autocast(args.precision, device):
                    model.frontend(batch["x"])
        elif part == "backend":
            model.configure_training(trainable="none")
            model.train()
            head.train()
            with torch.no_grad(), runtime.autocast(args.precision, device):
                states, _ = model.frontend(x_full)
            step = backend_step(
                adam([*model.aggregation.parameters(), *model.backend.parameters(), *head.parameters()]), states
            )
        else:
            if part == "stage1":
                model.configure_training(trainable="none")
                params = [*model.aggregation.parameters(), *model.backend.parameters(), *head.parameters()]
            else:
                model.configure_training(trainable=args.stage2_trainable, gradient_checkpointing=args.checkpointing)
                params = [*model.parameters(), *head.parameters()]
            model.train()
            head.train()
            runtime.set_attention(model, args.attention, fused_qkv=args.fused_qkv)
            step = make_step(adam(params))
        try:
            if part == "loop":
                step = step()  # built here: it needs more (soundfile for its banks) than the others
            seconds, cpu_seconds = _timed(step, args.steps, args.warmup, device)
        except torch.OutOfMemoryError:
            results[part] = {"error": "out of memory", "peak_memory_mb": round(runtime.peak_memory_mb(device), 1)}
            del step
            model.zero_grad(set_to_none=True)
            head.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        except Exception as e:
            if part != "loop":
                raise
            results[part] = {"error": f"{type(e).__name__}: {e}"}  # the last part: the others' figures stand
            continue
        results[part] = {
            "batch": n,
            "utterances_per_s": round(n * args.steps / seconds, 2),
            "ms_per_step": round(1000 * seconds / args.steps, 2),
            "peak_memory_mb": round(runtime.peak_memory_mb(device), 1),
        }
        if args.profile:
            results[part]["profile"] = _profile(step, f"{args.profile}-{part}.txt", device)
        if torch.device(device).type == "cpu":
            results[part]["cpu_ms_per_step"] = round(1000 * cpu_seconds / args.steps, 2)
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "benchmark": "train_step",
        "device": runtime.device_name(device),
        "torch": torch.__version__,
        "peak_memory_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "process max RSS",
        "settings": {k: v for k, v in vars(args).items()},
        "parameters": model.parameter_counts(),
        "results": results,
    }


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=1))


if __name__ == "__main__":
    main()
