"""A training step (mlsv.train.loop.train_batch) never waits for the device.

On a GPU, any read of a device value on the host (``.item()``, ``if tensor:``, ``nonzero``, boolean-mask
indexing, a blocking copy of host data) drains the queue: the host cannot queue step n+1 while step n
runs, and a launch-bound step then costs its CPU time plus its GPU time. ``sync_counter.HostSyncCounter``
records those calls on any device, so these tests run the loop's own ``train_batch`` (device
augmentation, forward, backward, gradient clipping, fused Adam, scheduler, running statistics) and the
weight average on a CPU; ``-m gpu`` repeats it under CUDA's own synchronisation check.
"""

from __future__ import annotations

import numpy as np
import pytest
import sync_counter
import torch
from conftest import padded_batch, tiny_model

from mlsv.config import AugmentConfig, TrainConfig
from mlsv.data.augment import BatchAugmenter
from mlsv.data.synthetic import make_synthetic_corpus
from mlsv.models import SubCenterAAMSoftmax
from mlsv.models.frontend import Frontend, build_encoder, encoder_config_from_name
from mlsv.train import loop
from mlsv.train.ema import WeightAverage


@pytest.fixture(scope="module")
def augmenter_config(tmp_path_factory):
    corpus = make_synthetic_corpus(
        tmp_path_factory.mktemp("syn"),
        n_speakers=2,
        utts_per_speaker=2,
        n_validation_speakers=0,
        n_test_speakers=0,
        bank_files=2,
        bank_seconds=4.0,
        n_rirs=4,
        max_seconds=2.0,
    )
    return AugmentConfig(noise_manifest=str(corpus.noise), rir_manifest=str(corpus.rirs), probability=1.0)


def test_counter_sees_each_kind_of_host_wait():
    x = torch.randn(6)
    with sync_counter.HostSyncCounter() as syncs:
        y = (x * 2).sum(0) + torch.zeros(3)[0]  # ordinary device work: nothing recorded
        x.item() if x.numel() == 1 else x[0].item()
        bool(x.sum() > 0)
        x.nonzero()
        x[x > 0]
        x[x > 0] = 0.0
        torch.tensor([1.0], device=x.device)
        x.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1]))
        x.tolist()
    kinds = sorted(k.split(" at ")[0] for k in syncs.calls)
    assert kinds == [
        "__bool__",
        "__getitem__",
        "__setitem__",
        "item",
        "nonzero",
        "repeat_interleave",
        "tensor",
        "tolist",
    ]
    assert all(__file__ in k for k in syncs.calls)  # named by the caller's line
    assert y.shape == ()


def _stage(trainable: str, cpu: bool = True, fused: bool = True, mixed_precision: str = "no", **frontend):
    from accelerate import Accelerator

    acc = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    if mixed_precision == "fp16" and acc.scaler is None:  # accelerate makes its loss scaler on GPUs only
        acc.scaler = torch.amp.GradScaler(acc.device.type, init_scale=2.0**8)
    model = tiny_model(lap_dropout=0.1)
    model.configure_training(trainable=trainable, **frontend)
    head = SubCenterAAMSoftmax(model.config.embedding_size, 7, sub_centers=2, top_k=3, penalty=0.06)
    cfg = TrainConfig()
    # the GPU's optimiser (fused Adam: its step count stays a tensor, never read back)
    device = torch.device("cuda" if fused else "cpu")
    optimizer = loop._optimizer(loop._param_groups(model, head, cfg), cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model, head, optimizer = acc.prepare(model, head, optimizer)
    return acc, model.train(), head.train(), optimizer, scheduler


@pytest.mark.parametrize(
    "trainable,frontend",
    [
        ("none", {}),  # stage 1: frozen encoder
        ("all", {"layerdrop": 0.3, "mask_time_prob": 0.2}),  # stage 2, with the encoder's own regularisers
    ],
)
def test_training_batch_never_waits_for_the_device(augmenter_config, trainable, frontend):
    acc, model, head, optimizer, scheduler = _stage(trainable, **frontend)
    augmenter = BatchAugmenter(augmenter_config, sample_rate=16000, device=acc.device)
    ema = WeightAverage(acc.unwrap_model(model), 0.9)
    stats, rng = torch.zeros(2), np.random.default_rng(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for step in range(3):
        batch = {"waveforms": torch.randn(6, 8000) * 0.1, "labels": torch.arange(6) % 7}
        with sync_counter.HostSyncCounter() as syncs:
            loss = loop.train_batch(
                acc, model, head, optimizer, scheduler, batch, stats, augmenter=augmenter, rng=rng, max_grad_norm=5.0
            )
            ema.update(acc.unwrap_model(model))
        assert not syncs.calls, f"step {step}: {syncs.calls}"
    assert torch.isfinite(loss) and stats[0] > 0 and 0 <= stats[1] <= 18
    assert scheduler.last_epoch == 3
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved and (trainable == "none") == all(not n.startswith("frontend.") for n in moved)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state, fixed by the first Accelerator (mixed precision
    included); reset it around a test that needs another setting, as accelerate's own tests do."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("fused", [True, False])
def test_fp16_loss_scaling_waits_only_without_fused_adam(fused, fresh_accelerate_state):
    """fp16 through accelerate's GradScaler: with fused Adam (what the loop builds on a GPU) the scaler
    hands its inf check to the optimiser's kernel and nothing waits; a plain Adam makes the scaler read
    the check back before stepping (which the counter sees)."""
    acc, model, head, optimizer, scheduler = _stage("transformer", fused=fused, mixed_precision="fp16")
    assert acc.scaler is not None
    stats = torch.zeros(2)
    for step in range(2):
        batch = {"waveforms": torch.randn(4, 8000) * 0.1, "labels": torch.arange(4) % 7}
        with sync_counter.HostSyncCounter() as syncs:
            loop.train_batch(acc, model, head, optimizer, scheduler, batch, stats, max_grad_norm=5.0)
        assert bool(syncs.calls) != fused, f"step {step}: {syncs.calls}"
    assert stats[0] > 0


def test_weight_average_matches_torch_averaged_model():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = tiny_model(backend="ecapa")  # BatchNorm: float running statistics and an integer batch count
    ours = WeightAverage(model, 0.8)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
    x = padded_batch([6000, 6000, 6000])[0]
    for seed in range(4):
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.train()(x)  # moves BatchNorm's running statistics
        ours.update(model)
        theirs.update_parameters(model)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
    assert int(a["n_averaged"]) == 4
    tracked = [k for k in a if k.endswith("num_batches_tracked")]
    assert tracked and all(torch.equal(a[k], model.state_dict()[k[len("module.") :]]) for k in tracked)
    resumed = WeightAverage(model, 0.8)  # a checkpoint of torch's AveragedModel loads, and goes on averaging
    resumed.load_state_dict(b)
    assert resumed._updates == 4


def test_weight_average_rejects_a_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(torch.nn.Linear(2, 2), 1.0)


@pytest.mark.parametrize("padded", [False, True])
def test_spec_augment_matches_transformers(padded):
    """The spans drawn on the host before the forward, applied without boolean indexing, are transformers'
    ``_mask_hidden_states`` exactly (the same numpy draws)."""
    cfg = encoder_config_from_name("tiny-wavlm")
    cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_feature_prob, cfg.mask_feature_length = 0.3, 2, 0.2, 3
    f = Frontend(build_encoder(cfg), trainable="all", mask_time_prob=0.3).train()
    torch.nn.init.normal_(f.encoder.masked_spec_embed)
    lengths = torch.tensor([16000, 12000, 7000] if padded else [16000] * 3)
    frames = f.frame_lengths(lengths)
    h = torch.randn(3, int(frames[0]), cfg.hidden_size)
    frame_mask = torch.arange(h.shape[1])[None] < frames[:, None]
    np.random.seed(0)
    ours = f._spec_augment(h.clone(), f._training_draws(3, 16000, lengths if padded else None))
    np.random.seed(0)
    theirs = f.encoder._mask_hidden_states(h.clone(), attention_mask=frame_mask.long())
    assert not torch.equal(ours, h)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.gpu
def test_gpu_training_batch_never_waits_for_the_device(augmenter_config):
    """CUDA's own check: any synchronising call in the step raises."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    acc, model, head, optimizer, scheduler = _stage("all", cpu=False, layerdrop=0.3, mask_time_prob=0.2)
    augmenter = BatchAugmenter(augmenter_config, sample_rate=16000, device=acc.device)
    ema = WeightAverage(acc.unwrap_model(model), 0.9)
    stats, rng = torch.zeros(2, device=acc.device), np.random.default_rng(0)
    batch = {"waveforms": (torch.randn(6, 8000) * 0.1).pin_memory(), "labels": (torch.arange(6) % 7).pin_memory()}
    for step in range(3):  # the first step warms up (cuDNN, allocator); the others are checked
        if step:
            torch.cuda.set_sync_debug_mode("error")
        try:
            loop.train_batch(
                acc, model, head, optimizer, scheduler, batch, stats, augmenter=augmenter, rng=rng, max_grad_norm=5.0
            )
            ema.update(acc.unwrap_model(model))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(stats).all()
