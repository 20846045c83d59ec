"""A stage's processes (mlsv.train.processes) and what a training batch counts (mlsv.train.loop.train_batch):
accelerate's settings are the stage's or an error, threads fit the machine, accuracy is the method's."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from mlsv.config import ConfigError, load_config
from mlsv.models.head import SubCenterAAMSoftmax
from mlsv.train import loop
from mlsv.train.processes import accelerate_settings, choose_threads


@pytest.fixture(autouse=True)
def _no_accelerate_env(monkeypatch):
    for key in ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"):
        monkeypatch.delenv(key, raising=False)


def test_stage_settings_default_to_accelerate_s_and_disagreements_name_both(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # chosen in `accelerate config`: was dropped
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    st = accelerate_settings(load_config()).stage
    assert (st.mixed_precision, st.grad_accum) == ("bf16", 4)
    with pytest.raises(
        ConfigError,
        match=r"stage.mixed_precision is 'fp16' but accelerate is configured with "
        r"'bf16' \(accelerate config / ACCELERATE_MIXED_PRECISION\)",
    ):
        accelerate_settings(load_config(None, ["stage.mixed_precision=fp16"]))
    with pytest.raises(ConfigError, match=r"stage.grad_accum is 2 but accelerate is configured with 4"):
        accelerate_settings(load_config(None, ["stage.grad_accum=2"]))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate launch's unconfigured default
    assert accelerate_settings(load_config(None, ["stage.mixed_precision=bf16"])).stage.mixed_precision == "bf16"


def test_a_stage_under_accelerate_s_accumulation_steps_and_records_it(tmp_path, monkeypatch):
    """With ACCELERATE_GRADIENT_ACCUMULATION_STEPS=4 a 2-batch epoch made no optimiser step, the learning
    rate stayed at its warm-up start, and config.yaml recorded grad_accum: 1."""
    from data_helpers import tiny_corpus

    manifest = tiny_corpus(tmp_path / "corpus", speakers=4, utts=4)
    base = {
        "data": {
            "train_manifest": str(manifest),
            "crop_seconds": 0.5,
            "batch_size": 4,
            "num_workers": 0,
            "speed_factors": [1.0],
        },
        "augment": {"probability": 0},
        "model": {"encoder": "tiny-wavlm", "random_init": True, "lap_heads": 2, "lap_channels": 8, "embedding_size": 8},
        "head": {"sub_centers": 1, "top_k": 0},
        "stage": {"epochs": 1, "steps_per_epoch": 0, "mean_utterances": 4},
        "log": {"progress": False},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(base))
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    out = loop.run_stage(load_config(tmp_path / "s.yaml"), tmp_path / "run")
    saved = yaml.safe_load((out / "config.yaml").read_text())["stage"]
    assert saved["grad_accum"] == 2 and saved["mixed_precision"] == "no"
    meta = sorted((out / "checkpoints").iterdir())[-1] / "mlsv_meta.json"
    assert '"global_step": 2' in meta.read_text()  # 4 batches of 4 utterances, accumulated in twos
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    with pytest.raises(ConfigError, match=r"holds a run made with other settings \(stage.grad_accum: 2 -> 4\)"):
        loop.run_stage(load_config(tmp_path / "s.yaml"), tmp_path / "run")


def test_threads_fit_the_cores_processes_and_workers(monkeypatch):
    import mlsv.train.processes as processes

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(processes, "_cores", lambda: 16)
        line = choose_threads(load_config(None, ["data.num_workers=2"]), local_processes=2)
        assert torch.get_num_threads() == 6 and line.startswith("6 thread(s) per process: 16 cores, 2 process(es)")
        monkeypatch.setattr(processes, "_cores", lambda: 2)
        choose_threads(load_config(None, ["data.num_workers=2"]), local_processes=1)
        assert torch.get_num_threads() == 1  # never below one
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert "(OMP_NUM_THREADS)" in choose_threads(load_config(), local_processes=1)
    finally:
        torch.set_num_threads(before)


def test_training_accuracy_counts_the_method_s_predictions():
    """metrics.csv's accuracy was the argmax of logits with the inter-top-K penalty; here the penalty lifts a
    negative above the target while the method's prediction (margin on the target only) is right."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = torch.nn.Parameter(torch.tensor([[math.cos(0.5), math.sin(0.5)]]))

        def forward(self, wav):
            return SimpleNamespace(embeddings=self.x.expand(len(wav), -1))

    head = SubCenterAAMSoftmax(2, 2, scale=30.0, margin=0.3, sub_centers=1, top_k=1, penalty=0.06)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [math.cos(1.33), math.sin(1.33)]]))
    model = Fixed()
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    stats = torch.zeros(2)
    batch = {"waveforms": torch.zeros(3, 800), "labels": torch.zeros(3, dtype=torch.long)}
    loop.train_batch(acc, model, head, optimizer, scheduler, batch, stats)
    assert stats[1].item() == 3  # all three right; the penalised logits' argmax would count none
