"""Crops per second of the training stream: clean, CPU-worker augmentation, and batched BatchAugmenter.

Makes a small synthetic corpus in a temporary folder and prints one JSON object:

    python benchmarks/loader.py [--batch-size 64] [--batches 10] [--workers 2] [--crop-seconds 2] [--threads 1]

``batch_augment_<device>`` times the tensor augmenter alone on (B, S) batches already on the device;
``loader_plus_batch_augment_<device>`` is the clean stream followed by it (what a training step sees
with ``augment.where=device``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from mlsv.config import AugmentConfig, DataConfig
from mlsv.data.augment import BatchAugmenter
from mlsv.data.loader import build_train_loader
from mlsv.data.manifest import speaker_labels
from mlsv.data.synthetic import make_synthetic_corpus


def _stream_rate(corpus, data: DataConfig, augment: AugmentConfig | None, batches: int, after=None) -> float:
    labels = speaker_labels(corpus.train)
    loader = build_train_loader(corpus.train, data, augment, labels=labels, epoch=0, seed=0)
    n, started = 0, None
    for i, batch in enumerate(loader):
        if i == 1:  # the first batch pays for worker start-up
            started, n = time.perf_counter(), 0
        if after is not None:
            after(batch["waveforms"])
        n += batch["waveforms"].shape[0]
        if i == batches:
            break
    return n / (time.perf_counter() - started)


def _augment_rate(augmenter: BatchAugmenter, batch: torch.Tensor, repeats: int) -> float:
    rng = np.random.default_rng(0)
    augmenter(batch, rng)
    if batch.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        augmenter(batch, rng)
    if batch.is_cuda:
        torch.cuda.synchronize()
    return batch.shape[0] * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per setting")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the main process (more oversubscribes a shared CPU)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        corpus = make_synthetic_corpus(
            tmp,
            n_speakers=16,
            utts_per_speaker=10,
            n_validation_speakers=0,
            n_test_speakers=0,
            bank_files=4,
            bank_seconds=20.0,
            n_rirs=16,
        )
        made = time.perf_counter() - started
        data = DataConfig(batch_size=args.batch_size, num_workers=args.workers, crop_seconds=args.crop_seconds)
        cpu_aug = AugmentConfig(where="cpu", noise_manifest=str(corpus.noise), rir_manifest=str(corpus.rirs))
        dev_aug = AugmentConfig(where="device", noise_manifest=str(corpus.noise), rir_manifest=str(corpus.rirs))
        result = {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "batch_size": args.batch_size,
            "crop_seconds": args.crop_seconds,
            "workers": args.workers,
            "threads": args.threads,
            "augment_probability": cpu_aug.probability,
            "corpus_seconds_to_make": round(made, 1),
            "crops_per_s": {
                "clean": round(_stream_rate(corpus, data, None, args.batches), 1),
                "cpu_worker_augment": round(_stream_rate(corpus, data, cpu_aug, args.batches), 1),
            },
        }
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        samples = int(round(args.crop_seconds * data.sample_rate))
        for device in devices:
            augmenter = BatchAugmenter(dev_aug, sample_rate=data.sample_rate, device=device)
            batch = torch.randn(args.batch_size, samples, device=device) * 0.1
            result["crops_per_s"][f"batch_augment_{device}"] = round(_augment_rate(augmenter, batch, args.batches), 1)
            rng = np.random.default_rng(0)
            rate = _stream_rate(
                corpus,
                data,
                dev_aug,
                args.batches,
                after=lambda w, a=augmenter, r=rng, d=device: a(w.to(d, non_blocking=True), r),
            )
            result["crops_per_s"][f"loader_plus_batch_augment_{device}"] = round(rate, 1)
        if torch.cuda.is_available():
            result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
