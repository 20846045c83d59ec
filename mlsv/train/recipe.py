"""Recipes: a YAML list of steps (prepare, training stages, evaluation, report) run in order.

A step whose output is complete is skipped; an interrupted one resumes. Paths may use ``${run}`` (the
recipe's output folder) and ``${config}`` (the recipe file's folder).

    output_dir: runs/default
    steps:
      - {name: data, prepare: synthetic, args: {n_speakers: 40}, quick: {n_speakers: 12}}
      - {name: stage1, train: stages/frozen.yaml, set: ["data.train_manifest=${run}/data/train.jsonl"]}
      - {name: stage2, train: stages/joint.yaml, init_from: stage1}
      - {name: eval, evaluate: {model: stage2, manifest: "${run}/data/test.jsonl", trials: [...], cohort: ...}}
      - {name: report, report: {systems: {LAP: eval}, baseline: "${run}/data/baseline.json"}}

Training steps take ``set`` / ``quick_set``; ``args`` / ``quick`` belong to prepare and evaluate steps.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlsv.config import ConfigError, _nearest, load_config

log = logging.getLogger("mlsv.recipe")

STEP_KINDS = ("prepare", "train", "evaluate", "report")
STEP_KEYS = {"name", "set", "quick_set", "init_from", "args", "quick", *STEP_KINDS}


@dataclass
class Step:
    name: str
    kind: str
    spec: Any
    args: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    init_from: str = ""


@dataclass
class Recipe:
    path: Path
    output_dir: Path
    steps: list[Step]

    def step_dir(self, name: str) -> Path:
        return self.output_dir / name


def is_recipe(path: str | Path) -> bool:
    data = yaml.safe_load(Path(path).read_text()) or {}
    return isinstance(data, dict) and "steps" in data


def _substitute(value, mapping: dict[str, str]):
    if isinstance(value, str):
        for k, v in mapping.items():
            value = value.replace("${" + k + "}", v)
        return value
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    return value


def load_recipe(path: str | Path, *, output_dir: str | Path | None = None, quick: bool = False,
                overrides: list[str] | None = None) -> Recipe:
    """Reads a recipe; ``overrides`` (``--set``) apply to every training step."""
    path = Path(path).resolve()
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"output_dir", "steps"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{path}: unknown recipe key {key!r}{_nearest(key, ['output_dir', 'steps'])}")
    out = Path(output_dir or data.get("output_dir") or f"runs/{path.stem}").resolve()
    mapping = {"run": str(out), "config": str(path.parent)}
    steps, names = [], set()
    for i, raw in enumerate(data.get("steps") or [], 1):
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"{path}: step {i} needs a name")
        bad = set(raw) - STEP_KEYS
        if bad:
            key = sorted(bad)[0]
            raise ConfigError(f"{path}: step {raw['name']!r}: unknown key {key!r}{_nearest(key, STEP_KEYS)}")
        kinds = [k for k in STEP_KINDS if k in raw]
        if len(kinds) != 1:
            raise ConfigError(f"{path}: step {raw['name']!r} must have exactly one of {', '.join(STEP_KINDS)}")
        if "train" in raw and ("args" in raw or "quick" in raw):
            raise ConfigError(f"{path}: step {raw['name']!r}: a training step takes set / quick_set (a list of "
                              "section.key=value), not args / quick")
        raw = _substitute(raw, mapping)
        init_from = raw.get("init_from", "")
        if init_from and init_from not in names:
            raise ConfigError(f"{path}: step {raw['name']!r}: init_from {init_from!r} is not an earlier step")
        args = dict(raw.get("args") or {})
        if quick:
            args.update(raw.get("quick") or {})
        sets = list(raw.get("set") or []) + (list(raw.get("quick_set") or []) if quick else [])
        if kinds[0] == "train":
            sets += list(overrides or [])
        steps.append(Step(raw["name"], kinds[0], raw[kinds[0]], args, sets, init_from))
        names.add(raw["name"])
    return Recipe(path, out, steps)


def run_recipe(recipe: Recipe, *, only: list[str] | None = None) -> dict:
    """Runs the steps in order (or only those named), skipping complete ones. Returns the report, if any."""
    unknown = sorted(set(only or []) - {step.name for step in recipe.steps})
    if unknown:
        raise ConfigError(f"{recipe.path}: no step named {', '.join(map(repr, unknown))}; the steps are "
                          f"{', '.join(step.name for step in recipe.steps)}")
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    for index, step in enumerate(recipe.steps):
        if only and step.name not in only:
            continue
        out = recipe.step_dir(step.name)
        if (out / "COMPLETE").is_file():
            if step.kind == "train":  # a stage done with other settings is an error, not a result to reuse
                from mlsv.train.loop import check_same_run

                check_same_run(_stage_config(recipe, step)[0], out)
            log.info("step %s: complete, skipped", step.name)
            continue
        t0 = time.time()
        log.info("step %s (%s)", step.name, step.kind)
        if step.kind == "train":
            check_evaluations(recipe, index, only)
        if step.kind == "prepare":
            _prepare(step, out)
        elif step.kind == "train":
            _train(recipe, step, out)
        elif step.kind == "evaluate":
            _on_main_process(_evaluate, recipe, step, out)
        elif step.kind == "report":
            result = _on_main_process(_report, recipe, step, out)
        _mark_complete(out, time.time() - t0)
    return result


EVALUATE_PATHS = ("manifest", "trials", "cohort", "threshold_manifest", "threshold_trials")


def check_evaluations(recipe: Recipe, index: int, only: list[str] | None = None) -> None:
    """Before a training step: the evaluate steps after it have known keys and name existing files, so
    that a mistyped or missing trial list stops the recipe now rather than after hours of training.
    Steps after a later prepare step are not checked (it may make their files)."""
    import inspect

    from mlsv.evaluation import evaluate_model

    known = (set(inspect.signature(evaluate_model).parameters) - {"model_dir", "out_dir"}) | {"model"}
    names = {step.name for step in recipe.steps}
    for later in recipe.steps[index + 1:]:
        if later.kind == "prepare":
            return
        if later.kind != "evaluate" or (only and later.name not in only):
            continue
        spec = {**later.spec, **later.args} if isinstance(later.spec, dict) else None
        if spec is None or "model" not in spec:
            raise ConfigError(f"{recipe.path}: step {later.name!r}: evaluate needs a mapping with a model (a step "
                              "name or a model folder)")
        bad = sorted(set(spec) - known)
        if bad:
            raise ConfigError(f"{recipe.path}: step {later.name!r}: unknown evaluate key {bad[0]!r}"
                              f"{_nearest(bad[0], known)}")
        if spec["model"] not in names and not Path(spec["model"]).is_dir():
            raise ConfigError(f"{recipe.path}: step {later.name!r}: model {spec['model']!r} is neither a step nor a "
                              "model folder")
        for key in EVALUATE_PATHS:
            value = spec.get(key)
            for path in value if isinstance(value, list) else [value] if value else []:
                if not Path(path).exists():
                    raise ConfigError(f"{recipe.path}: step {later.name!r}: {key} {path} not found (checked before "
                                      "training, which would otherwise run first)")


def _on_main_process(fn, *args):
    """Runs a step that writes shared files (evaluation, report) in the main process only, while the
    others wait: in a multi-process launch each process would otherwise redo it and race on its files."""
    from accelerate import PartialState

    state = PartialState()
    result = fn(*args) if state.is_main_process else {}
    state.wait_for_everyone()
    return result


def _mark_complete(out: Path, seconds: float) -> None:
    from accelerate import PartialState

    if PartialState().is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "COMPLETE").write_text(json.dumps({"seconds": round(seconds, 1),
                                                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    PartialState().wait_for_everyone()


def _prepare(step: Step, out: Path) -> None:
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        if step.spec == "synthetic":
            from mlsv.data.synthetic import corpus_baseline, make_synthetic_corpus

            corpus = make_synthetic_corpus(out, **step.args)
            corpus_baseline(corpus, out / "baseline.json")
        elif isinstance(step.spec, list):
            from mlsv.cli import main

            rc = main(["prepare", *[str(a) for a in step.spec]])
            if rc:
                raise RuntimeError(f"step {step.name}: mlsv prepare failed with exit code {rc}")
        else:
            raise ConfigError(f"step {step.name}: prepare must be 'synthetic' or an argument list for mlsv prepare")
    state.wait_for_everyone()


def _stage_config(recipe: Recipe, step: Step):
    """A training step's config and the folder its relative paths start from."""
    config_path = Path(step.spec)
    if not config_path.is_absolute():
        config_path = recipe.path.parent / config_path
    sets = list(step.overrides)
    if step.init_from:
        sets.append(f"stage.init_from={recipe.step_dir(step.init_from)}")
    sets.append(f"stage.name={step.name}")
    return load_config(config_path, sets), config_path.parent


def _train(recipe: Recipe, step: Step, out: Path) -> None:
    from mlsv.train.loop import run_stage

    cfg, config_dir = _stage_config(recipe, step)
    run_stage(cfg, out, config_dir=config_dir)


def _evaluate(recipe: Recipe, step: Step, out: Path) -> None:
    from mlsv.evaluation import evaluate_model

    spec = {**step.spec, **step.args}
    model = spec.pop("model")
    model_dir = recipe.step_dir(model) / "model" if (recipe.step_dir(model) / "model").is_dir() else Path(model)
    if model in {s.name for s in recipe.steps} and not model_dir.is_dir():
        raise ConfigError(f"{recipe.path}: step {step.name!r} evaluates the model of step {model!r}, which has "
                          f"not made {recipe.step_dir(model) / 'model'} yet: run that step first "
                          f"(--steps {model} {step.name})")
    evaluate_model(model_dir, out_dir=out, **spec)


def _report(recipe: Recipe, step: Step, out: Path) -> dict:
    from mlsv.evaluation import write_run_report

    spec = dict(step.spec)
    systems = {label: recipe.step_dir(name) for label, name in spec.pop("systems").items()}
    return write_run_report(recipe.output_dir, systems, **spec)
