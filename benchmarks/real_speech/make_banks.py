"""Augmentation banks for the real-voice benchmark, made from plain folders with ``mlsv prepare noise`` and
``mlsv prepare rirs`` (no MUSAN or RIRS_NOISES here), and a noisy copy of the training side.

    python benchmarks/real_speech/make_banks.py --corpus work/corpus --out work/banks

Writes under ``--out``:

- ``babble/``: links to the training utterances (the training speakers only: a test voice never becomes
  babble), prepared as category ``babble`` (the augmenter sums several of them);
- ``noise/``: coloured noises of our own (white, pink, brown and a band of 200-2,000 Hz), 20 s each, prepared
  as category ``noise``;
- ``rirs/``: simulated room responses (mlsv's ``simulate_rir``, RT60 0.2-0.9 s), prepared as a plain RIR folder;
- ``noise.jsonl`` (babble + noise, the augmenter's ``noise_manifest``) and ``rirs.jsonl`` (its
  ``rir_manifest``);
- ``train_noisy.jsonl`` + ``wav_noisy/``: the training utterances degraded as the noisy test side is (babble or
  pink/brown noise at 5-20 dB, a room on half, a telephone band on a third), with other draws: the
  calibration experiment fits on clean and noisy training trials.

Every file follows from ``--seed`` (other seeds than the corpus' own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_corpus import SR, _coloured, degrade  # noqa: E402  (the benchmark's own noisy-side recipe)

from mlsv.data.manifest import iter_rows, write_manifest  # noqa: E402
from mlsv.data.synthetic import simulate_rir  # noqa: E402

NOISE_SECONDS = 20.0


def _band_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    y = np.fft.irfft(spec * ((f > 200) & (f < 2000)), n)
    return y / (np.sqrt(np.mean(y**2)) + 1e-12)


def _prepare(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "mlsv", "prepare", *args, "--no-progress"], check=True, env=env)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=HERE / "work" / "corpus")
    p.add_argument("--out", type=Path, default=HERE / "work" / "banks")
    p.add_argument("--noise-files", type=int, default=8, help="files per noise colour")
    p.add_argument("--rirs", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    corpus, out = args.corpus.resolve(), args.out.resolve()
    rng = np.random.default_rng(args.seed)
    train = [row for _, row in iter_rows(corpus / "train.jsonl")]

    babble = out / "babble"
    babble.mkdir(parents=True, exist_ok=True)
    for row in train:
        link = babble / row["id"].replace("/", "_")
        if not link.exists():
            link.symlink_to(corpus / row["path"])
    noise = out / "noise"
    noise.mkdir(exist_ok=True)
    n = int(NOISE_SECONDS * SR)
    makers = {
        "white": lambda: rng.standard_normal(n),
        "pink": lambda: _coloured(n, 1.0, rng),
        "brown": lambda: _coloured(n, 2.0, rng),
        "band": lambda: _band_noise(n, rng),
    }
    for colour, make in makers.items():
        for i in range(args.noise_files):
            x = make()
            sf.write(noise / f"{colour}_{i:02d}.wav", (0.1 * x / np.abs(x).max()).astype(np.float32), SR)
    rirs = out / "rirs"
    rirs.mkdir(exist_ok=True)
    for i in range(args.rirs):
        sf.write(rirs / f"room_{i:03d}.wav", simulate_rir(rng), SR)

    _prepare("noise", "--root", str(babble), "--category", "babble", "--out", str(out / "babble.jsonl"))
    _prepare("noise", "--root", str(noise), "--category", "noise", "--out", str(out / "noise_only.jsonl"))
    _prepare("rirs", "--root", str(rirs), "--kind", "simulated", "--out", str(out / "rirs.jsonl"))
    rows = [r for m in ("babble.jsonl", "noise_only.jsonl") for _, r in iter_rows(out / m)]
    write_manifest(rows, out / "noise.jsonl")

    # the noisy training copy (the calibration experiment's second condition)
    sources = [corpus / r["path"] for r in train]
    noisy = []
    for row in train:
        x, _ = sf.read(corpus / row["path"], dtype="float64")
        y, info = degrade(x, sources, rng)
        path = out / "wav_noisy" / row["id"]
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, y.astype(np.float32), SR)
        noisy.append({**row, "path": str(path.relative_to(out)), **info})
    write_manifest(noisy, out / "train_noisy.jsonl")
    made = {
        "babble_files": len(train),
        "noise_files": len(makers) * args.noise_files,
        "rirs": args.rirs,
        "train_noisy": len(noisy),
        "seed": args.seed,
    }
    (out / "banks.json").write_text(json.dumps(made, indent=1) + "\n")
    print(json.dumps(made))
    return made


if __name__ == "__main__":
    main()
