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

``load_recipe`` checks what it can before any step runs: step names (unique, usable as folder names),
keys and their types (against the functions the steps call), the steps that ``init_from``, ``evaluate``
``model`` and ``report`` ``systems`` name, and a prepare step's argument list.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import json
import logging
import operator
import time
import types
import typing
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsv.cli import build_parser
from mlsv.config import ConfigError, check_type, load_config, load_yaml_file, nearest, parse_override
from mlsv.data.sources import SourceError, is_source, open_source
from mlsv.data.synthetic import corpus_baseline, make_synthetic_corpus
from mlsv.extras import needs_extra
from mlsv.inference.evaluation import evaluate_model, write_run_report
from mlsv.locks import FolderLock
from mlsv.train.loop import check_same_run, run_stage

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


# files a report writes into the run folder: a step of that name would be overwritten
RESERVED_NAMES = ("model", "results.json", "report.md")


def is_recipe(path: str | Path) -> bool:
    data = load_yaml_file(path) or {}
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


def load_recipe(
    path: str | Path, *, output_dir: str | Path | None = None, quick: bool = False, overrides: list[str] | None = None
) -> Recipe:
    """Reads a recipe; ``overrides`` (``--set``) apply to every training step. Mistakes a step would only
    meet after the steps before it ran (an unknown or mistyped argument, a step name that is not an
    earlier step, a bad prepare argument list) are ConfigErrors naming the recipe, the step and the key."""
    path = Path(path).resolve()
    data = load_yaml_file(path, "recipe") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with output_dir and steps, got a {type(data).__name__}")
    unknown = set(data) - {"output_dir", "steps"}
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise ConfigError(f"{path}: unknown recipe key {key!r}{nearest(key, ['output_dir', 'steps'])}")
    if not isinstance(data.get("steps") or [], list):
        raise ConfigError(
            f"{path}: steps must be a list of steps (- {{name: ..., train: ...}}), got {type(data['steps']).__name__}"
        )
    if not isinstance(data.get("output_dir") or "", str):
        raise ConfigError(f"{path}: output_dir must be a folder name, got {data['output_dir']!r}")
    out = Path(output_dir or data.get("output_dir") or f"runs/{path.stem}")
    if quick and not output_dir:  # a smoke run's corpus and models never land where a full run looks for its own
        out = out.with_name(out.name + "-quick")
    out = out.resolve()
    mapping = {"run": str(out), "config": str(path.parent)}
    steps: list[Step] = []
    for i, raw in enumerate(data.get("steps") or [], 1):
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"{path}: step {i} needs a name")
        name = raw["name"]
        _check_name(name, path, i, [s.name for s in steps])
        where = f"{path}: step {name!r}"
        bad = set(raw) - STEP_KEYS
        if bad:
            key = sorted(map(str, bad))[0]
            raise ConfigError(f"{where}: unknown key {key!r}{nearest(key, STEP_KEYS)}")
        kinds = [k for k in STEP_KINDS if k in raw]
        if len(kinds) != 1:
            raise ConfigError(f"{path}: step {name!r} must have exactly one of {', '.join(STEP_KINDS)}")
        kind = kinds[0]
        if "train" in raw and ("args" in raw or "quick" in raw):
            raise ConfigError(
                f"{where}: a training step takes set / quick_set (a list of section.key=value), not args / quick"
            )
        for key in ("set", "quick_set", "init_from"):
            if key in raw and kind != "train":
                raise ConfigError(
                    f"{where}: {key} belongs to training steps; a {kind} step takes "
                    f"{'args / quick' if kind in ('prepare', 'evaluate') else 'its report mapping'}"
                )
        raw = _substitute(raw, mapping)
        init_from = raw.get("init_from") or ""
        if init_from:
            _check_step_ref(init_from, "init_from", "train", steps, where)
        for key in ("args", "quick"):
            if raw.get(key) is not None and not isinstance(raw[key], dict):
                raise ConfigError(f"{where}: {key} must be a mapping of argument: value, got {raw[key]!r}")
        args = dict(raw.get("args") or {})
        if quick:
            args.update(raw.get("quick") or {})
        for key in ("set", "quick_set"):
            _check_sets(raw.get(key), f"{where}: {key}")
        sets = list(raw.get("set") or []) + (list(raw.get("quick_set") or []) if quick else [])
        if kind == "train":
            sets += list(overrides or [])
        step = Step(name, kind, raw[kind], args, sets, init_from)
        _check_step(step, raw, where, steps)
        steps.append(step)
    for i, step in enumerate(steps):  # an evaluate step's model may be a folder, but not a later step
        model = {**step.spec, **step.args}.get("model") if step.kind == "evaluate" else None
        if model in {s.name for s in steps[i:]}:
            _check_step_ref(model, "model", "train", steps[:i], f"{path}: step {step.name!r}")
    return Recipe(path, out, steps)


def _check_name(name: Any, path: Path, index: int, earlier: list[str]) -> None:
    """A step's name is its folder in the run folder: text, no path separators or dot-dot, not a file the
    report writes there, and unique."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{path}: step {index}: name must be text (a folder name), got {name!r}")
    if name.startswith(".") or ".." in name or any(c in name for c in "/\\\0"):
        raise ConfigError(
            f"{path}: step {index}: name {name!r} must be a plain folder name (no '/', no '..', "
            "not starting with '.'): the step writes into OUTPUT_DIR/NAME"
        )
    if name in RESERVED_NAMES:
        raise ConfigError(
            f"{path}: step {index}: name {name!r} is taken by the run's report (OUTPUT_DIR/{name}); choose another"
        )
    if name in earlier:
        raise ConfigError(
            f"{path}: step {index}: name {name!r} is also step {earlier.index(name) + 1}'s; step "
            "names must be unique (each is a folder)"
        )


def _check_step_ref(value: Any, key: str, kind: str, earlier: list[Step], where: str) -> None:
    """``value`` names an earlier step of ``kind``."""
    names = {s.name: s for s in earlier}
    if not isinstance(value, str) or value not in names:
        hint = f"; the earlier steps are {', '.join(names)}" if names else ""
        raise ConfigError(f"{where}: {key} {value!r} is not an earlier step{hint}")
    if names[value].kind != kind:
        raise ConfigError(f"{where}: {key} {value!r} is a {names[value].kind} step, not a {kind} step")


def _check_sets(sets: Any, where: str) -> None:
    """``set`` / ``quick_set``: a list of ``section.key=value`` strings (one string would be read letter by
    letter)."""
    if sets is None:
        return
    if not isinstance(sets, list):
        raise ConfigError(
            f"{where} must be a list of section.key=value (- data.batch_size=8, or [a.b=1, c.d=2]), got {sets!r}"
        )
    for item in sets:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: {item!r} must be a section.key=value string")
        try:
            parse_override(item)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _plain_type(tp: Any) -> Any:
    """A parameter annotation as ``config.check_type`` reads YAML values: paths are text, tuples are
    lists, other classes are not checked."""
    if tp is Path:
        return str
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, [_plain_type(a) for a in typing.get_args(tp)])
    if origin in (list, tuple):
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis] or [Any]
        return list[functools.reduce(operator.or_, [_plain_type(a) for a in inner])]
    if origin is dict or tp is dict:
        return dict
    return tp if tp in (str, int, float, bool, type(None)) else Any


def _check_arguments(
    fn, given: dict, where: str, what: str, *, skip: tuple[str, ...] = (), extra: dict[str, Any] | None = None
) -> None:
    """The keys of ``given`` name parameters of ``fn`` (less ``skip``, plus ``extra``: name -> type) and
    their values have the parameters' types."""
    params = {
        n: p
        for n, p in inspect.signature(fn).parameters.items()
        if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: names are still checked
        hints = {}
    known = {**{n: hints.get(n, Any) for n in params}, **(extra or {})}
    for key, value in given.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown {what} key {key!r}{nearest(str(key), known)}")
        check_type(value, _plain_type(known[key]), f"{where}: {what} {key}")


def _required(fn, skip: tuple[str, ...] = ()) -> list[str]:
    return [
        n
        for n, p in inspect.signature(fn).parameters.items()
        if n not in skip and p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _check_step(step: Step, raw: dict, where: str, earlier: list[Step]) -> None:
    """A step's own spec, args and quick args, against the function it calls."""
    spec = step.spec
    if step.kind == "prepare":
        if spec == "synthetic":
            for key in ("args", "quick"):
                _check_arguments(
                    make_synthetic_corpus, raw.get(key) or {}, f"{where}: {key}", "synthetic prepare", skip=("out_dir",)
                )
        elif isinstance(spec, list) and spec:
            if raw.get("args") or raw.get("quick"):
                raise ConfigError(f"{where}: an mlsv prepare step takes its options in its list, not args / quick")
            _prepare_arguments(step, where)
        else:
            raise ConfigError(
                f"{where}: prepare must be 'synthetic' or an argument list for mlsv prepare "
                f"([folder, --root, DIR, --out, FILE]), got {spec!r}"
            )
    elif step.kind == "train":
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"{where}: train must be a stage config file, got {spec!r}")
    elif step.kind == "evaluate":
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{where}: evaluate must be a mapping of evaluate_model's arguments (model, manifest, "
                f"trials, ...), got {spec!r}"
            )
        skip = ("model_dir", "out_dir")
        for key, given in (("evaluate", spec), ("args", raw.get("args") or {}), ("quick", raw.get("quick") or {})):
            _check_arguments(
                evaluate_model,
                given,
                where if key == "evaluate" else f"{where}: {key}",
                "evaluate",
                skip=skip,
                extra={"model": str},
            )
        merged = {**spec, **step.args}
        missing = [k for k in ["model", *_required(evaluate_model, skip)] if k not in merged]
        if missing:
            raise ConfigError(f"{where}: evaluate needs {', '.join(missing)}")
        model = merged["model"]
        if model in {s.name for s in earlier} or model == step.name:
            _check_step_ref(model, "model", "train", earlier, where)
    elif step.kind == "report":
        if not isinstance(spec, dict) or not isinstance(spec.get("systems"), dict) or not spec["systems"]:
            raise ConfigError(
                f"{where}: report needs systems, a mapping of table label -> evaluate step ({{LAP: lap_eval}})"
            )
        if raw.get("args") or raw.get("quick"):
            raise ConfigError(f"{where}: a report step takes no args / quick: its settings are its mapping")
        _check_arguments(
            write_run_report,
            {k: v for k, v in spec.items() if k != "systems"},
            where,
            "report",
            skip=("run_dir", "systems"),
        )
        for label, name in spec["systems"].items():
            _check_step_ref(name, f"systems {label!r}:", "evaluate", earlier, where)
        model = spec.get("model")
        if model is not None and model not in spec["systems"]:
            raise ConfigError(
                f"{where}: report model {model!r} is not one of its systems' labels: "
                f"{', '.join(map(str, spec['systems']))}{nearest(str(model), map(str, spec['systems']))}"
            )


def _prepare_parser_error(argv: list[str]) -> tuple[Any, str]:
    """Parses ``mlsv prepare ARGV``: (the parsed arguments, "") or (None, argparse's error line)."""

    text = io.StringIO()
    try:
        with contextlib.redirect_stderr(text), contextlib.redirect_stdout(text):
            return build_parser().parse_args(argv), ""
    except SystemExit:
        lines = [line for line in text.getvalue().splitlines() if line.strip()]
        errors = [line for line in lines if ": error: " in line]
        return None, (errors or lines or ["not valid arguments"])[-1]


def _prepare_arguments(step: Step, where: str):
    args, error = _prepare_parser_error(["prepare", *[str(a) for a in step.spec]])
    if args is None:
        raise ConfigError(f"{where}: prepare {step.spec}: {error}")
    return args


def run_recipe(recipe: Recipe, *, only: list[str] | None = None) -> dict:
    """Runs the steps in order (or only those named), skipping complete ones. Returns the report, if any."""
    unknown = sorted(set(only or []) - {step.name for step in recipe.steps})
    if unknown:
        raise ConfigError(
            f"{recipe.path}: no step named {', '.join(map(repr, unknown))}; the steps are "
            f"{', '.join(step.name for step in recipe.steps)}"
        )
    with needs_extra("train", "training"):
        from accelerate import PartialState

    with FolderLock(recipe.output_dir, "train.py") if PartialState().is_main_process else nullcontext():
        return _run_steps(recipe, only)


def _run_steps(recipe: Recipe, only: list[str] | None) -> dict:
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    for index, step in enumerate(recipe.steps):
        if only and step.name not in only:
            continue
        out = recipe.step_dir(step.name)
        if (out / "COMPLETE").is_file():
            # a step done with other settings is an error, not a result to reuse
            if step.kind == "train":
                check_same_run(_stage_config(recipe, step)[0], out)
            else:
                _check_same_step(step, out)
            _log_main("step %s: complete, skipped", step.name)
            continue
        t0 = time.time()
        _log_main("step %s (%s)", step.name, step.kind)
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
        _mark_complete(out, time.time() - t0, _step_record(step))
    return result


def _step_record(step: Step) -> dict:
    """What a step was asked to do, as recorded in its COMPLETE file and compared on a rerun."""
    return {"kind": step.kind, "spec": step.spec, "args": step.args}


def _check_same_step(step: Step, out: Path) -> None:
    """A complete prepare, evaluate or report step is reused only when it was asked the same (a --quick
    corpus must not feed a full run): otherwise a ConfigError naming the folder and the first difference.
    A COMPLETE file from before steps were recorded cannot tell, and is reused with a warning."""
    try:
        done = json.loads((out / "COMPLETE").read_text(encoding="utf-8")).get("step")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        done = None
    if done is None:
        log.warning("step %s: %s was completed before mlsv recorded its settings; reused unchecked", step.name, out)
        return
    asked = json.loads(json.dumps(_step_record(step)))  # as stored: tuples become lists
    if done != asked:
        keys = sorted({*done.get("args", {}), *asked["args"]})
        diff = next(
            (
                f"{k}={done.get('args', {}).get(k)!r}, now {asked['args'].get(k)!r}"
                for k in keys
                if done.get("args", {}).get(k) != asked["args"].get(k)
            ),
            f"{done.get('spec')!r}, now {asked['spec']!r}",
        )
        raise ConfigError(
            f"step {step.name!r}: {out} was made with other settings ({diff}); delete that folder "
            "to redo the step, or give another --output-dir"
        )


EVALUATE_PATHS = ("manifest", "trials", "cohort", "threshold_manifest", "threshold_trials")


def check_evaluations(recipe: Recipe, index: int, only: list[str] | None = None) -> None:
    """Before a training step: the evaluate steps after it have known keys and name existing files, so
    that a mistyped or missing trial list stops the recipe now rather than after hours of training.
    Steps after a later prepare step are not checked (it may make their files)."""
    import inspect

    known = (set(inspect.signature(evaluate_model).parameters) - {"model_dir", "out_dir"}) | {"model"}
    names = {step.name for step in recipe.steps}
    for later in recipe.steps[index + 1 :]:
        if later.kind == "prepare":
            return
        if later.kind != "evaluate" or (only and later.name not in only):
            continue
        spec = {**later.spec, **later.args} if isinstance(later.spec, dict) else None
        if spec is None or "model" not in spec:
            raise ConfigError(
                f"{recipe.path}: step {later.name!r}: evaluate needs a mapping with a model (a step "
                "name or a model folder)"
            )
        bad = sorted(set(spec) - known)
        if bad:
            raise ConfigError(
                f"{recipe.path}: step {later.name!r}: unknown evaluate key {bad[0]!r}{nearest(bad[0], known)}"
            )
        if spec["model"] not in names and not Path(spec["model"]).is_dir():
            raise ConfigError(
                f"{recipe.path}: step {later.name!r}: model {spec['model']!r} is neither a step nor a model folder"
            )
        for key in EVALUATE_PATHS:
            value = spec.get(key)
            for path in value if isinstance(value, list) else [value] if value else []:
                if is_source(path):  # its folder (or cache entry), split and columns
                    try:
                        open_source(path)
                    except SourceError as e:
                        raise ConfigError(f"{recipe.path}: step {later.name!r}: {key}: {e}") from None
                elif not Path(path).exists():
                    raise ConfigError(
                        f"{recipe.path}: step {later.name!r}: {key} {path} not found (checked before "
                        "training, which would otherwise run first)"
                    )


def _log_main(message: str, *args) -> None:
    """Logs on the main process only: the other processes of a launch run the same steps."""
    with needs_extra("train", "training"):
        from accelerate import PartialState

    if PartialState().is_main_process:
        log.info(message, *args)


def _on_main_process(fn, *args):
    """Runs a step that writes shared files (evaluation, report) in the main process only, while the
    others wait: in a multi-process launch each process would otherwise redo it and race on its files."""
    with needs_extra("train", "training"):
        from accelerate import PartialState

    state = PartialState()
    result = fn(*args) if state.is_main_process else {}
    state.wait_for_everyone()
    return result


def _mark_complete(out: Path, seconds: float, record: dict) -> None:
    with needs_extra("train", "training"):
        from accelerate import PartialState

    if PartialState().is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "COMPLETE").write_text(
            json.dumps({"seconds": round(seconds, 1), "step": record, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
            + "\n"
        )
    PartialState().wait_for_everyone()


def _prepare(step: Step, out: Path) -> None:
    with needs_extra("train", "training"):
        from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        if step.spec == "synthetic":
            corpus = make_synthetic_corpus(out, **step.args)
            corpus_baseline(corpus, out / "baseline.json")
        elif isinstance(step.spec, list):
            # called here rather than through mlsv.cli.main, so that its error is this step's one line
            where = f"step {step.name!r}: mlsv prepare {' '.join(map(str, step.spec))}"
            args = _prepare_arguments(step, f"step {step.name!r}")
            try:
                rc = args.func(args)
            except (OSError, KeyError, ValueError) as e:  # as mlsv.cli.main: bad input, one line
                raise ConfigError(f"{where}: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from None
            if rc:
                raise ConfigError(f"{where}: failed with exit code {rc}")
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

    cfg, config_dir = _stage_config(recipe, step)
    run_stage(cfg, out, config_dir=config_dir)


def _evaluate(recipe: Recipe, step: Step, out: Path) -> None:

    spec = {**step.spec, **step.args}
    model = spec.pop("model")
    model_dir = recipe.step_dir(model) / "model" if (recipe.step_dir(model) / "model").is_dir() else Path(model)
    if model in {s.name for s in recipe.steps} and not model_dir.is_dir():
        raise ConfigError(
            f"{recipe.path}: step {step.name!r} evaluates the model of step {model!r}, which has "
            f"not made {recipe.step_dir(model) / 'model'} yet: run that step first "
            f"(--steps {model} {step.name})"
        )
    evaluate_model(model_dir, out_dir=out, **spec)


def _report(recipe: Recipe, step: Step, out: Path) -> dict:

    spec = dict(step.spec)
    systems = {label: recipe.step_dir(name) for label, name in spec.pop("systems").items()}
    for label, folder in systems.items():
        if not (folder / "metrics_by_stage.json").is_file():
            raise ConfigError(
                f"{recipe.path}: step {step.name!r} reports system {label!r} from step {folder.name!r}, "
                f"which has not evaluated yet (no {folder / 'metrics_by_stage.json'}): run it first "
                f"(--steps {folder.name} {step.name})"
            )
    return write_run_report(recipe.output_dir, systems, **spec)
