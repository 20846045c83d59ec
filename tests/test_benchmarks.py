"""The benchmarks (benchmarks/*.py) in smoke runs on a CPU: each prints its JSON, and what it measures holds
(the fast and plain paths agree, the batches are fixed, the tracker's errors are counted right)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.integration,  # each benchmark runs end to end, as the program it is
    # transformers' eager WavLM attention mixes a bool padding mask with a float bias; torch warns each call
    pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask"),
]


# -- train_step, embed, frontend_parts -----------------------------------------------------------------------


def _run_benchmark(name: str, argv: list[str], capsys) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        module = __import__(name)
    finally:
        sys.path.pop(0)
    module.main(argv)
    return json.loads(capsys.readouterr().out)


def test_train_step_benchmark_prints_json(capsys, tmp_path):
    out = _run_benchmark(
        "train_step",
        [
            "--shape",
            "tiny",
            "--batch",
            "2",
            "--seconds",
            "0.2",
            "--classes",
            "50",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--threads",
            "0",
            "--stage2-batch",
            "3",
            "--profile",
            str(tmp_path / "prof"),
        ],
        capsys,
    )
    assert set(out["results"]) == {"stage1", "stage2", "frontend", "backend", "loop"}
    assert list(out["results"])[-1] == "loop"  # after the others: accelerate's prepare wraps the forward
    for name, part in out["results"].items():
        assert part["utterances_per_s"] > 0 and part["peak_memory_mb"] > 0
        assert part["batch"] == (3 if name == "stage2" else 2)
        assert "aten::" in Path(part["profile"]).read_text()  # the operator table
    assert out["torch"] == torch.__version__ and out["device"].startswith("cpu")


def test_embed_benchmark_prints_json(capsys):
    out = _run_benchmark(
        "embed",
        [
            "--shape",
            "tiny",
            "--utterances",
            "5",
            "--min-seconds",
            "0.2",
            "--max-seconds",
            "0.5",
            "--batch",
            "2",
            "--reference-utterances",
            "3",
            "--passes",
            "1",
            "--device",
            "cpu",
            "--threads",
            "0",
        ],
        capsys,
    )
    assert out["fast"]["audio_s_per_s"] > 0 and out["reference"]["audio_s_per_s"] > 0
    assert out["equivalence"]["max_abs_diff"] < 1e-4 and out["equivalence"]["min_cosine"] > 0.9999


def test_frontend_parts_benchmark_prints_json(capsys):
    out = _run_benchmark(
        "frontend_parts",
        ["--shape", "tiny", "--batch", "2", "--seconds", "0.3", "--repeats", "1", "--device", "cpu"],
        capsys,
    )
    for layout in ("channels_last", "channels_first"):
        assert out["ms"][f"cnn[{layout}]"] > 0 and out["ms"][f"positional[{layout}]"] > 0
    assert {"projection", "layers", "lap_astp", "whole"} <= set(out["ms"])
    assert out["utterances_per_s"]["whole"] > 0


# -- loss_curve, long_audio, tracking ------------------------------------------------------------------------


def _loss_curve(argv: list[str], capsys) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import loss_curve
    finally:
        sys.path.pop(0)
    loss_curve.main(argv)
    return json.loads(capsys.readouterr().out)


def test_loss_curve_benchmark_sdpa_and_eager_agree(capsys):
    """The smoke configuration on a CPU: fp32 sdpa against fp32 eager attention, same weights, batches and
    dropout masks. Over a few steps (before training amplifies rounding differences; about 1e-5 here) the
    curves must agree within 1e-3 relative at every step: a fast path that computed something else (a
    lost position bias or padding mask) differs by far more from the first step on."""
    out = _loss_curve(
        [
            "--shape",
            "tiny",
            "--steps",
            "6",
            "--lr",
            "3e-4",
            "--batch",
            "8",
            "--seconds",
            "0.5",
            "--classes",
            "16",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--threads",
            "0",
        ],
        capsys,
    )
    plain, fast = out["plain"]["losses"], out["fast"]["losses"]
    assert len(plain) == len(fast) == 6
    assert (out["plain"]["attention"], out["plain"]["precision"]) == ("eager", "fp32")
    fast_settings = (out["fast"]["attention"], out["fast"]["precision"], out["fast"]["compile"])
    assert fast_settings == ("sdpa", "fp32", False)
    assert out["max_rel_diff"] < 1e-3 and out["tracked_steps"] == 6, out
    assert out["max_abs_diff"] == pytest.approx(max(abs(a - b) for a, b in zip(plain, fast)))
    assert out["max_abs_diff"] > 0  # the two paths ran different kernels
    assert out["max_rel_diff"] < out["noise"]["max_rel_diff"]  # other dropout masks: the scale of noise
    assert out["torch"] == torch.__version__ and out["device"].startswith("cpu")
    assert out["plain"]["seconds"] > 0 and out["fast"]["seconds"] > 0


def test_loss_curve_benchmark_batches_are_fixed_and_learnable(capsys):
    """The CPU defaults (16 steps): the same batches on every call, and a loss that falls."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import loss_curve
    finally:
        sys.path.pop(0)
    batches = loss_curve.Batches(classes=16, batch=4, samples=800, snr=10.0, seed=1)
    (x1, y1), (x2, y2) = batches(3), batches(3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(batches(4)[0], x1)
    out = _loss_curve(["--device", "cpu", "--no-noise-run", "--threads", "0"], capsys)
    assert out["settings"]["shape"] == "tiny" and "noise" not in out
    plain = out["plain"]["losses"]
    assert len(plain) == 16 and out["plain"]["tail_mean"] < sum(plain[:4]) / 4 - 1.0


@pytest.mark.slow
def test_long_audio_benchmark_runs_both_paths_with_the_same_embedding(capsys):
    """45 s of audio (2,250 frames, past LONG_FRAMES): the blocked attention (blocks of 55 query rows) and
    the one-block path, each in a process of its own, give the same embedding; a bias over --max-gb skips
    the one-block path."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import long_audio
    finally:
        sys.path.pop(0)
    long_audio.main(["--seconds", "45", "--threads", "1", "--block-bytes", "2000000"])
    out = json.loads(capsys.readouterr().out)
    assert out["block_bytes"] == 2_000_000
    row = out["results"]["45s"]
    assert out["benchmark"] == "long_audio" and out["long_frames"] == 2048
    assert row["blocked"]["peak_memory_mb"] > 0 and row["one_block"]["seconds"] > 0, row
    assert row["max_abs_diff"] < 1e-4
    long_audio.main(["--seconds", "45", "--threads", "1", "--max-gb", "0.01"])
    assert "skipped" in json.loads(capsys.readouterr().out)["results"]["45s"]["one_block"]


def test_tracking_benchmark_measures_misses_and_false_alarms(tmp_path, capsys):
    """Conversations of two speakers' turns tracked with a threshold nothing reaches (every frame of the
    enrolled speaker missed, no false alarm) and one everything reaches (the reverse); the windows and
    their threshold-free EER come either way."""
    from conftest import saved_tiny_model
    from data_helpers import tiny_corpus

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tracking
    finally:
        sys.path.pop(0)
    manifest = tiny_corpus(tmp_path, speakers=3, utts=4)
    model = saved_tiny_model(tmp_path / "model")
    runs = {}
    for threshold in ("2", "-2"):
        tracking.main(
            [
                "--model",
                str(model),
                "--manifest",
                str(manifest),
                "--conversations",
                "3",
                "--window",
                "0.3",
                "--hop",
                "0.1",
                "--threshold",
                threshold,
            ]
        )
        runs[threshold] = json.loads(capsys.readouterr().out)
    assert (runs["2"]["miss_rate"], runs["2"]["false_alarm_rate"]) == (1.0, 0.0)
    assert (runs["-2"]["miss_rate"], runs["-2"]["false_alarm_rate"]) == (0.0, 1.0)
    assert runs["2"]["windows"] == runs["-2"]["windows"] > 0 and runs["2"]["scale"] == "cosine"
    assert runs["2"]["window_eer_percent"] == runs["-2"]["window_eer_percent"] is not None
    # the frame counts on a known case: 1 s of the enrolled speaker, 1 s of the other, at 100 Hz
    truth = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    assert tracking.frame_errors(truth, [(0.5, 1.2)], 100) == (50, 20, 100, 100)
    assert tracking.frame_errors(truth, [(0.0, 0.3), (0.8, 1.0)], 100) == (50, 0, 100, 100)
    assert tracking.frame_errors(truth, [], 100) == (100, 0, 100, 100)


def test_snr_guard_benchmark_refuses_noisy_recordings(capsys):
    """A guard fitted on 20 clean synthetic recordings refuses every one of 6 recordings with white noise at
    5 dB, and reads their SNR lower than the clean ones'."""
    out = _run_benchmark("snr_guard", ["--cohort", "20", "--tests", "6"], capsys)
    assert out["benchmark"] == "snr_guard" and out["guard_db"][0] < out["cohort_db"]["min"]
    rows = out["conditions"]
    assert rows["white 5 dB"]["outside_pct"] == 100 and rows["pink 10 dB"]["outside_pct"] == 100
    assert rows["white 5 dB"]["median_db"] < rows["white 20 dB"]["median_db"] < rows["clean"]["median_db"]
