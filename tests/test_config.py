"""Typed configs (mlsv.config): YAML, one level of base, --set overrides, errors naming the key, and YAML
mistakes naming the file and line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, run_train_py

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


@pytest.mark.parametrize(
    "override,message",
    [
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
    ],
)
def test_bad_keys_types_and_values_name_the_key(override, message):
    """Checked when the config loads, before any model is built or any epoch runs."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_the_band_kind_needs_no_bank_but_an_ordered_band():
    assert load_config(None, ["augment.kinds=[band]"]).augment.kinds == ["band"]
    with pytest.raises(ConfigError, match="augment.band_low_hz .* must stay below its upper edge"):
        load_config(None, ["augment.kinds=[noise,band]", "augment.band_low_hz=[200,3500]"])


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


# -- YAML mistakes named by file and line; values checked against each other ---------------------------------


def test_yaml_mistakes_name_the_file_and_line(tmp_path, capsys):
    (tmp_path / "syntax.yaml").write_text("data:\n  batch_size: 4\n   bad_indent: [\n")
    with pytest.raises(ConfigError, match=r"syntax\.yaml:3: mapping values are not allowed here"):
        load_config(tmp_path / "syntax.yaml")
    rc, err = run_train_py(["--config", str(tmp_path / "syntax.yaml"), "--output-dir", str(tmp_path / "x")], capsys)
    assert rc == 2 and err.startswith(f"train.py: error: {tmp_path / 'syntax.yaml'}:3: ") and "Traceback" not in err
    (tmp_path / "latin1.yaml").write_bytes("stage:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")
    rc, err = run_train_py(["--config", str(tmp_path), "--output-dir", str(tmp_path / "x")], capsys)  # a folder
    assert rc == 2 and "is a folder: give the YAML file" in err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "child.yaml").write_text("base: list.yaml\n")
    with pytest.raises(ConfigError, match=r"list\.yaml \(the base of .*child\.yaml\): the top level must be a mapping"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "recipe.yaml").write_text("steps:\n  - {name: a, train: x.yaml\n")
    rc, err = run_train_py(["--config", str(tmp_path / "recipe.yaml")], capsys)
    assert rc == 2 and f"{tmp_path / 'recipe.yaml'}:3: " in err


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["augment.noise_snr=[15, 0]"], "augment.noise_snr: [15, 0] must be [low, high] with low <= high"),
        (["augment.noise_snr=[5]"], "augment.noise_snr: [5] must be [low, high] with low <= high"),
        (["augment.music_snr=[20, 5, 1]"], "augment.music_snr: [20, 5, 1] must be [low, high]"),
        (["augment.babble_snr=[20, 13]"], "augment.babble_snr: [20, 13] must be [low, high]"),
        (["augment.babble_speakers=[7, 4]"], "augment.babble_speakers: [7, 4] must be [low, high]"),
        (["augment.babble_speakers=[0, 0]"], "augment.babble_speakers[0]: 0 must be >= 1"),
        (["optim.min_lr=1"], "optim.min_lr 1 is above optim.lr 0.001"),
        (["data.validation_trials=t.txt"], "data.validation_trials is set but data.validation_manifest is not"),
        (["data.validation_manifest=v.jsonl"], "data.validation_manifest is set but data.validation_trials is not"),
        (["head.penalty=-1"], "head.penalty: -1.0 must be >= 0"),
    ],
)
def test_config_values_checked_at_load(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)


def test_equal_bounds_and_lrs_are_fine():
    cfg = load_config(None, ["augment.noise_snr=[5, 5]", "optim.lr=1e-4", "optim.min_lr=1e-4", "head.penalty=0"])
    assert cfg.augment.noise_snr == [5.0, 5.0] and cfg.optim.min_lr == cfg.optim.lr


@pytest.mark.integration
def test_bad_config_key_is_a_clear_error(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--quick", "--output-dir", str(tmp_path), "--set", "optim.lrr=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "did you mean 'lr'" in r.stderr
