"""Training with a frozen encoder (mlsv.train.frozen): context crops cut from the hidden states of a longer
context, the feature cache, and checkpoints that hold only what trains."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import stage_overrides
from safetensors.torch import load_file

from mlsv.config import ConfigError, load_config
from mlsv.data.feature_cache import FeatureCache
from mlsv.data.loader import build_train_loader
from mlsv.data.manifest import load_manifest, speaker_labels
from mlsv.models import MLSVModel
from mlsv.train import checkpoint as ckpt
from mlsv.train import loop
from mlsv.train.frozen import build_feature_cache, cut_crops


def _cfg(corpus, **extra):
    base = {"data.speed_factors": "[1.0]", "augment.probability": 0, "stage.frontend_trainable": "none"}
    return load_config(None, stage_overrides(corpus, **{**base, **extra}))


def _model(cfg) -> MLSVModel:
    torch.manual_seed(0)
    model = loop.build_model(cfg)
    model.configure_training(trainable="none")
    return model.eval()


def test_context_crops_are_the_states_of_the_long_context(train_corpus):
    """A batch of contexts (padded, of several lengths) cut into crops equals each context encoded alone and
    sliced at the crop's frames: the crops carry the whole context, not a crop's worth."""
    cfg = _cfg(train_corpus, **{"data.context_seconds": 2.5, "data.crops_per_context": 2, "data.batch_size": 8})
    model = _model(cfg)
    labels = speaker_labels(train_corpus.train)
    batch = next(iter(build_train_loader(train_corpus.train, cfg.data, None, labels=labels, epoch=0, seed=1)))
    wav, lengths, positions = batch["waveforms"], batch["lengths"], batch["positions"]
    assert wav.shape[0] == 4 and positions.shape == (4, 2) and batch["labels"].shape == (8,)
    assert len(set(lengths.tolist())) > 1, "the corpus should give contexts of several lengths"
    assert torch.equal(batch["labels"][0::2], batch["labels"][1::2])  # each context's label, once per crop
    n = int(model.frontend.frame_lengths(int(cfg.data.crop_seconds * cfg.data.sample_rate)))
    with torch.no_grad():
        states, frames = model.frontend(wav, lengths)
        crops = cut_crops(states, frames, positions, n)
        assert crops.shape[:3] == (states.shape[0], 8, n)
        for b in range(4):
            alone, _ = model.frontend(wav[b : b + 1, : lengths[b]])  # the context encoded by itself
            T = alone.shape[2]
            for j in range(2):
                start = int(positions[b, j] * (T - n + 1))
                torch.testing.assert_close(crops[:, 2 * b + j], alone[:, 0, start : start + n], atol=2e-5, rtol=1e-4)


def _one_step(cfg, model, head, batch, frontend, crop_frames):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    part = model.trained_part()
    optimizer = loop._optimizer(loop._param_groups(part, head, cfg), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    part, head, optimizer = acc.prepare(part, head, optimizer)
    part.train()
    head.train()
    torch.manual_seed(3)  # the backend's dropout draws the same in both runs
    loss = loop.train_batch(
        acc, part, head, optimizer, scheduler, batch, torch.zeros(2), frontend=frontend, crop_frames=crop_frames
    )
    return loss, {k: v.detach().clone() for k, v in part.state_dict().items()}


def test_cached_features_give_the_training_step_of_the_live_encoder(train_corpus, tmp_path):
    """Contexts that hold whole utterances: the cached states (float16) give the same crops, loss and updated
    weights as the encoder run live, within float16's rounding of the states (relative 1e-3). SGD: an update
    proportional to the gradient (Adam's first step is about lr * sign(g), which float16 noise can flip where
    g is about 0)."""
    extra = {"data.context_seconds": 3.0, "data.crops_per_context": 2, "data.batch_size": 8, "optim.optimizer": "sgd"}
    live_cfg = _cfg(train_corpus, **extra)
    cached_cfg = _cfg(train_corpus, **extra, **{"data.feature_cache": str(tmp_path / "cache")})
    model = _model(live_cfg)
    rows = load_manifest(train_corpus.train)
    assert max(float(d) for d in rows["duration"]) <= 3.0  # whole utterances: the live path draws no offset
    built = build_feature_cache(
        model.frontend, rows, cached_cfg.data, None, seed=1, device=torch.device("cpu"), folder=tmp_path / "cache"
    )
    assert built and not build_feature_cache(
        model.frontend, rows, cached_cfg.data, None, seed=1, device=torch.device("cpu"), folder=tmp_path / "cache"
    ), "an up-to-date cache is reused"
    labels = speaker_labels(train_corpus.train)
    kw = {"labels": labels, "epoch": 0, "seed": 1}
    live = next(iter(build_train_loader(train_corpus.train, live_cfg.data, None, **kw)))
    cached = next(iter(build_train_loader(train_corpus.train, cached_cfg.data, None, **kw)))
    assert torch.equal(live["labels"], cached["labels"]) and cached["states"].dtype == torch.float16
    n = FeatureCache(tmp_path / "cache").crop_frames
    head = loop.SubCenterAAMSoftmax(16, len(labels), scale=30.0, margin=0.2, sub_centers=2, top_k=0, penalty=0.0)
    before = {k: v.clone() for k, v in model.trained_part().state_dict().items()}
    loss_live, after_live = _one_step(live_cfg, copy.deepcopy(model), copy.deepcopy(head), live, model.frontend, n)
    loss_cached, after_cached = _one_step(cached_cfg, copy.deepcopy(model), copy.deepcopy(head), cached, None, n)
    torch.testing.assert_close(loss_cached, loss_live, rtol=1e-3, atol=1e-4)
    # the whole update (every trained tensor, one vector): float16 states (relative rounding 2**-11 = 5e-4)
    # through LAP's softmax over layers and BatchNorm on 8 crops move it by 0.35 % here (bound: 3 %); a wrong
    # crop, label or context moves it by far more (checked below with another batch)
    floats = [k for k in after_live if after_live[k].is_floating_point()]

    def update(after):
        return torch.cat([(after[k] - before[k]).flatten() for k in floats])

    d_live, d_cached = update(after_live), update(after_cached)
    assert ((d_cached - d_live).norm() / d_live.norm()).item() < 0.03
    other = next(iter(build_train_loader(train_corpus.train, cached_cfg.data, None, **{**kw, "epoch": 1})))
    _, after_other = _one_step(cached_cfg, copy.deepcopy(model), copy.deepcopy(head), other, None, n)
    assert ((update(after_other) - d_live).norm() / d_live.norm()).item() > 0.3


@pytest.mark.integration
def test_a_frozen_stage_checkpoints_only_what_trains_and_resumes(train_corpus, tmp_path):
    """Context crops from the feature cache, end to end: the checkpoints hold the aggregation and backend only,
    the model folder the whole model, and a rerun after deleting COMPLETE resumes to the same final weights."""
    out = tmp_path / "run"
    sets = {
        "data.context_seconds": 3.0,
        "data.crops_per_context": 2,
        "data.feature_cache": str(tmp_path / "cache"),
        "stage.epochs": 2,
    }
    loop.run_stage(load_config(None, stage_overrides(train_corpus, **sets)), out)
    last = ckpt.checkpoint_dirs(out / "checkpoints")[-1]
    keys = load_file(str(last / "model.safetensors")).keys()
    assert keys and all(k.startswith(("aggregation.", "backend.")) for k in keys)
    final = load_file(str(out / "model" / "model.safetensors"))
    assert any(k.startswith("frontend.") for k in final)
    for k in keys:
        torch.testing.assert_close(final[k], load_file(str(last / "model.safetensors"))[k], msg=k)
    model = MLSVModel.from_pretrained(out / "model")
    assert model.config.train_crop_seconds == 1.0
    # resume: the first epoch's checkpoint alone, the second epoch trained again
    second = ckpt.checkpoint_dirs(out / "checkpoints")[-1]
    import shutil

    shutil.rmtree(second)
    (out / "COMPLETE").unlink()
    loop.run_stage(load_config(None, stage_overrides(train_corpus, **sets)), out)
    again = load_file(str(out / "model" / "model.safetensors"))
    for k in keys:
        torch.testing.assert_close(again[k], final[k], msg=k)


@pytest.mark.parametrize(
    "sets,message",
    [
        ({"data.crops_per_context": 2}, "data.crops_per_context needs data.context_seconds > 0"),
        ({"data.context_seconds": 4.0, "stage.frontend_trainable": "all"}, "stage.frontend_trainable is 'all'"),
        ({"data.context_seconds": 0.5}, "data.context_seconds 0.5 is shorter than data.crop_seconds 1"),
        (
            {"data.context_seconds": 4.0, "data.crops_per_context": 3},
            r"data.batch_size 8 \(crops\) is not a multiple of data.crops_per_context 3",
        ),
        (
            {"data.context_seconds": 4.0, "data.feature_cache": "c", "augment.where": "device"},
            "augment.where=device",
        ),
        ({"data.context_seconds": 4.0, "data.feature_copies": 2, "augment.probability": 0}, "feature_copies 2"),
    ],
)
def test_context_settings_that_do_not_fit_are_named(train_corpus, sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, stage_overrides(train_corpus, **{"stage.frontend_trainable": "none", **sets}))
