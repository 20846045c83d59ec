"""The real-voice benchmark: LAP, SUPERB and last-layer aggregation on Whisper tiny.en's frozen encoder, trained
at one budget on the corpus of make_corpus.py, scored on clean and noisy test trials with whole-utterance and
chunked embeddings, beside two untrained baselines (MFCC means; the encoder's best single layer, mean-pooled).

    python benchmarks/real_speech/run.py --steps 100            # everything (about 10 min on 2 busy cores)
    python benchmarks/real_speech/run.py --steps 2000 --only lap superb --chunk-seconds 3

It needs the corpus (make_corpus.py) and the converted encoder (convert_whisper.py) under --work. Each system
trains with ``train.py`` (one process per system, the stage configs in configs/) for exactly ``--steps``
optimiser steps of ``--batch`` crops of ``--crop`` seconds: the same budget for all. Evaluation is mlsv's
own (``mlsv.inference.evaluation.evaluate_model``: cosine after subtracting the training mean). It prints
JSON and writes ``results.json`` and ``results.md`` in the run folder; a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
AGGREGATIONS = ("lap", "superb", "last")
BASELINES = ("mfcc", "layers")
KINDS = ["reverb", "noise", "babble", "band"]  # --augment's default kinds (no music in the banks)
TEST_SIDES = {"clean": "test.jsonl", "noisy": "test_noisy.jsonl"}


def embedding_modes(chunk_seconds: float, corpus: Path) -> dict[str, dict]:
    """How a trained model embeds each test utterance: evaluate_model's keyword arguments per mode. "policy":
    the window mlsv evaluate chooses on the validation list (whole or chunks of the training crop), stored in
    the model and used for the test list."""
    return {
        "whole": {"chunk_seconds": 0.0},
        "chunked": {"chunk_seconds": chunk_seconds},
        "policy": {
            "chunk_seconds": None,
            "threshold_manifest": str(corpus / "validation.jsonl"),
            "threshold_trials": str(corpus / "validation_trials.txt"),
        },
    }


def budget(train_manifest: Path, steps: int, batch: int) -> tuple[int, int]:
    """(epochs, steps_per_epoch) with epochs * steps_per_epoch == steps and no epoch longer than the corpus."""
    n = sum(1 for line in train_manifest.open() if line.strip())
    per_epoch = n // batch
    if per_epoch < 1:
        raise SystemExit(f"{train_manifest}: {n} utterances make no batch of {batch}")
    spe = max(d for d in range(1, min(per_epoch, steps) + 1) if steps % d == 0)
    return steps // spe, spe


def train(aggregation: str, out: Path, corpus: Path, encoder: Path, args) -> dict:
    """One frozen stage with train.py; returns its wall time (0 when it was already done) and folder."""
    epochs, spe = budget(corpus / "train.jsonl", args.steps, args.batch)
    if (out / "COMPLETE").exists():
        return {"model": str(out / "model"), "train_seconds": 0.0, "epochs": epochs, "steps_per_epoch": spe}
    sets = {
        "data.train_manifest": corpus / "train.jsonl",
        "data.validation_manifest": corpus / "validation.jsonl",
        "data.validation_trials": corpus / "validation_trials.txt",
        "model.encoder": encoder,
        "data.batch_size": args.batch,
        "data.crop_seconds": args.crop,
        "stage.epochs": epochs,
        "stage.steps_per_epoch": spe,
        "stage.seed": args.seed,
        "log.progress": "false",
    }
    if args.context:  # context crops: the encoder over contexts, crops cut from its states
        sets["data.context_seconds"] = args.context
        sets["data.crops_per_context"] = args.crops_per_context
        if args.cache:
            sets["data.feature_cache"] = out.parent / "feature_cache"
            sets["data.feature_copies"] = args.copies
    if args.speed:
        sets["data.speed_factors"] = "[" + ",".join(f"{f:g}" for f in args.speed) + "]"
    if args.augment:  # the benchmark's banks (make_banks.py), SNRs over the noisy side's range
        banks = args.banks.resolve()
        sets.update(
            {
                "augment.probability": args.augment,
                "augment.kinds": "[" + ",".join(args.kinds) + "]",
                "augment.noise_manifest": banks / "noise.jsonl",
                "augment.rir_manifest": banks / "rirs.jsonl",
                "augment.noise_snr": "[5,20]",
                "augment.babble_snr": "[5,20]",
                "augment.babble_speakers": "[3,6]",
            }
        )
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(HERE / "configs" / f"stage1_{aggregation}.yaml")]
    cmd += ["--output-dir", str(out)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = out.parent / f"{aggregation}.train.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        run = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"training {aggregation} failed (exit {run.returncode}); see {log}")
    return {
        "model": str(out / "model"),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "train_cpu_seconds": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
        "epochs": epochs,
        "steps_per_epoch": spe,
    }


def evaluate(model: Path, corpus: Path, out: Path, modes: dict[str, dict]) -> dict:
    """EER and minDCF(0.05) of cosine scoring, per test side and embedding mode."""
    from mlsv.inference.evaluation import evaluate_model
    from mlsv.models import MLSVConfig

    results: dict = {}
    for side, manifest in TEST_SIDES.items():
        for mode, kw in modes.items():
            if mode == "policy" and side != "clean":  # the stored window: one of the modes measured already
                stored = results["clean/policy_window"]
                same = "whole" if not stored else "chunked" if stored == modes["chunked"]["chunk_seconds"] else None
                if same is not None:
                    results[f"{side}/policy_window"] = stored
                    results[f"{side}/policy"] = results[f"{side}/{same}"]
                    continue
            t0 = time.perf_counter()
            r = evaluate_model(
                model,
                manifest=str(corpus / manifest),
                trials=[str(corpus / "test_trials.txt")],
                out_dir=out / f"{side}_{mode}",
                device="cpu",
                plots=False,
                **kw,
            )
            m = r["metrics"]["cosine"]["test_trials"]
            if mode == "policy":  # the window the model stores (chosen now, or by an earlier evaluation)
                stored = MLSVConfig.from_pretrained(r["model"]).embedding_chunk_seconds
                results[f"{side}/policy_window"] = stored
            results[f"{side}/{mode}"] = {
                "eer": round(m["eer"], 2),
                "min_dcf_0.05": round(m["min_dcf_0.05"], 3),
                "seconds": round(time.perf_counter() - t0, 1),
            }
    return results


# ------------------------------------------------------------------------------------------------------------
# calibration under a channel change


CALIBRATION_FITS = {  # name: (cohort, calibration_snr)
    "clean": ("clean", False),
    "clean+noisy": ("clean+noisy", False),
    "clean+noisy, SNR features": ("clean+noisy", True),
}


def _cohort_manifests(corpus: Path, banks: Path, out: Path) -> dict[str, Path]:
    """The training speakers' utterances as calibration cohorts: clean, and clean plus make_banks.py's noisy
    copy (ids prefixed ``noisy/``); absolute paths, so the manifests can live anywhere."""
    from mlsv.data.manifest import iter_rows, resolve_path, write_manifest

    def rows(manifest: Path, prefix: str = "") -> list[dict]:
        root = manifest.resolve().parent
        return [
            {**r, "id": prefix + r["id"], "path": str(resolve_path(r["path"], root))} for _, r in iter_rows(manifest)
        ]

    out.mkdir(parents=True, exist_ok=True)
    clean = rows(corpus / "train.jsonl")
    made = {"clean": out / "cohort_clean.jsonl", "clean+noisy": out / "cohort_clean_noisy.jsonl"}
    write_manifest(clean, made["clean"])
    write_manifest(clean + rows(banks / "train_noisy.jsonl", "noisy/"), made["clean+noisy"])
    return made


def calibration(model: Path, corpus: Path, banks: Path, out: Path, top_k: int = 6) -> dict:
    """QMF calibration fitted on the training speakers (clean; clean + noisy; clean + noisy with the SNR
    features), applied to the clean and the noisy test trials (whole utterances): calibrated EER, actual DCF
    at p = 0.05, Cllr, and the trials the calibration's conditions guard refuses, with the metrics of the rest.
    AS-norm over ``top_k`` of the 8 training speakers (each calibration pair leaves its own 2 out)."""
    from mlsv.inference.evaluation import evaluate_model

    cohorts = _cohort_manifests(corpus, banks, out)
    results: dict = {}
    for fit, (cohort, with_snr) in CALIBRATION_FITS.items():
        for side, manifest in TEST_SIDES.items():
            t0 = time.perf_counter()
            r = evaluate_model(
                model,
                manifest=str(corpus / manifest),
                trials=[str(corpus / "test_trials.txt")],
                out_dir=out / f"{fit.replace(', ', '_').replace(' ', '-')}_{side}",
                cohort=str(cohorts[cohort]),
                top_k=top_k,
                chunk_seconds=0.0,
                device="cpu",
                plots=False,
                calibration_snr=with_snr,
            )
            m = r["metrics"]["calibrated"]["test_trials"]
            inside = m.get("inside_calibration", {})
            results[f"{fit}/{side}"] = {
                "asnorm_eer": round(r["metrics"]["asnorm"]["test_trials"]["eer"], 2),
                "eer": round(m["eer"], 2),
                "act_dcf_0.05": round(m["act_dcf_0.05"], 3),
                "min_dcf_0.05": round(m["min_dcf_0.05"], 3),
                "cllr": round(m["cllr"], 3),
                "n_outside": m.get("n_outside_calibration", 0),
                "inside_act_dcf_0.05": round(inside["act_dcf_0.05"], 3) if "act_dcf_0.05" in inside else None,
                "inside_cllr": round(inside["cllr"], 3) if "cllr" in inside else None,
                "seconds": round(time.perf_counter() - t0, 1),
            }
    return results


# ------------------------------------------------------------------------------------------------------------
# baselines (nothing trained)


def _scores(table: dict[str, np.ndarray], trials_path: Path, mean: np.ndarray | None = None) -> tuple[float, float]:
    from mlsv.data.trials import read_trials
    from mlsv.scoring.metrics import eer, min_dcf

    trials = read_trials(trials_path)
    e = {k: v - (0 if mean is None else mean) for k, v in table.items()}
    e = {k: v / (np.linalg.norm(v) + 1e-12) for k, v in e.items()}
    s = np.array([e[a] @ e[b] for a, b in zip(trials.enroll, trials.test)])
    return eer(s, trials.labels)[0], min_dcf(s, trials.labels, 0.05)[0]


def mfcc_baseline(corpus: Path) -> dict:
    """mlsv's MFCC-mean baseline (c1..c19 means, cosine; mlsv.data.synthetic.mfcc_baseline_eer)."""
    from mlsv.data.synthetic import mfcc_baseline_eer

    return {
        f"{side}/whole": {"eer": round(mfcc_baseline_eer(corpus / m, corpus / "test_trials.txt"), 2)}
        for side, m in TEST_SIDES.items()
    }


def layer_means(encoder: Path, manifest: Path, limit: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Each utterance's hidden states (all L+1), mean-pooled over time: id -> (L+1, D); ``limit`` > 0 takes
    that many utterances drawn with ``seed``."""
    import torch

    from mlsv.data.audio import read_audio
    from mlsv.data.manifest import iter_rows, resolve_path
    from mlsv.models.frontend import Frontend, load_pretrained_encoder

    frontend = Frontend(load_pretrained_encoder(str(encoder)), trainable="none").eval()
    out = {}
    root = manifest.resolve().parent
    rows = [row for _, row in iter_rows(manifest)]
    if 0 < limit < len(rows):
        rows = [rows[i] for i in sorted(np.random.default_rng(seed).choice(len(rows), limit, replace=False))]
    with torch.inference_mode():
        for row in rows:
            x, _ = read_audio(resolve_path(row["path"], root), target_sr=16000)
            states, _ = frontend(torch.as_tensor(x, dtype=torch.float32)[None])
            out[row["id"]] = states[:, 0].mean(1).numpy()
    return out


def _layer(table: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in table.items()}


def layers_baseline(encoder: Path, corpus: Path, mean_utterances: int = 120) -> dict:
    """Cosine on one layer's mean-pooled states after subtracting that layer's training mean (over
    ``mean_utterances`` training utterances). The layer is chosen on the validation trials (training speakers'
    held-out sessions); every layer's test EER is kept."""
    train = layer_means(encoder, corpus / "train.jsonl", limit=mean_utterances)
    mean = np.mean(list(train.values()), axis=0)  # (L+1, D)
    val = layer_means(encoder, corpus / "validation.jsonl")
    n_layers = mean.shape[0]
    val_eer = [_scores(_layer(val, i), corpus / "validation_trials.txt", mean[i])[0] for i in range(n_layers)]
    chosen = int(np.argmin(val_eer))
    result: dict = {"chosen_layer": chosen, "validation_eer_per_layer": [round(x, 2) for x in val_eer]}
    for side, m in TEST_SIDES.items():
        test = layer_means(encoder, corpus / m)
        per_layer = [_scores(_layer(test, i), corpus / "test_trials.txt", mean[i]) for i in range(n_layers)]
        e, dcf = per_layer[chosen]
        result[f"{side}/whole"] = {"eer": round(e, 2), "min_dcf_0.05": round(dcf, 3)}
        result[f"{side}/eer_per_layer"] = [round(e, 2) for e, _ in per_layer]
    return result


# ------------------------------------------------------------------------------------------------------------


def markdown(results: dict, args, modes: dict[str, dict]) -> str:
    cols = [f"{side}/{mode}" for side in TEST_SIDES for mode in modes]
    lines = [
        f"Real-voice benchmark, Whisper tiny.en frozen; budget {args.steps} steps x {args.batch} crops x "
        f"{args.crop:g} s; chunked = {args.chunk_seconds:g} s chunks. EER % (minDCF 0.05), cosine scoring.",
        "",
        "| system | " + " | ".join(cols) + " | train s |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    names = {
        "lap": "LAP",
        "superb": "SUPERB (weighted sum)",
        "last": "last layer",
        "mfcc": "MFCC means (no training)",
        "layers": "best single layer, mean-pooled (no training)",
    }
    for key, r in results["systems"].items():
        name = names[key] + (f" (layer {r['chosen_layer']})" if key == "layers" else "")
        cells = []
        for c in cols:
            m = r.get(c)
            if m is None:
                cells.append("-")
            else:
                cells.append(f"{m['eer']:.2f}" + (f" ({m['min_dcf_0.05']:.3f})" if "min_dcf_0.05" in m else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.get('train_seconds', '-')} |")
    for key, r in results["systems"].items():
        if "calibration" not in r:
            continue
        lines += [
            "",
            f"{names[key]}: QMF calibration fitted on the training speakers, whole utterances. Calibrated EER %, "
            "actual DCF and Cllr (all trials; inside the guard's conditions), trials refused by the guard.",
            "",
            "| fitted on | test | EER | actDCF 0.05 | Cllr | refused | actDCF inside | Cllr inside |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, m in r["calibration"].items():
            fit, side = name.rsplit("/", 1)
            lines.append(
                f"| {fit} | {side} | {m['eer']:.2f} | {m['act_dcf_0.05']:.3f} | {m['cllr']:.3f} | {m['n_outside']} | "
                f"{m['inside_act_dcf_0.05'] if m['inside_act_dcf_0.05'] is not None else '-'} | "
                f"{m['inside_cllr'] if m['inside_cllr'] is not None else '-'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=HERE / "work", help="holds corpus/ and whisper-tiny.en/")
    p.add_argument("--corpus", type=Path, default=None, help="default: WORK/corpus")
    p.add_argument("--encoder", type=Path, default=None, help="default: WORK/whisper-tiny.en")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: WORK/runs/steps{N}_b{B}_c{CROP})")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps of every trained system")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=float, default=2.0, help="training crop, seconds")
    p.add_argument("--chunk-seconds", type=float, default=2.0, help="the chunked embedding mode's chunk")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--context", type=float, default=0.0, help="data.context_seconds (0: crops of the waveform)")
    p.add_argument("--crops-per-context", type=int, default=4, help="data.crops_per_context with --context")
    p.add_argument("--cache", action="store_true", help="with --context: the frozen encoder's feature cache")
    p.add_argument("--copies", type=int, default=1, help="data.feature_copies with --cache (augmented copies)")
    p.add_argument("--augment", type=float, default=0.0, help="augment.probability with the banks (0: none)")
    p.add_argument("--kinds", nargs="+", default=KINDS, help="augment.kinds")
    p.add_argument("--banks", type=Path, default=HERE / "work" / "banks", help="make_banks.py's output")
    p.add_argument("--speed", type=float, nargs="+", default=None, help="data.speed_factors (default: [1.0])")
    p.add_argument(
        "--calibration",
        action="store_true",
        help="also fit QMF calibrations on the training speakers (clean; clean + noisy, needs make_banks.py) and "
        "measure them on both test sides",
    )
    p.add_argument("--only", nargs="+", choices=AGGREGATIONS + BASELINES, default=list(AGGREGATIONS + BASELINES))
    args = p.parse_args(argv)
    corpus = (args.corpus or args.work / "corpus").resolve()
    encoder = (args.encoder or args.work / "whisper-tiny.en").resolve()
    for need, how in ((corpus / "test_trials.txt", "make_corpus.py"), (encoder / "config.json", "convert_whisper.py")):
        if not need.exists():
            raise SystemExit(f"{need} not found: run benchmarks/real_speech/{how} first (see the README)")
    name = f"steps{args.steps}_b{args.batch}_c{args.crop:g}"
    if args.context:
        name += f"_ctx{args.context:g}x{args.crops_per_context}" + ("_cache" if args.cache else "")
        name += f"_copies{args.copies}" if args.cache and args.copies > 1 else ""
    if args.augment:
        name += f"_aug{args.augment:g}" + ("" if args.kinds == KINDS else "-" + "-".join(args.kinds))
    if args.speed:
        name += "_speed" + "-".join(f"{f:g}" for f in args.speed)
    out = (args.out or args.work / "runs" / name).resolve()
    modes = embedding_modes(args.chunk_seconds, corpus)
    t0 = time.perf_counter()
    systems: dict[str, dict] = {}
    for name in args.only:
        t = time.perf_counter()
        if name in AGGREGATIONS:
            r = train(name, out / name, corpus, encoder, args)
            r.update(evaluate(Path(r["model"]), corpus, out / f"{name}_eval", modes))
            if args.calibration:
                r["calibration"] = calibration(Path(r["model"]), corpus, args.banks.resolve(), out / f"{name}_cal")
        elif name == "mfcc":
            r = mfcc_baseline(corpus)
        else:
            r = layers_baseline(encoder, corpus)
        r["seconds"] = round(time.perf_counter() - t, 1)
        systems[name] = r
    earlier = out / "results.json"
    if earlier.exists():  # a rerun with --only keeps the other systems' results, and a skipped training its times
        before = json.loads(earlier.read_text())["systems"]
        for name, r in systems.items():
            if r.get("train_seconds") == 0.0 and name in before:
                r.update({k: before[name][k] for k in ("train_seconds", "train_cpu_seconds") if k in before[name]})
        systems = {**before, **systems}
    results = {
        "systems": systems,
        "budget": {
            "steps": args.steps,
            "batch": args.batch,
            "crop_seconds": args.crop,
            "context_seconds": args.context,
            "crops_per_context": args.crops_per_context if args.context else 1,
            "feature_cache": bool(args.context and args.cache),
            "feature_copies": args.copies if args.context and args.cache else 1,
            "augment": {"probability": args.augment, "kinds": args.kinds} if args.augment else None,
            "speed_factors": args.speed or [1.0],
        },
        "chunk_seconds": args.chunk_seconds,
        "corpus": json.loads((corpus / "corpus.json").read_text()) if (corpus / "corpus.json").exists() else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(markdown(results, args, modes))
    print(json.dumps(results, indent=1, ensure_ascii=False))
    return results


if __name__ == "__main__":
    main()
