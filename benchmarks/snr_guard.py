"""What the calibration's SNR guard catches: the blind SNR estimate (mlsv.data.audio.estimate_snr) of synthetic
speech (mlsv.data.synthetic: phones and pauses) clean and in the conditions of issue 17 (white, pink and babble
noise at 5-30 dB, reverberation, telephone band), against the guard's range of a calibration fitted on clean
recordings (the 1st-99th percentile of 80 clean cohort recordings, widened by 3 dB).

Prints one JSON object: the cohort's estimates and the guard's range, and per condition the median estimate
and the share of 40 test recordings (1.5-4 s, other speakers) outside the range (refused a calibrated
decision). About 15 s on 2 CPU cores.

    python benchmarks/snr_guard.py [--seed 0] [--cohort 80] [--tests 40]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

from mlsv.data.audio import estimate_snr
from mlsv.data.synthetic import (
    SAMPLE_RATE,
    _coloured_noise,
    _talker,
    sample_session,
    sample_voice,
    simulate_rir,
    synthesize,
)
from mlsv.scoring.calibration import fitted_conditions


def speech(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    voice = sample_voice(np.random.default_rng([seed, 0]))
    return synthesize(voice, sample_session(rng, 3.0), seconds, rng).astype(np.float64)


def noisy(x: np.ndarray, snr_db: float, rng: np.random.Generator, kind: str) -> np.ndarray:
    """``x`` plus noise at a global SNR (mean speech power over noise power) of ``snr_db``."""
    if kind == "babble":
        n = sum(_talker(i, rng, len(x) / SAMPLE_RATE, 3.0, int(rng.integers(1 << 30)))[: len(x)] for i in range(3))
    else:
        n = _coloured_noise(len(x), 0.0 if kind == "white" else 1.0, rng)
    return x + n * np.sqrt(np.mean(x**2) / np.mean(n**2) / 10 ** (snr_db / 10))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cohort", type=int, default=80, help="clean recordings the guard's range is fitted on")
    p.add_argument("--tests", type=int, default=40, help="test recordings per condition")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    cohort = np.array([estimate_snr(speech(1000 + i, rng.uniform(1.5, 4)), SAMPLE_RATE) for i in range(args.cohort)])
    lo, hi = fitted_conditions({"snr_e": cohort, "snr_t": cohort})["snr"]
    tests = [speech(5000 + i, rng.uniform(1.5, 4)) for i in range(args.tests)]

    def share(xs) -> dict:
        v = np.array([estimate_snr(x, SAMPLE_RATE) for x in xs])
        return {
            "median_db": round(float(np.median(v)), 1),
            "outside_pct": round(float(((v < lo) | (v > hi)).mean() * 100)),
        }

    out = {"clean": share(tests)}
    for kind in ("white", "pink", "babble"):
        for snr in (5, 10, 15, 20, 30):
            out[f"{kind} {snr} dB"] = share([noisy(x, snr, rng, kind) for x in tests])
    out["reverberation (RT60 0.2-0.9 s)"] = share([fftconvolve(x, simulate_rir(rng))[: len(x)] for x in tests])
    sos = butter(6, [300, 3400], btype="band", fs=SAMPLE_RATE, output="sos")
    out["telephone band 300-3400 Hz"] = share([sosfilt(sos, x) for x in tests])
    cohort_stats = {k: round(float(f(cohort)), 1) for k, f in (("min", np.min), ("median", np.median), ("max", np.max))}
    guard = [round(lo, 1), round(hi, 1)]
    print(json.dumps({"benchmark": "snr_guard", "cohort_db": cohort_stats, "guard_db": guard, "conditions": out}))


if __name__ == "__main__":
    main()
