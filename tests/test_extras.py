"""Optional extras (mlsv.extras): a missing package names the extra that installs it; the extras match
setup.cfg; the installed commands `mlsv train` and `mlsv push` are train.py and push_to_hub.py; the shipped
configs are found in a source checkout."""

from __future__ import annotations

import configparser
import importlib.util
import sys
from pathlib import Path

import pytest

import mlsv
from mlsv.cli import main
from mlsv.extras import EXTRAS, MissingExtra, needs_extra, require_extra

ROOT = Path(__file__).resolve().parents[1]


def test_a_missing_package_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # an import of it fails as if it were not installed
    message = r'^training needs the "train" extra: pip install "mlsv\[train\]" \(missing: accelerate\)$'
    with pytest.raises(MissingExtra, match=message):
        with needs_extra("train", "training"):
            from accelerate import Accelerator  # noqa: F401
    # ... only for the extra's own packages: another missing module is not explained away
    with pytest.raises(ModuleNotFoundError) as info:
        with needs_extra("train", "training"):
            import mlsv_no_such_module  # noqa: F401
    assert not isinstance(info.value, MissingExtra)
    with pytest.raises(ValueError, match="unknown extra 'trian'"):
        with needs_extra("trian"):
            pass


def test_the_blocked_import_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("sklearn", "scipy") else real(name, *a)
    )
    with pytest.raises(MissingExtra, match=r'"eval" extra: pip install "mlsv\[eval\]" \(missing: scipy, sklearn\)'):
        require_extra("eval", "evaluation")
    require_extra("export")  # installed here (dev holds it): no error


def test_mlsv_train_without_the_extra_names_it(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    assert main(["train", "--quick"]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == 'mlsv train: error: training needs the "train" extra: pip install "mlsv[train]" (missing: accelerate)'
    )


def test_extras_match_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = set(cfg["options.extras_require"])
    assert set(EXTRAS) <= declared and declared - set(EXTRAS) == {"dev"}
    core = cfg["options"]["install_requires"].split()
    for heavy in ("accelerate", "datasets", "pyarrow", "scipy", "scikit-learn", "matplotlib", "pandas"):
        assert not any(r.startswith(heavy) for r in core), f"{heavy} is back in the core"


def test_installed_commands_are_the_scripts(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("usage: mlsv train [-h] [--config CONFIG]")
    with pytest.raises(SystemExit) as info:
        main(["push", "--help"])
    assert info.value.code == 0 and "--dry-run OUT" in capsys.readouterr().out
    # arguments pass through as they are, options before positionals or after
    assert main(["push", "--model", str(tmp_path), "--repo-id", "not-a-namespaced-id", "--dry-run", "x"]) == 2
    assert (
        "push_to_hub.py: error: --repo-id 'not-a-namespaced-id': give the hub repository as" in capsys.readouterr().err
    )
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"mlsv train: error: config file not found: {tmp_path}")


def test_shipped_files_are_found():
    assert mlsv.shipped_path("configs/default.yaml") == ROOT / "configs" / "default.yaml"
    assert (mlsv.shipped_path("metrics/mlsv_verification") / "mlsv_verification.py").is_file()
    with pytest.raises(FileNotFoundError, match="configs/nope.yaml is not shipped with this mlsv"):
        mlsv.shipped_path("configs/nope.yaml")


def test_commands_name_their_extra_before_any_work(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("sklearn", "onnxscript") else real(name, *a)
    )
    argv = ["--model", str(tmp_path), "--manifest", "m.jsonl", "--trials", "t.txt", "--out", str(tmp_path / "ev")]
    assert main(["evaluate", *argv]) == 2
    assert 'mlsv evaluate: error: mlsv evaluate needs the "eval" extra' in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()
    from mlsv.inference.export import export_onnx

    with pytest.raises(MissingExtra, match=r'ONNX export needs the "export" extra: .*\(missing: onnxscript\)'):
        export_onnx(None, tmp_path / "m.onnx")
