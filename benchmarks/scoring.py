"""Benchmark of vectorised scoring: cosine + AS-norm of VoxCeleb1-O/E/H-sized trial lists.

Synthetic, VoxCeleb-sized: 4,874 test utterances, 5,994 cohort speakers, 192-d embeddings, top-600
AS-norm, random trial index lists the sizes of Vox1-O (37,611), -E (579,818) and -H (550,894). Prints
one JSON object: wall time and trials/s of the vectorised path (cohort building, per-utterance cohort
statistics, all trials), the same from trial id strings, QMF fitting on 30,000 cohort pairs, peak
memory, and the rate of a naive per-trial loop with the reference's formulas on a small subset (plus the
largest difference between the two on that subset).

    python benchmarks/scoring.py [--device cuda] [--naive-trials 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import numpy as np
import torch

from mlsv.data.trials import Trials
from mlsv.scoring.backend import cohort_from_table, embedding_mean
from mlsv.scoring.calibration import fit_calibration
from mlsv.scoring.embeddings import EmbeddingTable
from mlsv.scoring.pipeline import score_index_lists, score_trial_lists

LISTS = {"vox1_O": 37_611, "vox1_E": 579_818, "vox1_H": 550_894}


def naive_asnorm(emb: np.ndarray, cohort: np.ndarray, mean: np.ndarray, e_idx, t_idx, top_k: int) -> np.ndarray:
    """The reference's per-trial loop (docs/method.md#as-norm): cohort cosines and top-k recomputed per trial."""
    coh = torch.from_numpy(cohort)
    out = []
    for i, j in zip(e_idx, t_idx):
        e = torch.from_numpy(emb[i] - mean)
        t = torch.from_numpy(emb[j] - mean)
        s = torch.nn.functional.cosine_similarity(e, t, dim=0)
        ce = torch.topk(torch.nn.functional.cosine_similarity(e[None], coh, dim=1), top_k).values
        ct = torch.topk(torch.nn.functional.cosine_similarity(t[None], coh, dim=1), top_k).values
        out.append(0.5 * ((s - ce.mean()) / ce.std() + (s - ct.mean()) / ct.std()).item())
    return np.asarray(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=4874)
    ap.add_argument("--cohort-speakers", type=int, default=5994)
    ap.add_argument("--cohort-utts-per-speaker", type=int, default=4)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--top-k", type=int, default=600)
    ap.add_argument("--naive-trials", type=int, default=200)
    ap.add_argument("--calibration-pairs", type=int, default=30000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    emb = rng.standard_normal((args.utterances, args.dim), dtype=np.float32) + 0.5
    dur = rng.uniform(4, 20, args.utterances).astype(np.float32)
    n_coh = args.cohort_speakers * args.cohort_utts_per_speaker
    cohort_table = EmbeddingTable(
        ids=np.array([f"c{i}" for i in range(n_coh)]),
        embeddings=rng.standard_normal((n_coh, args.dim), dtype=np.float32) + 0.5,
        durations=rng.uniform(4, 20, n_coh).astype(np.float32),
        speakers=np.repeat(np.array([f"s{i:05d}" for i in range(args.cohort_speakers)]), args.cohort_utts_per_speaker),
    )
    index_lists = [
        (rng.integers(args.utterances, size=n), rng.integers(args.utterances, size=n)) for n in LISTS.values()
    ]
    n_trials = sum(LISTS.values())

    # Vectorised: cohort construction + per-utterance statistics + all 1.17 M trials.
    t0 = time.perf_counter()
    mean = embedding_mean(cohort_table.embeddings)
    cohort = cohort_from_table(cohort_table, mean)
    results = score_index_lists(emb, dur, index_lists, mean=mean, cohort=cohort, top_k=args.top_k, device=args.device)
    wall = time.perf_counter() - t0

    # Same, from trial id strings (dictionary lookups of 2.3 M ids included).
    table = EmbeddingTable(np.array([f"u{i}" for i in range(args.utterances)]), emb, dur)
    trial_lists = [
        Trials(
            table.ids[e].astype(object), table.ids[t].astype(object), rng.integers(0, 2, len(e)).astype(np.int8), name
        )
        for name, (e, t) in zip(LISTS, index_lists)
    ]
    t0 = time.perf_counter()
    score_trial_lists(table, trial_lists, cohort=cohort, top_k=args.top_k, device=args.device)
    wall_ids = time.perf_counter() - t0

    t0 = time.perf_counter()
    fit_calibration(cohort_table, mean=mean, top_k=args.top_k, n_pairs=args.calibration_pairs, device=args.device)
    wall_cal = time.perf_counter() - t0

    # Naive per-trial loop on a subset of Vox1-O.
    n = args.naive_trials
    e, t = index_lists[0][0][:n], index_lists[0][1][:n]
    t0 = time.perf_counter()
    naive = naive_asnorm(emb, cohort.vectors, mean, e, t, args.top_k)
    wall_naive = time.perf_counter() - t0
    diff = float(np.abs(naive - results[0]["asnorm"][:n]).max())

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "utterances": args.utterances,
                "cohort_speakers": args.cohort_speakers,
                "cohort_utterances": n_coh,
                "dim": args.dim,
                "top_k": args.top_k,
                "trials": {**LISTS, "total": n_trials},
                "asnorm_wall_s": round(wall, 3),
                "asnorm_trials_per_s": round(n_trials / wall),
                "asnorm_from_ids_wall_s": round(wall_ids, 3),
                "calibration_fit_pairs": args.calibration_pairs,
                "calibration_fit_wall_s": round(wall_cal, 3),
                "naive_loop_trials": n,
                "naive_loop_trials_per_s": round(n / wall_naive, 1),
                "speedup_vs_naive": round((n_trials / wall) / (n / wall_naive)),
                "naive_vs_vectorised_max_abs_diff": diff,
                "peak_rss_mb": round(peak_mb, 1),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
