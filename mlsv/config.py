"""Training configuration: typed dataclasses as schema and defaults, YAML files with one level of
``base:`` inheritance, and ``--set section.key=value`` overrides parsed as YAML values.

Unknown keys, wrong types, values outside a field's ``choices`` or ``bounds`` and ``[low, high]``
ranges that are not ordered (dataclass field metadata) are errors naming the key and the nearest valid one;
so are YAML syntax errors (naming the file and line). Derived values (number of classes, encoder width) are
computed elsewhere and never written back here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def _choice(default, *choices):
    """A field whose value (or each item, for a list) must be one of ``choices``."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"choices": choices})
    return field(default=default, metadata={"choices": choices})


def _bounded(default, *, low=None, high=None, above=None, below=None, interval=False):
    """A number (or each number of a list) within bounds: ``low``/``high`` inclusive, ``above``/``below``
    exclusive. ``interval``: the list is a ``[low, high]`` range (two numbers, the first not above the
    second)."""
    bounds = {k: v for k, v in dict(low=low, high=high, above=above, below=below).items() if v is not None}
    metadata = {"bounds": bounds, **({"interval": True} if interval else {})}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _interval(default: list, **bounds):
    """A ``[low, high]`` range, such as an SNR range in dB, with ``low <= high`` (and optional bounds on both)."""
    return _bounded(default, interval=True, **bounds)


@dataclass
class DataConfig:
    """Training and validation corpora and the crop stream."""

    train_manifest: str = ""  # empty: the synthetic corpus made by the recipe's prepare step
    validation_manifest: str = ""
    validation_trials: str = ""
    sample_rate: int = _bounded(16000, above=0)
    crop_seconds: float = _bounded(2.0, above=0)
    batch_size: int = _bounded(64, low=1)  # global batch per optimiser micro-step (summed over processes)
    num_workers: int = _bounded(2, low=0)
    speed_factors: list[float] = _bounded([1.0, 1.0, 1.0, 0.9, 1.1], above=0)
    streaming: bool = False
    strict: bool = False  # raise on an undecodable file instead of skipping it
    max_utterances: int = _bounded(0, low=0)  # 0: all
    eval_batch_seconds: float = _bounded(120.0, above=0)  # audio per evaluation batch
    eval_chunk_seconds: float = _bounded(0.0, low=0)  # 0: whole utterances
    # frozen encoder only (docs/training.md#context-crops): > 0 runs the encoder over contexts of up to this
    # many seconds of each utterance and cuts the training crops from their hidden states
    context_seconds: float = _bounded(0.0, low=0)
    crops_per_context: int = _bounded(1, low=1)  # crops cut from each context (data.batch_size counts crops)
    feature_cache: str = ""  # a folder: each context's hidden states computed once, stored as float16
    feature_copies: int = _bounded(1, low=1)  # cached contexts per utterance and speed factor (augmented copies)


@dataclass
class AugmentConfig:
    """MUSAN / RIR augmentation (docs/method.md#augmentation)."""

    probability: float = _bounded(0.6, low=0, high=1)
    where: str = _choice(
        "cpu", "cpu", "device"
    )  # "cpu" (loader workers) or "device" (batched tensor ops on the accelerator)
    noise_manifest: str = ""  # MUSAN-like manifest with a "category" column: noise, music, speech
    rir_manifest: str = ""
    kinds: list[str] = _choice(
        ["reverb", "noise", "music", "babble", "tv"], "reverb", "noise", "music", "babble", "tv", "band"
    )  # "band" (a telephone-like band limit, no bank) is opt-in
    noise_snr: list[float] = _interval([0.0, 15.0])  # dB, [low, high]
    music_snr: list[float] = _interval([5.0, 15.0])
    babble_snr: list[float] = _interval([13.0, 20.0])
    babble_speakers: list[int] = _interval([4, 7], low=1)  # speech sources summed, [fewest, most]
    band_low_hz: list[float] = _interval([200.0, 400.0], low=0)  # the band kind's lower edge, [low, high]
    band_high_hz: list[float] = _interval([3000.0, 4000.0], above=0)  # its upper edge


@dataclass
class ModelConfig:
    """The embedding model; maps onto ``MLSVConfig``."""

    encoder: str = "tiny-wavlm"  # a hub id, a local folder, or a built-in tiny config name
    encoder_type: str = ""  # model_type when building from a config (optional)
    random_init: bool = False  # build the encoder from its config with random weights
    layers: list[int] = field(default_factory=list)  # empty: all L+1 hidden states
    aggregation: str = _choice("lap", "lap", "superb", "last")
    lap_heads: int = _bounded(16, low=1)
    lap_channels: int = _bounded(512, low=1)
    lap_dropout: float = _bounded(0.1, low=0, below=1)
    backend: str = _choice("astp", "astp", "xvector", "ecapa", "mhfa")
    embedding_size: int = _bounded(192, low=1)
    backend_dropout: float = _bounded(0.1, low=0, below=1)
    ecapa_channels: int = _choice(512, 512, 1024)
    mhfa_heads: int = _bounded(64, low=1)
    mhfa_compression: int = _bounded(128, low=1)
    gradient_checkpointing: bool = False


@dataclass
class HeadConfig:
    """AAM-softmax with sub-centers and inter-top-K (docs/method.md#aam-softmax-head)."""

    scale: float = _bounded(30.0, above=0)
    margin: float = _bounded(0.3, low=0)
    sub_centers: int = _bounded(3, low=1)
    top_k: int = _bounded(5, low=0)
    penalty: float = _bounded(0.06, low=0)
    margin_schedule: str = _choice("log", "log", "cos", "exp", "linear", "constant")
    margin_start_epoch: float = 0.0
    margin_ramp_epochs: float = _bounded(20.0, low=0)


@dataclass
class OptimConfig:
    """Adam with L2 weight decay, named parameter groups, cosine warm-up restarts per step."""

    optimizer: str = _choice("adam", "adam", "adamw", "sgd")
    lr: float = _bounded(1e-3, above=0)  # peak lr of the backend and head groups
    min_lr: float = _bounded(1e-5, low=0)
    frontend_lr_scale: float = _bounded(1.0, low=0)  # frontend group's lr = lr * this
    backend_lr_scale: float = _bounded(1.0, low=0)  # aggregation + backend group's lr = lr * this (0: kept as they are)
    weight_decay: float = _bounded(5e-5, low=0)
    frontend_weight_decay: float = -1.0  # < 0: same as weight_decay
    warmup_ratio: float = _bounded(0.1, low=0, high=1)
    cycles: int = _bounded(1, low=1)
    cycle_gamma: float = _bounded(1.0, above=0)
    max_grad_norm: float = _bounded(0.0, low=0)  # 0: no clipping
    ema_decay: float = _bounded(0.0, low=0, below=1)  # > 0: keep an exponential moving average of the weights


@dataclass
class StageConfig:
    """One training stage."""

    name: str = "stage"
    init_from: str = ""  # previous stage's output folder (model + head)
    init_model: str = ""  # a trained model folder (save_pretrained): its weights, a new head on this data's speakers
    frontend_trainable: str = _choice("none", "none", "transformer", "all")
    layerdrop: float = _bounded(0.0, low=0, below=1)
    mask_time_prob: float = _bounded(0.0, low=0, high=1)
    epochs: int = _bounded(40, low=1)
    steps_per_epoch: int = _bounded(0, low=0)  # 0: one pass over the corpus
    # null / "auto": what accelerate is configured with (accelerate config, accelerate launch), else 1 / "no"
    grad_accum: int | None = _bounded(None, low=1)
    mixed_precision: str = field(default="auto", metadata={"choices": ("auto", "no", "bf16", "fp16", "fp8")})
    compile: bool = False  # torch.compile the model and head for the fixed training crops (mlsv.models.runtime)
    # torch.compile's mode when stage.compile is on; reduce-overhead and max-autotune add CUDA graphs on a GPU
    compile_mode: str = field(
        default="default",
        metadata={"choices": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")},
    )
    attention: str = field(default="sdpa", metadata={"choices": ("sdpa", "eager")})  # the encoder's attention
    seed: int = _bounded(42, low=0, high=2**32 - 1)  # torch, numpy and random take seeds in [0, 2**32)
    keep_best: int = _bounded(2, low=1)
    average_best: int = _bounded(1, low=0)  # average the N best checkpoints into the stage's final model
    validate_every: int = _bounded(1, low=1)  # epochs
    checkpoint_every_steps: int = _bounded(
        0, low=0
    )  # also checkpoint inside an epoch every N optimiser steps (0: per epoch)
    mean_utterances: int = _bounded(2000, low=0)  # training utterances embedded for the model's training mean


#: The trackers accelerate runs by name (``accelerate.utils.LoggerType`` without ``all``; a test keeps them in
#: step with the installed accelerate).
ACCELERATE_TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class LogConfig:
    # csv: metrics.csv (always written); neptune: mlsv.train.trackers.NeptuneTracker; the others: accelerate's
    trackers: list[str] = _choice(["csv"], "csv", "tensorboard", "wandb", "neptune", *ACCELERATE_TRACKERS[2:])
    project: str = "mlsv"  # the experiment / project name the trackers file runs under (Neptune: WORKSPACE/PROJECT)
    offline: bool = False
    progress: bool = True


@dataclass
class TrainConfig:
    """One stage's full configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    log: LogConfig = field(default_factory=LogConfig)


# ----------------------------------------------------------------------------------------------
# loading


def nearest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.0)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_type(value: Any, tp: Any, where: str) -> Any:
    """Validates ``value`` against annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return check_type(value, arm, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not of type {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r} ({type(value).__name__})")
        return [check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML reads '5e-5' (no dot) as a string; accept any float literal
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


_BOUNDS = {
    "low": (">=", lambda v, b: v >= b),
    "high": ("<=", lambda v, b: v <= b),
    "above": (">", lambda v, b: v > b),
    "below": ("<", lambda v, b: v < b),
}


def _check_choice(value: Any, f: dataclasses.Field, where: str) -> Any:
    """Validates ``value`` (each item of a list) against the field's ``metadata`` ``choices`` and
    ``bounds`` when it has them, and a list against ``interval`` (``[low, high]``, ``low <= high``)."""
    if isinstance(value, list):
        if f.metadata.get("interval") and (len(value) != 2 or value[0] > value[1]):
            shown = ", ".join(f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in value)
            raise ConfigError(f"{where}: [{shown}] must be [low, high] with low <= high")
        for i, item in enumerate(value):
            _check_choice(item, f, f"{where}[{i}]")
        return value
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{where}: {value!r} is not one of {', '.join(map(str, choices))}{nearest(str(value), map(str, choices))}"
        )
    for name, bound in f.metadata.get("bounds", {}).items() if value is not None else ():
        sign, ok = _BOUNDS[name]
        if not ok(value, bound):
            raise ConfigError(f"{where}: {value!r} must be {sign} {bound}")
    return value


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls, data: dict, where: str = ""):
    """Builds dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{nearest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, path)
        else:
            if value is False and "no" in fields[key].metadata.get("choices", ()):
                value = "no"  # YAML 1.1 reads a bare `no` as false
            kwargs[key] = _check_choice(check_type(value, tp, path), fields[key], path)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """A YAML file's contents (None when empty). A missing file, a folder, a file that is not UTF-8 text
    and a YAML syntax error are ConfigErrors naming the file (and the line: ``FILE:LINE: message``)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder: give the YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): is it a YAML file?") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(path, e)) from None


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """``FILE:LINE: problem`` for a YAML syntax error (line numbers from 1, as editors show them)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None)
    context = getattr(e, "context", None)
    if mark is None or problem is None:
        return f"{path}: not valid YAML: {' '.join(str(e).split())}"
    detail = f"{problem} ({context})" if context else problem
    return f"{path}:{mark.line + 1}: {detail} (column {mark.column + 1})"


def read_yaml(path: str | Path) -> dict:
    """Reads a YAML file, resolving one level of ``base:`` (relative to the file)."""
    path = Path(path)
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping (section: {{key: value}}), got a {type(data).__name__}"
        )
    base = data.pop("base", None)
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base must be a file name, got {base!r}")
        base_path = (path.parent / base).resolve()
        if not base_path.is_file() and not base_path.is_dir():
            raise ConfigError(f"{path}: base config not found: {base_path}")
        base_data = load_yaml_file(base_path, "base config") or {}
        if not isinstance(base_data, dict):
            raise ConfigError(
                f"{base_path} (the base of {path}): the top level must be a mapping "
                f"(section: {{key: value}}), got a {type(base_data).__name__}"
            )
        if "base" in base_data:
            raise ConfigError(f"{base_path}: only one level of 'base:' inheritance is allowed")
        data = _deep_merge(base_data, data)
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], yaml value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
        old = node.get(keys[-1])
        # a mapping given for a section sets those keys, keeping the section's others (a replaced section
        # would quietly fall back to the defaults for the keys it does not name)
        node[keys[-1]] = _deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=TrainConfig):
    """Loads a config file (or the defaults when ``path`` is None) with overrides applied."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    cfg = from_dict(cls, data)
    if isinstance(cfg, TrainConfig):
        _check_combinations(cfg, str(path or "config"))
    return cfg


def _check_combinations(cfg: TrainConfig, where: str) -> None:
    """Settings that are valid alone but not together."""
    if cfg.data.streaming and cfg.stage.steps_per_epoch == 0:
        raise ConfigError(
            f"{where}: data.streaming=true needs stage.steps_per_epoch > 0 (a stream has no length to make an epoch of)"
        )
    if cfg.stage.init_from and cfg.stage.init_model:
        raise ConfigError(
            f"{where}: stage.init_from (a stage's model and head, on its speakers) and stage.init_model "
            "(a model's weights, with a new head on this data's speakers) both choose the start: set one"
        )
    if cfg.optim.min_lr > cfg.optim.lr:
        raise ConfigError(
            f"{where}: optim.min_lr {cfg.optim.min_lr:g} is above optim.lr {cfg.optim.lr:g}: the "
            "schedule decays from lr to min_lr, so min_lr must be at most lr (equal: a constant lr)"
        )
    if bool(cfg.data.validation_manifest) != bool(cfg.data.validation_trials):
        given, missing = (
            ("validation_trials", "validation_manifest")
            if cfg.data.validation_trials
            else ("validation_manifest", "validation_trials")
        )
        raise ConfigError(
            f"{where}: data.{given} is set but data.{missing} is not: validation needs both (the "
            "manifest of the utterances its trial list names), or neither"
        )
    if cfg.optim.ema_decay > 0 and cfg.stage.average_best > 1:
        raise ConfigError(
            f"{where}: optim.ema_decay and stage.average_best {cfg.stage.average_best} both choose the "
            "final weights (the moving average, or the mean of the best checkpoints): set one"
        )
    if cfg.augment.probability > 0 and not cfg.augment.kinds:
        raise ConfigError(
            f"{where}: augment.kinds is empty but augment.probability is {cfg.augment.probability:g}: "
            "list the kinds to apply (reverb, noise, music, babble, tv, band), or set augment.probability=0 "
            "to train without augmentation"
        )
    if "band" in cfg.augment.kinds and cfg.augment.band_low_hz[1] >= cfg.augment.band_high_hz[0]:
        raise ConfigError(
            f"{where}: augment.band_low_hz {cfg.augment.band_low_hz} reaches augment.band_high_hz "
            f"{cfg.augment.band_high_hz}: the band's lower edge must stay below its upper edge"
        )
    _check_context_crops(cfg, where)


def _check_context_crops(cfg: TrainConfig, where: str) -> None:
    """Context crops and the feature cache: a frozen encoder, and a batch of whole contexts."""
    d = cfg.data
    if d.context_seconds == 0:
        for key, value, default in (
            ("crops_per_context", d.crops_per_context, 1),
            ("feature_cache", d.feature_cache, ""),
            ("feature_copies", d.feature_copies, 1),
        ):
            if value != default:
                raise ConfigError(
                    f"{where}: data.{key} needs data.context_seconds > 0 (the contexts crops are cut from)"
                )
        return
    if cfg.stage.frontend_trainable != "none":
        raise ConfigError(
            f"{where}: data.context_seconds cuts crops from the hidden states of a frozen encoder, but "
            f"stage.frontend_trainable is {cfg.stage.frontend_trainable!r}: set it to 'none', or "
            "data.context_seconds=0 to train on waveform crops"
        )
    if d.context_seconds < d.crop_seconds:
        raise ConfigError(
            f"{where}: data.context_seconds {d.context_seconds:g} is shorter than data.crop_seconds "
            f"{d.crop_seconds:g}: a context holds its crops"
        )
    if d.batch_size % d.crops_per_context:
        raise ConfigError(
            f"{where}: data.batch_size {d.batch_size} (crops) is not a multiple of data.crops_per_context "
            f"{d.crops_per_context}: a batch holds whole contexts"
        )
    if d.feature_cache and (d.streaming or cfg.augment.where == "device" and cfg.augment.probability > 0):
        culprit = "data.streaming" if d.streaming else "augment.where=device"
        raise ConfigError(
            f"{where}: data.feature_cache stores each context's hidden states once, which {culprit} "
            "cannot use (a stream has no fixed rows; device augmentation changes waveforms the cache no "
            "longer runs): drop one of them"
        )
    if d.feature_copies > 1 and not (cfg.augment.probability > 0 and cfg.augment.kinds):
        raise ConfigError(
            f"{where}: data.feature_copies {d.feature_copies} caches augmented copies, but augmentation is "
            "off (augment.probability 0): set data.feature_copies=1"
        )


def dump_config(cfg, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
