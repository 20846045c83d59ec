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
import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mlsv.config import ConfigError, TrainConfig, dump_config, load_config, load_yaml_file, to_dict
from mlsv.data.augment import BatchAugmenter
from mlsv.data.loader import build_eval_loader, build_train_loader, speed_perturb_classes
from mlsv.data.manifest import iter_rows, load_labels, sample_manifest, save_labels, speaker_labels
from mlsv.data.trials import read_trials
from mlsv.models import TINY_ENCODERS, MLSVModel, SubCenterAAMSoftmax, runtime
from mlsv.models.loading import min_samples
from mlsv.models.loading import model_source as _model_source
from mlsv.scoring.backend import cosine_scores
from mlsv.scoring.embeddings import EmbeddingTable, pool_rows
from mlsv.scoring.extract import extract_embeddings
from mlsv.scoring.metrics import eer
from mlsv.train import checkpoint as ckpt
from mlsv.train.ema import WeightAverage
from mlsv.train.schedules import lr_at, margin_at

log = logging.getLogger("mlsv.train")

PROGRESS_EVERY = 50  # batches between the progress bar's loss readings (each waits for the device)

MODEL_SETTINGS = ("layers", "aggregation", "lap_heads", "lap_channels", "lap_dropout", "backend",
                  "embedding_size", "backend_dropout", "ecapa_channels", "mhfa_heads", "mhfa_compression")


def build_model(cfg: TrainConfig) -> MLSVModel:
    """A new model from the config's model section (pre-trained or random-init encoder). An encoder that
    cannot be found or downloaded is a ConfigError naming ``model.encoder``."""

    m = cfg.model
    settings = {k: getattr(m, k) for k in MODEL_SETTINGS}
    settings["layers"] = settings["layers"] or None
    hint = ("give a hub id (such as microsoft/wavlm-base-plus), a local model folder or a built-in tiny config "
            f"name ({', '.join(sorted(TINY_ENCODERS))})")
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
        raise ConfigError(f"data.crop_seconds {data.crop_seconds:g} gives {crop} samples at {data.sample_rate} Hz, "
                          f"fewer than the encoder's minimum of {shortest} ({shortest / data.sample_rate:.4f} s): "
                          "raise it")


def load_for_finetuning(folder: Path) -> MLSVModel:
    """``stage.init_model``: a trained model's weights, to train on other speakers with a new head. What
    evaluation learnt about its embeddings (training mean, AS-norm cohort, calibration, thresholds,
    metrics) no longer holds once training moves them, so it is dropped; the stage computes a new mean."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"stage.init_model: {folder} is not a model folder (no config.json); give a folder "
                                "that save_pretrained wrote, e.g. runs/NAME/model, or a downloaded hub snapshot")
    model = MLSVModel.from_pretrained(folder)
    c = model.config
    c.training_mean = c.calibration = c.threshold = c.evaluation = None
    model.cohort_embeddings = model.cohort_embeddings[:0]
    c.cohort_size = 0
    return model


# torch.compile backend for stage.compile; the tests set "aot_eager" (graphs traced, no kernels generated)
COMPILE_BACKEND = "inductor"


def compile_for_training(model: MLSVModel, head: torch.nn.Module, backend: str | None = None,
                         mode: str = "default") -> None:
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
RESUMABLE_CHANGES = ("log.", "data.num_workers", "data.eval_batch_seconds", "stage.keep_best",
                     "stage.checkpoint_every_steps")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_same_run(cfg: TrainConfig, output_dir: Path) -> None:
    """An output folder belongs to one config: resuming or skipping a run made with other settings would
    mix them (a checkpoint's batches counted under another batch size) or keep stale results. Raises
    ConfigError naming the changed keys; settings in ``RESUMABLE_CHANGES`` may change. A folder without
    results (a run that stopped before its first checkpoint, e.g. on a mistyped path) is free."""
    saved = output_dir / "config.yaml"
    if not saved.is_file():
        return
    if not ((output_dir / "COMPLETE").exists() or ckpt.checkpoint_dirs(output_dir / "checkpoints")):
        return
    try:
        load_yaml_file(saved)
    except ConfigError as e:  # damaged or edited by hand: not silently taken for another version's file
        raise ConfigError(f"{e}; it holds the settings of the run in {output_dir}: restore it, or delete it to "
                          "resume without comparing settings") from None
    try:
        before = _flat(to_dict(load_config(saved)))
    except ConfigError as e:  # written by another version of mlsv: nothing to compare with
        log.warning("cannot compare with %s (%s)", saved, e)
        return
    now = _flat(to_dict(cfg))
    changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
               if before.get(k) != now.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise ConfigError(f"{output_dir} holds a run made with other settings ({'; '.join(changed[:6])}"
                          f"{'; ...' if len(changed) > 6 else ''}): give another output folder, or delete "
                          "this one to start again")


def _find_unused_parameters(acc) -> None:
    """LayerDrop skips layers (eagerly), whose parameters then get no gradient in that step; DDP has to
    look for such parameters, or it fails on the next step. Set on the accelerator before ``prepare``."""
    from accelerate.utils import DistributedDataParallelKwargs

    if acc.ddp_handler is None:
        acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    else:
        acc.ddp_handler.find_unused_parameters = True


def _resolve(path: str, base: Path | None) -> str:
    if not path or base is None or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def _param_groups(model: MLSVModel, head: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    o = cfg.optim
    frontend = [p for p in model.frontend.parameters() if p.requires_grad]
    backend = [p for n, p in model.named_parameters() if not n.startswith("frontend.") and p.requires_grad]
    groups = [
        {"name": "backend", "params": backend, "lr": o.lr * o.backend_lr_scale, "weight_decay": o.weight_decay},
        {"name": "head", "params": list(head.parameters()), "lr": o.lr, "weight_decay": o.weight_decay},
    ]
    if frontend:
        wd = o.weight_decay if o.frontend_weight_decay < 0 else o.frontend_weight_decay
        groups.insert(0, {"name": "frontend", "params": frontend, "lr": o.lr * o.frontend_lr_scale,
                          "weight_decay": wd})
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


class _Trackers:
    """metrics.csv always; TensorBoard / W&B / Neptune through accelerate's trackers when asked."""

    def __init__(self, accelerator, cfg: TrainConfig, output_dir: Path):
        self.acc, self.path = accelerator, output_dir / "metrics.csv"
        self.neptune = None
        if not accelerator.is_main_process:
            return
        names = [t for t in cfg.log.trackers if t not in ("csv", "neptune")]
        if names:
            if cfg.log.offline:
                os.environ.setdefault("WANDB_MODE", "offline")
            accelerator.init_trackers(cfg.log.project, config=_public_config(cfg))
        if "neptune" in cfg.log.trackers:
            import neptune  # lazy: optional dependency

            mode = "offline" if cfg.log.offline else "async"
            self.neptune = neptune.init_run(project=cfg.log.project, mode=mode)  # token from NEPTUNE_API_TOKEN
            self.neptune["parameters"] = _public_config(cfg)

    def log(self, row: dict, step: int) -> None:
        if not self.acc.is_main_process:
            return
        kept = []
        if self.path.exists():  # a run killed after logging an epoch but before its checkpoint redoes it
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["epoch"]) < row["epoch"]]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerows([*kept, row])
        os.replace(tmp, self.path)
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}
        if self.acc.trackers:
            self.acc.log(numeric, step=step)
        if self.neptune is not None:
            for k, v in numeric.items():
                self.neptune[f"train/{k}"].append(v, step=step)

    def close(self):
        # the trackers only: accelerate's end_training() would also tear down the process group, which
        # the recipe's later steps still use
        if self.acc.is_main_process:
            for tracker in self.acc.trackers:
                tracker.finish()
            if self.neptune is not None:
                self.neptune.stop()


def _public_config(cfg: TrainConfig) -> dict:
    """The config as logged: flat ``section/key`` values (no secrets live in configs)."""
    return {key.replace(".", "/"): v if isinstance(v, (int, float, str, bool)) else str(v)
            for key, v in _flat(to_dict(cfg)).items()}


def run_stage(cfg: TrainConfig, output_dir: str | Path, *, config_dir: Path | None = None,
              accelerator=None) -> Path:
    """Trains one stage; returns ``output_dir``. Resumes when checkpoints exist; does nothing if complete."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed


    output_dir = Path(output_dir)
    check_same_run(cfg, output_dir)
    if (output_dir / "COMPLETE").is_file():
        log.info("%s is complete; skipping", output_dir)
        return output_dir
    st, data = cfg.stage, cfg.data
    train_manifest = _resolve(data.train_manifest, config_dir)
    if not train_manifest:
        raise ValueError("data.train_manifest is empty: give a training manifest (mlsv prepare ...)")
    if data.validation_manifest and data.validation_trials:
        check_validation_trials(_resolve(data.validation_manifest, config_dir), _resolve(data.validation_trials,
                                                                                           config_dir))
    if accelerator is None:
        trackers = [t for t in cfg.log.trackers if t not in ("csv", "neptune")]
        accelerator = Accelerator(mixed_precision=st.mixed_precision, gradient_accumulation_steps=st.grad_accum,
                                  log_with=trackers or None, project_dir=str(output_dir))
    acc = accelerator
    if st.layerdrop > 0 and st.frontend_trainable != "none":
        _find_unused_parameters(acc)
    if not acc.is_main_process:
        logging.getLogger("mlsv").setLevel(logging.WARNING)  # one process reports progress
    set_seed(st.seed, device_specific=False)
    if acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, output_dir / "config.yaml")
    acc.wait_for_everyone()

    # -- labels, model and head (from the previous stage when init_from is set) -------------------------
    init_from = Path(_resolve(st.init_from, config_dir)) if st.init_from else None
    if init_from is not None:
        if not (init_from / "COMPLETE").is_file():
            raise FileNotFoundError(f"stage.init_from: {init_from} is not a completed stage")
        labels = load_labels(init_from / "labels.json")
        model = MLSVModel.from_pretrained(init_from / "model")
        head_meta = json.loads((init_from / "head.json").read_text())
        n_classes = head_meta["num_classes"]  # preserved: the speed-perturbation classes stay negatives
    else:
        labels = speaker_labels(train_manifest)
        model = load_for_finetuning(Path(_resolve(st.init_model, config_dir))) if st.init_model else build_model(cfg)
        n_classes = speed_perturb_classes(len(labels), data.speed_factors)
    check_crop_length(model, data)
    if acc.is_main_process:
        save_labels(labels, output_dir / "labels.json")
    needed = speed_perturb_classes(len(labels), data.speed_factors)
    if needed > n_classes:
        raise ValueError(f"data.speed_factors need {needed} classes but the head from {init_from} has {n_classes}")
    model.configure_training(trainable=st.frontend_trainable, layerdrop=st.layerdrop,
                             mask_time_prob=st.mask_time_prob,
                             gradient_checkpointing=cfg.model.gradient_checkpointing)
    runtime.set_attention(model, st.attention)  # not saved with the model: set for every stage
    h = cfg.head
    head = SubCenterAAMSoftmax(model.config.embedding_size, n_classes, scale=h.scale, margin=h.margin,
                               sub_centers=h.sub_centers, top_k=h.top_k, penalty=h.penalty)
    if init_from is not None:
        state = load_file(str(init_from / "head.safetensors"))
        if state["weight"].shape != head.weight.shape:
            raise ValueError(f"head shape {tuple(state['weight'].shape)} from {init_from} does not match "
                             f"{tuple(head.weight.shape)} (head.sub_centers or the embedding size changed)")
        head.load_state_dict(state)
    if st.compile:  # in place, before prepare: DDP, checkpoints and save_pretrained see the same names
        compile_for_training(model, head, mode=st.compile_mode)

    def loader_for(epoch: int, start_batch: int = 0):
        return build_train_loader(train_manifest, data, cfg.augment, labels=labels, epoch=epoch, seed=st.seed,
                                  process_index=acc.process_index, num_processes=acc.num_processes,
                                  start_batch=start_batch)

    first = loader_for(0)
    # whole accumulation cycles only: a partial one would carry its gradients into the next epoch, which a
    # checkpoint does not hold (a resumed run would differ), and an epoch shorter than one would not step
    batches_per_epoch = st.steps_per_epoch * st.grad_accum if st.steps_per_epoch > 0 \
        else len(first) // st.grad_accum * st.grad_accum
    if st.steps_per_epoch == 0 and 0 < len(first) < st.grad_accum:
        raise ValueError(f"stage.grad_accum {st.grad_accum} needs {st.grad_accum} batches per optimiser step, but "
                         f"{train_manifest} gives {len(first)} per epoch and process; lower it or data.batch_size")
    if st.steps_per_epoch > 0 and not data.streaming and len(first) < batches_per_epoch:
        raise ValueError(f"stage.steps_per_epoch {st.steps_per_epoch} needs {batches_per_epoch} batches per "
                         f"epoch, but {train_manifest} gives {len(first)} per process; lower it (0: one pass)")
    if batches_per_epoch == 0:
        raise ValueError(f"no full batch in an epoch: {train_manifest} gives each of the {acc.num_processes} "
                         f"process(es) {len(first.dataset._share())} utterances, fewer than a batch of "
                         f"{first.batch_size} per process; lower data.batch_size")
    steps_per_epoch = max(batches_per_epoch // st.grad_accum, 1)
    total_steps = steps_per_epoch * st.epochs
    o = cfg.optim
    optimizer = _optimizer(_param_groups(model, head, cfg), cfg, acc.device)
    lr_factor = lambda step: lr_at(step, total_steps, peak=1.0, floor=o.min_lr / o.lr,  # noqa: E731
                                   warmup_ratio=o.warmup_ratio, cycles=o.cycles, gamma=o.cycle_gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # the scheduler is stepped by hand once per optimiser step (accelerate's wrapper would step it once per
    # process), and checkpointed with the rest of the state
    model, head, optimizer = acc.prepare(model, head, optimizer)
    acc.register_for_checkpointing(scheduler)
    ema = None
    if o.ema_decay > 0:
        # a deep copy: with stage.compile it is not compiled (Module.__getstate__ drops the compiled call), as
        # the average only ever evaluates
        ema = WeightAverage(acc.unwrap_model(model), o.ema_decay)
        acc.register_for_checkpointing(ema)

    device_augmenter = None
    if cfg.augment.where == "device" and cfg.augment.probability > 0:

        aug_cfg = dataclasses.replace(cfg.augment, noise_manifest=_resolve(cfg.augment.noise_manifest, config_dir),
                                      rir_manifest=_resolve(cfg.augment.rir_manifest, config_dir))
        device_augmenter = BatchAugmenter(aug_cfg, sample_rate=data.sample_rate, device=acc.device, bank_seed=st.seed)

    # -- resume ------------------------------------------------------------------------------------------
    ckpt_root = output_dir / "checkpoints"
    start_epoch, skip_batches, global_step = 0, 0, 0
    # a mid-epoch checkpoint's running (loss sum, correct, utterances) over all processes, and per process its
    # data-audit digest and skipped files so far
    partial, audits, bad_files = None, None, None
    done = ckpt.checkpoint_dirs(ckpt_root)
    if done:
        ckpt.load_checkpoint(acc, done[-1], done[-2] if len(done) > 1 else None)
        meta = ckpt.read_meta(done[-1])
        start_epoch, skip_batches, global_step = meta["epoch"], meta["batches_in_epoch"], meta["global_step"]
        partial, audits, bad_files = meta.get("epoch_totals"), meta.get("audits"), meta.get("bad_files")
        if skip_batches >= batches_per_epoch:
            start_epoch, skip_batches, partial, audits, bad_files = start_epoch + 1, 0, None, None, None
        log.info("resuming from %s (epoch %d, step %d)", done[-1], start_epoch, global_step)

    trackers = _Trackers(acc, cfg, output_dir)
    unwrapped_head = acc.unwrap_model(head)
    eval_model = lambda: ema.module if ema is not None else acc.unwrap_model(model)  # noqa: E731
    graph_mode = st.compile_mode if st.compile else "default"  # what train_batch marks per batch
    for epoch in range(start_epoch, st.epochs):
        t0 = time.time()
        # a resumed epoch starts at the batch after its checkpoint (map-style: the ones before are not decoded)
        loader = first if epoch == 0 and not skip_batches else loader_for(epoch, skip_batches)
        model.train()
        head.train()
        stats, seen = torch.zeros(2, device=acc.device), 0  # loss sum, correct (on the device); utterances
        if partial is not None and skip_batches and acc.is_main_process:  # the batches before the checkpoint
            stats, seen = torch.tensor(partial[:2], device=acc.device), int(partial[2])
        # what this process trained on, for the data audit: a chain of SHA-1 digests over the batches' labels,
        # which a mid-epoch checkpoint carries on, as it does the files skipped before it
        audit = b""
        if skip_batches and audits and len(audits) == acc.num_processes:
            audit = bytes.fromhex(audits[acc.process_index])
            loader.note_bad_files(bad_files[acc.process_index] if bad_files else [])
        progress = _progress(acc, cfg, batches_per_epoch, epoch)
        if progress is not None:
            progress.update(skip_batches)
        batches_done = skip_batches
        for i, batch in enumerate(itertools.islice(loader, batches_per_epoch - skip_batches), start=skip_batches):
            audit = hashlib.sha1(audit + batch["labels"].numpy().tobytes()).digest()
            # device augmentation's host draws: per batch, so a resumed epoch draws what the first run would
            # (its own spawn key: the crop at share place i draws from [seed, epoch, process, i] without one)
            aug_rng = np.random.default_rng(np.random.SeedSequence([st.seed, epoch, acc.process_index, i],
                                                                   spawn_key=(2,)))
            unwrapped_head.set_margin(margin_at(global_step / steps_per_epoch, margin=h.margin, kind=h.margin_schedule,
                                                start_epoch=h.margin_start_epoch, ramp_epochs=h.margin_ramp_epochs))
            loss = train_batch(acc, model, head, optimizer, scheduler, batch, stats, augmenter=device_augmenter,
                               rng=aug_rng, max_grad_norm=o.max_grad_norm,
                               compile_mode=graph_mode)
            seen += len(batch["labels"])
            batches_done = i + 1
            if acc.sync_gradients:
                global_step += 1
                if ema is not None:
                    ema.update(acc.unwrap_model(model))
                if st.checkpoint_every_steps and global_step % st.checkpoint_every_steps == 0 \
                        and batches_done < batches_per_epoch:
                    totals = acc.reduce(torch.cat([stats, stats.new_tensor([seen])]), reduction="sum").tolist()
                    ckpt.save_checkpoint(acc, ckpt_root, f"step_{global_step:08d}",
                                         {"epoch": epoch, "batches_in_epoch": batches_done,
                                          "global_step": global_step, "epoch_totals": totals,
                                          "audits": gather_object([audit.hex()]),
                                          "bad_files": gather_object([loader.bad_files])})
            if progress is not None:
                progress.update(1)
                if batches_done % PROGRESS_EVERY == 0 or batches_done == batches_per_epoch:
                    # reads the loss back: the only wait for the device, once in PROGRESS_EVERY batches
                    progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}",
                                         m=f"{unwrapped_head.margin:.3f}")
        if progress is not None:
            progress.close()
        skip_batches, partial, audits, bad_files = 0, None, None, None
        total = acc.reduce(torch.cat([stats, stats.new_tensor([seen, _skipped(loader)])]), reduction="sum").tolist()
        row = {"epoch": epoch + 1, "step": global_step,
               "loss": total[0] / total[2] if total[2] > 0 else float("nan"),
               "accuracy": total[1] / total[2] if total[2] > 0 else float("nan"),
               "lr": scheduler.get_last_lr()[-1], "margin": unwrapped_head.margin,
               "skipped_files": int(total[3]), "seconds": round(time.time() - t0, 2)}
        val_eer = None
        if data.validation_manifest and data.validation_trials and (
                (epoch + 1) % st.validate_every == 0 or epoch + 1 == st.epochs):
            with eager(eval_model()) as m:
                val_eer = validation_eer(m, _resolve(data.validation_manifest, config_dir),
                                         _resolve(data.validation_trials, config_dir), acc, data)
        row["validation_eer"] = val_eer
        _write_audit(output_dir, acc.process_index, epoch, audit.hex(), batches_done)
        trackers.log(row, step=global_step)
        if acc.is_main_process:
            log.info("epoch %d: %s", epoch + 1, json.dumps(row))
        ckpt.save_checkpoint(acc, ckpt_root, f"step_{global_step:08d}",
                             {"epoch": epoch, "batches_in_epoch": batches_per_epoch, "global_step": global_step,
                              "validation_eer": val_eer, "loss": row["loss"]})
        if acc.is_main_process:
            ckpt.prune_checkpoints(ckpt_root, max(st.keep_best, st.average_best))  # what averaging needs
        acc.wait_for_everyone()

    # -- the stage's final model ---------------------------------------------------------------------------
    final = acc.unwrap_model(model)
    if ema is not None:
        final.load_state_dict(ema.module.state_dict())
    elif st.average_best > 1:
        best = ckpt.best_checkpoints(ckpt_root, st.average_best)
        final.load_state_dict(ckpt.average_checkpoints(best, "model.safetensors"))
        unwrapped_head.load_state_dict(ckpt.average_checkpoints(best, "model_1.safetensors"))
        log.info("averaged %d best checkpoints: %s", len(best), [p.name for p in best])
    with eager(final):
        final.config.training_mean = training_mean(final, train_manifest, acc, data, st.mean_utterances,
                                                   output_dir)
    if acc.is_main_process:
        final.save_pretrained(output_dir / "model")
        save_file({k: v.contiguous() for k, v in unwrapped_head.state_dict().items()},
                  str(output_dir / "head.safetensors"))
        (output_dir / "head.json").write_text(json.dumps({
            "num_classes": unwrapped_head.num_classes, "sub_centers": unwrapped_head.sub_centers,
            "embedding_size": final.config.embedding_size}))
        (output_dir / "COMPLETE").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    trackers.close()
    acc.wait_for_everyone()
    return output_dir


def _write_audit(output_dir: Path, process: int, epoch: int, digest: str, batches: int) -> None:
    """``data_audit/process_N.json``: per epoch, a digest of the labels this process trained on."""
    path = output_dir / "data_audit" / f"process_{process}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    audit = json.loads(path.read_text()) if path.is_file() else {}
    audit[str(epoch + 1)] = {"labels_sha1": digest, "batches": batches}
    path.write_text(json.dumps(audit, indent=1))


def train_batch(acc, model, head, optimizer, scheduler, batch: dict, stats: torch.Tensor, *, augmenter=None,
                rng: np.random.Generator | None = None, max_grad_norm: float = 0.0,
                compile_mode: str = "default") -> torch.Tensor:
    """One training batch: to the device, device augmentation, forward, backward, optimiser and scheduler
    steps (at the end of each accumulation), and the running loss sum and correct count in ``stats`` (2,).

    Nothing here waits for the device (tested with ``tests/sync_counter.py``): on a GPU the next batch is
    queued while this one runs. Returns the loss, still on the device. ``compile_mode``: the mode the
    model was compiled with (a CUDA-graph mode marks each batch as a new iteration).
    """
    runtime.step_begin(compile_mode)
    wav = batch["waveforms"].to(acc.device, non_blocking=True)
    y = batch["labels"].to(acc.device, non_blocking=True)
    if augmenter is not None:
        wav = augmenter(wav, rng)
    with acc.accumulate(model, head):
        with acc.autocast():
            emb = model(wav).embeddings
        loss, logits = head(emb, y)
        acc.backward(loss)
        if acc.sync_gradients and max_grad_norm > 0:
            acc.clip_grad_norm_([*model.parameters(), *head.parameters()], max_grad_norm)
        optimizer.step()
        if acc.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        stats[0] += loss.detach() * len(y)
        stats[1] += (logits.argmax(-1) == y).sum()
    return loss.detach()


def _progress(acc, cfg: TrainConfig, total: int, epoch: int):
    if not (cfg.log.progress and acc.is_local_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{cfg.stage.name} epoch {epoch + 1}/{cfg.stage.epochs}", unit="batch",
                leave=False, dynamic_ncols=True)


def _skipped(loader) -> int:
    """Files that failed to decode this epoch (skipped and counted; data.strict raises instead)."""
    bad = getattr(loader, "bad_files", [])
    if bad:
        log.warning("skipped %d undecodable files, e.g. %s", len(bad), bad[:3])
    return len(bad)


def _embed_manifest(model, manifest: str, acc, data):
    """Embeds a manifest split across processes; every process gets the whole table back. Undecodable
    files and files too short for the encoder are skipped and logged, as in training (a trial that
    names one is then left out); with ``data.strict`` they stop the run, naming the file."""
    from accelerate.utils import gather_object


    loader = build_eval_loader(manifest, batch_seconds=data.eval_batch_seconds, chunk_seconds=data.eval_chunk_seconds,
                               sample_rate=data.sample_rate, process_index=acc.process_index,
                               num_processes=acc.num_processes, skip_bad=not data.strict,
                               min_samples=min_samples(model.config))
    table = extract_embeddings(model, loader, device=acc.device)
    parts = gather_object([(table.ids.tolist(), table.embeddings, table.durations)]) \
        if acc.num_processes > 1 else [(table.ids.tolist(), table.embeddings, table.durations)]
    return merge_parts(parts)


def merge_parts(parts: list[tuple[list[str], np.ndarray, np.ndarray]]):
    """Per-process (ids, embeddings, durations) -> one table. An utterance cut into chunks may have been
    embedded in parts by several processes (evaluation batches are dealt by chunk): its rows become their
    duration-weighted mean (the weights the embedder uses within a process) with the summed duration."""

    ids = [u for p in parts for u in p[0]]
    if not ids:
        return EmbeddingTable(np.array([], dtype=str), np.zeros((0, 0), np.float32), np.zeros(0, np.float32))
    emb = np.concatenate([p[1] for p in parts if len(p[0])])
    dur = np.concatenate([p[2] for p in parts if len(p[0])])
    if len(set(ids)) < len(ids):
        return pool_rows(ids, emb, dur)
    return EmbeddingTable(np.array(ids), emb, np.asarray(dur, np.float32))


def _subset_manifest(manifest: str, limit: int, out: Path, acc, seed: int = 0) -> str:
    """A seeded random subset of at most ``limit`` rows (``sample_manifest``), written by the main process
    while the others wait; every process gets its path."""
    from accelerate.utils import broadcast_object_list


    chosen = [str(sample_manifest(manifest, limit, out, seed)) if acc.is_main_process else None]
    if acc.num_processes > 1:
        broadcast_object_list(chosen)
    acc.wait_for_everyone()
    return chosen[0]


def _check_trial_ids(trials, listed: set[str], manifest: str, trials_path: str) -> None:
    """Raises KeyError when trials name ids that ``manifest`` does not list (another corpus's trial list)."""
    unknown = list(dict.fromkeys(u for u in [*trials.enroll, *trials.test] if u not in listed))
    if unknown:
        raise KeyError(f"data.validation_trials {trials_path}: {len(unknown)} ids are not in data.validation_manifest "
                       f"{manifest}, e.g. {', '.join(map(str, unknown[:5]))}: give the trial list made for that "
                       "manifest")


def check_validation_trials(manifest: str, trials_path: str) -> None:
    """Before training: the validation trial list reads and names only utterances of the validation manifest
    (checked again after each epoch's embedding, which would otherwise find out after the first epoch)."""

    if not Path(manifest).is_file() and not Path(manifest).is_dir():
        raise FileNotFoundError(f"data.validation_manifest: {manifest} not found")
    _check_trial_ids(read_trials(trials_path), {str(row["id"]) for _, row in iter_rows(manifest)}, manifest,
                     trials_path)


def validation_eer(model, manifest: str, trials_path: str, acc, data) -> float:
    """EER (%) of mean-subtracted cosine scores on the validation trials (never a test list)."""

    table = _embed_manifest(model, manifest, acc, data)
    trials = read_trials(trials_path)
    known = set(table.ids.tolist())
    keep = np.array([e in known and t in known for e, t in zip(trials.enroll, trials.test)], dtype=bool)
    if not keep.all():  # their files failed to decode or were too short (skipped above), or are not listed
        _check_trial_ids(trials, {str(row["id"]) for _, row in iter_rows(manifest)}, manifest, trials_path)
        log.warning("validation: %d of %d trials name a skipped file and are left out", (~keep).sum(), len(keep))
    x = table.embeddings - table.embeddings.mean(0, keepdims=True)
    scores = cosine_scores(x[table.lookup(trials.enroll[keep])], x[table.lookup(trials.test[keep])])
    return float(eer(scores, trials.labels[keep])[0])


def training_mean(model, manifest: str, acc, data, limit: int, output_dir: Path) -> list[float]:
    """Mean embedding of up to ``limit`` training utterances (full length, eval mode; 0: all)."""
    if limit:
        manifest = _subset_manifest(manifest, limit, output_dir / "mean_utterances.jsonl", acc)
    table = _embed_manifest(model, manifest, acc, data)
    if not len(table):
        return [0.0] * model.config.embedding_size
    mean = table.embeddings.mean(0)
    if not np.isfinite(mean).all():
        bad = table.ids[~np.isfinite(table.embeddings).all(1)].tolist()
        raise ValueError(f"the model gives non-finite embeddings (has training diverged?), e.g. for {bad[:5]}")
    return [float(v) for v in mean]
