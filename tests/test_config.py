"""Typed configs: YAML, one level of base, --set overrides, errors naming the key."""

from __future__ import annotations

import pytest

from mlsv.config import ConfigError, TrainConfig, dump_config, load_config


def test_defaults_follow_the_paper():
    cfg = load_config()
    assert cfg.model.aggregation == "lap" and cfg.model.lap_heads == 16 and cfg.model.embedding_size == 192
    assert cfg.head.margin == 0.3 and cfg.head.sub_centers == 3 and cfg.head.top_k == 5
    assert cfg.data.speed_factors == [1.0, 1.0, 1.0, 0.9, 1.1]


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.001\nstage:\n  epochs: 40\n")
    (tmp_path / "s2.yaml").write_text("base: base.yaml\nstage:\n  epochs: 10\n")
    cfg = load_config(tmp_path / "s2.yaml", ["optim.lr=5e-5", "data.strict=false", "data.speed_factors=[1.0]"])
    assert cfg.stage.epochs == 10 and cfg.optim.lr == 5e-5
    assert cfg.data.strict is False and cfg.data.speed_factors == [1.0]
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg
    # a mapping for a whole section sets its keys and keeps the file's others
    cfg = load_config(tmp_path / "s2.yaml", ["stage={keep_best: 3}"])
    assert cfg.stage.epochs == 10 and cfg.stage.keep_best == 3


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    ("modle.aggregation=lap", "did you mean 'model'"),
    ("data.strict=maybe", "data.strict: expected true or false"),
    ("data.batch_size=1.5", "data.batch_size: expected int"),
    ("data.speed_factors=0.9", "data.speed_factors: expected a list"),
    ("optim", "must look like section.key=value"),
    # values outside a field's choices or bounds
    ("model.aggregation=lapp", "model.aggregation: 'lapp' is not one of lap, superb, last (did you mean 'lap'?)"),
    ("model.backend=ecpa", "model.backend: 'ecpa' is not one of astp, xvector, ecapa, mhfa"),
    ("stage.frontend_trainable=cnn", "stage.frontend_trainable: 'cnn' is not one of none, transformer, all"),
    ("optim.optimizer=lion", "optim.optimizer: 'lion' is not one of adam, adamw, sgd"),
    ("head.margin_schedule=sine", "head.margin_schedule: 'sine' is not one of log, cos, exp, linear, constant"),
    ("augment.where=gpu", "augment.where: 'gpu' is not one of cpu, device"),
    ("log.trackers=[csv,wandbb]", "log.trackers[1]: 'wandbb' is not one of csv, tensorboard, wandb, neptune"),
    ("augment.kinds=[noise,musik]", "augment.kinds[1]: 'musik' is not one of"),
    ("stage.grad_accum=0", "stage.grad_accum: 0 must be >= 1"),
    ("stage.epochs=0", "stage.epochs: 0 must be >= 1"),
    ("stage.validate_every=0", "stage.validate_every: 0 must be >= 1"),
    ("optim.lr=0", "optim.lr: 0.0 must be > 0"),
    ("optim.lr=-1", "optim.lr: -1.0 must be > 0"),
    ("data.crop_seconds=0", "data.crop_seconds: 0.0 must be > 0"),
    ("data.speed_factors=[1.0,0]", "data.speed_factors[1]: 0.0 must be > 0"),
    ("model.embedding_size=0", "model.embedding_size: 0 must be >= 1"),
    ("augment.probability=1.5", "augment.probability: 1.5 must be <= 1"),
    ("stage.layerdrop=1", "stage.layerdrop: 1.0 must be < 1"),
    # every float finite (a NaN or infinite value passed every bound and trained a whole epoch on NaN)
    ("optim.lr=.inf", "optim.lr: inf is not a finite number"),
    ("head.scale=.inf", "head.scale: inf is not a finite number"),
    ("head.margin_start_epoch=.nan", "head.margin_start_epoch: nan is not a finite number"),
    ("data.crop_seconds=.inf", "data.crop_seconds: inf is not a finite number"),
    ("data.speed_factors=[1.0,.nan]", "data.speed_factors[1]: nan is not a finite number"),
    ("optim.lr=-.inf", "optim.lr: -inf is not a finite number"),
    # the seed names its key
    ("stage.seed=-1", "stage.seed: -1 must be >= 0"),
    ("stage.seed=4294967296", "stage.seed: 4294967296 must be <= 4294967295"),
    # augmentation asked for with nothing to apply
    ("augment.kinds=[]", "augment.kinds is empty but augment.probability is 0.6"),
])
def test_bad_keys_types_and_values_name_the_key(override, message):
    """Checked when the config loads, before any model is built or any epoch runs."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_two_levels_of_base_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("stage:\n  epochs: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="one level"):
        load_config(tmp_path / "c.yaml")


def test_unknown_key_in_a_file_names_it(tmp_path):
    (tmp_path / "x.yaml").write_text("head:\n  scal: 30\n")
    with pytest.raises(ConfigError, match="head.scal.*did you mean 'scale'"):
        load_config(tmp_path / "x.yaml")


def test_train_config_is_a_dataclass_tree():
    assert isinstance(load_config(), TrainConfig)
