"""The one training loop: every stage (frozen, joint fine-tuning, large-margin fine-tuning) is a config.

``run_stage(cfg, output_dir)`` drives an ``Accelerator`` (one process, many GPUs or machines; mixed
precision; gradient accumulation) and leaves in ``output_dir``:

    config.yaml            the fully resolved stage config
    labels.json            speaker -> label, built once, sorted
    checkpoints/step_N/    accelerate state (model, head, optimiser, scheduler, scaler, RNG) + meta
    metrics.csv            one row per epoch (and TensorBoard / W&B / Neptune when asked)
    model/                 the final embedding model (save_pretrained, with its training mean)
    head.safetensors       the final margin head (+ head.json), for the next stage
    COMPLETE               written last: the stage is done

``run_stage`` runs named steps: ``set_up``, ``resume_point``, ``run_epoch`` for each epoch left and
``finish``; metrics go through ``mlsv.train.trackers``, validation and the training mean through
``mlsv.train.validation``.

Rerunning the same command resumes from the newest checkpoint: same weights, optimiser, scheduler,
scaler and RNG state, epoch and step; the data order of an epoch depends only on (seed, epoch), and
batches already trained in a partly done epoch are skipped, not repeated.

Speed settings (``mlsv.models.runtime``): ``stage.attention`` picks the encoder's attention kernels, and
``stage.compile`` compiles the model and head in place with ``nn.Module.compile`` before
``accelerator.prepare`` (parameter names, checkpoints and the saved model are unchanged). Training crops
have one shape, so the model's graphs are specialised on it (``dynamic=False``); the head is compiled
with ``dynamic=None`` because its margin, a Python float moved by the schedule every step, would
otherwise recompile it each step. Validation and the training mean embed utterances of every length in
eval mode: they run the same modules eagerly (``eager``), never recompiling per shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mlsv.config import ConfigError, TrainConfig, dump_config, load_config, load_yaml_file, to_dict
from mlsv.data.augment import BatchAugmenter
from mlsv.data.loader import build_train_loader, speed_perturb_classes, utterance_subset
from mlsv.data.manifest import load_labels, load_manifest, save_labels, speaker_labels
from mlsv.data.sources import is_source, resolve_source
from mlsv.extras import needs_extra
from mlsv.locks import FolderLock
from mlsv.models import TINY_ENCODERS, MLSVModel, SubCenterAAMSoftmax, runtime
from mlsv.models.loading import min_samples
from mlsv.models.loading import model_source as _model_source
from mlsv.train import checkpoint as ckpt
from mlsv.train.ema import WeightAverage
from mlsv.train.frozen import build_feature_cache, cut_crops, load_trained, with_trained
from mlsv.train.processes import accelerate_settings, check_accelerator, choose_threads
from mlsv.train.schedules import lr_at, margin_at
from mlsv.train.trackers import Trackers, accelerate_trackers, flat_keys
from mlsv.train.validation import check_validation_trials, training_mean, validation_eer

log = logging.getLogger("mlsv.train")

PROGRESS_EVERY = 50  # batches between the progress bar's loss readings (each waits for the device)

MODEL_SETTINGS = (
    "layers",
    "aggregation",
    "lap_heads",
    "lap_channels",
    "lap_dropout",
    "backend",
    "embedding_size",
    "backend_dropout",
    "ecapa_channels",
    "mhfa_heads",
    "mhfa_compression",
)


def build_model(cfg: TrainConfig) -> MLSVModel:
    """A new model from the config's model section (pre-trained or random-init encoder). An encoder that
    cannot be found or downloaded is a ConfigError naming ``model.encoder``."""

    m = cfg.model
    settings = {k: getattr(m, k) for k in MODEL_SETTINGS}
    settings["layers"] = settings["layers"] or None
    hint = (
        "give a hub id (such as microsoft/wavlm-base-plus), a local model folder or a built-in tiny config "
        f"name ({', '.join(sorted(TINY_ENCODERS))})"
    )
    if m.encoder not in TINY_ENCODERS:
        try:
            _model_source(m.encoder)  # a mistyped name fails now, not after the hub client's retries
        except FileNotFoundError as e:
            raise ConfigError(f"model.encoder {m.encoder!r}: {e}; {hint}") from None
    try:
        return MLSVModel.from_encoder(m.encoder, random_init=m.random_init, **settings)
    except OSError as e:  # transformers' "not a local folder and not a valid model identifier" / no connection
        first = " ".join(str(e).split("\n")[0].split())
        raise ConfigError(f"model.encoder {m.encoder!r}: cannot load it ({first}); {hint}") from None


def check_crop_length(model: MLSVModel, data) -> None:
    """Training crops must give the encoder at least one frame; a shorter ``data.crop_seconds`` would fail
    in the first forward pass with the convolution's shape error."""

    crop, shortest = int(round(data.crop_seconds * data.sample_rate)), min_samples(model.config)
    if crop < shortest:
        raise ConfigError(
            f"data.crop_seconds {data.crop_seconds:g} gives {crop} samples at {data.sample_rate} Hz, "
            f"fewer than the encoder's minimum of {shortest} ({shortest / data.sample_rate:.4f} s): "
            "raise it"
        )


def load_for_finetuning(folder: Path) -> MLSVModel:
    """``stage.init_model``: a trained model's weights, to train on other speakers with a new head. What
    evaluation learnt about its embeddings (training mean, AS-norm cohort, calibration, thresholds,
    metrics) no longer holds once training moves them, so it is dropped; the stage computes a new mean."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"stage.init_model: {folder} is not a model folder (no config.json); give a folder "
            "that save_pretrained wrote, e.g. runs/NAME/model, or a downloaded hub snapshot"
        )
    model = MLSVModel.from_pretrained(folder)
    c = model.config
    c.training_mean = c.calibration = c.threshold = c.evaluation = None
    model.cohort_embeddings = model.cohort_embeddings[:0]
    c.cohort_size = 0
    return model


# torch.compile backend for stage.compile; the tests set "aot_eager" (graphs traced, no kernels generated)
COMPILE_BACKEND = "inductor"


def compile_for_training(
    model: MLSVModel, head: torch.nn.Module, backend: str | None = None, mode: str = "default"
) -> None:
    """``stage.compile``: the model's frontend, aggregation and backend specialised on the fixed crop shape
    (``dynamic=False``); the head with ``dynamic=None``: its margin is a Python float that the schedule
    moves every step, which a static graph would guard on (one recompile per value, then the recompile
    limit and eager fallback); automatic dynamic makes it symbolic after the first change. ``mode`` is
    ``stage.compile_mode`` (inductor only)."""
    backend = backend or COMPILE_BACKEND
    runtime.compile_model(model, mode=mode, dynamic=False, backend=backend)
    head.compile(**({"mode": mode} if backend == "inductor" else {"backend": backend}), dynamic=None)


@contextlib.contextmanager
def eager(module: torch.nn.Module):
    """Runs ``module``'s compiled submodules (``nn.Module.compile``) eagerly inside the block: evaluation
    with utterances of every length would recompile graphs specialised on the training crops. The
    compiled callables are set aside and put back; nothing is recompiled either way."""
    saved = [(m, m._compiled_call_impl) for m in module.modules() if runtime.is_compiled(m)]
    for m, _ in saved:
        m._compiled_call_impl = None
    try:
        yield module
    finally:
        for m, impl in saved:
            m._compiled_call_impl = impl


# settings that may change between a run and its resumption: how it is watched and run, not what it learns
RESUMABLE_CHANGES = (
    "log.",
    "data.num_workers",
    "data.eval_batch_seconds",
    "stage.keep_best",
    "stage.checkpoint_every_steps",
)


def check_same_run(cfg: TrainConfig, output_dir: Path) -> None:
    """An output folder belongs to one config: resuming or skipping a run made with other settings would
    mix them (a checkpoint's batches counted under another batch size) or keep stale results. Raises
    ConfigError naming the changed keys; settings in ``RESUMABLE_CHANGES`` may change. A folder without
    results (a run that stopped before its first checkpoint, e.g. on a mistyped path) is free."""
    saved = output_dir / "config.yaml"
    if not saved.is_file():
        return
    cfg = accelerate_settings(cfg)
    if not ((output_dir / "COMPLETE").exists() or ckpt.checkpoint_dirs(output_dir / "checkpoints")):
        return
    try:
        load_yaml_file(saved)
    except ConfigError as e:  # damaged or edited by hand: not silently taken for another version's file
        raise ConfigError(
            f"{e}; it holds the settings of the run in {output_dir}: restore it, or delete it to "
            "resume without comparing settings"
        ) from None
    try:
        before = flat_keys(to_dict(load_config(saved)))
    except ConfigError as e:  # written by another version of mlsv: nothing to compare with
        log.warning("cannot compare with %s (%s)", saved, e)
        return
    now = flat_keys(to_dict(cfg))
    changed = [
        f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k) and not k.startswith(RESUMABLE_CHANGES)
    ]
    if changed:
        raise ConfigError(
            f"{output_dir} holds a run made with other settings ({'; '.join(changed[:6])}"
            f"{'; ...' if len(changed) > 6 else ''}): give another output folder, or delete "
            "this one to start again"
        )


def _find_unused_parameters(acc) -> None:
    """LayerDrop skips layers (eagerly), whose parameters then get no gradient in that step; DDP has to
    look for such parameters, or it fails on the next step. Set on the accelerator before ``prepare``."""
    with needs_extra("train", "training"):
        from accelerate.utils import DistributedDataParallelKwargs

    if acc.ddp_handler is None:
        acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    else:
        acc.ddp_handler.find_unused_parameters = True


def _resolve(path: str, base: Path | None) -> str:
    if is_source(path):  # hf:FOLDER?...: a relative folder against the config's, when it is there
        return resolve_source(path, base)
    if not path or base is None or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def _param_groups(model: MLSVModel, head: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    o = cfg.optim
    encoder = getattr(model, "frontend", None)  # a frozen encoder's stage trains only model.trained_part()
    frontend = [p for p in encoder.parameters() if p.requires_grad] if encoder is not None else []
    backend = [p for n, p in model.named_parameters() if not n.startswith("frontend.") and p.requires_grad]
    groups = [
        {"name": "backend", "params": backend, "lr": o.lr * o.backend_lr_scale, "weight_decay": o.weight_decay},
        {"name": "head", "params": list(head.parameters()), "lr": o.lr, "weight_decay": o.weight_decay},
    ]
    if frontend:
        wd = o.weight_decay if o.frontend_weight_decay < 0 else o.frontend_weight_decay
        groups.insert(0, {"name": "frontend", "params": frontend, "lr": o.lr * o.frontend_lr_scale, "weight_decay": wd})
    return groups


def _optimizer(groups: list[dict], cfg: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The stage's optimiser; Adam and AdamW run their fused kernel (one launch for all tensors) on a GPU."""
    name = cfg.optim.optimizer
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    if name == "adam":  # L2 weight decay, as the paper
        return torch.optim.Adam(groups, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, **fused)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    raise ValueError(f"optim.optimizer: unknown optimiser {name!r}; choose adam, adamw or sgd")


@dataclasses.dataclass
class Stage:
    """One stage as ``set_up`` builds it; the later steps read it (and ``run_stage`` adds the trackers)."""

    cfg: TrainConfig
    output_dir: Path
    config_dir: Path | None
    acc: Any  # accelerate.Accelerator
    train_manifest: str
    labels: dict[str, int]
    model: torch.nn.Module  # model, head and optimiser as accelerate prepared them
    head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: WeightAverage | None
    augmenter: BatchAugmenter | None  # augment.where: device
    first_loader: Any  # epoch 0's training loader, built to count its batches
    batches_per_epoch: int
    steps_per_epoch: int
    unwrapped_head: SubCenterAAMSoftmax
    full: MLSVModel  # the whole model (its aggregation and backend are the trained part's with a frozen encoder)
    frontend: torch.nn.Module | None = None  # a frozen encoder, run outside the prepared model; else None
    crop_frames: int = 0  # frames of a training crop (context crops)
    trackers: Trackers | None = None

    @property
    def ckpt_root(self) -> Path:
        return self.output_dir / "checkpoints"

    def loader(self, epoch: int, start_batch: int = 0):
        """``epoch``'s training loader from ``start_batch`` on (map-style: the batches before are not decoded)."""
        if epoch == 0 and not start_batch:
            return self.first_loader
        return _train_loader(self.cfg, self.acc, self.train_manifest, self.labels, epoch, start_batch)

    @property
    def extra_states(self) -> dict[str, object]:
        """What a checkpoint holds beside accelerate's state, saved as JSON and safetensors (never pickled);
        in this order (a checkpoint from before holds them as accelerate's custom states 0 and 1)."""
        return {"scheduler": self.scheduler, **({"weight_average": self.ema} if self.ema is not None else {})}

    def eval_model(self) -> MLSVModel:
        """The model validation embeds with: the weight average when there is one."""
        return with_trained(self.full, self.ema.module) if self.ema is not None else self.full


@dataclasses.dataclass
class ResumePoint:
    """Where training goes on: the epoch, its batches already trained and the optimiser steps so far; after a
    mid-epoch checkpoint also its running (loss sum, correct, utterances) over all processes and, per
    process, its data-audit digest and the files skipped so far."""

    epoch: int = 0
    batches: int = 0
    global_step: int = 0
    totals: list[float] | None = None
    audits: list[str] | None = None
    bad_files: list[list[str]] | None = None


def run_stage(cfg: TrainConfig, output_dir: str | Path, *, config_dir: Path | None = None, accelerator=None) -> Path:
    """Trains one stage; returns ``output_dir``. Resumes when checkpoints exist; does nothing if complete.
    The steps: ``set_up``, ``resume_point``, ``run_epoch`` for each epoch left, ``finish``."""
    output_dir = Path(output_dir)
    cfg = accelerate_settings(cfg)  # the precision and accumulation that will run, as config.yaml records them
    check_same_run(cfg, output_dir)
    if (output_dir / "COMPLETE").is_file():
        log.info("%s is complete; skipping", output_dir)
        return output_dir
    with needs_extra("train", "training"):
        from accelerate import PartialState

    # one process writes a stage's folder at a time (the main one of a launch; the others follow it)
    with FolderLock(output_dir, "training") if PartialState().is_main_process else contextlib.nullcontext():
        stage = set_up(cfg, output_dir, config_dir=config_dir, accelerator=accelerator)
        at = resume_point(stage)
        stage.trackers = Trackers(stage.acc, cfg, output_dir)
        for epoch in range(at.epoch, cfg.stage.epochs):
            at = run_epoch(stage, epoch, at)
        finish(stage)
    return output_dir


# -- set-up -------------------------------------------------------------------------------------------------


def set_up(cfg: TrainConfig, output_dir: Path, *, config_dir: Path | None = None, accelerator=None) -> Stage:
    """Everything before the first batch, in this order: the inputs checked; the accelerator (seeded,
    ``config.yaml`` written); labels, model and head; the epoch's length; optimiser, scheduler and weight
    average, prepared; the device augmenter."""
    st = cfg.stage
    train_manifest = _check_inputs(cfg, config_dir)
    acc = _accelerator(cfg, output_dir, accelerator)
    labels, full, head = _model_and_head(cfg, acc, train_manifest, output_dir, config_dir)
    frontend = trained = None
    if st.frontend_trainable == "none":  # only the aggregation and backend train, checkpoint and average
        frontend, trained = full.frontend.to(acc.device).eval(), full.trained_part()
        if cfg.data.feature_cache:
            cfg = _with_feature_cache(cfg, acc, frontend, train_manifest, config_dir)
    first = _train_loader(cfg, acc, train_manifest, labels, 0)
    batches_per_epoch = _batches_per_epoch(cfg, first, train_manifest, acc)
    steps_per_epoch = max(batches_per_epoch // st.grad_accum, 1)
    model, head, optimizer, scheduler, ema = _optimisation(cfg, acc, trained or full, head, steps_per_epoch * st.epochs)
    augmenter = _device_augmenter(cfg, acc, config_dir)
    return Stage(
        cfg=cfg,
        output_dir=output_dir,
        config_dir=config_dir,
        acc=acc,
        train_manifest=train_manifest,
        labels=labels,
        model=model,
        head=head,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        augmenter=augmenter,
        first_loader=first,
        batches_per_epoch=batches_per_epoch,
        steps_per_epoch=steps_per_epoch,
        unwrapped_head=acc.unwrap_model(head),
        full=full,
        frontend=frontend,
        crop_frames=int(full.frontend.frame_lengths(int(round(cfg.data.crop_seconds * cfg.data.sample_rate)))),
    )


def _with_feature_cache(cfg: TrainConfig, acc, frontend, train_manifest: str, config_dir: Path | None) -> TrainConfig:
    """``data.feature_cache``: the cache built (by the main process; the others wait) unless up to date, and
    the config with its path resolved, for the loaders."""
    data = cfg.data
    folder = _resolve(data.feature_cache, config_dir)
    if acc.is_main_process:
        rows = load_manifest(train_manifest)
        if data.max_utterances and data.max_utterances < len(rows):
            rows = rows.select(utterance_subset(len(rows), data.max_utterances, cfg.stage.seed))
        augment = dataclasses.replace(
            cfg.augment,
            noise_manifest=_resolve(cfg.augment.noise_manifest, config_dir),
            rir_manifest=_resolve(cfg.augment.rir_manifest, config_dir),
        )
        build_feature_cache(frontend, rows, data, augment, seed=cfg.stage.seed, device=acc.device, folder=folder)
    acc.wait_for_everyone()
    return dataclasses.replace(cfg, data=dataclasses.replace(data, feature_cache=folder))


def _check_inputs(cfg: TrainConfig, config_dir: Path | None) -> str:
    """The training manifest's path; a validation trial list that does not fit its manifest fails here."""
    data = cfg.data
    train_manifest = _resolve(data.train_manifest, config_dir)
    if not train_manifest:
        raise ValueError("data.train_manifest is empty: give a training manifest (mlsv prepare ...)")
    if data.validation_manifest and data.validation_trials:
        check_validation_trials(
            _resolve(data.validation_manifest, config_dir), _resolve(data.validation_trials, config_dir)
        )
    return train_manifest


def _accelerator(cfg: TrainConfig, output_dir: Path, accelerator=None):
    """The given accelerator, or one made from the stage's settings; then the seed set, one process
    logging, and ``config.yaml`` written."""
    with needs_extra("train", "training"):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

    st = cfg.stage
    if accelerator is None:
        trackers = accelerate_trackers(cfg)  # ValueError naming a tracker that is not installed
        accelerator = Accelerator(
            mixed_precision=st.mixed_precision,
            gradient_accumulation_steps=st.grad_accum,
            log_with=trackers or None,
            project_dir=str(output_dir),
        )
    acc = accelerator
    check_accelerator(acc, cfg)
    # torchrun and accelerate's launcher say how many processes share this machine
    log.info("stage %s: %s", st.name, choose_threads(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))))
    if st.layerdrop > 0 and st.frontend_trainable != "none":
        _find_unused_parameters(acc)
    if not acc.is_main_process:
        logging.getLogger("mlsv").setLevel(logging.WARNING)  # one process reports progress
    set_seed(st.seed, device_specific=False)
    if acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, output_dir / "config.yaml")
    acc.wait_for_everyone()
    return acc


def _start_from(cfg: TrainConfig, train_manifest: str, config_dir: Path | None):
    """(labels, model, head classes, ``stage.init_from`` folder or None): the previous stage's with
    ``init_from`` (its head size kept: the speed-perturbation classes stay negatives), else new labels and
    ``stage.init_model``'s weights or a new model."""
    st = cfg.stage
    init_from = Path(_resolve(st.init_from, config_dir)) if st.init_from else None
    if init_from is not None:
        if not (init_from / "COMPLETE").is_file():
            raise FileNotFoundError(f"stage.init_from: {init_from} is not a completed stage")
        labels = load_labels(init_from / "labels.json")
        model = MLSVModel.from_pretrained(init_from / "model")
        head_meta = json.loads((init_from / "head.json").read_text())
        n_classes = head_meta["num_classes"]
    else:
        labels = speaker_labels(train_manifest)
        model = load_for_finetuning(Path(_resolve(st.init_model, config_dir))) if st.init_model else build_model(cfg)
        n_classes = speed_perturb_classes(len(labels), cfg.data.speed_factors)
    return labels, model, n_classes, init_from


def _model_and_head(cfg: TrainConfig, acc, train_manifest: str, output_dir: Path, config_dir: Path | None):
    """(labels, model, head): the model set up for training (trainable parts, LayerDrop, SpecAugment,
    attention), the margin head (the previous stage's with ``stage.init_from``), both compiled with
    ``stage.compile``; ``labels.json`` written."""
    st, data, h = cfg.stage, cfg.data, cfg.head
    labels, model, n_classes, init_from = _start_from(cfg, train_manifest, config_dir)
    check_crop_length(model, data)
    if acc.is_main_process:
        save_labels(labels, output_dir / "labels.json")
    needed = speed_perturb_classes(len(labels), data.speed_factors)
    if needed > n_classes:
        raise ValueError(f"data.speed_factors need {needed} classes but the head from {init_from} has {n_classes}")
    model.configure_training(
        trainable=st.frontend_trainable,
        layerdrop=st.layerdrop,
        mask_time_prob=st.mask_time_prob,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    runtime.set_attention(model, st.attention)  # not saved with the model: set for every stage
    head = SubCenterAAMSoftmax(
        model.config.embedding_size,
        n_classes,
        scale=h.scale,
        margin=h.margin,
        sub_centers=h.sub_centers,
        top_k=h.top_k,
        penalty=h.penalty,
    )
    if init_from is not None:
        state = load_file(str(init_from / "head.safetensors"))
        if state["weight"].shape != head.weight.shape:
            raise ValueError(
                f"head shape {tuple(state['weight'].shape)} from {init_from} does not match "
                f"{tuple(head.weight.shape)} (head.sub_centers or the embedding size changed)"
            )
        head.load_state_dict(state)
    if st.compile:  # in place, before prepare: DDP, checkpoints and save_pretrained see the same names
        compile_for_training(model, head, mode=st.compile_mode)
    return labels, model, head


def _train_loader(cfg: TrainConfig, acc, train_manifest: str, labels: dict[str, int], epoch: int, start_batch: int = 0):
    return build_train_loader(
        train_manifest,
        cfg.data,
        cfg.augment,
        labels=labels,
        epoch=epoch,
        seed=cfg.stage.seed,
        process_index=acc.process_index,
        num_processes=acc.num_processes,
        start_batch=start_batch,
    )


def _batches_per_epoch(cfg: TrainConfig, first, train_manifest: str, acc) -> int:
    """Batches per epoch and process: ``stage.steps_per_epoch`` optimiser steps, or one pass over the data.
    Whole accumulation cycles only: a partial one would carry its gradients into the next epoch, which a
    checkpoint does not hold (a resumed run would differ), and an epoch shorter than one would not step."""
    st, data = cfg.stage, cfg.data
    batches_per_epoch = (
        st.steps_per_epoch * st.grad_accum if st.steps_per_epoch > 0 else len(first) // st.grad_accum * st.grad_accum
    )
    if st.steps_per_epoch == 0 and 0 < len(first) < st.grad_accum:
        raise ValueError(
            f"stage.grad_accum {st.grad_accum} needs {st.grad_accum} batches per optimiser step, but "
            f"{train_manifest} gives {len(first)} per epoch and process; lower it or data.batch_size"
        )
    if st.steps_per_epoch > 0 and not data.streaming and len(first) < batches_per_epoch:
        raise ValueError(
            f"stage.steps_per_epoch {st.steps_per_epoch} needs {batches_per_epoch} batches per "
            f"epoch, but {train_manifest} gives {len(first)} per process; lower it (0: one pass)"
        )
    if batches_per_epoch == 0:
        raise ValueError(
            f"no full batch in an epoch: {train_manifest} gives each of the {acc.num_processes} "
            f"process(es) {len(first.dataset._share())} utterances, fewer than a batch of "
            f"{first.batch_size} per process; lower data.batch_size"
        )
    return batches_per_epoch


def _optimisation(cfg: TrainConfig, acc, model: MLSVModel, head: SubCenterAAMSoftmax, total_steps: int):
    """(model, head, optimiser, scheduler, weight average or None): the first three prepared by accelerate;
    the scheduler and the average checkpointed with them."""
    o = cfg.optim
    optimizer = _optimizer(_param_groups(model, head, cfg), cfg, acc.device)
    lr_factor = lambda step: lr_at(  # noqa: E731
        step,
        total_steps,
        peak=1.0,
        floor=o.min_lr / o.lr,
        warmup_ratio=o.warmup_ratio,
        cycles=o.cycles,
        gamma=o.cycle_gamma,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # the scheduler is stepped by hand once per optimiser step (accelerate's wrapper would step it once per
    # process), and checkpointed with the rest of the state
    model, head, optimizer = acc.prepare(model, head, optimizer)
    ema = None
    if o.ema_decay > 0:
        # a deep copy: with stage.compile it is not compiled (Module.__getstate__ drops the compiled call), as
        # the average only ever evaluates
        ema = WeightAverage(acc.unwrap_model(model), o.ema_decay)
    return model, head, optimizer, scheduler, ema


def _device_augmenter(cfg: TrainConfig, acc, config_dir: Path | None) -> BatchAugmenter | None:
    """``augment.where: device``: the batch augmenter, its noise and RIR manifests resolved."""
    if not (cfg.augment.where == "device" and cfg.augment.probability > 0):
        return None
    aug_cfg = dataclasses.replace(
        cfg.augment,
        noise_manifest=_resolve(cfg.augment.noise_manifest, config_dir),
        rir_manifest=_resolve(cfg.augment.rir_manifest, config_dir),
    )
    return BatchAugmenter(aug_cfg, sample_rate=cfg.data.sample_rate, device=acc.device, bank_seed=cfg.stage.seed)


# -- resume and the epochs ----------------------------------------------------------------------------------


def resume_point(s: Stage) -> ResumePoint:
    """Loads the newest checkpoint, if any, into the prepared state (weights, optimiser, scheduler, scaler,
    RNG) and says where training goes on: after an epoch's last checkpoint, at the next epoch."""
    done = ckpt.checkpoint_dirs(s.ckpt_root)
    if not done:
        return ResumePoint()
    ckpt.load_checkpoint(s.acc, done[-1], done[-2] if len(done) > 1 else None, extra=s.extra_states)
    meta = ckpt.read_meta(done[-1])
    at = ResumePoint(
        meta["epoch"],
        meta["batches_in_epoch"],
        meta["global_step"],
        meta.get("epoch_totals"),
        meta.get("audits"),
        meta.get("bad_files"),
    )
    if at.batches >= s.batches_per_epoch:
        at = ResumePoint(at.epoch + 1, 0, at.global_step)
    log.info("resuming from %s (epoch %d, step %d)", done[-1], at.epoch, at.global_step)
    return at


@dataclasses.dataclass
class _Epoch:
    """An epoch under way: its loader, the running loss sum and correct count (on the device), utterances
    and batches done, the data-audit digest and the optimiser steps so far."""

    number: int
    started: float
    loader: Any
    stats: torch.Tensor
    seen: int
    audit: bytes
    batches_done: int
    global_step: int


def run_epoch(s: Stage, epoch: int, at: ResumePoint) -> ResumePoint:
    """Trains ``epoch`` from ``at`` (the batches a mid-epoch checkpoint holds are skipped, not repeated),
    then ends it (``_end_epoch``); returns where the next epoch starts."""
    acc, st, h = s.acc, s.cfg.stage, s.cfg.head
    e = _start_epoch(s, epoch, at)
    progress = _progress(acc, s.cfg, s.batches_per_epoch, epoch)
    if progress is not None:
        progress.update(at.batches)
    graph_mode = st.compile_mode if st.compile else "default"  # what train_batch marks per batch
    for i, batch in enumerate(itertools.islice(e.loader, s.batches_per_epoch - at.batches), start=at.batches):
        e.audit = _audit_step(e.audit, batch["labels"])
        # device augmentation's host draws: per batch, so a resumed epoch draws what the first run would
        # (its own spawn key: the crop at share place i draws from [seed, epoch, process, i] without one)
        aug_rng = np.random.default_rng(np.random.SeedSequence([st.seed, epoch, acc.process_index, i], spawn_key=(2,)))
        s.unwrapped_head.set_margin(
            margin_at(
                e.global_step / s.steps_per_epoch,
                margin=h.margin,
                kind=h.margin_schedule,
                start_epoch=h.margin_start_epoch,
                ramp_epochs=h.margin_ramp_epochs,
            )
        )
        loss = train_batch(
            acc,
            s.model,
            s.head,
            s.optimizer,
            s.scheduler,
            batch,
            e.stats,
            augmenter=s.augmenter,
            rng=aug_rng,
            max_grad_norm=s.cfg.optim.max_grad_norm,
            compile_mode=graph_mode,
            frontend=s.frontend,
            crop_frames=s.crop_frames,
        )
        e.seen += len(batch["labels"])
        e.batches_done = i + 1
        if acc.sync_gradients:
            _after_step(s, e)
        if progress is not None:
            progress.update(1)
            if e.batches_done % PROGRESS_EVERY == 0 or e.batches_done == s.batches_per_epoch:
                # reads the loss back: the only wait for the device, once in PROGRESS_EVERY batches
                progress.set_postfix(
                    loss=f"{loss.item():.3f}",
                    lr=f"{s.scheduler.get_last_lr()[-1]:.2e}",
                    m=f"{s.unwrapped_head.margin:.3f}",
                )
    if progress is not None:
        progress.close()
    _end_epoch(s, e)
    return ResumePoint(epoch + 1, 0, e.global_step)


def _start_epoch(s: Stage, epoch: int, at: ResumePoint) -> _Epoch:
    """The epoch's loader and running state, carried on from ``at`` when it is a mid-epoch checkpoint."""
    t0 = time.time()
    loader = s.loader(epoch, at.batches)  # a resumed epoch starts at the batch after its checkpoint
    s.model.train()
    s.head.train()
    stats, seen = torch.zeros(2, device=s.acc.device), 0  # loss sum, correct (on the device); utterances
    if at.totals is not None and at.batches and s.acc.is_main_process:  # the batches before the checkpoint
        stats, seen = torch.tensor(at.totals[:2], device=s.acc.device), int(at.totals[2])
    # the data audit (``_audit_step``) and the files skipped so far go on from a mid-epoch checkpoint
    audit = b""
    if at.batches and at.audits and len(at.audits) == s.acc.num_processes:
        audit = bytes.fromhex(at.audits[s.acc.process_index])
        loader.note_bad_files(at.bad_files[s.acc.process_index] if at.bad_files else [])
    return _Epoch(epoch, t0, loader, stats, seen, audit, at.batches, at.global_step)


def _audit_step(digest: bytes, labels: torch.Tensor) -> bytes:
    """What this process trained on, for the data audit: a chain of SHA-1 digests over the batches' labels
    (``digest``, so far, extended by one batch's)."""
    return hashlib.sha1(digest + labels.numpy().tobytes()).digest()


def _after_step(s: Stage, e: _Epoch) -> None:
    """After an optimiser step: the step counted, the weight average updated, and a mid-epoch checkpoint
    every ``stage.checkpoint_every_steps`` (with the running totals, audit digests and skipped files)."""
    with needs_extra("train", "training"):
        from accelerate.utils import gather_object

    st = s.cfg.stage
    e.global_step += 1
    if s.ema is not None:
        s.ema.update(s.acc.unwrap_model(s.model))
    if (
        st.checkpoint_every_steps
        and e.global_step % st.checkpoint_every_steps == 0
        and e.batches_done < s.batches_per_epoch
    ):
        totals = s.acc.reduce(torch.cat([e.stats, e.stats.new_tensor([e.seen])]), reduction="sum").tolist()
        ckpt.save_checkpoint(
            s.acc,
            s.ckpt_root,
            f"step_{e.global_step:08d}",
            {
                "epoch": e.number,
                "batches_in_epoch": e.batches_done,
                "global_step": e.global_step,
                "epoch_totals": totals,
                "audits": gather_object([e.audit.hex()]),
                "bad_files": gather_object([e.loader.bad_files]),
            },
            extra=s.extra_states,
        )


def _end_epoch(s: Stage, e: _Epoch) -> None:
    """The epoch's metrics row (``_epoch_row``), data audit, log line and checkpoint; old checkpoints pruned."""
    acc, st = s.acc, s.cfg.stage
    row = _epoch_row(s, e)
    _write_audit(s.output_dir, acc.process_index, e.number, e.audit.hex(), e.batches_done)
    s.trackers.log(row, step=e.global_step)
    if acc.is_main_process:
        log.info("epoch %d: %s", e.number + 1, json.dumps(row))
    ckpt.save_checkpoint(
        acc,
        s.ckpt_root,
        f"step_{e.global_step:08d}",
        {
            "epoch": e.number,
            "batches_in_epoch": s.batches_per_epoch,
            "global_step": e.global_step,
            "validation_eer": row["validation_eer"],
            "loss": row["loss"],
        },
        extra=s.extra_states,
    )
    if acc.is_main_process:
        ckpt.prune_checkpoints(s.ckpt_root, max(st.keep_best, st.average_best))  # what averaging needs
    acc.wait_for_everyone()


def _epoch_row(s: Stage, e: _Epoch) -> dict:
    """metrics.csv's row: loss and accuracy over all processes, lr, margin, skipped files, seconds, and the
    validation EER every ``stage.validate_every`` epochs and after the last (else None)."""
    acc, st, data = s.acc, s.cfg.stage, s.cfg.data
    total = acc.reduce(torch.cat([e.stats, e.stats.new_tensor([e.seen, _skipped(e.loader)])]), reduction="sum").tolist()
    row = {
        "epoch": e.number + 1,
        "step": e.global_step,
        "loss": total[0] / total[2] if total[2] > 0 else float("nan"),
        "accuracy": total[1] / total[2] if total[2] > 0 else float("nan"),
        "lr": s.scheduler.get_last_lr()[-1],
        "margin": s.unwrapped_head.margin,
        "skipped_files": int(total[3]),
        "seconds": round(time.time() - e.started, 2),
    }
    val_eer = None
    if (
        data.validation_manifest
        and data.validation_trials
        and ((e.number + 1) % st.validate_every == 0 or e.number + 1 == st.epochs)
    ):
        with eager(s.eval_model()) as m:
            val_eer = validation_eer(
                m,
                _resolve(data.validation_manifest, s.config_dir),
                _resolve(data.validation_trials, s.config_dir),
                acc,
                data,
            )
    row["validation_eer"] = val_eer
    return row


# -- the stage's final model --------------------------------------------------------------------------------


def finish(s: Stage) -> None:
    """The final model (the weight average, the mean of the ``stage.average_best`` best checkpoints, or the
    last weights) with its training mean, saved with the head; ``COMPLETE`` written last."""
    acc, st, head = s.acc, s.cfg.stage, s.unwrapped_head
    final = s.full
    if s.ema is not None:
        load_trained(final, s.ema.module.state_dict())
    elif st.average_best > 1:
        best = ckpt.best_checkpoints(s.ckpt_root, st.average_best)
        load_trained(final, ckpt.average_checkpoints(best, "model.safetensors"))
        head.load_state_dict(ckpt.average_checkpoints(best, "model_1.safetensors"))
        log.info("averaged %d best checkpoints: %s", len(best), [p.name for p in best])
    final.config.train_crop_seconds = float(s.cfg.data.crop_seconds)  # the context the model was trained on
    with eager(final):
        final.config.training_mean = training_mean(
            final, s.train_manifest, acc, s.cfg.data, st.mean_utterances, s.output_dir
        )
    if acc.is_main_process:
        final.save_pretrained(s.output_dir / "model")
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(s.output_dir / "head.safetensors"))
        (s.output_dir / "head.json").write_text(
            json.dumps(
                {
                    "num_classes": head.num_classes,
                    "sub_centers": head.sub_centers,
                    "embedding_size": final.config.embedding_size,
                }
            )
        )
        (s.output_dir / "COMPLETE").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    s.trackers.close()
    acc.wait_for_everyone()


def _write_audit(output_dir: Path, process: int, epoch: int, digest: str, batches: int) -> None:
    """``data_audit/process_N.json``: per epoch, a digest of the labels this process trained on."""
    path = output_dir / "data_audit" / f"process_{process}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    audit = json.loads(path.read_text()) if path.is_file() else {}
    audit[str(epoch + 1)] = {"labels_sha1": digest, "batches": batches}
    path.write_text(json.dumps(audit, indent=1))


def train_batch(
    acc,
    model,
    head,
    optimizer,
    scheduler,
    batch: dict,
    stats: torch.Tensor,
    *,
    augmenter=None,
    rng: np.random.Generator | None = None,
    max_grad_norm: float = 0.0,
    compile_mode: str = "default",
    frontend: torch.nn.Module | None = None,
    crop_frames: int = 0,
) -> torch.Tensor:
    """One training batch: to the device, device augmentation, forward, backward, optimiser and scheduler
    steps (at the end of each accumulation), and the running loss sum and correct count in ``stats`` (2,).

    Nothing here waits for the device (tested with ``tests/sync_counter.py``): on a GPU the next batch is
    queued while this one runs. Returns the loss, still on the device. ``compile_mode``: the mode the
    model was compiled with (a CUDA-graph mode marks each batch as a new iteration).

    With a frozen encoder (``frontend``), ``model`` is the trained part (``MLSVModel.trained_part``): the
    encoder runs here, outside it, and a batch of contexts (``lengths``, ``positions``) is cut into crops of
    ``crop_frames`` frames (``cut_crops``); a batch from the feature cache holds the crops' ``states``.
    """
    runtime.step_begin(compile_mode)
    y = batch["labels"].to(acc.device, non_blocking=True)
    wav = lengths = positions = None
    if "states" in batch:  # cached crops (B', k, n, L, D) float16 -> (L, B' * k, n, D)
        states = batch["states"].to(acc.device, non_blocking=True).flatten(0, 1).permute(2, 0, 1, 3).float()
    else:
        wav = batch["waveforms"].to(acc.device, non_blocking=True)
        if "lengths" in batch:
            lengths = batch["lengths"].to(acc.device, non_blocking=True)
            positions = batch["positions"].to(acc.device, non_blocking=True)
        if augmenter is not None:
            wav = augmenter(wav, rng)
    with acc.accumulate(model, head):
        with acc.autocast():
            if wav is not None and frontend is None:  # the whole model (a trainable encoder)
                emb = model(wav).embeddings
            else:
                if wav is not None:
                    states, frames = frontend(wav, lengths)
                    if positions is not None:
                        states = cut_crops(states, frames, positions, crop_frames)
                emb = model(states).embeddings
        # the method's predictions: the margin on the target, not the inter-top-K penalty (which shapes the loss)
        loss, _, predicted = head(emb, y, return_predictions=True)
        acc.backward(loss)
        if acc.sync_gradients and max_grad_norm > 0:
            acc.clip_grad_norm_([*model.parameters(), *head.parameters()], max_grad_norm)
        optimizer.step()
        if acc.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        stats[0] += loss.detach() * len(y)
        stats[1] += (predicted == y).sum()
    return loss.detach()


def _progress(acc, cfg: TrainConfig, total: int, epoch: int):
    if not (cfg.log.progress and acc.is_local_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=f"{cfg.stage.name} epoch {epoch + 1}/{cfg.stage.epochs}",
        unit="batch",
        leave=False,
        dynamic_ncols=True,
    )


def _skipped(loader) -> int:
    """Files that failed to decode this epoch (skipped and counted; data.strict raises instead)."""
    bad = getattr(loader, "bad_files", [])
    if bad:
        log.warning("skipped %d undecodable files, e.g. %s", len(bad), bad[:3])
    return len(bad)
